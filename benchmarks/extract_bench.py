#!/usr/bin/env python3
"""Benchmark of edgelab-extract against seed 004's extraction method, in the same run.

  .venv/bin/python benchmarks/extract_bench.py [--series 1000] [--metrics 1000] [--repeats 3]

Data: SERIES series (spread evenly over METRICS metric names, in families of 10 names)
x 1 h at 1 s, backfilled with promtool into a Prometheus (Debian's /usr/bin/prometheus)
started on loopback for the run.

Methods, each run in its own process (peak RSS from wait4), alternating, REPEATS times:
  seed     the seed's method as its description gives it (no seed code is used): the
           metric names from /api/v1/label/__name__/values, then one query_range per
           metric name per segment of 2,000 s, --n_threads at once, every response
           parsed (json) and kept, then saved as raw JSON, one file per metric.
  edgelab  `python -m edgelab.experiments.extract --sampling 1 --segment_size 2000`
           with the same --n_threads into Parquet (dataset + metadata).
Prints the median wall time, peak RSS and CPU seconds (the child's plus Prometheus's
during the run) of each, the ratios, and RESULT {...} as JSON;
the target is edgelab >= 5x faster.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMETHEUS, PROMTOOL = "/usr/bin/prometheus", "/usr/bin/promtool"
HOUR = 3600


def seed_method(url: str, start: int, end: int, threads: int, out: Path) -> None:
    with urllib.request.urlopen(url + "/api/v1/label/__name__/values?" + urllib.parse.urlencode(
            {"start": start, "end": end}), timeout=60) as response:
        names = json.loads(response.read())["data"]
    windows = [(a, min(a + 2000, end)) for a in range(start, end, 2000)]
    results: dict[str, list[object]] = {name: [] for name in names}
    lock = threading.Lock()

    def one(name: str, a: int, b: int) -> None:
        body = urllib.parse.urlencode({"query": name, "start": a, "end": b, "step": 1}).encode()
        with urllib.request.urlopen(url + "/api/v1/query_range", data=body, timeout=60) as response:
            data = json.loads(response.read())
        with lock:
            results[name].append(data)

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(one, name, a, b) for a, b in windows for name in names]:
            future.result()
    out.mkdir(parents=True, exist_ok=True)
    for name, parts in results.items():
        (out / ("%s.json" % name)).write_text(json.dumps(parts))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat)."""
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(command: list[str], server: int) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB), and CPU seconds of one child process plus what
    Prometheus (pid `server`) used meanwhile: on a shared machine wall time follows
    the load, CPU seconds much less."""
    server_before = cpu_seconds(server)
    began = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("failed: %s" % " ".join(command))
    cpu = usage.ru_utime + usage.ru_stime + cpu_seconds(server) - server_before
    return elapsed, usage.ru_maxrss / 1024, cpu


def backfill(tmp: Path, series: int, metrics: int, start: int) -> Path:
    per_metric = max(1, series // metrics)
    with (tmp / "history.om").open("w") as stream:
        for m in range(metrics):
            name = "bench_f%03d_m%04d_value" % (m // 10, m)
            stream.write("# TYPE %s gauge\n" % name)
            for s in range(per_metric):
                stream.writelines('%s{instance="n%d"} %d %d\n' % (name, s, (m * 7 + s * 13 + i) % 1000, start + i)
                                  for i in range(HOUR))
        stream.write("# EOF\n")
    data = tmp / "data"
    subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", "-q", str(tmp / "history.om"), str(data)],
                   check=True, capture_output=True)
    (tmp / "history.om").unlink()
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=1000, help="metric names the series spread over")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed-child", nargs=4, metavar=("URL", "START", "END", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed_child:
        url, start, end, out = args.seed_child
        seed_method(url, int(start), int(end), args.threads, Path(out))
        return 0
    start = (int(time.time()) - 3 * HOUR) // HOUR * HOUR
    end = start + HOUR - 1
    with tempfile.TemporaryDirectory(prefix="extract-bench-") as name:
        tmp = Path(name)
        began = time.perf_counter()
        data = backfill(tmp, args.series, args.metrics, start)
        print("backfilled %d series x %d points in %.1fs" % (args.series, HOUR, time.perf_counter() - began))
        (tmp / "prometheus.yml").write_text("global:\n  scrape_interval: 1m\n")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = "http://127.0.0.1:%d" % port
        prom = subprocess.Popen([PROMETHEUS, "--config.file", str(tmp / "prometheus.yml"), "--storage.tsdb.path",
                                 str(data), "--storage.tsdb.retention.time", "30d", "--web.listen-address",
                                 "127.0.0.1:%d" % port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    with urllib.request.urlopen(url + "/-/ready", timeout=2):
                        break
                except OSError:
                    time.sleep(0.3)
            seed_runs, edgelab_runs = [], []
            for r in range(args.repeats):
                seed_runs.append(timed([sys.executable, __file__, "--threads", str(args.threads), "--seed-child",
                                        url, str(start), str(end), str(tmp / ("seed%d" % r))], prom.pid))
                edgelab_runs.append(timed([sys.executable, "-m", "edgelab.experiments.extract", "--prometheus", url,
                                           "--start", str(start), "--end", str(end), "--sampling", "1",
                                           "--segment_size", "2000", "--n_threads", str(args.threads),
                                           "--out", str(tmp / ("edgelab%d" % r)), "--no-progress",
                                           "--log-level", "WARNING"], prom.pid))
                print("run %d: seed %.2fs %.0f MiB %.2f CPU-s, edgelab %.2fs %.0f MiB %.2f CPU-s"
                      % (r + 1, *seed_runs[-1], *edgelab_runs[-1]))
            meta = json.loads((tmp / "edgelab0" / "metadata.json").read_text())
            dataset = tmp / "edgelab0" / meta["dataset"]
            seed_bytes = sum(p.stat().st_size for p in (tmp / "seed0").iterdir())
        finally:
            prom.terminate()
            prom.wait(timeout=30)
        seed_s = statistics.median(t for t, _m, _c in seed_runs)
        edgelab_s = statistics.median(t for t, _m, _c in edgelab_runs)
        seed_cpu = statistics.median(c for _t, _m, c in seed_runs)
        edgelab_cpu = statistics.median(c for _t, _m, c in edgelab_runs)
        result = {
            "series": args.series, "metrics": args.metrics, "points": args.series * HOUR, "threads": args.threads,
            "seed_s": round(seed_s, 2), "seed_peak_mib": round(max(m for _t, m, _c in seed_runs)),
            "seed_output_mib": round(seed_bytes / 2**20, 1),
            "edgelab_s": round(edgelab_s, 2), "edgelab_peak_mib": round(max(m for _t, m, _c in edgelab_runs)),
            "edgelab_output_mib": round(dataset.stat().st_size / 2**20, 1), "edgelab_requests": meta["requests"],
            "speedup": round(seed_s / edgelab_s, 2), "seed_cpu_s": round(seed_cpu, 2),
            "edgelab_cpu_s": round(edgelab_cpu, 2), "cpu_ratio": round(seed_cpu / edgelab_cpu, 2),
            "rows": meta["rows"], "columns": meta["series"],
            "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
        }
        print("seed %.2fs (peak %d MiB, %.2f CPU-s), edgelab %.2fs (peak %d MiB, %.2f CPU-s): %.1fx wall, %.1fx CPU; "
              "target >= 5x: %s" % (seed_s, result["seed_peak_mib"], seed_cpu, edgelab_s, result["edgelab_peak_mib"],
                                    edgelab_cpu, result["speedup"], result["cpu_ratio"],
                                    "PASS" if result["speedup"] >= 5 else "FAIL"))
        print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
