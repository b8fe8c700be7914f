"""edgelab cluster agent: tracks its node agents (heartbeats), turns their predictions
into decisions (policy) and applies them (actuator); every decision is a JSON log
line, Prometheus metrics and, when Kafka is configured, an event on a topic.

The IMA (config ima_jid) may send a "scale" command: every active worker is scaled to
its instances through the same actuator (refused when stale or outside the policy's
min..max), the policy continues from there, and the IMA gets a Result with the id.

    edgelab-cluster-agent [--config /etc/edgelab/cluster-agent.yml] [--log-level INFO] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from opentelemetry.metrics import CallbackOptions, Observation

from .. import cli, messages
from ..config import CLUSTER_CONFIG, ClusterConfig, KafkaConfig, load_cluster_config
from ..telemetry import LATENCY_BUCKETS, Telemetry
from ..xmpp import AgentLink, RateLimitedLog, install_signal_handlers, observe
from .actuators import Actuator, Outcome, make_actuator
from .policy import PolicyState, make_policy

if TYPE_CHECKING:
    from ..kafka import KafkaSettings

T = TypeVar("T")

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
    loop, through a bounded queue (the oldest dropped when Kafka is slow or down).

    An event counts as `sent` only when the broker acknowledged it; one the broker
    refused or never acknowledged within delivery_timeout_ms counts as `failed`;
    one pushed out of the full queue as `dropped`. Failures are logged (rate-limited).
    """

    # Bounds for one event's fate: a decision is stale long before kafka-python's
    # default of two minutes.
    PRODUCER_OPTIONS: ClassVar[dict[str, object]] = {
        "request_timeout_ms": 10000, "delivery_timeout_ms": 30000, "max_block_ms": 10000}

    def __init__(self, cfg: KafkaConfig, *, client_id: str = "edgelab-cluster-agent", maxlen: int = 1000,
                 retry_s: float = 10.0, producer_options: dict[str, object] | None = None) -> None:
        self.settings = kafka_settings(cfg, client_id)
        self.topic = cfg.topic
        self.queue: deque[tuple[bytes, bytes]] = deque(maxlen=maxlen)
        self.wake = asyncio.Event()
        self.retry_s = retry_s
        self.connect_timeout_s = 10.0
        self.options: dict[str, Any] = {**self.PRODUCER_OPTIONS, **(producer_options or {})}
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._warn_failed = RateLimitedLog(log)
        self._warn_dropped = RateLimitedLog(log)
        self._warn_connect = RateLimitedLog(log)
        self.producer: Any = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    def put(self, key: str, event: dict[str, Any]) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
            self._warn_dropped.warning("kafka %s: event queue full (%d): dropped the oldest event, %d so far",
                                       self.topic, self.queue.maxlen, self.dropped)
        self.queue.append((key.encode(), json.dumps(event, separators=(",", ":")).encode()))
        self.wake.set()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped}

    def _acknowledged(self, _metadata: Any) -> None:  # kafka-python's I/O thread
        with self._lock:
            self.sent += 1

    def _refused(self, exc: BaseException) -> None:  # kafka-python's I/O thread
        with self._lock:
            self.failed += 1
            failed = self.failed
        self._warn_failed.warning("kafka %s: event not acknowledged: %s (%d failed so far)", self.topic,
                                  str(exc)[:200] or type(exc).__name__, failed)

    def _send(self, key: bytes, value: bytes) -> None:
        future = self.producer.send(key, value)
        future.add_callback(self._acknowledged)
        future.add_errback(self._refused)

    def _connect(self) -> Any:
        from ..kafka import FrameProducer

        if self.settings.security_protocol.endswith("SSL"):
            tls_preflight(self.settings.bootstrap, self.settings.ssl_cafile, self.connect_timeout_s)
        return FrameProducer(self.settings, self.topic, acks=1, **self.options)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        servers = ",".join(self.settings.bootstrap)
        while self.producer is None:
            try:
                self.producer = await in_daemon_thread(self._connect)
                log.info("kafka %s: producing events to %s (%s)", servers, self.topic,
                         self.settings.security_protocol)
            except Exception as exc:
                self._warn_connect.warning("kafka %s: no producer yet (retrying every %gs): %s", servers,
                                           self.retry_s, str(exc)[:200] or type(exc).__name__)
                await asyncio.sleep(self.retry_s)
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                key, value = self.queue.popleft()
                try:
                    await loop.run_in_executor(None, self._send, key, value)
                except Exception as exc:  # refused before it left: too large, buffer full, no metadata
                    self._refused(exc)

    async def close(self, timeout_s: float = 5.0) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.producer is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.producer.close, timeout_s)


