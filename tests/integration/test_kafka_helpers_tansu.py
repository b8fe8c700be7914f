"""edgelab.kafka (agents/src/edgelab/kafka.py: the feeder's and consumers' Kafka helpers) against a real
Tansu broker on loopback (the fixture of test_kafka_topic_tansu.py): keyed order per
source, at-least-once hand-over of a closed consumer's partitions within a group."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("kafka", reason="kafka-python is not installed in this Python")
from edgelab.kafka import FrameProducer, GroupConsumer, KafkaSettings
from kafka.admin import KafkaAdminClient
from test_kafka_topic_tansu import broker  # noqa: F401  (the fixture)


def create(broker_address: str, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker_address, client_id="edgelab-it")
    try:
        admin.create_topics({name: {"num_partitions": partitions}})
        admin.wait_for_topics([name], timeout_ms=20000)
    finally:
        admin.close()


def test_keyed_frames_keep_their_order_per_source(broker):
    create(broker, "it.helper.order", 3)
    settings = KafkaSettings(bootstrap=[broker])
    with FrameProducer(settings, "it.helper.order") as producer:
        producer.send_many((b"camera-%d" % (i % 4), b"%d" % i) for i in range(400))
    assert producer.sent == 400
    per_key: dict[bytes, list[int]] = {}
    with GroupConsumer(settings, "it.helper.order", "it-order") as consumer:
        handled = consumer.run(lambda r: per_key.setdefault(r.key, []).append(int(r.value)), max_records=400,
                               timeout_s=60)
    assert handled == 400
    assert sorted(per_key) == [b"camera-%d" % i for i in range(4)]
    for values in per_key.values():
        assert values == sorted(values)


def test_partitions_of_a_closed_consumer_move_to_the_other_without_gaps(broker):
    create(broker, "it.helper.group", 4)
    settings = KafkaSettings(bootstrap=[broker])
    seen: list[int] = []
    lock = threading.Lock()

    def record(r) -> None:
        with lock:
            seen.append(int(r.value))

    first = GroupConsumer(settings, "it.helper.group", "it-group")
    second = GroupConsumer(settings, "it.helper.group", "it-group")
    stop = threading.Event()

    def run_second() -> None:
        while not stop.is_set():
            second.poll_once(record, timeout_ms=200)

    thread = threading.Thread(target=run_second)
    thread.start()
    try:
        with FrameProducer(settings, "it.helper.group") as producer:
            producer.send_many((b"k%d" % (i % 8), b"%d" % i) for i in range(200))
        first.run(record, max_records=50, timeout_s=30)
        first.close()  # leaves the group: its partitions go to the other consumer
        with FrameProducer(settings, "it.helper.group") as producer:
            producer.send_many((b"k%d" % (i % 8), b"%d" % i) for i in range(200, 400))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not set(range(400)) <= set(seen):
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=30)
        second.close()
    assert set(range(400)) <= set(seen), "missing: %s" % sorted(set(range(400)) - set(seen))[:20]
