"""How the IMA applies a flavor change (POST /elasticity/slice/{sliceId}/flavor/{flavorId}).
The flavor's `actuator` in the config picks one; each returns an Outcome that the
service records.

consumers   the scale command the cluster agent already sends its node agents
            (edgelab.messages Command, action "scale", the flavor's unit and
            instances), sent from the IMA's own XMPP account to
            xmpp.cluster_agent_jid; a Result with the command's id within `timeout`
            seconds makes the outcome "applied" (or "failed"), none "sent".
bandwidth   a "bandwidth" message (schema edgelab.agent/1; fields id, slice, flavor,
            rate_mbit) to the node agent of each of the slice's hosts; their Results
            are awaited as above.
kubernetes  the replicas of a Deployment, patched through the scale subresource with
            the kubernetes client (the package's `kubernetes` extra).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from .. import messages
from ..messages import Bandwidth
from ..xmpp import AgentLink
from .config import Flavor, ImaConfig

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    status: str  # applied, sent (no answer within the timeout), failed
    detail: str
    targets: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != "failed"


class XmppSender:
    """The IMA's XMPP account: sends commands and matches the Results that come back."""

    def __init__(self, cfg: ImaConfig) -> None:
        x = cfg.xmpp
        self.domain = x.domain
        self.peers = {self.jid_of(h) for s in cfg.slices.values() for h in s.hosts}
        if x.cluster_agent_jid:
            self.peers.add(x.cluster_agent_jid.lower())
        self.seq = messages.Sequencer(x.jid.partition("@")[0])
        self.pending: dict[str, tuple[asyncio.Future[list[messages.Result]], set[str], list[messages.Result]]] = {}
        self._ids = itertools.count(1)
        self._prefix = os.urandom(3).hex()
        self.link = AgentLink(f"{x.jid}/ima", x.password, host=x.server, port=x.port, ca_file=x.ca_file,
                              peers=self.peers, handler=self.on_message)

    def jid_of(self, host: str) -> str:
        return (host if "@" in host else f"{host}@{self.domain}").lower()

    def next_id(self) -> str:
        return f"ima-{self._prefix}-{next(self._ids)}"

    def on_message(self, sender: str, msg: messages.Message) -> None:
        if not isinstance(msg, messages.Result):
            log.debug("ignored %s from %s", msg.TYPE, sender)
            return
        entry = self.pending.get(msg.id)
        if entry is None:
            log.warning("result %s from %s matches no pending command", msg.id[:40], sender)
            return
        future, waiting, results = entry
        if sender in waiting:
            waiting.discard(sender)
            results.append(msg)
        if not waiting and not future.done():
            future.set_result(results)

    async def exchange(self, targets: list[str], build: Any, timeout: float) -> tuple[list[messages.Result], set[str]]:
        """Send build(id) to every target; the Results within timeout and the targets that did not answer."""
        cmd_id = self.next_id()
        future: asyncio.Future[list[messages.Result]] = asyncio.get_running_loop().create_future()
        waiting = set(targets)
        results: list[messages.Result] = []
        self.pending[cmd_id] = (future, waiting, results)
        try:
            for target in targets:
                self.link.send(target, build(cmd_id))
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self.pending.pop(cmd_id, None)
        return list(results), set(waiting)


def _summary(results: list[messages.Result], silent: set[str], online: bool) -> Outcome:
    failed = [r for r in results if not r.ok]
    targets = sorted({r.agent for r in results} | silent)
    if failed:
        return Outcome("failed", "; ".join(f"{r.agent}: {r.error[:200]}" for r in failed), targets)
    if silent:
        where = "" if online else " (XMPP not connected: queued)"
        return Outcome("sent", f"no answer within the timeout from {', '.join(sorted(silent))}{where}", targets)
    return Outcome("applied", "; ".join(f"{r.agent}: {r.instances} instances" for r in results), targets)


async def apply_consumers(xmpp: XmppSender, cluster_agent: str, flavor: Flavor) -> Outcome:
    p = flavor.params
    target = cluster_agent.lower()
    results, silent = await xmpp.exchange(
        [target], lambda cmd_id: messages.Command(**xmpp.seq.stamp(), id=cmd_id, action="scale", unit=p["unit"],
                                                  instances=p["instances"]), p["timeout"])
    return _summary(results, silent, xmpp.link.online.is_set())


async def apply_bandwidth(xmpp: XmppSender, slice_id: str, hosts: list[str], flavor: Flavor) -> Outcome:
    p = flavor.params
    targets = [xmpp.jid_of(h) for h in hosts]
    results, silent = await xmpp.exchange(
        targets, lambda cmd_id: Bandwidth(**xmpp.seq.stamp(), id=cmd_id, slice=slice_id, flavor=flavor.name,
                                          rate_mbit=p["rate_mbit"]), p["timeout"])
    return _summary(results, silent, xmpp.link.online.is_set())


def kubernetes_api(kubeconfig: str) -> Any:
    """An AppsV1Api from a kubeconfig file ("" for the in-cluster service account)."""
    try:
        from kubernetes import client, config  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise RuntimeError("actuator kubernetes needs the optional extra: "
                           "pip install 'edgelab-agents[kubernetes]'") from None
    api_client = config.new_client_from_config(config_file=kubeconfig) if kubeconfig else None
    if api_client is None:
        config.load_incluster_config()
        return client.AppsV1Api()
    return client.AppsV1Api(api_client)


async def apply_kubernetes(flavor: Flavor) -> Outcome:
    p = flavor.params
    name = f"{p['namespace']}/{p['deployment']}"

    def patch() -> None:
        kubernetes_api(p["kubeconfig"]).patch_namespaced_deployment_scale(
            p["deployment"], p["namespace"], {"spec": {"replicas": p["replicas"]}})

    try:
        await asyncio.get_running_loop().run_in_executor(None, patch)
    except Exception as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        status = getattr(exc, "status", None)
        return Outcome("failed", f"scale {name}: {status or ''} {str(reason)[:200]}".replace("  ", " "), [name])
    return Outcome("applied", f"{name} scaled to {p['replicas']} replicas", [name])