def tls_preflight(servers: list[str], cafile: str | None, timeout_s: float) -> None:
    """One TLS handshake (certificate and name verified) with the first bootstrap server
    that completes one within timeout_s; ConnectionError naming each failure otherwise.

    kafka-python's own handshake has no deadline: against a listener that never
    answers it (a PLAINTEXT port, a black hole) it waits for ever."""
    errors = []
    context = ssl.create_default_context(cafile=cafile or None)
    for server in servers:
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s) as raw, \
                    context.wrap_socket(raw, server_hostname=host):
                return
        except (OSError, ValueError) as exc:
            errors.append(f"{server}: {str(exc) or type(exc).__name__}")
    raise ConnectionError("TLS handshake failed: " + "; ".join(errors))


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """fn() in a daemon thread of its own: unlike the loop's executor, the agent's
    shutdown never waits for it (a client stuck in a connection attempt)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        try:
            result: Any = (True, fn())
        except Exception as exc:
            result = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(deliver, *result)

    threading.Thread(target=work, name="edgelab-kafka-connect", daemon=True).start()
    return await future


def kafka_settings(cfg: KafkaConfig, client_id: str) -> KafkaSettings:
    """The client settings of a checked KafkaConfig (config.load_cluster_config)."""
    from ..kafka import KafkaSettings  # kafka-python only when Kafka is configured

    sasl = cfg.security_protocol.startswith("SASL_")
    return KafkaSettings(bootstrap=cfg.servers(), security_protocol=cfg.security_protocol,
                         sasl_mechanism=cfg.sasl_mechanism if sasl else None,
                         sasl_username=cfg.sasl_username if sasl else None,
                         sasl_password=cfg.sasl_password if sasl else None,
                         ssl_cafile=cfg.ssl_cafile or None, client_id=client_id)


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
        peers = {f"{n}@{self.domain}" for n in self.nodes} | ({cfg.ima_jid} if cfg.ima_jid else set())
        self.link = AgentLink(f"{self.jid}/{RESOURCE}", cfg.password, host=cfg.xmpp_host, port=cfg.xmpp_port,
                              ca_file=cfg.ca_file, peers=peers,
                              handler=self.on_message)
        self.actuator = actuator or make_actuator(cfg.actuator, self.link, cfg.xmpp_domain, self.seq)
        self.events: EventSink | None = None
        if cfg.kafka.bootstrap_servers:
            self.events = EventSink(cfg.kafka)
            meter.create_observable_counter("edgelab.cluster_agent.kafka_events", callbacks=[self._observe_events],
                                            description="Decision events to Kafka, by outcome (sent, failed, dropped)")
        observe(self.link, meter, cfg.cluster_name)
        self._tasks: set[asyncio.Task[Any]] = set()

    def _observe_active(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.active_count())

    def _observe_events(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.events is not None:
            for outcome, value in self.events.counts().items():
                yield Observation(value, {"outcome": outcome})

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
        if self.cfg.ima_jid and sender == self.cfg.ima_jid:
            if isinstance(msg, messages.Command):
                self._spawn(self.ima_command(sender, msg))
            else:
                log.debug("ignored %s from the IMA", msg.TYPE)
            return
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
        decision = self.policy.decide(node.policy, pred.value, time.monotonic())
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
            self._spawn(self._actuate(node, decision.target, received, record))
        return record

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def ima_refusal(self, cmd: messages.Command, now: float | None = None) -> str:
        """Why the IMA's scale command cannot be applied; "" when it can."""
        age = (time.time() if now is None else now) - cmd.ts
        if abs(age) > self.cfg.command_max_age:
            return f"stale command: sent {age:.1f}s ago, command_max_age is {self.cfg.command_max_age}s"
        p = self.cfg.policy
        if not p.min_instances <= cmd.instances <= p.max_instances:
            return f"instances {cmd.instances} outside the policy's {p.min_instances}..{p.max_instances}"
        if not any(n.active for n in self.nodes.values()):
            return "no active worker to scale"
        return ""

    async def ima_command(self, sender: str, cmd: messages.Command) -> dict[str, Any]:
        """Scale every active worker to cmd.instances through the actuator, as a policy
        decision would, and answer the IMA with a Result of the command's id."""
        received = time.monotonic()
        reason = self.ima_refusal(cmd)
        record: dict[str, Any] = {"event": "ima_command", "ts": round(time.time(), 3), "id": cmd.id[:80],
                                  "unit": cmd.unit[:80], "target": cmd.instances, "seq": cmd.seq}
        outcomes: list[tuple[str, Outcome]] = []
        if not reason:
            workers = [n for n in self.nodes.values() if n.active]
            outcomes = list(zip([n.name for n in workers],
                                await asyncio.gather(*(self._ima_scale(n, cmd, received, record) for n in workers)),
                                strict=True))
        failed = [(name, o) for name, o in outcomes if not o.ok]
        error = reason or "; ".join(f"{name}: {o.error}" for name, o in failed)[:240]
        reported = [o.instances for _, o in outcomes if o.instances >= 0]
        instances = cmd.instances if outcomes and not failed else min(reported, default=0)
        record.update(ok=not error, instances=instances, error=error, workers=[name for name, _ in outcomes])
        self.decisions.append(record)
        self.m_decisions.add(1, {"action": "ima_command"})
        decision_log.log(logging.WARNING if error else logging.INFO, json.dumps(record, separators=(",", ":")))
        if self.events is not None:
            self.events.put("ima", record)
        self.link.send(sender, messages.Result(**self.seq.stamp(), id=cmd.id, ok=not error, instances=instances,
                                               error=error))
        return record

    async def _ima_scale(self, node: NodeState, cmd: messages.Command, received: float,
                         record: dict[str, Any]) -> Outcome:
        deadline = time.monotonic() + self.actuator_timeout()
        while node.inflight:  # one actuation per worker at a time: wait for the policy's
            if time.monotonic() > deadline:
                return Outcome(False, -1, "a policy actuation is still in flight")
            await asyncio.sleep(0.05)
        # The policy continues from the IMA's level once it is applied; a refused
        # command leaves the policy where it was.
        previous, node.policy = node.policy, self.policy.initial(cmd.instances)
        node.inflight = True
        outcome = await self._actuate(node, cmd.instances, received, record, unit=cmd.unit)
        if not outcome.ok:
            node.policy = previous
        return outcome

    def actuator_timeout(self) -> float:
        return float(getattr(self.actuator, "timeout", self.cfg.actuator.timeout))

    async def _actuate(self, node: NodeState, target: int, received: float, record: dict[str, Any],
                       unit: str = "") -> Outcome:
        try:
            sent = time.monotonic()
            self.m_latency.record(sent - received, {"stage": "sent"})
            outcome: Outcome = await self.actuator.apply(node.name, unit or node.unit, target)
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
            return outcome
        finally:
            node.inflight = False


async def _start(args: argparse.Namespace) -> None:
    agent = ClusterAgent(load_cluster_config(args.config))
    install_signal_handlers(agent.stop_event)
    await agent.run()


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run("edgelab-cluster-agent", _start, argv, default_config=CLUSTER_CONFIG,
                   description="edgelab cluster agent: node agents' predictions -> decisions -> actuator")


if __name__ == "__main__":
    sys.exit(main())
