"""edgelab node agent: telemetry -> model -> prediction (XMPP) to the cluster agent,
heartbeats, "scale" commands applied to local systemd template units, and the IMA's
"bandwidth" messages applied as a slice's HTB class (edgelab.bandwidth, through a
oneshot unit: the agent itself holds no capability).

    edgelab-node-agent [--config /etc/edgelab/node-agent.yml] [--log-level INFO] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import shlex
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from . import cli, messages
from .config import NODE_CONFIG, ConfigError, NodeConfig, load_node_config
from .models import Predictor, load_model
from .telemetry import NodeCollector, NodeInstruments, Telemetry
from .xmpp import AgentLink, RateLimitedLog, install_signal_handlers, observe

log = logging.getLogger("edgelab.node_agent")

RESOURCE = "agent"


class ScaleError(Exception):
    pass


async def run_systemctl(systemctl: Sequence[str], args: Sequence[str], timeout: float) -> tuple[int | None, str]:
    """Run systemctl (an argv list, no shell) with args: (exit code, its output
    stripped), or (None, "") when it ran longer than timeout seconds (then killed)."""
    proc = await asyncio.create_subprocess_exec(
        *systemctl, *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return None, ""
    return proc.returncode or 0, out.decode("utf-8", "replace").strip()


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
        code, out = await run_systemctl(self.systemctl, args, self.timeout)
        if code is None:
            return 124, f"systemctl {args[0]} timed out after {self.timeout}s"
        return code, out

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


class Shaper:
    """Applies a slice's bandwidth by starting the oneshot unit
    `<unit><slice>:<kbit>.service` (systemctl start waits for it and fails when tc
    failed). The unit runs edgelab-bandwidth with CAP_NET_ADMIN only; polkit lets the
    agent's user start instances of that template and nothing else about it."""

    SLICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

    def __init__(self, unit: str, max_mbit: float, systemctl: str = "systemctl", timeout: float = 30.0) -> None:
        self.unit = unit
        self.max_mbit = max_mbit
        self.systemctl = shlex.split(systemctl)
        self.timeout = timeout
        self.lock = asyncio.Lock()

    def unit_for(self, slice_id: str, rate_mbit: float) -> str:
        """The unit instance for a slice and rate; ScaleError for what cannot be applied."""
        if not self.SLICE.fullmatch(slice_id):
            raise ScaleError(f"slice {slice_id[:80]!r}: 1-128 letters, digits, '.', '_', '-'")
        kbit = round(rate_mbit * 1000)
        if not 0 < rate_mbit <= self.max_mbit or kbit < 1:
            raise ScaleError(f"rate_mbit {rate_mbit:g} outside 0.001..{self.max_mbit:g}")
        return f"{self.unit}{slice_id}:{kbit}.service"

    async def apply(self, slice_id: str, rate_mbit: float) -> str:
        unit = self.unit_for(slice_id, rate_mbit)
        async with self.lock:
            code, out = await run_systemctl(self.systemctl, ("start", unit), self.timeout)
        if code is None:
            raise ScaleError(f"systemctl start {unit} timed out after {self.timeout}s")
        if code:
            raise ScaleError(f"systemctl start {unit} failed ({code}): {out[-200:]}")
        return unit


class NodeAgent:
    def __init__(self, cfg: NodeConfig, *, model: Predictor | None = None, serve_metrics: bool = True,
                 collector: NodeCollector | None = None) -> None:
        self.cfg = cfg
        self.jid = f"{cfg.node_name}@{cfg.xmpp_domain}"
        self.cluster_jid = f"{cfg.cluster_name}@{cfg.xmpp_domain}".lower()
        self.model = model if model is not None else load_model(cfg.model_source, cfg.model_target,
                                                                 cfg.model_window)
        self.scaler = Scaler(cfg.scale_unit, cfg.scale_max_instances, cfg.scale_systemctl)
        self.shaper = Shaper(cfg.bandwidth_unit, cfg.bandwidth_max_mbit, cfg.scale_systemctl)
        self.bandwidth_done = 0
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
                              ca_file=cfg.ca_file, peers={self.cluster_jid, *([cfg.ima_jid] if cfg.ima_jid else [])},
                              handler=self.on_message,
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
        # Until the agent stops, not only until cancelled: a callee that
        # swallows the CancelledError (seen in CI: a stop that hung for 60 s in
        # run()'s gather) would otherwise keep this loop alive.
        while not self.stop_event.is_set():
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
        if sender == self.cluster_jid and isinstance(msg, messages.Command):
            return self.handle_command(msg)
        if sender == self.cfg.ima_jid and self.cfg.ima_jid and isinstance(msg, messages.Bandwidth):
            return self.handle_bandwidth(sender, msg)
        log.debug("ignored %s message from %s", msg.TYPE, sender)
        return None

    def stale(self, cmd: messages.Command | messages.Bandwidth, now: float | None = None) -> str:
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


    async def handle_bandwidth(self, sender: str, msg: messages.Bandwidth) -> None:
        """Apply the slice's rate and answer the IMA with a Result of the message's id."""
        ok, error = True, ""
        reason = self.stale(msg)
        try:
            if reason:
                raise ScaleError(reason)
            unit = await self.shaper.apply(msg.slice, msg.rate_mbit)
        except (ScaleError, OSError) as exc:
            ok, error, unit = False, str(exc)[:240], ""
        self.bandwidth_done += 1
        log.log(logging.INFO if ok else logging.WARNING, "bandwidth %s slice %s flavor %s %g Mbit/s: ok=%s %s",
                msg.id[:40], msg.slice[:80], msg.flavor[:80], msg.rate_mbit, ok, unit or error)
        self.link.send(sender, messages.Result(**self.seq.stamp(), id=msg.id, ok=ok, instances=self.instances,
                                               error=error))


