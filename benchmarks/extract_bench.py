#!/usr/bin/env python3
"""Benchmark of edgelab-extract against seed 004's extraction method, in the same run.

  .venv/bin/python benchmarks/extract_bench.py [--series 1000] [--metrics 1000] [--repeats 3]

Data: SERIES series (spread evenly over METRICS metric names, in families of 10 names)
x 1 h at 1 s, backfilled with promtool into a Prometheus (Debian's /usr/bin/prometheus)
started on loopback for the run.

Methods, each run in its own process (peak RSS from wait4), alternating, REPEATS times:
  seed     seed 004's extractor as it behaves (re-implemented here from what its code
           does; none of it is copied): the metric names from
           /api/v1/label/__name__/values, then a thread per metric name, THREADS at
           once, each sending one GET query_range (step 1s) per window of 2,000 s
           with requests, parsing it with .json() and saving it with
           json.dump(indent=4) as NAME/START-END.json.
  seed_lean
           the same requests made as cheaply as Python allows (urllib POST from a
           pool of THREADS, every answer parsed with json.loads and kept, then one
           compact json.dumps per metric): a stronger baseline than the seed.
  remote_read
           `python -m edgelab.experiments.extract --api remote_read --sampling 1
           --segment_size 2000` with the same --n_threads into Parquet (dataset +
           metadata): the server's stored XOR chunks (streamed remote read), decoded
           and resampled to the grid. The default, --api auto, does this against
           any Prometheus that serves remote read.
  query_range
           the same with --api query_range (JSON range queries, families packed).
Checks that both edgelab datasets are equal and that the seed saved every point,
prints the median wall time, peak RSS and CPU seconds (the child's plus Prometheus's
during the run) of each, the ratios to both baselines and the load average, and
RESULT {...} as JSON; the target is edgelab (its default) >= 5x faster (wall) than the
seed.
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
SEEDS = ("seed", "seed_lean")
METHODS = (*SEEDS, "remote_read", "query_range")
DEFAULT = "remote_read"  # what edgelab-extract's default, --api auto, uses against Prometheus


def seed_windows(start: int, end: int, seconds: int) -> list[tuple[int, int]]:
    """The seed's windows: as many whole windows of `seconds` as fit, then the rest;
    each (a, b) is queried from a to b inclusive, so neighbours share a point."""
    cuts = [seconds] * ((end - start) // seconds)
    if end - start - sum(cuts) > 0:
        cuts.append(end - start - sum(cuts))
    windows, a = [], start
    for cut in cuts:
        windows.append((a, a + cut))
        a += cut
    return windows


def seed_method(url: str, start: int, end: int, threads: int, out: Path) -> None:
    """Seed 004's extractor as it behaves: the names from /api/v1/label/__name__/values,
    then one thread per metric name (at most `threads` at once) that sends, window after
    window, GET query_range?query=NAME&start=A&end=B&step=1s with requests, parses the
    answer with .json() and saves it with json.dump(..., indent=4) to NAME/A-B.json."""
    import requests

    names = requests.get(url + "/api/v1/label/__name__/values", timeout=60).json()["data"]
    windows = seed_windows(start, end, 2000)
    gate = threading.Semaphore(threads)
    failed: list[BaseException] = []

    def metric(name: str) -> None:
        try:
            folder = out / name
            folder.mkdir(parents=True)
            for a, b in windows:
                answer = requests.get("%s/api/v1/query_range?query=%s&start=%d&end=%d&step=1s" % (url, name, a, b),
                                      timeout=60).json()
                with (folder / ("%d-%d.json" % (a, b))).open("w") as stream:
                    json.dump(answer, stream, indent=4)
        except BaseException as exc:  # reported by the main thread
            failed.append(exc)
        finally:
            gate.release()

    workers = []
    for name in names:
        gate.acquire()
        worker = threading.Thread(target=metric, args=(name,))
        workers.append(worker)
        worker.start()
    for worker in workers:
        worker.join()
    if failed:
        raise SystemExit("seed method failed: %s" % failed[0])


def seed_lean(url: str, start: int, end: int, threads: int, out: Path) -> None:
    """The same requests made as cheaply as Python allows (urllib POST from a pool, the
    answers kept, one compact json.dumps per metric): a stronger baseline than the seed."""
    with urllib.request.urlopen(url + "/api/v1/label/__name__/values?" + urllib.parse.urlencode(
            {"start": start, "end": end}), timeout=60) as response:
        names = json.loads(response.read())["data"]
    windows = seed_windows(start, end, 2000)
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
    parser.add_argument("--seed-child", nargs=5, metavar=("VARIANT", "URL", "START", "END", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed_child:
        variant, url, start, end, out = args.seed_child
        (seed_method if variant == "seed" else seed_lean)(url, int(start), int(end), args.threads, Path(out))
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
                    if method in SEEDS:
                        command = [sys.executable, __file__, "--threads", str(args.threads), "--seed-child", method,
                                   url, str(start), str(end), str(tmp / ("%s%d" % (method, r)))]
                    else:
                        command = [sys.executable, "-m", "edgelab.experiments.extract", "--prometheus", url,
                                   "--start", str(start), "--end", str(end), "--sampling", "1", "--segment_size",
                                   "2000", "--n_threads", str(args.threads), "--api", method,
                                   "--out", str(tmp / ("%s%d" % (method, r))), "--no-progress",
                                   "--log-level", "WARNING"]
                    runs[method].append(timed(command, prom.pid))
                print("run %d: %s (load %.1f)" % (r + 1, ", ".join("%s %.2fs %.0f MiB %.2f CPU-s" % (m, *runs[m][-1])
                                                                 for m in METHODS), os.getloadavg()[0]), flush=True)
            edgelab = [m for m in METHODS if m not in SEEDS]
            metas = {m: json.loads((tmp / ("%s0" % m) / "metadata.json").read_text()) for m in edgelab}
            seed_bytes = {m: sum(p.stat().st_size for p in (tmp / ("%s0" % m)).rglob("*.json")) for m in SEEDS}
            seed_files = sum(1 for _p in (tmp / "seed0").rglob("*.json"))
            seed_points = sum(len(item["values"]) for path in (tmp / "seed0").rglob("*.json")
                              for item in json.loads(path.read_text())["data"]["result"])
            windows = seed_windows(start, end, 2000)
            if seed_points != args.series * sum(b - a + 1 for a, b in windows):
                raise SystemExit("the seed saved %d points, not %d" % (seed_points, args.series * sum(
                    b - a + 1 for a, b in windows)))
            sizes = {m: (tmp / ("%s0" % m) / metas[m]["dataset"]).stat().st_size for m in edgelab}
            import pyarrow.parquet as pq

            tables = [pq.read_table(tmp / ("%s0" % m) / metas[m]["dataset"]) for m in edgelab]
            equal = tables[0].equals(tables[1])
        finally:
            prom.terminate()
            prom.wait(timeout=30)
        wall = {m: statistics.median(t for t, _m, _c in runs[m]) for m in METHODS}
        cpu = {m: statistics.median(c for _t, _m, c in runs[m]) for m in METHODS}
        peak = {m: max(mib for _t, mib, _c in runs[m]) for m in METHODS}
        result: dict[str, object] = {"series": args.series, "metrics": args.metrics, "points": args.series * HOUR,
                                     "threads": args.threads, "datasets_equal": equal,
                                     "seed_output_mib": round(seed_bytes["seed"] / 2**20, 1), "seed_files": seed_files,
                                     "seed_lean_output_mib": round(seed_bytes["seed_lean"] / 2**20, 1)}
        for method in METHODS:
            result.update({method + "_s": round(wall[method], 2), method + "_cpu_s": round(cpu[method], 2),
                           method + "_peak_mib": round(peak[method])})
        for method in edgelab:
            result.update({method + "_output_mib": round(sizes[method] / 2**20, 1),
                           method + "_requests": metas[method]["requests"],
                           method + "_speedup": round(wall["seed"] / wall[method], 2),
                           method + "_cpu_ratio": round(cpu["seed"] / cpu[method], 2),
                           method + "_speedup_vs_lean": round(wall["seed_lean"] / wall[method], 2),
                           method + "_cpu_ratio_vs_lean": round(cpu["seed_lean"] / cpu[method], 2)})
        result.update(rows=metas["remote_read"]["rows"], columns=metas["remote_read"]["series"],
                      load_average=[round(x, 2) for x in os.getloadavg()], cpus=os.cpu_count())
        for method in METHODS:
            print("%-12s %6.2fs  peak %4d MiB  %5.2f CPU-s%s" % (
                method, wall[method], peak[method], cpu[method], "" if method in SEEDS else
                "  %.1fx wall, %.1fx CPU vs seed; %.1fx, %.1fx vs seed_lean" % (
                    wall["seed"] / wall[method], cpu["seed"] / cpu[method], wall["seed_lean"] / wall[method],
                    cpu["seed_lean"] / cpu[method])))
        speedup = wall["seed"] / wall[DEFAULT]
        print("datasets equal: %s; target %s (the default) >= 5x the seed (wall): %s"
              % (equal, DEFAULT, "PASS" if speedup >= 5 else "FAIL"))
        print("RESULT " + json.dumps(result))
        if not equal:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
