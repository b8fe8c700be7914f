#!/usr/bin/env python3
"""Benchmark of Airflow and the train_model DAG on the mlops host (run there, e.g. by
molecule/mlops/verify_airflow.yml, with edgelab's trainer venv python: numpy + stdlib).

    train_bench.py --airflow-url http://127.0.0.1:8080 --mlflow-url URL --rows 100000 \\
        --workdir DIR  < passwords      # line 1: Airflow admin, line 2: MLflow user edgelab

1. Idle memory: the resident set (sum of VmRSS over every process of the unit's
   cgroup) of each Airflow component unit, before anything is triggered.
2. Trigger to production: writes a ROWS-row CSV dataset (timestamp, 8 features,
   target), takes a token from /auth/token, triggers train_model through
   POST /api/v2/dags/train_model/dagRuns for a model name not used before, and measures
   the time from the trigger to the moment MLflow's alias `production` of that model
   names a version.

Prints one JSON object: rss_mib {unit: MiB}, rows, seconds (trigger to production),
state (the DAG run's), promoted, version. Passwords come from stdin, never argv.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

UNITS = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")


def unit_rss_mib(unit: str) -> float | None:
    """Sum of VmRSS over the processes of a running unit's cgroup, in MiB."""
    pid = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", unit + ".service"],
                         capture_output=True, text=True, check=False).stdout.strip()
    if not pid or pid == "0":
        return None
    line = Path(f"/proc/{pid}/cgroup").read_text().splitlines()[-1]
    procs = Path("/sys/fs/cgroup") / line.split("::", 1)[1].lstrip("/") / "cgroup.procs"
    pids = procs.read_text().split() if procs.is_file() else [pid]
    total = 0
    for each in pids:
        try:
            for row in Path(f"/proc/{each}/status").read_text().splitlines():
                if row.startswith("VmRSS:"):
                    total += int(row.split()[1])
        except OSError:
            continue  # the process ended meanwhile
    return round(total / 1024, 1)


def request(url: str, *, body: Any = None, token: str | None = None, basic: tuple[str, str] | None = None,
            timeout: float = 30) -> tuple[int, Any]:
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = "Bearer " + token
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % basic).encode()).decode()
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def write_dataset(path: Path, rows: int) -> None:
    rng = np.random.default_rng(11)
    x = rng.random((rows, 8))
    y = 20 + x @ np.array([3.0, -2.0, 1.5, 0.0, 0.5, 0.0, -1.0, 2.0]) + 0.1 * rng.standard_normal(rows)
    t = 1767225600 + 5 * np.arange(rows)
    table = np.column_stack([t, x, y])
    header = "timestamp," + ",".join("m%d" % i for i in range(8)) + ",latency"
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt=["%d"] + ["%.6f"] * 9)
    os.chmod(path, 0o644)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airflow-url", default="http://127.0.0.1:8080")
    parser.add_argument("--airflow-user", default="admin")
    parser.add_argument("--mlflow-url", required=True)
    parser.add_argument("--mlflow-user", default="edgelab")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    lines = sys.stdin.read().splitlines()
    if len(lines) < 2:
        print("train_bench: give the Airflow and the MLflow password on stdin, one a line", file=sys.stderr)
        return 2
    airflow_password, mlflow_password = lines[0].strip(), lines[1].strip()

    result: dict[str, Any] = {"rss_mib": {unit: unit_rss_mib(unit) for unit in UNITS}, "rows": args.rows}
    dataset = Path(args.workdir) / ("bench-%d.csv" % args.rows)
    write_dataset(dataset, args.rows)
    status, token = request(args.airflow_url + "/auth/token",
                            body={"username": args.airflow_user, "password": airflow_password})
    if status not in (200, 201) or not isinstance(token, dict):
        print("train_bench: /auth/token answered %d" % status, file=sys.stderr)
        return 1
    access = token["access_token"]
    model = "bench-%d-%d" % (args.rows, time.time())
    conf = {"dataset": str(dataset), "target": "latency", "model_name": model}
    started = time.monotonic()
    status, run = request(args.airflow_url + "/api/v2/dags/train_model/dagRuns", token=access,
                          body={"logical_date": None, "conf": conf})
    if status != 200 or not isinstance(run, dict):
        print("train_bench: trigger answered %d" % status, file=sys.stderr)
        return 1
    run_url = "%s/api/v2/dags/train_model/dagRuns/%s" % (args.airflow_url, urllib.parse.quote(run["dag_run_id"]))
    alias_url = "%s/api/2.0/mlflow/registered-models/alias?%s" % (
        args.mlflow_url, urllib.parse.urlencode({"name": model, "alias": "production"}))
    state, version, seconds = "queued", None, None
    while time.monotonic() - started < args.timeout:
        status, found = request(alias_url, basic=(args.mlflow_user, mlflow_password))
        if status == 200 and isinstance(found, dict):
            seconds = round(time.monotonic() - started, 2)
            version = found["model_version"]["version"]
            break
        _, current = request(run_url, token=access)
        state = (current or {}).get("state", state)
        if state == "failed":
            break
        time.sleep(0.5)
    deadline = time.monotonic() + 60
    while state not in ("success", "failed") and time.monotonic() < deadline:
        _, current = request(run_url, token=access)
        state = (current or {}).get("state", state)
        time.sleep(0.5)
    result.update(seconds=seconds, state=state, promoted=version is not None, version=version, model=model)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
