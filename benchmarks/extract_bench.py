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
  remote_read
           `python -m edgelab.experiments.extract --api remote_read --sampling 1
           --segment_size 2000` with the same --n_threads into Parquet (dataset +
           metadata): raw samples from /api/v1/read, resampled to the grid.
  query_range
           the same with --api query_range (JSON range queries, families packed).
Checks that both edgelab datasets are equal, prints the median wall time, peak RSS
and CPU seconds (the child's plus Prometheus's during the run) of each, the ratios to
the seed, and RESULT {...} as JSON; the target is edgelab (its default API,
query_range) >= 5x faster than the seed.
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
METHODS = ("seed", "remote_read", "query_range")
DEFAULT = "query_range"  # edgelab-extract's default --api


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
            runs: dict[str, list[tuple[float, float, float]]] = {m: [] for m in METHODS}
            for r in range(args.repeats):
                for method in METHODS:
                    if method == "seed":
                        command = [sys.executable, __file__, "--threads", str(args.threads), "--seed-child",
                                   url, str(start), str(end), str(tmp / ("seed%d" % r))]
                    else:
                        command = [sys.executable, "-m", "edgelab.experiments.extract", "--prometheus", url,
                                   "--start", str(start), "--end", str(end), "--sampling", "1", "--segment_size",
                                   "2000", "--n_threads", str(args.threads), "--api", method,
                                   "--out", str(tmp / ("%s%d" % (method, r))), "--no-progress",
                                   "--log-level", "WARNING"]
                    runs[method].append(timed(command, prom.pid))
                print("run %d: %s" % (r + 1, ", ".join("%s %.2fs %.0f MiB %.2f CPU-s" % (m, *runs[m][-1])
                                                       for m in METHODS)))
            metas = {m: json.loads((tmp / ("%s0" % m) / "metadata.json").read_text()) for m in METHODS[1:]}
            seed_bytes = sum(p.stat().st_size for p in (tmp / "seed0").iterdir())
            sizes = {m: (tmp / ("%s0" % m) / metas[m]["dataset"]).stat().st_size for m in METHODS[1:]}
            import pyarrow.parquet as pq

            tables = [pq.read_table(tmp / ("%s0" % m) / metas[m]["dataset"]) for m in METHODS[1:]]
            equal = tables[0].equals(tables[1])
        finally:
            prom.terminate()
            prom.wait(timeout=30)
        wall = {m: statistics.median(t for t, _m, _c in runs[m]) for m in METHODS}
        cpu = {m: statistics.median(c for _t, _m, c in runs[m]) for m in METHODS}
        peak = {m: max(mib for _t, mib, _c in runs[m]) for m in METHODS}
        result: dict[str, object] = {"series": args.series, "metrics": args.metrics, "points": args.series * HOUR,
                                     "threads": args.threads, "datasets_equal": equal,
                                     "seed_output_mib": round(seed_bytes / 2**20, 1)}
        for method in METHODS:
            result.update({method + "_s": round(wall[method], 2), method + "_cpu_s": round(cpu[method], 2),
                           method + "_peak_mib": round(peak[method])})
        for method in METHODS[1:]:
            result.update({method + "_output_mib": round(sizes[method] / 2**20, 1),
                           method + "_requests": metas[method]["requests"],
                           method + "_speedup": round(wall["seed"] / wall[method], 2),
                           method + "_cpu_ratio": round(cpu["seed"] / cpu[method], 2)})
        result.update(rows=metas["remote_read"]["rows"], columns=metas["remote_read"]["series"],
                      load_average=[round(x, 2) for x in os.getloadavg()], cpus=os.cpu_count())
        for method in METHODS:
            print("%-12s %6.2fs  peak %4d MiB  %5.2f CPU-s%s" % (
                method, wall[method], peak[method], cpu[method], "" if method == "seed" else
                "  %.1fx wall, %.1fx CPU vs seed" % (wall["seed"] / wall[method], cpu["seed"] / cpu[method])))
        speedup = wall["seed"] / wall[DEFAULT]
        print("datasets equal: %s; target %s (the default) >= 5x the seed (wall): %s"
              % (equal, DEFAULT, "PASS" if speedup >= 5 else "FAIL"))
        print("RESULT " + json.dumps(result))
        if not equal:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
