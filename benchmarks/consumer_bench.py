#!/usr/bin/env python3
"""Benchmark of edgelab-consumer with the lab model against a Tansu broker on loopback.

  .venv/bin/python benchmarks/consumer_bench.py [--frames 60] [--frame-size 640x480] [--imgsz 640 320]

For each model input size: the real feeder fills a topic with --frames frames, then one
consumer (one ONNX Runtime thread: one core) processes them. From the published
results: frames/s per core = frames / (last result published - first frame received),
inference time per frame, and the pipeline's overhead share = 1 - (sum of inference
times) / that span (Kafka in and out, frame decoding and letterboxing, box decoding
and NMS, serialisation, commits). The same from CPU time, which a loaded machine
does not distort: frames per CPU second of the consumer process (all its threads,
from the poll that brought the first frame) and overhead = 1 - inference thread CPU / process
CPU. Prints RESULT {...} as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.tansu import MISSING, running_tansu, tansu_binary


def fill(address: str, topic: str, frames: int, frame_size: str, tmp: Path) -> int:
    from edgelab.experiments import feeder

    width, height = (int(v) for v in frame_size.split("x"))
    frame_bytes = width * height * 3 + len(b"P6\n%d %d\n255\n" % (width, height))
    seconds = 5
    mbps = frames * frame_bytes * 8 / 1e6 / seconds
    (tmp / "flat.yml").write_text("[1.0]\n")
    report = tmp / f"{topic}.json"
    assert feeder.main(["--max_mbps", f"{mbps:.3f}", "--duration", str(seconds), "--breakpoints", "1",
                        "--profile", str(tmp / "flat.yml"), "--frame-size", frame_size, "--bootstrap", address,
                        "--topic", topic, "--report", str(report), "--no-progress", "--log-level", "WARNING"]) == 0
    return int(json.loads(report.read_text())["frames_acked"])


def run(address: str, size: int, frames: int, frame_size: str, tmp: Path) -> dict[str, Any]:
    from edgelab.experiments import consumer, labmodel
    from edgelab.kafka import GroupConsumer, KafkaSettings

    topic = f"bench-frames-{size}"
    sent = fill(address, topic, frames, frame_size, tmp)
    model = labmodel.write(tmp / f"lab{size}.onnx", size=size)
    assert consumer.main(["--model", str(model), "--bootstrap", address, "--topic", topic, "--results-topic",
                          f"bench-results-{size}", "--group", f"bench-{size}", "--metrics-port", "0",
                          "--max-frames", str(sent), "--threads", "1", "--log-level", "WARNING",
                          "--report", str(tmp / f"consumer{size}.json")]) == 0
    summary = json.loads((tmp / f"consumer{size}.json").read_text())
    busy_cpu = summary["cpu_seconds_since_first_frame"]
    results: list[dict[str, Any]] = []
    with GroupConsumer(KafkaSettings(bootstrap=[address]), topic=f"bench-results-{size}",
                       group=f"read-{size}-{time.time()}") as reader:
        reader.run(lambda r: results.append(json.loads(r.value)), max_records=sent, timeout_s=60)
    span = max(r["published"] for r in results) - min(r["received"] for r in results)
    inference = [r["inference_end"] - r["inference_start"] for r in results]
    return {"imgsz": size, "frame_size": frame_size, "frames": len(results),
            "frames_per_s_per_core": round(len(results) / span, 2),
            "inference_ms_median": round(statistics.median(inference) * 1000, 1),
            "frame_ms_mean": round(span / len(results) * 1000, 1),
            "overhead_pct": round((1 - sum(inference) / span) * 100, 2),
            "cpu_ms_per_frame": round(busy_cpu / len(results) * 1000, 1),
            "frames_per_cpu_s": round(len(results) / busy_cpu, 2),
            "inference_cpu_ms_per_frame": round(summary["inference_cpu_seconds"] / len(results) * 1000, 1),
            "overhead_cpu_pct": round((1 - summary["inference_cpu_seconds"] / busy_cpu) * 100, 2),
            "detections_per_frame": round(sum(len(r["detections"]) for r in results) / len(results), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--frame-size", default="640x480")
    parser.add_argument("--imgsz", type=int, nargs="+", default=[640, 320])
    args = parser.parse_args()
    binary = tansu_binary()
    if binary is None:
        print(MISSING, file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp, running_tansu(binary) as address:
        for size in args.imgsz:
            row = run(address, size, args.frames, args.frame_size, Path(tmp))
            print(row, flush=True)
            rows.append(row)
    load = os.getloadavg()[0]
    print("RESULT " + json.dumps({"load_average_1m": round(load, 1), "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