async def _start(args: argparse.Namespace) -> None:
    agent = NodeAgent(load_node_config(args.config))
    install_signal_handlers(agent.stop_event)
    await agent.run()


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run("edgelab-node-agent", _start, argv, default_config=NODE_CONFIG,
                   description="edgelab node agent: telemetry, predictions and scale commands over XMPP")


# -- the privileged half: edgelab-bandwidth SLICE:KBIT (run by the oneshot unit) ------

BANDWIDTH_INSTANCE = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,127}):([1-9][0-9]{0,7})")


def slice_minor(slice_id: str) -> int:
    """The HTB class minor (and firewall mark) of a slice: stable, 0x10..0xffef."""
    return 0x10 + zlib.crc32(slice_id.encode()) % 0xffe0


def default_interface(route_table: str = "/proc/net/route") -> str:
    """The interface of the IPv4 default route (the host's egress)."""
    try:
        lines = Path(route_table).read_text(encoding="ascii").splitlines()[1:]
    except OSError as exc:
        raise cli.InputError(f"cannot read {route_table}: {exc.strerror or exc}") from None
    for line in lines:
        cols = line.split()
        # Iface Destination Gateway Flags RefCnt Use Metric Mask ...: destination and mask 0.
        if len(cols) > 7 and cols[1] == "00000000" and cols[7] == "00000000":
            return cols[0]
    raise cli.InputError("no IPv4 default route: name the egress interface with --interface")


def tc_commands(current_root: str, interface: str, slice_id: str, kbit: int) -> list[list[str]]:
    """The tc argv lists (without the tc binary) that give the slice an HTB class of
    `kbit` kbit/s on the interface, given `tc qdisc show dev IF root` now: an HTB root
    qdisc 1: whose default class is the slice's (the egress of a host that serves the
    slice, as NECOS shaped it) and the class itself (rate = ceil). The root is kept
    when it already is that qdisc (no interruption on a rate change); an HTB root with
    another default is recreated (the kernel does not change HTB's default in place)."""
    minor = f"{slice_minor(slice_id):x}"
    rate = f"{kbit}kbit"
    root = ["qdisc", "add", "dev", interface, "root", "handle", "1:", "htb", "default", minor]
    words = current_root.split()
    ours = words[:2] == ["qdisc", "htb"] and len(words) > 2 and words[2] == "1:"
    if ours and f"default 0x{minor} " in current_root + " ":
        plan = []
    elif ours:
        plan = [["qdisc", "del", "dev", interface, "root"], root]
    else:
        plan = [["qdisc", "replace", *root[2:]]]
    return [*plan, ["class", "replace", "dev", interface, "parent", "1:", "classid", f"1:{minor}", "htb",
                    "rate", rate, "ceil", rate]]


def _tc(tc: str, argv: list[str]) -> str:
    done = subprocess.run([tc, *argv], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=20, check=False)
    if done.returncode:
        text = " ".join((done.stderr or done.stdout).split())[-200:]
        raise RuntimeError(f"tc {' '.join(argv)} failed ({done.returncode}): {text}")
    return done.stdout


def apply_bandwidth(args: argparse.Namespace) -> None:
    match = BANDWIDTH_INSTANCE.fullmatch(args.instance)
    if match is None:
        raise cli.InputError(f"instance {args.instance[:80]!r} is not SLICE:KBIT (a slice id, a rate in kbit/s)")
    slice_id, kbit = match.group(1), int(match.group(2))
    interface = args.interface or default_interface()
    if not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", interface):
        raise cli.InputError(f"--interface {interface[:40]!r} is not an interface name")
    current = _tc(args.tc, ["qdisc", "show", "dev", interface, "root"])
    for argv in tc_commands(current, interface, slice_id, kbit):
        _tc(args.tc, argv)
    log.info("slice %s: HTB class 1:%x at %d kbit/s on %s", slice_id, slice_minor(slice_id), kbit, interface)


def _bandwidth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("instance", help="SLICE:KBIT, the unit's instance name (%%i)")
    parser.add_argument("--interface", default="", help="egress interface (default: the default route's)")
    parser.add_argument("--tc", default="tc", help="the tc binary (default: tc on PATH)")


def bandwidth_main(argv: Sequence[str] | None = None) -> int:
    return cli.run("edgelab-bandwidth", apply_bandwidth, argv, add_arguments=_bandwidth_arguments,
                   description="apply a slice's HTB class with tc (needs CAP_NET_ADMIN)")


if __name__ == "__main__":
    sys.exit(main())
