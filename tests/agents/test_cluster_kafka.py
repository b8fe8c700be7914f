"""The cluster agent's decision events against a real Kafka wire-protocol broker (Tansu
on loopback): an event counts as sent only once the broker acknowledged it, and
events the broker never acknowledged count as failed, are logged and exported."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator

import pytest
from edgelab.cluster_agent.agent import ClusterAgent, EventSink
from edgelab.config import ClusterConfig, KafkaConfig
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient
from prometheus_client import generate_latest
from support.tansu import MISSING, running_tansu, tansu_binary

TOPIC = "edgelab.agent.events"
# Short bounds so that an unacknowledged event fails within seconds here.
FAST_FAIL = {"request_timeout_ms": 1500, "delivery_timeout_ms": 3000, "max_block_ms": 3000, "retries": 1,
             "reconnect_backoff_max_ms": 200}


@pytest.fixture
def broker() -> Iterator[str]:
    binary = tansu_binary()
    if binary is None:
        pytest.skip(MISSING)
    with running_tansu(binary) as address:
        admin = KafkaAdminClient(bootstrap_servers=address, client_id="edgelab-test")
        try:
            admin.create_topics({TOPIC: {"num_partitions": 1}})
            admin.wait_for_topics([TOPIC], timeout_ms=20000)
        finally:
            admin.close()
        yield address


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def read_topic(address: str, count: int) -> list[tuple[bytes, dict[str, object]]]:
    consumer = KafkaConsumer(TOPIC, bootstrap_servers=address, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=10000)
    try:
        out = []
        for record in consumer:
            out.append((record.key, json.loads(record.value)))
            if len(out) == count:
                break
        return out
    finally:
        consumer.close()


def test_events_count_as_sent_when_the_broker_acknowledged_them(broker: str) -> None:
    async def scenario() -> dict[str, int]:
        sink = EventSink(KafkaConfig(bootstrap_servers=broker, topic=TOPIC))
        sink.start()
        try:
            for i in range(20):
                sink.put(f"node-{i % 2}", {"event": "decision", "seq": i})
            await until(lambda: sink.counts()["sent"] == 20, 30, "20 acknowledged events")
            return sink.counts()
        finally:
            await sink.close()

    assert asyncio.run(scenario()) == {"sent": 20, "failed": 0, "dropped": 0}
    records = read_topic(broker, 20)
    assert sorted(int(str(v["seq"])) for _, v in records) == list(range(20))
    assert {k for k, _ in records} == {b"node-0", b"node-1"}


def test_unacknowledged_events_count_as_failed_and_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    binary = tansu_binary()
    if binary is None:
        pytest.skip(MISSING)

    async def scenario() -> tuple[dict[str, int], dict[str, int]]:
        with running_tansu(binary) as address:
            admin = KafkaAdminClient(bootstrap_servers=address, client_id="edgelab-test")
            admin.create_topics({TOPIC: {"num_partitions": 1}})
            admin.wait_for_topics([TOPIC], timeout_ms=20000)
            admin.close()
            sink = EventSink(KafkaConfig(bootstrap_servers=address, topic=TOPIC), producer_options=FAST_FAIL)
            sink.start()
            sink.put("node-0", {"event": "decision", "seq": 0})
            await until(lambda: sink.counts()["sent"] == 1, 30, "the first event acknowledged")
            before = sink.counts()
        # The broker is gone: these are handed to the producer but never acknowledged.
        try:
            for i in range(1, 6):
                sink.put("node-0", {"event": "decision", "seq": i})
            await until(lambda: sink.counts()["failed"] == 5, 30, "5 failed events")
            return before, sink.counts()
        finally:
            await sink.close(timeout_s=1.0)

    with caplog.at_level(logging.WARNING, logger="edgelab.cluster_agent"):
        before, after = asyncio.run(scenario())
    assert before == {"sent": 1, "failed": 0, "dropped": 0}
    assert after == {"sent": 1, "failed": 5, "dropped": 0}
    warnings = [r.getMessage() for r in caplog.records if "event not acknowledged" in r.getMessage()]
    assert len(warnings) == 1, warnings  # five failures, one line a minute


def test_a_full_queue_drops_the_oldest_and_counts_it() -> None:
    async def scenario() -> tuple[dict[str, int], list[int]]:
        sink = EventSink(KafkaConfig(bootstrap_servers="127.0.0.1:9", topic=TOPIC), maxlen=3)
        for i in range(5):  # not started: nothing leaves the queue
            sink.put("node-0", {"seq": i})
        return sink.counts(), [json.loads(v)["seq"] for _, v in sink.queue]

    counts, left = asyncio.run(scenario())
    assert counts == {"sent": 0, "failed": 0, "dropped": 2} and left == [2, 3, 4]


def test_event_counts_are_exported(ca_file: str) -> None:
    cfg = ClusterConfig(cluster_name="cluster-k", xmpp_domain="edgelab.test", ca_file=ca_file, nodes=["node-k"],
                        kafka=KafkaConfig(bootstrap_servers="127.0.0.1:9", topic=TOPIC))
    cfg.password = "unused"
    agent = ClusterAgent(cfg, serve_metrics=False)
    try:
        assert agent.events is not None
        agent.events.sent, agent.events.failed, agent.events.dropped = 4, 2, 1
        text = generate_latest(agent.telemetry.registry).decode()
    finally:
        agent.telemetry.shutdown()
    for outcome, value in (("sent", 4), ("failed", 2), ("dropped", 1)):
        assert f'edgelab_cluster_agent_kafka_events_total{{outcome="{outcome}"}} {value}.0' in text
    assert 'edgelab_agent_xmpp_dropped_total{agent="cluster-k",reason="queue_full"} 0.0' in text


def test_ssl_settings_are_used_a_plaintext_broker_gets_nothing(broker: str, ca_file: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """security_protocol reaches the client: an SSL producer cannot talk to a PLAINTEXT
    listener, so nothing is sent (and the agent says why), where PLAINTEXT gets through."""
    async def scenario() -> dict[str, int]:
        cfg = KafkaConfig(bootstrap_servers=broker, topic=TOPIC, security_protocol="SSL", ssl_cafile=ca_file)
        sink = EventSink(cfg, retry_s=0.5, producer_options=FAST_FAIL)
        sink.connect_timeout_s = 2.0
        sink.start()
        try:
            sink.put("node-0", {"event": "decision", "seq": 0})
            await until(lambda: any("no producer yet" in r.getMessage() for r in caplog.records), 30,
                        "the SSL producer refused")
            assert sink.producer is None
            refused = next(r.getMessage() for r in caplog.records if "no producer yet" in r.getMessage())
            assert f"TLS handshake failed: {broker}: " in refused and "timed out" in refused
            return sink.counts()
        finally:
            await sink.close(timeout_s=1.0)

    with caplog.at_level(logging.WARNING, logger="edgelab.cluster_agent"):
        counts = asyncio.run(scenario())
    assert counts == {"sent": 0, "failed": 0, "dropped": 0}
    assert read_topic(broker, 1) == []


def test_close_does_not_wait_for_a_connection_attempt(broker: str, ca_file: str) -> None:
    """Stopping the agent while its producer is still connecting (here: a TLS handshake
    that will time out after 8 s) takes well under those 8 s."""
    async def scenario() -> None:
        cfg = KafkaConfig(bootstrap_servers=broker, topic=TOPIC, security_protocol="SSL", ssl_cafile=ca_file)
        sink = EventSink(cfg, producer_options=FAST_FAIL)
        sink.connect_timeout_s = 8.0
        sink.start()
        await asyncio.sleep(0.5)
        await sink.close(timeout_s=1.0)

    start = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - start < 4.0
