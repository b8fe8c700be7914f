#!/usr/bin/env python3
"""Benchmark of the node API's model path and of an inference service, against a real
`mlflow server` (tests/support/mlflow_server.py) on loopback.

  .venv/bin/python benchmarks/node_api_bench.py [--seconds 10] [--clients 4] [--rows 1] [--rounds 3]

In one run, on this host:
  (a) pull + start: the production version of a scikit-learn model pulled into a
      model store (edgelab.node_api.store, what PUT /api/mlflow/model does), the real
      `edgelab-inference` entry point started on it, seconds until its first answered
      prediction (the lab worker's figure, with real systemd and the node API in
      front, comes from molecule/mlops/verify_node_api.yml);
  (b) prediction latency p50/p99 and requests/s of that service and of
      `mlflow models serve --env-manager local` on the same model, each for
      --seconds with --clients keep-alive clients posting --rows rows, one after the
      other (order alternated over --rounds), both answers checked first against the
      model's known output; the serving process's CPU time per request; per round and
      as medians over the rounds, the ratios edgelab / mlflow (req/s: above 1 is faster;
      p50, p99, CPU per request: below 1 is faster);
  (c) RSS of both servers after their load (mlflow's serving uvicorn process, and with
      the `mlflow` CLI process that waits on it), and of an idle `edgelab-node-api`.
The client threads run in this process on the same cores as the servers; both servers
get the same client. Each figure is printed with the load average. Prints one JSON
line "RESULT {...}".
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import secrets
import statistics
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
KEYS = ("req_per_s", "p50_ms", "p99_ms", "cpu_ms_per_request")
SLOPE = 2.0  # register()'s model predicts SLOPE x the last input


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> float:
    """Seconds until url answers 200 (RuntimeError when the process exits first)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def log_tail(path: Path, size: int = 1500) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else ""


