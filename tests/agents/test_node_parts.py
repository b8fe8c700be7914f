from __future__ import annotations

import asyncio
import random

import pytest
from agenttools import FakeSystemctl
from edgelab.node_agent import ScaleError, Scaler
from edgelab.telemetry import NodeCollector, NodeInstruments, Telemetry, parse_app_metrics
from edgelab.xmpp import BoundedQueue, backoff_delay
from prometheus_client import generate_latest


def test_scaler_starts_and_stops_instances(systemctl: FakeSystemctl) -> None:
    async def scenario() -> None:
        scaler = Scaler("edgelab-consumer@", 4, str(systemctl.path))
        assert await scaler.active() == 0
        assert await scaler.scale("edgelab-consumer@", 3) == 3
        assert systemctl.active() == ["edgelab-consumer@1.service", "edgelab-consumer@2.service",
                                      "edgelab-consumer@3.service"]
        assert await scaler.scale("edgelab-consumer@", 1) == 1
        assert systemctl.active() == ["edgelab-consumer@1.service"]
        assert await scaler.scale("edgelab-consumer@", 0) == 0
        assert systemctl.active() == []
        assert systemctl.calls()[-2:] == ["stop " + " ".join(f"edgelab-consumer@{i}.service" for i in (1, 2, 3, 4)),
                                          "is-active " + " ".join(f"edgelab-consumer@{i}.service"
                                                                  for i in (1, 2, 3, 4))]
        n_calls = len(systemctl.calls())
        for unit, count, error in [("sshd@", 1, "not this agent's scale_unit"),
                                   ("edgelab-consumer@; rm -rf /", 1, "not this agent's scale_unit"),
                                   ("edgelab-consumer@", 5, "outside 0..4"),
                                   ("edgelab-consumer@", -1, "outside 0..4")]:
            with pytest.raises(ScaleError, match=error):
                await scaler.scale(unit, count)
        assert len(systemctl.calls()) == n_calls  # refused before running anything

    asyncio.run(scenario())


def test_scaler_reports_systemctl_failure(tmp_path: object) -> None:
    async def scenario() -> None:
        scaler = Scaler("edgelab-consumer@", 2, "/bin/false")
        with pytest.raises(ScaleError, match="systemctl start failed"):
            await scaler.scale("edgelab-consumer@", 1)

    asyncio.run(scenario())


def test_collector_values_are_in_range() -> None:
    collector = NodeCollector()
    first = collector.collect().values
    second = collector.collect().values
    for values in (first, second):
        assert 0.0 <= values["cpu_utilisation"] <= 1.0
        assert 0.0 < values["memory_utilisation"] < 1.0
        assert 0.0 < values["disk_utilisation"] <= 1.0
    assert "network_receive_bytes_rate" not in first and second["network_receive_bytes_rate"] >= 0.0


def test_collector_app_process_stats() -> None:
    import psutil

    me = psutil.Process().name()
    collector = NodeCollector(app_process=me)
    collector.collect()
    values = collector.collect().values
    assert values["app_rss_bytes"] > 1e6 and values["app_cpu_utilisation"] >= 0.0


def test_parse_app_metrics_sums_label_sets() -> None:
    text = ("# TYPE edgelab_consumer_frames_total counter\n"
            'edgelab_consumer_frames_total{topic="a"} 3\n'
            'edgelab_consumer_frames_total{topic="b"} 4\n'
            "up 1\n")
    assert parse_app_metrics(text) == {"app:edgelab_consumer_frames_total": 7.0, "app:up": 1.0}
    assert parse_app_metrics("garbage {{{") == {}


def test_node_metric_names_match_the_contract() -> None:
    tel = Telemetry("t", "node-a", address="127.0.0.1", port=0, serve=False)
    inst = NodeInstruments(tel.meter, "node-a")
    inst.record(NodeCollector().collect())
    inst.heartbeat.set(1700000000.5, {"agent": "node-a"})
    inst.prediction.set(0.5, {"agent": "node-a", "target": "cpu_utilisation"})
    text = generate_latest(tel.registry).decode()
    tel.shutdown()
    assert 'edgelab_agent_heartbeat_timestamp_seconds{agent="node-a"} 1.7000000005e+09' in text
    assert 'edgelab_agent_prediction{agent="node-a",target="cpu_utilisation"} 0.5' in text
    assert 'edgelab_agent_cpu_utilisation{agent="node-a"}' in text
    assert "node=" not in text and "target_info" not in text


def test_backoff_is_capped_with_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, rng=rng) for n in range(12)]
    assert all(d <= 5.0 for d in delays)
    assert 0.125 <= delays[0] <= 0.25
    assert delays[-1] >= 2.5
    assert len({round(backoff_delay(10, rng=rng), 6) for _ in range(20)}) > 10  # jittered


def test_bounded_queue_drops_oldest() -> None:
    q = BoundedQueue(3)
    for i in range(5):
        q.put(("to", str(i)))
    assert [b for _, b in q.items] == ["2", "3", "4"] and q.dropped == 2
