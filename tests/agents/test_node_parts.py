from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path

import pytest
from edgelab import messages
from edgelab.config import ConfigError, NodeConfig
from edgelab.models import LinearModel
from edgelab.node_agent import NodeAgent, ScaleError, Scaler, Shaper
from edgelab.telemetry import NodeCollector, NodeInstruments, Telemetry, parse_app_metrics
from edgelab.xmpp import BoundedQueue, RateLimitedLog, backoff_delay
from prometheus_client import generate_latest
from support.agenttools import FakeSystemctl


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


def test_a_hung_or_failing_systemctl_is_an_error_not_a_hang(tmp_path: Path) -> None:
    hung = tmp_path / "systemctl-hangs"
    hung.write_text("#!/bin/sh\nexec sleep 30\n")
    hung.chmod(0o755)

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(ScaleError, match=r"systemctl start failed \(124\): systemctl start timed out after 0.3s"):
            await Scaler("edgelab-consumer@", 2, str(hung), timeout=0.3).scale("edgelab-consumer@", 1)
        with pytest.raises(ScaleError, match=r"systemctl start edgelab-bandwidth@s1:2500.service timed out after 0.3s"):
            await Shaper("edgelab-bandwidth@", 100.0, str(hung), timeout=0.3).apply("s1", 2.5)
        assert time.monotonic() - started < 20  # both killed at their timeout, not after sleep's 30 s
        with pytest.raises(ScaleError, match=r"systemctl start edgelab-bandwidth@s1:2500.service failed \(1\)"):
            await Shaper("edgelab-bandwidth@", 100.0, "/bin/false").apply("s1", 2.5)

    asyncio.run(scenario())


@pytest.mark.parametrize(("systemctl", "error"), [("sudo 'systemctl", "No closing quotation"),
                                                  ("   ", "scale_systemctl is empty")])
def test_scaler_refuses_a_systemctl_it_cannot_split(systemctl: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        Scaler("edgelab-consumer@", 2, systemctl)


def node_agent(systemctl: FakeSystemctl, ca_file: str, **kw: object) -> NodeAgent:
    cfg = NodeConfig(node_name="node-a", cluster_name="cluster-a", xmpp_domain="edgelab.test", ca_file=ca_file,
                     scale_systemctl=str(systemctl.path), scale_max_instances=4, **kw)  # type: ignore[arg-type]
    cfg.password = "unused"
    model = LinearModel("c.json", {"format": "edgelab.linear/1", "features": ["cpu_utilisation"], "window": 1,
                                   "coef": [0.0], "intercept": 0.5})
    return NodeAgent(cfg, model=model, serve_metrics=False)


def command(age: float, instances: int = 2) -> messages.Command:
    return messages.Command(agent="cluster-a", ts=time.time() - age, seq=1, id=f"c-{age}", action="scale",
                            unit="edgelab-consumer@", instances=instances)


def test_stale_scale_commands_are_refused_and_answered(systemctl: FakeSystemctl, ca_file: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        agent = node_agent(systemctl, ca_file, command_max_age=10.0)
        try:
            for age in (30.0, -30.0, 3600.0):  # late (offline storage, reconnect queue), or from the future
                await agent.handle_command(command(age))
            assert systemctl.calls() == [] and agent.commands_stale == 3 and agent.commands_done == 0
            results = [messages.decode(body) for _, body in agent.link.queue.items]
            assert all(isinstance(r, messages.Result) and not r.ok and r.error.startswith("stale command: sent")
                       for r in results) and len(results) == 3
            await agent.handle_command(command(1.0, instances=2))  # within command_max_age: applied
            assert systemctl.active() == ["edgelab-consumer@1.service", "edgelab-consumer@2.service"]
            last = messages.decode(agent.link.queue.items[-1][1])
            assert isinstance(last, messages.Result) and last.ok and last.instances == 2
            text = generate_latest(agent.telemetry.registry).decode()
            assert 'edgelab_agent_commands_refused_total{agent="node-a",reason="stale"} 3.0' in text
        finally:
            agent.telemetry.shutdown()

    with caplog.at_level(logging.WARNING, logger="edgelab.node_agent"):
        asyncio.run(scenario())
    refused = [r for r in caplog.records if "refused: stale command" in r.getMessage()]
    assert len(refused) == 1  # three refusals, one warning (rate-limited)


def test_rate_limited_log_counts_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    warn = RateLimitedLog(logging.getLogger("edgelab.test"), interval=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="edgelab.test"):
        assert warn.warning("dropped %s", "a")
        for _ in range(5):
            now[0] += 10.0
            assert not warn.warning("dropped %s", "b")
        now[0] += 10.0
        assert warn.warning("dropped %s", "c")
    assert [r.getMessage() for r in caplog.records] == ["dropped a", "dropped c (5 more since the last)"]


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


def test_bounded_queue_drops_oldest_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    q = BoundedQueue(3, name="xmpp node-a")
    with caplog.at_level(logging.WARNING, logger="edgelab.xmpp"):
        for i in range(5):
            q.put(("to", str(i)))
    assert [b for _, b in q.items] == ["2", "3", "4"] and q.dropped == 2
    assert [r.getMessage() for r in caplog.records] == [
        "xmpp node-a: outgoing queue full (3): dropped the oldest message, 1 dropped so far"]


def test_xmpp_drops_are_exported_as_metrics(systemctl: FakeSystemctl, ca_file: str) -> None:
    agent = node_agent(systemctl, ca_file)
    try:
        for i in range(agent.link.queue.maxlen + 4):
            agent.link.queue.put(("cluster-a@edgelab.test", str(i)))
        agent.link.dropped_foreign, agent.link.dropped_invalid = 2, 7
        text = generate_latest(agent.telemetry.registry).decode()
    finally:
        agent.telemetry.shutdown()
    for reason, value in (("queue_full", 4), ("foreign_sender", 2), ("invalid_message", 7)):
        assert f'edgelab_agent_xmpp_dropped_total{{agent="node-a",reason="{reason}"}} {value}.0' in text
