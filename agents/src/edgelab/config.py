"""Agent settings: a YAML file (rendered by role agents) with the seed's environment
variables applied over it, checked into typed dataclasses.

Any problem (unreadable file, unknown key, wrong type, missing required value) raises
ConfigError with one line that names the key; the entry points print it on stderr and
exit with code 2. The password comes from `password_file` (or NODE_PASSWORD /
CLUSTER_PASSWORD) and is never part of a repr or a log line.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

NODE_CONFIG = "/etc/edgelab/node-agent.yml"
CLUSTER_CONFIG = "/etc/edgelab/cluster-agent.yml"


class ConfigError(Exception):
    """A configuration problem, reported as one line (exit code 2)."""


@dataclass
class NodeConfig:
    node_name: str = ""
    password_file: str = ""
    cluster_name: str = ""
    xmpp_domain: str = ""
    xmpp_host: str = ""
    xmpp_port: int = 5222
    ca_file: str = ""
    interval: float = 5.0
    heartbeat_interval: float = 5.0
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 9464
    telemetry_endpoint: str = ""
    local_otel_endpoint: str = ""
    app_process: str = ""
    model_source: str = "online"
    model_window: int = 12
    model_target: str = "cpu_utilisation"
    scale_unit: str = "edgelab-consumer@"
    scale_max_instances: int = 8
    scale_systemctl: str = "systemctl"
    password: str = field(default="", repr=False, metadata={"internal": True})


@dataclass
class PolicyConfig:
    name: str = "target_instances"
    per_instance: float = 0.25
    min_instances: int = 1
    max_instances: int = 8
    down_after: int = 3
    up_margin: float = 0.0


@dataclass
class ActuatorConfig:
    name: str = "xmpp"
    namespace: str = "default"
    deployment: str = ""
    kubeconfig: str = ""
    timeout: float = 10.0


@dataclass
class KafkaConfig:
    bootstrap_servers: str = ""
    topic: str = "edgelab.agent.events"


@dataclass
class ClusterConfig:
    cluster_name: str = ""
    password_file: str = ""
    xmpp_domain: str = ""
    xmpp_host: str = ""
    xmpp_port: int = 5222
    ca_file: str = ""
    nodes: list[str] = field(default_factory=list)
    heartbeat_interval: float = 5.0
    missed_beats: int = 3
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 9465
    telemetry_endpoint: str = ""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    actuator: ActuatorConfig = field(default_factory=ActuatorConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    password: str = field(default="", repr=False, metadata={"internal": True})


T = TypeVar("T")

NODE_ENV = {
    "NODE_NAME": "node_name",
    "NODE_PASSWORD": "password",
    "CLUSTER_NAME": "cluster_name",
    "EJABBERD_DOMAIN": "xmpp_domain",
    "TELEMETRY_ENDPOINT": "telemetry_endpoint",
    "LOCAL_OTEL_ENDPOINT": "local_otel_endpoint",
}
CLUSTER_ENV = {
    "CLUSTER_NAME": "cluster_name",
    "CLUSTER_PASSWORD": "password",
    "EJABBERD_DOMAIN": "xmpp_domain",
    "TELEMETRY_ENDPOINT": "telemetry_endpoint",
}


def _convert(value: Any, kind: Any, where: str) -> Any:
    origin = get_origin(kind)
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(kind, value, where + ".")
    if origin is list:
        (item,) = get_args(kind)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {kind!r}")  # pragma: no cover


def _build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = get_type_hints(cls)
    public = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in data if k not in public)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(public))})")
    values = {key: _convert(value, hints[key], prefix + key) for key, value in data.items() if value is not None}
    return cls(**values)


def _read_yaml(path: str) -> Mapping[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {path}: expected a mapping at the top level")
    return data


def _apply_env(cfg: Any, mapping: Mapping[str, str], env: Mapping[str, str]) -> None:
    for var, attr in mapping.items():
        value = env.get(var)
        if value:
            setattr(cfg, attr, value)


def _read_password(cfg: NodeConfig | ClusterConfig, env_var: str) -> None:
    if cfg.password:
        return
    if not cfg.password_file:
        raise ConfigError(f"no password: set password_file or {env_var}")
    try:
        cfg.password = Path(cfg.password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read password_file {cfg.password_file}: {exc.strerror or exc}") from None
    if not cfg.password:
        raise ConfigError(f"password_file {cfg.password_file} is empty")


def _require(cfg: Any, names: list[str], env: Mapping[str, str]) -> None:
    hint = {attr: var for var, attr in env.items()}
    for name in names:
        if not getattr(cfg, name):
            extra = f" (or {hint[name]})" if name in hint else ""
            raise ConfigError(f"missing required key {name}{extra}")


def _positive(where: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{where} must be > 0, got {value}")


def _check_port(where: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{where} must be a port number (0-65535), got {value}")


def load_node_config(path: str = NODE_CONFIG, env: Mapping[str, str] | None = None) -> NodeConfig:
    env = os.environ if env is None else env
    cfg = _build(NodeConfig, _read_yaml(path))
    _apply_env(cfg, NODE_ENV, env)
    _require(cfg, ["node_name", "cluster_name", "xmpp_domain", "ca_file"], NODE_ENV)
    _read_password(cfg, "NODE_PASSWORD")
    cfg.xmpp_host = cfg.xmpp_host or cfg.xmpp_domain
    _positive("interval", cfg.interval)
    _positive("heartbeat_interval", cfg.heartbeat_interval)
    _check_port("xmpp_port", cfg.xmpp_port)
    _check_port("metrics_port", cfg.metrics_port)
    if cfg.model_window < 1:
        raise ConfigError(f"model_window must be >= 1, got {cfg.model_window}")
    if not 1 <= cfg.scale_max_instances <= 64:
        raise ConfigError(f"scale_max_instances must be 1..64, got {cfg.scale_max_instances}")
    if not cfg.scale_unit.endswith("@") or "/" in cfg.scale_unit or len(cfg.scale_unit) < 2:
        raise ConfigError(f"scale_unit must be a systemd template prefix ending in '@', got {cfg.scale_unit!r}")
    src = cfg.model_source
    if not (src == "online" or src.startswith("file:") or src.startswith("mlflow:")):
        raise ConfigError(f"model_source must be online, file:PATH or mlflow:URI, got {src!r}")
    return cfg


def load_cluster_config(path: str = CLUSTER_CONFIG, env: Mapping[str, str] | None = None) -> ClusterConfig:
    env = os.environ if env is None else env
    cfg = _build(ClusterConfig, _read_yaml(path))
    _apply_env(cfg, CLUSTER_ENV, env)
    _require(cfg, ["cluster_name", "xmpp_domain", "ca_file"], CLUSTER_ENV)
    _read_password(cfg, "CLUSTER_PASSWORD")
    cfg.xmpp_host = cfg.xmpp_host or cfg.xmpp_domain
    _positive("heartbeat_interval", cfg.heartbeat_interval)
    _check_port("xmpp_port", cfg.xmpp_port)
    _check_port("metrics_port", cfg.metrics_port)
    if cfg.missed_beats < 1:
        raise ConfigError(f"missed_beats must be >= 1, got {cfg.missed_beats}")
    p = cfg.policy
    _positive("policy.per_instance", p.per_instance)
    if not 0 <= p.min_instances <= p.max_instances:
        raise ConfigError(f"policy: need 0 <= min_instances <= max_instances, got {p.min_instances}, {p.max_instances}")
    if p.down_after < 1:
        raise ConfigError(f"policy.down_after must be >= 1, got {p.down_after}")
    if cfg.actuator.name == "kubernetes" and not cfg.actuator.deployment:
        raise ConfigError("actuator.deployment is required for the kubernetes actuator")
    _positive("actuator.timeout", cfg.actuator.timeout)
    return cfg
