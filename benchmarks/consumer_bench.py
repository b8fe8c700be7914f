#!/usr/bin/env python3
"""Benchmark of edgelab-consumer with the lab model against a Tansu broker on loopback.

  .venv/bin/python benchmarks/consumer_bench.py [--frames 60] [--frame-size 640x480] [--imgsz 640 320]
      [--baseline GIT-REV] [--repeats 2]
  .venv/bin/python benchmarks/consumer_bench.py --rebalance [--repeats 3] [--baseline GIT-REV]

For each model input size the real feeder fills one frames topic with --frames frames;
then each run is one edgelab-consumer process (one ONNX Runtime thread: one core) of
its own group that processes all of them and publishes its results to its own topic.
With --baseline REV the consumer of that commit (its agents/src/edgelab, unpacked by
`git archive` into a temporary directory) runs too, in the same broker on the same
frames, interleaved with the current code (baseline, current, current, baseline, ...).

What is measured, per run:
  frame time    = (last result published - first frame received) / frames: the consumer's
                  wall time per frame from receiving a frame to producing its result
  inference     = the mean ONNX Runtime run (the results' inference_end - inference_start)
  overhead      = frame time - inference: Kafka in and out, frame decoding and
                  letterboxing, box decoding and NMS, serialisation, commits, metrics;
                  overhead_pct = overhead / frame time
  the same in CPU time, which other load on the machine does not distort: the
  consumer process's CPU (all its threads: Kafka's network threads included) from the
  poll that brought the first frame, per frame; inference CPU = the inference
  thread's CPU inside session.run; overhead_cpu_pct = 1 - inference CPU / process CPU.
  frames/s per core = frames per CPU second of the process.
And how the lab model compares with a real detector: its convolutions' GFLOPs against
yolov8n's 8.7 at 640 (Ultralytics' figure; scaled by the input area for other sizes),
with the overhead share a yolov8n would give if it ran at the lab model's FLOP rate
(overhead CPU unchanged, inference CPU scaled by the FLOP ratio): an estimate, labelled
as one. Prints one line per run and RESULT {...} as JSON.

--rebalance measures the group instead: a producer keeps sending small frames (80x60,
20 per second over 4 partitions) while consumer A holds every partition; then B is
started (add), stopped with SIGTERM as systemd stops an instance (remove), C started
and SIGKILLed (a crash: its session has to time out). For each event: the seconds
until the members' logged assignments cover every partition again ("assigned"), and
until every partition produced a result from its new owner ("consumed"), both from
the moment the process was started or signalled; and that every frame sent has a
result (none lost). With --baseline REV the consumer of that commit is measured the
same way after the current one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.tansu import MISSING, running_tansu, tansu_binary

ROOT = Path(__file__).resolve().parent.parent

YOLOV8N_GFLOPS_640 = 8.7  # Ultralytics' model table, yolov8n at 640
CONSUMER = "import sys; from edgelab.experiments.consumer import main; sys.exit(main(sys.argv[1:]))"


def fill(address: str, topic: str, frames: int, frame_size: str, tmp: Path) -> int:
    from edgelab.experiments import feeder

    width, height = (int(v) for v in frame_size.split("x"))
    frame_bytes = width * height * 3 + len(b"P6\n%d %d\n255\n" % (width, height))
    seconds = 5
    mbps = frames * frame_bytes * 8 / 1e6 / seconds
    (tmp / "flat.yml").write_text("[1.0]\n")
    report = tmp / f"{topic}.json"
    code = feeder.main(["--max_mbps", f"{mbps:.3f}", "--duration", str(seconds), "--breakpoints", "1",
                        "--profile", str(tmp / "flat.yml"), "--frame-size", frame_size, "--bootstrap", address,
                        "--topic", topic, "--report", str(report), "--no-progress", "--log-level", "WARNING"])
    if code != 0:
        raise SystemExit(f"consumer_bench: the feeder failed (exit {code})")
    return int(json.loads(report.read_text())["frames_acked"])


def baseline_tree(rev: str, tmp: Path) -> Path:
    """agents/src of commit rev, unpacked into tmp: the PYTHONPATH of the baseline runs."""
    target = tmp / f"baseline-{rev}"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "agents/src/edgelab"], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"consumer_bench: git archive {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "agents" / "src"


def consume(address: str, topic: str, sent: int, model: Path, run_id: str, source: Path, tmp: Path) -> dict[str, Any]:
    """One consumer process (code from source) over the whole topic: its summary and results."""
    from edgelab.kafka import GroupConsumer, KafkaSettings

    report = tmp / f"{run_id}.json"
    env = {**os.environ, "PYTHONPATH": str(source)}
    proc = subprocess.run([sys.executable, "-c", CONSUMER, "--model", str(model), "--bootstrap", address,
                           "--topic", topic, "--results-topic", f"results-{run_id}", "--group", f"group-{run_id}",
                           "--metrics-port", "0", "--max-frames", str(sent), "--threads", "1",
                           "--log-level", "WARNING", "--report", str(report)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"consumer_bench: consumer {run_id} failed: {proc.stderr.strip()[-500:]}")
    results: list[dict[str, Any]] = []
    with GroupConsumer(KafkaSettings(bootstrap=[address]), topic=f"results-{run_id}",
                       group=f"read-{run_id}-{time.time()}") as reader:
        reader.run(lambda r: results.append(json.loads(r.value)), max_records=sent, timeout_s=60)
    return {"summary": json.loads(report.read_text()), "results": results}


def figures(code: str, size: int, lab_gflops: float, run: dict[str, Any]) -> dict[str, Any]:
    summary, results = run["summary"], run["results"]
    n = len(results)
    span = max(r["published"] for r in results) - min(r["received"] for r in results)
    inference = [r["inference_end"] - r["inference_start"] for r in results]
    busy_cpu = summary["cpu_seconds_since_first_frame"]
    inference_cpu = summary["inference_cpu_seconds"]
    overhead_cpu_ms = (busy_cpu - inference_cpu) / n * 1000
    ratio = YOLOV8N_GFLOPS_640 * (size / 640) ** 2 / lab_gflops
    estimated_inference_ms = inference_cpu / n * 1000 * ratio
    return {"code": code, "imgsz": size, "frames": n,
            "frame_ms": round(span / n * 1000, 2),
            "inference_ms_mean": round(statistics.mean(inference) * 1000, 2),
            "overhead_ms": round((span - sum(inference)) / n * 1000, 2),
            "overhead_pct": round((1 - sum(inference) / span) * 100, 2),
            "frames_per_s_wall": round(n / span, 2),
            "cpu_ms_per_frame": round(busy_cpu / n * 1000, 2),
            "inference_cpu_ms_per_frame": round(inference_cpu / n * 1000, 2),
            "overhead_cpu_ms_per_frame": round(overhead_cpu_ms, 2),
            "overhead_cpu_pct": round((1 - inference_cpu / busy_cpu) * 100, 2),
            "frames_per_s_per_core": round(n / busy_cpu, 2),
            "stage_ms_per_frame": {k: round(v / n * 1000, 2) for k, v in summary["stage_seconds"].items()},
            # whole run (start-up included), by thread; absent in consumers that do not report it
            "thread_cpu_ms_per_frame": {k: round(v / n * 1000, 2)
                                        for k, v in summary.get("thread_cpu_seconds", {}).items()},
            "detections_per_frame": round(sum(len(r["detections"]) for r in results) / n, 1),
            "lab_model_gflops": round(lab_gflops, 2), "yolov8n_flops_ratio": round(ratio, 2),
            "yolov8n_estimate_overhead_cpu_pct": round(
                overhead_cpu_ms / (overhead_cpu_ms + estimated_inference_ms) * 100, 2)}


ASSIGNED = re.compile(r": partitions ([0-9,]+|none) of ")
PARTITIONS = 4


class Member:
    """One edgelab-consumer process of the group; the assignments it logs, stamped with
    the (monotonic, epoch) time at which the line arrived."""

    def __init__(self, instance: int, address: str, topic: str, model: Path, source: Path, group: str) -> None:
        self.name = f"edgelab-consumer@{instance}"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONSUMER, "--instance", str(instance), "--model", str(model), "--bootstrap",
             address, "--topic", topic, "--results-topic", f"{topic}-results", "--group", group,
             "--metrics-port", "0", "--log-level", "INFO"],
            env={**os.environ, "PYTHONPATH": str(source)}, stderr=subprocess.PIPE, text=True)
        self.assignments: list[tuple[float, float, frozenset[int]]] = []
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = ASSIGNED.search(line)
            if match:
                held = frozenset() if match[1] == "none" else frozenset(int(p) for p in match[1].split(","))
                self.assignments.append((time.monotonic(), time.time(), held))

    def held(self, since: float) -> tuple[float, float, frozenset[int]] | None:
        """The newest assignment logged after `since` (monotonic), if any."""
        newer = [a for a in self.assignments if a[0] >= since]
        return newer[-1] if newer else None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=60)


def wait_for(members: list[Member], since: float, timeout: float = 60.0) -> dict[int, tuple[Member, float]]:
    """Until the members' assignments logged after `since` split every partition among
    them: each partition's owner and the epoch time of that owner's assignment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = [(m, m.held(since)) for m in members]
        split = [(m, a) for m, a in held if a is not None and a[2]]
        if len(split) == len(members) and sorted(p for _m, a in split for p in a[2]) == list(range(PARTITIONS)):
            return {p: (m, a[1]) for m, a in split for p in a[2]}
        time.sleep(0.05)
    tails = "; ".join(f"{m.name}: {''.join(m.lines[-3:]).strip()[-300:]}" for m in members)
    raise SystemExit(f"consumer_bench: partitions not split among {len(members)} members in {timeout} s ({tails})")


