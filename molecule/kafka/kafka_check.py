#!/usr/bin/env python3
"""Client-side checks of the kafka scenario, run on the controller with kafka-python.

Subcommands (each prints one JSON object and exits 0 when it could measure;
the playbook asserts on the numbers):

  roundtrip       produce N keyed messages, consume them back in one consumer group
                  spread over two consumers; count per consumer, missing, duplicates
  survivors       what the broker still holds: topic, its end offsets, the group's offsets
  across-restart  one producer and one group consumer that live through a broker
                  restart: N messages before, touch --ready, wait for --signal (the
                  playbook restarts the broker and re-declares the topic meanwhile),
                  then N more through the same producer; counts what the surviving
                  consumer and a consumer started after the restart receive

Every loop is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient


def producer(bootstrap: list[str]) -> KafkaProducer:
    # Not idempotent: on tansu an idempotent producer does not live through a broker restart
    # (its producer id is unknown to the new broker, InitProducerId then fails: see docs/kafka.md).
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, retries=20,
                         retry_backoff_ms=250, request_timeout_ms=10000, client_id="molecule-kafka-producer")


def consumer(bootstrap: list[str], topic: str, group: str, name: str) -> KafkaConsumer:
    return KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, client_id=name,
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         session_timeout_ms=10000, heartbeat_interval_ms=1000, max_poll_interval_ms=30000)


def produce(prod: KafkaProducer, topic: str, start: int, count: int) -> None:
    """Send and wait for every acknowledgement (a failed send raises)."""
    futures = [prod.send(topic, key=b"key-%d" % (i % 37), value=b"msg-%d" % i) for i in range(start, start + count)]
    prod.flush(timeout=30)
    for future in futures:
        future.get(timeout=30)


def roundtrip(args) -> dict:
    prod = producer(args.bootstrap)
    produce(prod, args.topic, 0, args.count)
    prod.close()
    seen: dict[bytes, list[str]] = {}
    partitions: dict[str, set[int]] = {}
    lock = threading.Lock()
    stop = threading.Event()
    started = time.monotonic()

    def run(name: str) -> None:
        cons = consumer(args.bootstrap, args.topic, args.group, name)
        try:
            while not stop.is_set():
                records = cons.poll(timeout_ms=500)
                with lock:
                    for tp, batch in records.items():
                        partitions.setdefault(name, set()).add(tp.partition)
                        for record in batch:
                            seen.setdefault(record.value, []).append(name)
                if records:
                    cons.commit()
        finally:
            cons.close()

    threads = [threading.Thread(target=run, args=("consumer-%d" % i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    # Both consumers must have had a share: wait for all messages, then a little for the group to settle.
    while time.monotonic() - started < args.timeout and len(seen) < args.count:
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    stop.set()
    for t in threads:
        t.join(timeout=30)
    expected = {b"msg-%d" % i for i in range(args.count)}
    return {
        "produced": args.count,
        "consumed_distinct": len(expected & set(seen)),
        "missing": len(expected - set(seen)),
        "duplicates": sum(len(v) - 1 for v in seen.values()),
        "per_consumer": {n: sum(1 for v in seen.values() if v[0] == n) for n in ("consumer-1", "consumer-2")},
        "partitions_per_consumer": {n: sorted(p) for n, p in partitions.items()},
        "seconds": round(elapsed, 2),
    }


def survivors(args) -> dict:
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, client_id="molecule-kafka-admin")
    try:
        topics = admin.list_topics()
        out = {"topics": sorted(topics), "topic_exists": args.topic in topics, "messages": 0, "group_offsets": {}}
        if args.topic in topics:
            # Count by reading from the start (Tansu's end offsets are not record counts).
            cons = KafkaConsumer(bootstrap_servers=args.bootstrap, client_id="molecule-kafka-count")
            try:
                tps = [TopicPartition(args.topic, p) for p in sorted(cons.partitions_for_topic(args.topic) or [])]
                cons.assign(tps)
                cons.seek_to_beginning()
                quiet_until = time.monotonic() + 3
                while time.monotonic() < quiet_until:
                    for batch in cons.poll(timeout_ms=500).values():
                        out["messages"] += len(batch)
                        quiet_until = time.monotonic() + 3
            finally:
                cons.close()
            offsets = admin.list_group_offsets({args.group: None}).get(args.group, {})
            out["group_offsets"] = {str(tp.partition): getattr(meta, "offset", meta) for tp, meta in offsets.items()}
        return out
    finally:
        admin.close()


def across_restart(args) -> dict:
    prod = producer(args.bootstrap)
    cons = consumer(args.bootstrap, args.topic, args.group, "consumer-restart")
    got: set[bytes] = set()
    deadline = time.monotonic() + args.timeout

    def drain(c: KafkaConsumer, expected: set[bytes], seen: set[bytes], limit: float) -> None:
        end = min(deadline, time.monotonic() + limit)
        while not expected <= seen and time.monotonic() < end:
            for batch in c.poll(timeout_ms=500).values():
                seen.update(r.value for r in batch)
            c.commit()

    produce(prod, args.topic, 0, args.count)
    before = {b"msg-%d" % i for i in range(args.count)}
    drain(cons, before, got, args.timeout)
    result: dict = {"before_consumed": len(before & got)}
    Path(args.ready).touch()
    while not Path(args.signal).exists() and time.monotonic() < deadline:
        # Keep polling, as a running consumer does, while the broker goes away and comes back.
        try:
            cons.poll(timeout_ms=500)
        except Exception as e:  # recorded: the client must live through it
            result.setdefault("errors_while_down", []).append(type(e).__name__)
            time.sleep(0.5)
    restarted = time.monotonic()
    after = {b"msg-%d" % i for i in range(args.count, 2 * args.count)}
    sent = False
    while not sent and time.monotonic() < deadline:
        try:
            produce(prod, args.topic, args.count, args.count)  # the same producer object
            sent = True
        except Exception as e:
            result.setdefault("produce_retries", []).append(type(e).__name__)
            time.sleep(1)
    result["after_produced"] = args.count if sent else 0
    result["producer_recovery_seconds"] = round(time.monotonic() - restarted, 2)
    # The consumer that lived through the restart, for a bounded time.
    same: set[bytes] = set()
    drain(cons, after, same, args.settle)
    result["after_consumed_same_consumer"] = len(after & same)
    cons.close()
    # A consumer started anew after the restart, in a group of its own (the surviving consumer
    # has consumed and committed the new messages in its group).
    fresh_started = time.monotonic()
    fresh = consumer(args.bootstrap, args.topic, args.group + "-after-restart", "consumer-fresh")
    seen: set[bytes] = set()
    drain(fresh, after, seen, args.timeout)
    fresh.close()
    result["after_consumed_new_consumer"] = len(after & seen)
    result["new_consumer_seconds"] = round(time.monotonic() - fresh_started, 2)
    prod.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["roundtrip", "survivors", "across-restart"])
    parser.add_argument("--bootstrap", action="append", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", default="molecule-verify")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--ready", help="file touched once the first N messages are through")
    parser.add_argument("--signal", help="file whose appearance means the broker is back")
    parser.add_argument("--settle", type=float, default=20,
                        help="seconds the surviving consumer gets after the restart")
    args = parser.parse_args()
    handler = {"roundtrip": roundtrip, "survivors": survivors, "across-restart": across_restart}[args.command]
    print(json.dumps(handler(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
