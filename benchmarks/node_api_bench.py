#!/usr/bin/env python3
"""Benchmark of the node API's model path and of an inference service, against a real
`mlflow server` (tests/support/mlflow_server.py) on loopback.

  .venv/bin/python benchmarks/node_api_bench.py [--seconds 10] [--clients 4] [--rows 1]

In one run, on this host:
  (a) pull + start: the production version of a scikit-learn model pulled into a
      model store (edgelab.node_api.store, what PUT /api/mlflow/model does), the real
      `edgelab-inference` entry point started on it, seconds until its first answered
      prediction (the lab worker's figure, with real systemd and the node API in
      front, comes from molecule/mlops/verify_node_api.yml);
  (b) prediction latency p50/p99 and requests/s of that service and of
      `mlflow models serve --env-manager local` on the same model, each for
      --seconds with --clients keep-alive clients posting --rows rows, one after the
      other (order alternated over --rounds);
  (c) RSS of both servers after their load, and of an idle `edgelab-node-api`.
Each figure is printed with the load average. Prints one JSON line "RESULT {...}".
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the shared test helpers: tests/support
BIN = Path(sys.executable).parent

from support.mlflow_server import WIDTH, free_port, mlflow_executable, register, running_mlflow  # noqa: E402

MODEL = "bench-node-api"


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> float:
    """Seconds until url answers 200 (RuntimeError when the process exits first)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def first_prediction(port: int, body: bytes, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", "/predict" if b"inputs" not in body else "/invocations", body,
                         {"Content-Type": "application/json"})
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("no prediction")


def load(port: int, path: str, body: bytes, seconds: float, clients: int) -> dict[str, Any]:
    """--clients keep-alive clients posting body for `seconds`: latency and throughput."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                ok = False
            if ok:
                latencies[i].append(time.perf_counter() - started)
            else:
                errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    merged = sorted(x for lat in latencies for x in lat)
    if not merged:
        return {"requests": 0, "errors": sum(errors)}
    return {"requests": len(merged), "errors": sum(errors), "req_per_s": round(len(merged) / elapsed, 1),
            "p50_ms": round(merged[len(merged) // 2] * 1000, 2),
            "p99_ms": round(merged[min(len(merged) - 1, int(len(merged) * 0.99))] * 1000, 2)}


def rss_mb(proc: subprocess.Popen[bytes]) -> float:
    """RSS of the process and its children (uvicorn/gunicorn workers), MiB."""
    parent = psutil.Process(proc.pid)
    total = parent.memory_info().rss + sum(c.memory_info().rss for c in parent.children(recursive=True))
    return round(total / 2**20, 1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result: dict[str, Any] = {"load_before": loadavg()}
    with tempfile.TemporaryDirectory(prefix="node-api-bench-") as tmp, running_mlflow(Path(tmp) / "mlflow") as server:
        base = Path(tmp)
        env = dict(os.environ, MLFLOW_TRACKING_URI=server.uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
        os.environ.update(MLFLOW_TRACKING_URI=server.uri)
        import mlflow

        mlflow.set_tracking_uri(server.uri)
        version = register(MODEL, 2.0)
        from edgelab.node_api.store import MlflowPuller, ModelStore

        port = free_port()
        config = base / "node-api.yml"
        (base / "state" / "deployments").mkdir(parents=True)
        token = base / "token"
        token.write_text(secrets.token_urlsafe(32))
        config.write_text(json.dumps({
            "listen": f"127.0.0.1:{free_port()}", "token_file": str(token), "store_dir": str(base / "models"),
            "state_dir": str(base / "state"), "mlflow_tracking_uri": server.uri, "inference_address": "127.0.0.1",
            "systemctl": "/bin/false"}))
        (base / "state" / "deployments" / f"{MODEL}.json").write_text(json.dumps({"exp_id": MODEL, "port": port}))

        # (a) pull + start -> first answered prediction
        rows = [[0.0] * (WIDTH - 1) + [float(i % 7) / 7] for i in range(args.rows)]
        ours_body = json.dumps(rows).encode()
        started = time.monotonic()
        MlflowPuller(ModelStore(base / "models"), server.uri).pull(MODEL)
        pulled = time.monotonic() - started
        ours = subprocess.Popen([str(BIN / "edgelab-inference"), "--config", str(config), MODEL], env=env,
                                stdout=subprocess.DEVNULL, stderr=(base / "inference.log").open("w"))
        first_prediction(port, ours_body, ours)
        result["pull_s"] = round(pulled, 2)
        result["pull_to_first_prediction_s"] = round(time.monotonic() - started, 2)
        print(f"(a) pull {pulled:.2f} s, pull + start to first prediction "
              f"{result['pull_to_first_prediction_s']} s  (load {loadavg()})", flush=True)

        theirs_port = free_port()
        theirs = subprocess.Popen([mlflow_executable(), "models", "serve", "-m", f"models:/{MODEL}/{version}",
                                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(theirs_port)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=(base / "serve.log").open("w"))
        theirs_body = json.dumps({"inputs": rows}).encode()
        try:
            theirs_started = time.monotonic()
            first_prediction(theirs_port, theirs_body, theirs)
            result["mlflow_serve_start_to_first_prediction_s"] = round(time.monotonic() - theirs_started, 2)
            for name, target in (("edgelab", (port, "/predict", ours_body)),
                                 ("mlflow", (theirs_port, "/invocations", theirs_body))):
                load(*target, 2.0, args.clients)  # warm-up
                result.setdefault(name, [])
            for round_no in range(args.rounds):
                order = [("edgelab", port, "/predict", ours_body), ("mlflow", theirs_port, "/invocations", theirs_body)]
                if round_no % 2:
                    order.reverse()
                for name, target_port, path, body in order:
                    figures = load(target_port, path, body, args.seconds, args.clients)
                    figures["load"] = loadavg()
                    result[name].append(figures)
                    print(f"(b) {name:8s} round {round_no + 1}: {figures}", flush=True)
            result["edgelab_rss_mb"] = rss_mb(ours)
            result["mlflow_serve_rss_mb"] = rss_mb(theirs)
        finally:
            stop(theirs)
            stop(ours)
        api = subprocess.Popen([str(BIN / "edgelab-node-api"), "--config", str(config)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            api_port = json.loads(config.read_text())["listen"].rpartition(":")[2]
            wait_http(f"http://127.0.0.1:{api_port}/api/ping", api)
            time.sleep(2)
            result["node_api_idle_rss_mb"] = rss_mb(api)
        finally:
            stop(api)
    print(f"(c) RSS MiB: edgelab-inference {result['edgelab_rss_mb']}, mlflow models serve "
          f"{result['mlflow_serve_rss_mb']}, idle edgelab-node-api {result['node_api_idle_rss_mb']}")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
