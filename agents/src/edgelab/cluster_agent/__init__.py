"""edgelab cluster agent: tracks its node agents (heartbeats), turns their predictions
into decisions (policy) and applies them (actuator); every decision is a JSON log
line, Prometheus metrics and, when Kafka is configured, an event on a topic.

    edgelab-cluster-agent [--config /etc/edgelab/cluster-agent.yml] [--log-level INFO]
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from .. import messages
from ..config import CLUSTER_CONFIG, ClusterConfig, ConfigError, load_cluster_config
from ..telemetry import LATENCY_BUCKETS, Telemetry
from ..xmpp import AgentLink, install_signal_handlers
from .actuators import Actuator, Outcome, make_actuator
from .policy import PolicyState, make_policy

log = logging.getLogger("edgelab.cluster_agent")
decision_log = logging.getLogger("edgelab.cluster_agent.decisions")

RESOURCE = "agent"


@dataclass
class NodeState:
    name: str
    active: bool = False
    last_seen: float = 0.0
    instances: int = -1
    unit: str = ""
    policy: PolicyState | None = None
    inflight: bool = False
    last_prediction: float | None = None
    transitions: int = 0


class EventSink:
    """Decision events to Kafka (edgelab.kafka.FrameProducer, acks=1), off the event
    loop, through a bounded queue (oldest dropped when Kafka is slow or down)."""

    def __init__(self, bootstrap: str, topic: str, maxlen: int = 1000) -> None:
        self.bootstrap = [s.strip() for s in bootstrap.split(",") if s.strip()]
        self.topic = topic
        self.queue: deque[tuple[bytes, bytes]] = deque(maxlen=maxlen)
        self.wake = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        self.producer: Any = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    def put(self, key: str, event: dict[str, Any]) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append((key.encode(), json.dumps(event, separators=(",", ":")).encode()))
        self.wake.set()

    def _producer(self, factory: Any, settings: Any) -> Any:
        return factory(settings, self.topic, acks=1)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.producer is None:
            try:
                from ..kafka import FrameProducer, KafkaSettings

                settings = KafkaSettings(bootstrap=self.bootstrap, client_id="edgelab-cluster-agent")
                self.producer = await loop.run_in_executor(None, self._producer, FrameProducer, settings)
            except Exception as exc:
                log.warning("kafka %s: no producer yet: %s", ",".join(self.bootstrap), exc)
                await asyncio.sleep(10)
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                key, value = self.queue.popleft()
                try:
                    await loop.run_in_executor(None, self.producer.send, key, value)
                    self.sent += 1
                except Exception as exc:
                    self.dropped += 1
                    log.warning("kafka event dropped: %s", exc)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.producer is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.producer.close)


class ClusterAgent:
    def __init__(self, cfg: ClusterConfig, *, serve_metrics: bool = True, actuator: Actuator | None = None) -> None:
        self.cfg = cfg
        self.jid = f"{cfg.cluster_name}@{cfg.xmpp_domain}"
        self.nodes = {name.lower(): NodeState(name.lower()) for name in cfg.nodes}
        self.domain = cfg.xmpp_domain.lower()
        self.policy = make_policy(cfg.policy)
        self.seq = messages.Sequencer(cfg.cluster_name)
        self.timeout = cfg.missed_beats * cfg.heartbeat_interval
        self.decisions: deque[dict[str, Any]] = deque(maxlen=1000)
        self.outcomes: deque[dict[str, Any]] = deque(maxlen=1000)
        self.latencies: deque[float] = deque(maxlen=10000)
        self.stop_event = asyncio.Event()
        self.telemetry = Telemetry("edgelab-cluster-agent", cfg.cluster_name, address=cfg.metrics_address,
                                   port=cfg.metrics_port, otlp_endpoint=cfg.telemetry_endpoint,
                                   otlp_interval=cfg.heartbeat_interval, serve=serve_metrics)
        meter = self.telemetry.meter
        self.m_decisions = meter.create_counter("edgelab.cluster_agent.decisions",
                                                description="Scaling decisions, by action")
        self.m_target = meter.create_gauge("edgelab.cluster_agent.target_instances",
                                           description="Consumer instances the policy wants per worker")
        self.m_heartbeat = meter.create_gauge("edgelab.agent.heartbeat_timestamp", unit="s",
                                              description="Unix time of the last heartbeat (sent or received)")
        self.m_latency = meter.create_histogram(
            "edgelab.cluster_agent.decision_latency", unit="s",
            description="Prediction received -> command sent (stage=sent) or acknowledged (stage=acknowledged)",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)
        self.m_actuations = meter.create_counter("edgelab.cluster_agent.actuations",
                                                 description="Actuations, by outcome (ok, failed)")
        meter.create_observable_gauge("edgelab.cluster_agent.nodes_active", callbacks=[self._observe_active],
                                      description="Node agents heard from within missed_beats heartbeats")
        self.link = AgentLink(f"{self.jid}/{RESOURCE}", cfg.password, host=cfg.xmpp_host, port=cfg.xmpp_port,
                              ca_file=cfg.ca_file, peers={f"{n}@{self.domain}" for n in self.nodes},
                              handler=self.on_message)
        self.actuator = actuator or make_actuator(cfg.actuator, self.link, cfg.xmpp_domain, self.seq)
        self.events: EventSink | None = None
        if cfg.kafka.bootstrap_servers:
            self.events = EventSink(cfg.kafka.bootstrap_servers, cfg.kafka.topic)
        self._tasks: set[asyncio.Task[Any]] = set()

    def _observe_active(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.active_count())

    def active_count(self) -> int:
        return sum(1 for n in self.nodes.values() if n.active)

    # -- loops -------------------------------------------------------------
    async def run(self) -> None:
        log.info("cluster agent %s starting: nodes %s, policy %s, actuator %s, metrics :%s", self.jid,
                 ",".join(sorted(self.nodes)) or "-", self.policy.name, self.actuator.name, self.telemetry.port)
        self.link.start()
        if self.events is not None:
            self.events.start()
        watch = asyncio.ensure_future(self._watch())
        try:
            await self.stop_event.wait()
        finally:
            watch.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(watch, *self._tasks, return_exceptions=True)
            if self.events is not None:
                await self.events.close()
            await self.link.stop()
            self.telemetry.shutdown()
            log.info("cluster agent %s stopped", self.jid)

    async def _watch(self) -> None:
        """Marks nodes inactive after missed_beats * heartbeat_interval of silence,
        and stamps the cluster agent's own heartbeat."""
        step = min(1.0, self.cfg.heartbeat_interval / 4)
        last_beat = 0.0
        while True:
            now = time.monotonic()
            self.check_nodes(now)
            if now - last_beat >= self.cfg.heartbeat_interval:
                last_beat = now
                self.m_heartbeat.set(time.time(), {"agent": self.cfg.cluster_name})
            await asyncio.sleep(step)

    def check_nodes(self, now: float) -> None:
        for node in self.nodes.values():
            if node.active and now - node.last_seen > self.timeout:
                node.active = False
                node.transitions += 1
                log.warning("node %s inactive: nothing for %.1fs (%d missed heartbeats)", node.name,
                            now - node.last_seen, self.cfg.missed_beats)

    # -- messages ----------------------------------------------------------
    def on_message(self, sender: str, msg: messages.Message) -> None:
        local, _, domain = sender.partition("@")
        node = self.nodes.get(local)
        if node is None or domain != self.domain:
            return
        received = time.monotonic()
        node.last_seen = received
        if not node.active:
            node.active = True
            node.transitions += 1
            log.info("node %s active", node.name)
        if isinstance(msg, messages.Heartbeat):
            node.instances = msg.instances
            node.unit = msg.unit
            self.m_heartbeat.set(msg.ts, {"agent": node.name})
        elif isinstance(msg, messages.Prediction):
            self.decide(node, msg, received)
        elif isinstance(msg, messages.Result):
            self.actuator.on_result(node.name, msg)
        else:
            log.debug("ignored %s from %s", msg.TYPE, node.name)

    def decide(self, node: NodeState, pred: messages.Prediction, received: float) -> dict[str, Any]:
        node.last_prediction = pred.value
        if node.policy is None:
            node.policy = self.policy.initial(node.instances if node.instances >= 0 else 0)
        before = node.policy.current
        decision = self.policy.decide(node.policy, pred.value)
        record = {"event": "decision", "ts": round(time.time(), 3), "worker": node.name,
                  "action": decision.action, "prediction": round(pred.value, 6), "target": decision.target,
                  "desired": decision.desired, "previous": before, "instances": node.instances,
                  "model": pred.model, "validation_error": pred.validation_error, "seq": pred.seq,
                  "sample_ts": pred.sample_ts}
        self.decisions.append(record)
        self.m_decisions.add(1, {"action": decision.action})
        self.m_target.set(decision.target, {"worker": node.name})
        level = logging.DEBUG if decision.action == "hold" else logging.INFO
        decision_log.log(level, json.dumps(record, separators=(",", ":")))
        if self.events is not None:
            self.events.put(node.name, record)
        if decision.target != node.instances and not node.inflight and node.unit:
            node.inflight = True
            task = asyncio.ensure_future(self._actuate(node, decision.target, received, record))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return record

    async def _actuate(self, node: NodeState, target: int, received: float, record: dict[str, Any]) -> None:
        try:
            sent = time.monotonic()
            self.m_latency.record(sent - received, {"stage": "sent"})
            outcome: Outcome = await self.actuator.apply(node.name, node.unit, target)
            done = time.monotonic()
            latency = done - received
            self.latencies.append(latency)
            self.m_latency.record(latency, {"stage": "acknowledged"})
            self.m_actuations.add(1, {"outcome": "ok" if outcome.ok else "failed"})
            if outcome.instances >= 0:
                node.instances = outcome.instances
            result = {"event": "actuation", "ts": round(time.time(), 3), "worker": node.name, "target": target,
                      "ok": outcome.ok, "instances": outcome.instances, "error": outcome.error,
                      "latency_s": round(latency, 6), "actuator": self.actuator.name, "seq": record["seq"]}
            self.outcomes.append(result)
            decision_log.log(logging.INFO if outcome.ok else logging.WARNING, json.dumps(result, separators=(",", ":")))
            if self.events is not None:
                self.events.put(node.name, result)
        finally:
            node.inflight = False


async def _main(cfg: ClusterConfig) -> None:
    agent = ClusterAgent(cfg)
    install_signal_handlers(agent.stop_event)
    await agent.run()


def main(argv: Sequence[str] | None = None) -> int:
    from ..node_agent import parse_args, setup_logging

    args = parse_args(argv, CLUSTER_CONFIG, "edgelab-cluster-agent")
    setup_logging(args.log_level)
    try:
        cfg = load_cluster_config(args.config)
        asyncio.run(_main(cfg))
    except ConfigError as exc:
        print(f"edgelab-cluster-agent: config error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"edgelab-cluster-agent: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