class Feed:
    """Small PPM frames to every partition in turn, `rate` a second, until stopped."""

    def __init__(self, address: str, topic: str, rate: float = 20.0) -> None:
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": address, "linger.ms": 1, "log_level": 3})
        self.topic, self.rate, self.sent = topic, rate, 0
        self.frame = b"P6\n80 60\n255\n" + bytes(range(256)) * (80 * 60 * 3 // 256)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(1 / self.rate):
            self.producer.produce(self.topic, self.frame, f"r-{self.sent}".encode(), partition=self.sent % PARTITIONS)
            self.sent += 1
            self.producer.poll(0)

    def stop(self) -> int:
        self.stopping.set()
        self.thread.join()
        self.producer.flush(30)
        return self.sent


def read_results(address: str, topic: str, expected: int, timeout_s: float) -> list[dict[str, Any]]:
    from edgelab.kafka import GroupConsumer, KafkaSettings

    found: list[dict[str, Any]] = []
    with GroupConsumer(KafkaSettings(bootstrap=[address]), topic=topic, group=f"read-{topic}-{time.time()}") as c:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len({r["frame"] for r in found}) < expected:
            c.poll_once(lambda r: found.append(json.loads(r.value)), timeout_ms=500)
    return found


def consumed_after(results: list[dict[str, Any]], owners: dict[int, tuple[Member, float]],
                   start_epoch: float) -> float | None:
    """Seconds from start_epoch until every partition had a result from its new owner
    received after that owner logged the assignment (None: some partition had none)."""
    latest = 0.0
    for partition, (member, assigned_epoch) in owners.items():
        times = [r["received"] for r in results if r["partition"] == partition and r["consumer"] == member.name
                 and r["received"] >= assigned_epoch]
        if not times:
            return None
        latest = max(latest, min(times) - start_epoch)
    return round(latest, 2)


def rebalance_run(address: str, code: str, source: Path, model: Path, run: int) -> dict[str, Any]:
    """A holds every partition; B added, B stopped (SIGTERM), C added, C killed (SIGKILL)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    topic, group = f"rebalance-{code}-{run}", f"rebalance-{code}-{run}"
    admin = AdminClient({"bootstrap.servers": address, "log_level": 3})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(30)
    feed = Feed(address, topic)
    events: list[dict[str, Any]] = []
    members: list[Member] = []
    try:
        a = Member(1, address, topic, model, source, group)
        members.append(a)
        owners = wait_for([a], a.started)
        events.append({"event": "first member joins", "start": a.started, "epoch": time.time() - (
            time.monotonic() - a.started), "owners": owners})
        for instance, how in ((2, signal.SIGTERM), (3, signal.SIGKILL)):
            time.sleep(3)
            new = Member(instance, address, topic, model, source, group)
            members.append(new)
            epoch = time.time() - (time.monotonic() - new.started)
            owners = wait_for([a, new], new.started)
            events.append({"event": f"add {new.name}", "start": new.started, "epoch": epoch, "owners": owners})
            time.sleep(3)
            start, epoch = time.monotonic(), time.time()
            new.stop(how)
            owners = wait_for([a], start)
            events.append({"event": f"{'stop (SIGTERM)' if how == signal.SIGTERM else 'kill (SIGKILL)'} "
                                    f"{new.name}", "start": start, "epoch": epoch, "owners": owners})
        time.sleep(3)
        sent = feed.stop()
        results = read_results(address, f"{topic}-results", sent, timeout_s=60)
    finally:
        feed.stopping.set()
        for m in members:
            m.stop(signal.SIGTERM)
    rows = []
    for e in events:
        assigned = max(epoch for _m, epoch in e["owners"].values()) - e["epoch"]
        rows.append({"event": e["event"], "assigned_s": round(assigned, 2),
                     "consumed_s": consumed_after(results, e["owners"], e["epoch"])})
    frames = {r["frame"] for r in results}
    missing = [f"r-{i}" for i in range(sent) if f"r-{i}" not in frames]
    warnings = [line.strip()[:200] for m in members for line in m.lines if " WARNING " in line or " ERROR " in line]
    return {"code": code, "run": run, "events": rows, "frames_sent": sent, "results": len(results),
            "duplicates": len(results) - len(frames), "missing": len(missing), "warnings": warnings[:5]}


def rebalance_main(args: argparse.Namespace, address: str, sources: dict[str, Path], tmp: Path) -> list[Any]:
    from edgelab.experiments import labmodel

    model = labmodel.write(tmp / "lab96.onnx", size=96, classes=4)
    rows = []
    for run in range(args.repeats):
        for code, source in sources.items():
            row = rebalance_run(address, code, source, model, run)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--frame-size", default="640x480")
    parser.add_argument("--imgsz", type=int, nargs="+", default=[640, 320])
    parser.add_argument("--baseline", metavar="GIT-REV", help="also run the consumer of this commit, interleaved")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each code per size (default 2)")
    parser.add_argument("--rebalance", action="store_true", help="measure the group's rebalances instead")
    args = parser.parse_args()
    binary = tansu_binary()
    if binary is None:
        print(MISSING, file=sys.stderr)
        return 2
    from edgelab.experiments import labmodel

    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_dir, running_tansu(binary) as address:
        tmp = Path(tmp_dir)
        sources = {"current": ROOT / "agents" / "src"}
        if args.baseline:
            sources["baseline"] = baseline_tree(args.baseline, tmp)
        if args.rebalance:
            rows = rebalance_main(args, address, sources, tmp)
        for size in [] if args.rebalance else args.imgsz:
            topic = f"bench-frames-{size}"
            sent = fill(address, topic, args.frames, args.frame_size, tmp)
            model = labmodel.write(tmp / f"lab{size}.onnx", size=size)
            gflops = labmodel.conv_flops(model) / 1e9
            order = list(sources)
            for repeat in range(args.repeats):
                for code in order if repeat % 2 == 0 else order[::-1]:
                    run = consume(address, topic, sent, model, f"{code}-{size}-{repeat}", sources[code], tmp)
                    row = figures(code, size, gflops, run)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print("RESULT " + json.dumps({"load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
                                  "baseline": args.baseline, "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
