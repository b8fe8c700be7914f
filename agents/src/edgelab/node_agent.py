"""edgelab node agent: telemetry -> model -> prediction (XMPP) to the cluster agent,
heartbeats, and "scale" commands applied to local systemd template units.

    edgelab-node-agent [--config /etc/edgelab/node-agent.yml] [--log-level INFO] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import shlex
import sys
import time
from collections.abc import Sequence

from . import cli, messages
from .config import NODE_CONFIG, ConfigError, NodeConfig, load_node_config
from .models import Predictor, load_model
from .telemetry import NodeCollector, NodeInstruments, Telemetry
from .xmpp import AgentLink, RateLimitedLog, install_signal_handlers, observe

log = logging.getLogger("edgelab.node_agent")

RESOURCE = "agent"


class ScaleError(Exception):
    pass


class Scaler:
    """Starts instances 1..N and stops N+1..max of `<unit><i>.service` with systemctl
    (argv lists, no shell)."""

    def __init__(self, unit: str, max_instances: int, systemctl: str = "systemctl", timeout: float = 60.0) -> None:
        if not re.fullmatch(r"[A-Za-z0-9:_.\\-]+@", unit):
            raise ConfigError(f"scale_unit {unit!r} is not a systemd template prefix")
        try:
            self.systemctl = shlex.split(systemctl)
        except ValueError as exc:
            raise ConfigError(f"scale_systemctl {systemctl[:80]!r}: {exc}") from None
        if not self.systemctl:
            raise ConfigError("scale_systemctl is empty")
        self.unit = unit
        self.max_instances = max_instances
        self.timeout = timeout
        self.lock = asyncio.Lock()

    def units(self, first: int, last: int) -> list[str]:
        return [f"{self.unit}{i}.service" for i in range(first, last + 1)]

    async def _run(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *self.systemctl, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return 124, f"systemctl {args[0]} timed out after {self.timeout}s"
        return proc.returncode or 0, out.decode("utf-8", "replace").strip()

    async def active(self) -> int:
        """How many of instances 1..max are active (systemctl is-active)."""
        code, out = await self._run("is-active", *self.units(1, self.max_instances))
        del code  # non-zero when any unit is inactive; the per-unit lines tell
        return sum(1 for line in out.splitlines() if line.strip() == "active")

    async def scale(self, unit: str, instances: int) -> int:
        if unit != self.unit:
            raise ScaleError(f"unit {unit[:80]!r} is not this agent's scale_unit {self.unit!r}")
        if not 0 <= instances <= self.max_instances:
            raise ScaleError(f"instances {instances} outside 0..{self.max_instances}")
        async with self.lock:
            if instances > 0:
                code, out = await self._run("start", *self.units(1, instances))
                if code != 0:
                    raise ScaleError(f"systemctl start failed ({code}): {out[-200:]}")
            if instances < self.max_instances:
                code, out = await self._run("stop", *self.units(instances + 1, self.max_instances))
                if code != 0:
                    raise ScaleError(f"systemctl stop failed ({code}): {out[-200:]}")
            return await self.active()


class NodeAgent:
    def __init__(self, cfg: NodeConfig, *, model: Predictor | None = None, serve_metrics: bool = True,
                 collector: NodeCollector | None = None) -> None:
        self.cfg = cfg
        self.jid = f"{cfg.node_name}@{cfg.xmpp_domain}"
        self.cluster_jid = f"{cfg.cluster_name}@{cfg.xmpp_domain}".lower()
        self.model = model if model is not None else load_model(cfg.model_source, cfg.model_target,
                                                                 cfg.model_window)
        self.scaler = Scaler(cfg.scale_unit, cfg.scale_max_instances, cfg.scale_systemctl)
        self.collector = collector or NodeCollector(cfg.local_otel_endpoint, cfg.app_process)
        self.seq = messages.Sequencer(cfg.node_name)
        self.instances = 0
        self.predictions_sent = 0
        self.heartbeats_sent = 0
        self.commands_done = 0
        self.commands_stale = 0
        self._warn_stale = RateLimitedLog(log)
        self.last_prediction: float | None = None
        self.stop_event = asyncio.Event()
        self.telemetry = Telemetry("edgelab-node-agent", cfg.node_name, address=cfg.metrics_address,
                                   port=cfg.metrics_port, otlp_endpoint=cfg.telemetry_endpoint,
                                   otlp_interval=cfg.interval, serve=serve_metrics)
        self.metrics = NodeInstruments(self.telemetry.meter, cfg.node_name)
        self.m_stale = self.telemetry.meter.create_counter(
            "edgelab.agent.commands_refused", description="Scale commands refused, by reason (stale)")
        self.link = AgentLink(f"{self.jid}/{RESOURCE}", cfg.password, host=cfg.xmpp_host, port=cfg.xmpp_port,
                              ca_file=cfg.ca_file, peers={self.cluster_jid}, handler=self.on_message,
                              subscribe_to={self.cluster_jid}, on_peer_available=self._cluster_available)
        observe(self.link, self.telemetry.meter, cfg.node_name)
        self._beat_task: asyncio.Future[None] | None = None

    # -- loops -------------------------------------------------------------
    async def run(self) -> None:
        log.info("node agent %s starting: cluster %s, model %s, metrics :%s", self.jid, self.cluster_jid,
                 self.model.name, self.telemetry.port)
        try:
            self.instances = await self.scaler.active()
        except OSError as exc:
            log.warning("cannot query %s instances: %s", self.cfg.scale_unit, exc)
        self.link.start()
        tasks = [asyncio.ensure_future(self._every(self.cfg.interval, self.tick)),
                 asyncio.ensure_future(self._every(self.cfg.heartbeat_interval, self.heartbeat))]
        try:
            await self.stop_event.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.link.stop()
            self.telemetry.shutdown()
            log.info("node agent %s stopped", self.jid)

    async def _every(self, interval: float, fn: object) -> None:
        assert callable(fn)
        next_at = time.monotonic()
        while True:
            try:
                result = fn()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("periodic task failed")
            next_at += interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (suspended, overloaded): skip, don't burst
                next_at = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)

    async def tick(self) -> None:
        sample = await asyncio.get_running_loop().run_in_executor(None, self.collector.collect)
        self.metrics.record(sample)
        self.model.update(sample.values)
        value = self.model.predict()
        if value is None:
            return
        self.last_prediction = value
        target = self.model.target
        self.metrics.prediction.set(value, {"agent": self.cfg.node_name, "target": target})
        self.link.send(self.cluster_jid, messages.Prediction(
            **self.seq.stamp(), target=target, value=value, model=self.model.name,
            validation_error=self.model.validation_error, sample_ts=sample.ts))
        self.predictions_sent += 1

    async def heartbeat(self) -> None:
        try:
            self.instances = await self.scaler.active()
        except OSError as exc:
            log.warning("cannot query instances: %s", exc)
        stamp = self.seq.stamp()
        self.link.send(self.cluster_jid, messages.Heartbeat(**stamp, unit=self.cfg.scale_unit,
                                                             instances=self.instances))
        self.metrics.heartbeat.set(stamp["ts"], {"agent": self.cfg.node_name})
        self.metrics.instances.set(self.instances, {"agent": self.cfg.node_name})
        self.heartbeats_sent += 1

    def _cluster_available(self, _peer: str) -> None:
        if self._beat_task is None or self._beat_task.done():
            self._beat_task = asyncio.ensure_future(self.heartbeat())

    # -- commands ----------------------------------------------------------
    def on_message(self, sender: str, msg: messages.Message) -> object:
        if sender != self.cluster_jid:  # AgentLink already filters; belt and braces
            return None
        if isinstance(msg, messages.Command):
            return self.handle_command(msg)
        log.debug("ignored %s message from %s", msg.TYPE, sender)
        return None

    def stale(self, cmd: messages.Command, now: float | None = None) -> str:
        """Why a command is too old (or from too far in the future) to apply; "" if it is not.

        The cluster agent gives up on a command after actuator.timeout; one that arrives
        later (held by the server's offline storage or a reconnect queue) must not
        undo a newer decision."""
        age = (time.time() if now is None else now) - cmd.ts
        if abs(age) <= self.cfg.command_max_age:
            return ""
        return f"stale command: sent {age:.1f}s ago, command_max_age is {self.cfg.command_max_age}s"

    async def handle_command(self, cmd: messages.Command) -> None:
        reason = self.stale(cmd)
        if reason:
            self.commands_stale += 1
            self.m_stale.add(1, {"agent": self.cfg.node_name, "reason": "stale"})
            self._warn_stale.warning("command %s scale %s to %d refused: %s", cmd.id[:40], cmd.unit[:80],
                                     cmd.instances, reason)
            self.link.send(self.cluster_jid, messages.Result(**self.seq.stamp(), id=cmd.id, ok=False,
                                                              instances=self.instances, error=reason))
            return
        ok, error = True, ""
        try:
            self.instances = await self.scaler.scale(cmd.unit, cmd.instances)
            if self.instances != cmd.instances:
                ok, error = False, f"{self.instances} of {cmd.instances} instances active after scaling"
        except (ScaleError, OSError) as exc:
            ok, error = False, str(exc)[:240]
            with contextlib.suppress(OSError):
                self.instances = await self.scaler.active()
        self.commands_done += 1
        log.info("command %s scale %s to %d: ok=%s instances=%d %s", cmd.id, cmd.unit[:80], cmd.instances, ok,
                 self.instances, error)
        self.metrics.instances.set(self.instances, {"agent": self.cfg.node_name})
        self.link.send(self.cluster_jid, messages.Result(**self.seq.stamp(), id=cmd.id, ok=ok,
                                                          instances=self.instances, error=error))


async def _start(args: argparse.Namespace) -> None:
    agent = NodeAgent(load_node_config(args.config))
    install_signal_handlers(agent.stop_event)
    await agent.run()


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run("edgelab-node-agent", _start, argv, default_config=NODE_CONFIG,
                   description="edgelab node agent: telemetry, predictions and scale commands over XMPP")


if __name__ == "__main__":
    sys.exit(main())
