"""Actuators: apply a worker's target instance count. Pluggable: implement Actuator and
register it in ACTUATORS.

xmpp        host mode: a "command" to the worker's node agent, which starts/stops
            its consumer units and answers with a "result" (awaited with a timeout)
kubernetes  scale a Deployment to the sum of the workers' targets (kubernetes client,
            optional extra, imported only when this actuator is chosen)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol

from .. import messages
from ..config import ActuatorConfig, ConfigError
from ..xmpp import AgentLink

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    ok: bool
    instances: int
    error: str = ""


class Actuator(Protocol):
    name: str

    async def apply(self, worker: str, unit: str, instances: int) -> Outcome: ...

    def on_result(self, worker: str, result: messages.Result) -> None: ...


class XmppActuator:
    name = "xmpp"

    def __init__(self, cfg: ActuatorConfig, link: AgentLink, domain: str, seq: messages.Sequencer) -> None:
        self.timeout = cfg.timeout
        self.link = link
        self.domain = domain
        self.seq = seq
        self.pending: dict[str, asyncio.Future[messages.Result]] = {}
        self._ids = itertools.count(1)
        self._prefix = os.urandom(3).hex()

    async def apply(self, worker: str, unit: str, instances: int) -> Outcome:
        cmd_id = f"{self._prefix}-{next(self._ids)}"
        fut: asyncio.Future[messages.Result] = asyncio.get_running_loop().create_future()
        self.pending[cmd_id] = fut
        try:
            self.link.send(f"{worker}@{self.domain}", messages.Command(
                **self.seq.stamp(), id=cmd_id, action="scale", unit=unit, instances=instances))
            result = await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError:
            return Outcome(False, -1, f"no result from {worker} within {self.timeout}s")
        finally:
            self.pending.pop(cmd_id, None)
        return Outcome(result.ok, result.instances, result.error)

    def on_result(self, worker: str, result: messages.Result) -> None:
        fut = self.pending.get(result.id)
        if fut is None or fut.done():
            log.warning("result %s from %s matches no pending command", result.id[:40], worker)
            return
        fut.set_result(result)


class KubernetesActuator:
    name = "kubernetes"

    def __init__(self, cfg: ActuatorConfig, api: Any = None) -> None:
        self.namespace = cfg.namespace
        self.deployment = cfg.deployment
        self.targets: dict[str, int] = {}
        if api is None:
            try:
                from kubernetes import client, config  # type: ignore[import-not-found, unused-ignore]
            except ImportError:
                raise ConfigError("actuator kubernetes needs the optional extra: "
                                  "pip install 'edgelab-agents[kubernetes]'") from None
            if cfg.kubeconfig:
                config.load_kube_config(config_file=cfg.kubeconfig)
            else:
                config.load_incluster_config()
            api = client.AppsV1Api()
        self.api = api

    async def apply(self, worker: str, unit: str, instances: int) -> Outcome:
        self.targets[worker] = instances
        replicas = sum(self.targets.values())
        body = {"spec": {"replicas": replicas}}
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.api.patch_namespaced_deployment_scale(self.deployment, self.namespace, body))
        except Exception as exc:
            return Outcome(False, -1, f"scale {self.namespace}/{self.deployment}: {str(exc)[:200]}")
        return Outcome(True, instances)

    def on_result(self, worker: str, result: messages.Result) -> None:
        del worker, result


def make_actuator(cfg: ActuatorConfig, link: AgentLink, domain: str, seq: messages.Sequencer) -> Actuator:
    if cfg.name == "xmpp":
        return XmppActuator(cfg, link, domain, seq)
    if cfg.name == "kubernetes":
        return KubernetesActuator(cfg)
    raise ConfigError(f"unknown actuator.name {cfg.name!r} (known: kubernetes, xmpp)")