def first_prediction(port: int, path: str, body: bytes, proc: subprocess.Popen[bytes], log: Path,
                     timeout: float = 300) -> Any:
    """The first 200 answer's JSON (RuntimeError with the server's log tail when it exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}:\n{log_tail(log)}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            text = response.read()
            conn.close()
            if response.status == 200:
                return json.loads(text)
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no prediction from port {port} in {timeout} s:\n{log_tail(log)}")


def check_predictions(name: str, got: Any, want: list[float]) -> None:
    """The answer's predictions equal the model's known output (slope 2 x the last input)."""
    values = got.get("predictions") if isinstance(got, dict) else None
    if not isinstance(values, list) or len(values) != len(want) or any(
            abs(float(v) - w) > 1e-6 for v, w in zip(values, want, strict=True)):
        raise RuntimeError(f"{name} answered {str(got)[:300]}, expected predictions {want}")


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def load(port: int, path: str, body: bytes, pid: int, seconds: float, clients: int) -> dict[str, Any]:
    """--clients keep-alive clients posting body for `seconds`: latency, throughput and the
    serving process's (pid's) CPU time per request, which the machine's load hardly moves."""
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
    cpu_before = cpu_s(pid)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    cpu = cpu_s(pid) - cpu_before
    merged = sorted(x for lat in latencies for x in lat)
    if not merged:
        return {"requests": 0, "errors": sum(errors)}
    return {"requests": len(merged), "errors": sum(errors), "req_per_s": round(len(merged) / elapsed, 1),
            "p50_ms": round(merged[len(merged) // 2] * 1000, 2),
            "p99_ms": round(merged[min(len(merged) - 1, int(len(merged) * 0.99))] * 1000, 2),
            "cpu_ms_per_request": round(cpu * 1000 / len(merged), 3)}


def rss_mb(pid: int, children: bool = True) -> float:
    """RSS of a process, with its children (uvicorn under the `mlflow` CLI) unless told not, MiB."""
    parent = psutil.Process(pid)
    total = parent.memory_info().rss
    if children:
        total += sum(c.memory_info().rss for c in parent.children(recursive=True))
    return round(total / 2**20, 1)


def serving_pid(proc: subprocess.Popen[bytes], port: int) -> int:
    """The process listening on port: proc itself or one of its descendants (mlflow's uvicorn)."""
    parent = psutil.Process(proc.pid)
    for candidate in [parent, *parent.children(recursive=True)]:
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
               for c in candidate.net_connections(kind="tcp")):
            return candidate.pid
    raise RuntimeError(f"no process of {proc.args!r} listens on port {port}")


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """edgelab / mlflow for req/s (above 1: edgelab faster) and p50, p99, CPU per request
    (below 1: edgelab faster)."""
    return {key: round(ours[key] / theirs[key], 3) for key in KEYS
            if ours.get(key) and theirs.get(key)}


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    return (f"{platform.platform()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.1f} GiB, Python {platform.python_version()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="load per server and round (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="keep-alive clients (default 4)")
    parser.add_argument("--rows", type=int, default=1, help="rows per prediction request (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, order alternated (default 3)")
    args = parser.parse_args()
    if args.seconds <= 0 or args.clients < 1 or args.rows < 1 or args.rounds < 1:
        parser.error("--seconds must be above 0 and --clients, --rows, --rounds at least 1")
    result: dict[str, Any] = {"machine": machine(), "load_before": loadavg(), "seconds": args.seconds,
                              "clients": args.clients, "rows": args.rows, "rounds": args.rounds}
    print(f"machine: {result['machine']}; load {result['load_before']}", flush=True)
    # `mlflow models serve` runs `uvicorn` found on PATH: the venv's bin comes first.
    os.environ.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                      MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    with tempfile.TemporaryDirectory(prefix="node-api-bench-") as tmp, running_mlflow(Path(tmp) / "mlflow") as server:
        base = Path(tmp)
        env = dict(os.environ, MLFLOW_TRACKING_URI=server.uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
        os.environ.update(MLFLOW_TRACKING_URI=server.uri)
        import mlflow

        mlflow.set_tracking_uri(server.uri)
        version = register(MODEL, SLOPE)
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
        want = [SLOPE * row[-1] for row in rows]
        ours_body = json.dumps(rows).encode()
        ours_log = base / "inference.log"
        started = time.monotonic()
        MlflowPuller(ModelStore(base / "models"), server.uri).pull(MODEL)
        pulled = time.monotonic() - started
        ours = subprocess.Popen([str(BIN / "edgelab-inference"), "--config", str(config), MODEL], env=env,
                                stdout=subprocess.DEVNULL, stderr=ours_log.open("w"))
        theirs: subprocess.Popen[bytes] | None = None
        try:
            check_predictions("edgelab-inference", first_prediction(port, "/predict", ours_body, ours, ours_log),
                              want)
            result["pull_s"] = round(pulled, 2)
            result["pull_to_first_prediction_s"] = round(time.monotonic() - started, 2)
            result["edgelab_start_to_first_prediction_s"] = round(time.monotonic() - started - pulled, 2)
            print(f"(a) pull {pulled:.2f} s, pull + start to first prediction "
                  f"{result['pull_to_first_prediction_s']} s  (load {loadavg()})", flush=True)

            theirs_port = free_port()
            theirs_log = base / "serve.log"
            theirs_started = time.monotonic()
            theirs = subprocess.Popen([mlflow_executable(), "models", "serve", "-m", f"models:/{MODEL}/{version}",
                                       "--env-manager", "local", "-h", "127.0.0.1", "-p", str(theirs_port)],
                                      env=env, stdout=subprocess.DEVNULL, stderr=theirs_log.open("w"))
            theirs_body = json.dumps({"inputs": rows}).encode()
            check_predictions("mlflow models serve",
                              first_prediction(theirs_port, "/invocations", theirs_body, theirs, theirs_log), want)
            result["mlflow_serve_start_to_first_prediction_s"] = round(time.monotonic() - theirs_started, 2)
            print(f"(a) mlflow models serve: start to first prediction "
                  f"{result['mlflow_serve_start_to_first_prediction_s']} s (load {loadavg()})", flush=True)

            targets = {"edgelab": (port, "/predict", ours_body, serving_pid(ours, port)),
                       "mlflow": (theirs_port, "/invocations", theirs_body, serving_pid(theirs, theirs_port))}
            for name, target in targets.items():
                load(*target, 2.0, args.clients)  # warm-up
                result[name] = []
            result["ratios"] = []
            for round_no in range(args.rounds):
                order = list(targets) if round_no % 2 == 0 else list(reversed(targets))
                for name in order:
                    figures = load(*targets[name], args.seconds, args.clients)
                    figures["load"] = loadavg()
                    result[name].append(figures)
                    print(f"(b) round {round_no + 1} {name:8s} {figures}", flush=True)
                round_ratios = ratios(result["edgelab"][-1], result["mlflow"][-1])
                result["ratios"].append(round_ratios)
                print(f"(b) round {round_no + 1} edgelab/mlflow {round_ratios}", flush=True)
            summary: dict[str, Any] = {}
            for name in targets:
                runs = [r for r in result[name] if r.get("requests")]
                summary[name] = {key: round(statistics.median([r[key] for r in runs]), 2) if runs else None
                                 for key in KEYS}
                summary[name]["errors"] = sum(r["errors"] for r in result[name])
            summary["ratio_medians"] = {key: round(statistics.median([r[key] for r in result["ratios"] if key in r]), 3)
                                        for key in KEYS if any(key in r for r in result["ratios"])}
            result["summary"] = summary
            print(f"(b) medians over {args.rounds} rounds: {summary}", flush=True)
            result["edgelab_rss_mb"] = rss_mb(ours.pid)
            result["mlflow_serve_uvicorn_rss_mb"] = rss_mb(serving_pid(theirs, theirs_port), children=False)
            result["mlflow_serve_total_rss_mb"] = rss_mb(theirs.pid)
        finally:
            if theirs is not None:
                stop(theirs)
            stop(ours)
        api = subprocess.Popen([str(BIN / "edgelab-node-api"), "--config", str(config)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            api_port = json.loads(config.read_text())["listen"].rpartition(":")[2]
            wait_http(f"http://127.0.0.1:{api_port}/api/ping", api)
            time.sleep(2)
            result["node_api_idle_rss_mb"] = rss_mb(api.pid)
        finally:
            stop(api)
    result["load_after"] = loadavg()
    print(f"(c) RSS MiB: edgelab-inference {result['edgelab_rss_mb']}, mlflow models serve "
          f"{result['mlflow_serve_uvicorn_rss_mb']} (uvicorn) / {result['mlflow_serve_total_rss_mb']} "
          f"(with the mlflow CLI), idle edgelab-node-api {result['node_api_idle_rss_mb']}")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError) as exc:
        sys.exit(f"node_api_bench: {exc}")
