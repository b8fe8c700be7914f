#!/usr/bin/env python3
"""MLflow logging throughput: edgelab's server (basic auth, Postgres) against a stock
`mlflow server` with a SQLite store, in the same run (bounded; stops by itself).

The stock server is PyPI's `mlflow server` of this Python's environment, started on a
free loopback port with a SQLite store in a temporary directory (1 worker, as simple
as MLflow's quick start), and stopped at the end. edgelab's server is given by --url
(loopback or a lab address), with the account and its password file (default: the
lab inventory's credentials/mlflow/edgelab); the password reaches the client through
its environment only. For each server, one run, then --batches calls of
MlflowClient.log_batch with --batch-size metrics each, timed; repeated --repeats
times interleaved (stock, edgelab, edgelab, stock, ...) and the medians reported, with
the idle RSS of the stock server (the edgelab server's RSS is measured on its host:
docs/mlops.md). Usage:

    .venv/bin/python benchmarks/mlflow_bench.py --url http://10.213.0.11:5000
    .venv/bin/python benchmarks/mlflow_bench.py --url ... --json out.json
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def allowed_url(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    return address.is_loopback or address in ipaddress.ip_network("10.213.0.0/16")


def wait_health(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer /health in {timeout:g} s")


def rss_mib(pid: int) -> float:
    """RSS of a process and all its descendants (uvicorn workers), MiB."""
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def measure(url: str, auth: tuple[str, str] | None, batches: int, size: int) -> float:
    """Seconds for `batches` log_batch calls of `size` metrics, in a child process whose
    environment carries only this server's URI and credentials."""
    code = f"""
import time
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
client = MlflowClient()
exp = client.get_experiment_by_name("edgelab-bench")
exp_id = exp.experiment_id if exp else client.create_experiment("edgelab-bench")
run = client.create_run(exp_id)
now = int(time.time() * 1000)
client.log_batch(run.info.run_id, metrics=[Metric("warmup", 0.0, now, 0)])
start = time.perf_counter()
for b in range({batches}):
    client.log_batch(run.info.run_id, metrics=[Metric(f"m{{i}}", float(b * i), now + b, b) for i in range({size})])
print("SECONDS", time.perf_counter() - start)
client.set_terminated(run.info.run_id)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = url
    env["GIT_PYTHON_REFRESH"] = "quiet"
    if auth is not None:
        env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = auth
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800,
                          check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("SECONDS ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"logging to {url} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return float(lines[-1].split()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="edgelab's MLflow, e.g. http://10.213.0.11:5000")
    parser.add_argument("--username", default="edgelab")
    parser.add_argument("--password-file", default=str(ROOT / "inventory/lab/credentials/mlflow/edgelab"))
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if not allowed_url(args.url):
        parser.error(f"--url must be loopback or a lab address (10.213.x.x), got {args.url}")
    if args.batches < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--batches, --batch-size and --repeats must be >= 1")
    try:
        password = Path(args.password_file).read_text().strip()
    except OSError as error:
        parser.error(f"cannot read the password file: {error}")
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    results: dict[str, Any] = {"batches": args.batches, "batch_size": args.batch_size, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        stock_url = f"http://127.0.0.1:{port}"
        with open(Path(tmp) / "server.log", "w") as log:
            stock = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                      "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db"],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            wait_health(stock_url, stock)
            wait_health(args.url, None, 30)
            time.sleep(5)
            results["stock_idle_rss_mib"] = round(rss_mib(stock.pid), 1)
            times: dict[str, list[float]] = {"stock": [], "edgelab": []}
            for r in range(args.repeats):
                order = ["stock", "edgelab"] if r % 2 == 0 else ["edgelab", "stock"]
                for name in order:
                    if name == "stock":
                        times[name].append(measure(stock_url, None, args.batches, args.batch_size))
                    else:
                        times[name].append(measure(args.url, (args.username, password), args.batches,
                                                   args.batch_size))
        except RuntimeError as error:
            print(f"mlflow_bench: {error}", file=sys.stderr)
            return 1
        finally:
            stock.terminate()
            try:
                stock.wait(20)
            except subprocess.TimeoutExpired:
                stock.kill()
    for name, values in times.items():
        median = statistics.median(values)
        results[name] = {"seconds": [round(v, 3) for v in values], "batches_per_s": round(args.batches / median, 1),
                         "metrics_per_s": round(args.batches * args.batch_size / median, 1)}
    results["edgelab_over_stock"] = round(results["edgelab"]["batches_per_s"] / results["stock"]["batches_per_s"], 3)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
