"""Agent settings: a YAML file (rendered by role agents) with the seed's environment
variables applied over it, checked into typed dataclasses.

Any problem (unreadable file, unknown key, wrong type, missing required value, a name
that is not a valid XMPP account or domain, a missing CA file) raises ConfigError
with one line that names the key or the file; the entry points (edgelab.cli) print it
on stderr and exit with code 2. The password comes from `password_file` (or
NODE_PASSWORD / CLUSTER_PASSWORD, removed from the process environment once read)
and is never part of a repr or a log line; Kafka's SASL password comes from
kafka.sasl_password_file only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import math
import os
import re
import shlex
import ssl
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
class AgentConfig:
    """What every agent has: its XMPP account and server, its heartbeat, its metrics."""

    cluster_name: str = ""
    password_file: str = ""
    xmpp_domain: str = ""
    xmpp_host: str = ""
    xmpp_port: int = 5222
    ca_file: str = ""
    heartbeat_interval: float = 5.0
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 0
    telemetry_endpoint: str = ""
    # The IMA's bare JID (localpart@domain): the one sender besides the agents' own
    # peers whose flavor changes are acted on; "" accepts none.
    ima_jid: str = ""
    password: str = field(default="", repr=False, metadata={"internal": True})


@dataclass
class NodeConfig(AgentConfig):
    node_name: str = ""
    metrics_port: int = 9464
    interval: float = 5.0
    local_otel_endpoint: str = ""
    app_process: str = ""
    model_source: str = "online"
    model_window: int = 12
    model_target: str = "cpu_utilisation"
    scale_unit: str = "edgelab-consumer@"
    scale_max_instances: int = 8
    scale_systemctl: str = "systemctl"
    # A scale command older than this (seconds, by its sender's clock) is refused: one
    # delivered late must not undo a newer decision. Keep it <= the cluster agent's
    # actuator.timeout, which covers delivery and the scaling itself.
    command_max_age: float = 10.0
    # A bandwidth message from the IMA starts the oneshot unit
    # <bandwidth_unit><slice>:<rate in kbit/s>.service (with scale_systemctl), which
    # applies the slice's HTB class with tc; rates above bandwidth_max_mbit are refused.
    bandwidth_unit: str = "edgelab-bandwidth@"
    bandwidth_max_mbit: float = 10000.0


@dataclass
class PolicyConfig:
    name: str = "target_instances"
    per_instance: float = 0.25
    min_instances: int = 1
    max_instances: int = 8
    down_after: int = 3
    up_margin: float = 0.0
    # Seconds the policy holds after it scaled a worker (the new instances' start).
    cooldown: float = 15.0


@dataclass
class ActuatorConfig:
    name: str = "xmpp"
    namespace: str = "default"
    deployment: str = ""
    kubeconfig: str = ""
    # Seconds to wait for a worker's result. A scale-down waits for the consumers'
    # graceful stop (their unit's TimeoutStopSec=30: leave the group, commit), which
    # took 20 s on the 6-host lab when five workers scaled down at once; 10 s
    # reported such scale-downs as failed while they completed.
    timeout: float = 40.0


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass
class KafkaConfig:
    bootstrap_servers: str = ""
    topic: str = "edgelab.agent.events"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password_file: str = ""
    ssl_cafile: str = ""
    sasl_password: str = field(default="", repr=False, metadata={"internal": True})

    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]


@dataclass
class ClusterConfig(AgentConfig):
    nodes: list[str] = field(default_factory=list)
    missed_beats: int = 3
    metrics_port: int = 9465
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    actuator: ActuatorConfig = field(default_factory=ActuatorConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    # A scale command from the IMA older than this (seconds, by the IMA's clock) is refused.
    command_max_age: float = 10.0


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


def _forget_password_env(var: str, env: Mapping[str, str]) -> None:
    """Remove the password variable from this process's environment once read, so that
    no child process (systemctl, a model loader) inherits it. os.environ.pop also
    unsets it in the C environ; /proc/PID/environ keeps the start-up copy, readable
    by the same user and root only."""
    if env is os.environ and var in os.environ:
        os.environ.pop(var, None)
        os.unsetenv(var)


def _read_secret(path: str, key: str) -> str:
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(f"cannot read {key} {path}: {reason}") from None
    if not secret:
        raise ConfigError(f"{key} {path} is empty")
    return secret


def _read_password(cfg: AgentConfig, env_var: str) -> None:
    if cfg.password:
        return
    if not cfg.password_file:
        raise ConfigError(f"no password: set password_file or {env_var}")
    cfg.password = _read_secret(cfg.password_file, "password_file")


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


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
# RFC 7622 localparts exclude these characters; whitespace and control characters
# are excluded too (the server would refuse or rewrite them).
_LOCALPART_FORBIDDEN = set("\"&'/:<>@")
LOCALPART_MAX = 256


def check_hostname(where: str, value: str) -> None:
    """A DNS name or an IP address (an XMPP domain, a server host)."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(value)
        return
    if not _HOSTNAME.fullmatch(value):
        raise ConfigError(f"{where} must be a DNS name or an IP address, got {value[:80]!r}")


def check_localpart(where: str, value: str) -> None:
    """An XMPP account name (the part before @ of a JID)."""
    bad = sorted({c for c in value if c in _LOCALPART_FORBIDDEN or c.isspace() or not c.isprintable()})
    if bad or not 1 <= len(value) <= LOCALPART_MAX:
        why = f"contains {''.join(bad)!r}" if bad else f"must be 1-{LOCALPART_MAX} characters"
        raise ConfigError(f"{where} {value[:80]!r} is not an XMPP account name: {why}")


def _check_ca_file(path: str) -> None:
    try:
        ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise ConfigError(f"ca_file {path} does not exist") from None
    except ssl.SSLError:  # an OSError too: before OSError
        raise ConfigError(f"ca_file {path} holds no PEM certificate") from None
    except OSError as exc:
        raise ConfigError(f"cannot read ca_file {path}: {exc.strerror or exc}") from None


def _check_agent(cfg: AgentConfig, env_map: Mapping[str, str], password_var: str, env: Mapping[str, str]) -> None:
    """The checks both agents share (names, server, CA, password, heartbeat, ports)."""
    _apply_env(cfg, env_map, env)
    _forget_password_env(password_var, env)
    _require(cfg, ["cluster_name", "xmpp_domain", "ca_file"], env_map)
    check_localpart("cluster_name", cfg.cluster_name)
    check_hostname("xmpp_domain", cfg.xmpp_domain)
    cfg.xmpp_host = cfg.xmpp_host or cfg.xmpp_domain
    check_hostname("xmpp_host", cfg.xmpp_host)
    _check_ca_file(cfg.ca_file)
    _read_password(cfg, password_var)
    _positive("heartbeat_interval", cfg.heartbeat_interval)
    _check_port("xmpp_port", cfg.xmpp_port)
    _check_port("metrics_port", cfg.metrics_port)
    if cfg.ima_jid:
        cfg.ima_jid = check_bare_jid("ima_jid", cfg.ima_jid)


def check_bare_jid(where: str, value: str) -> str:
    """A bare JID (account@domain, no resource), lower-cased as the agents compare them."""
    local, sep, domain = value.partition("@")
    if not sep or "/" in domain:
        raise ConfigError(f"{where} must be a bare JID (account@domain), got {value[:80]!r}")
    check_localpart(where, local)
    check_hostname(where, domain)
    return value.lower()


def load_node_config(path: str = NODE_CONFIG, env: Mapping[str, str] | None = None) -> NodeConfig:
    env = os.environ if env is None else env
    cfg = _build(NodeConfig, _read_yaml(path))
    _check_agent(cfg, NODE_ENV, "NODE_PASSWORD", env)
    _require(cfg, ["node_name"], NODE_ENV)
    check_localpart("node_name", cfg.node_name)
    _positive("interval", cfg.interval)
    _positive("command_max_age", cfg.command_max_age)
    if not re.fullmatch(r"[A-Za-z0-9:_.\\-]+@", cfg.bandwidth_unit):
        raise ConfigError(f"bandwidth_unit must be a systemd template prefix ending in '@', "
                          f"got {cfg.bandwidth_unit[:80]!r}")
    _positive("bandwidth_max_mbit", cfg.bandwidth_max_mbit)
    if cfg.ima_jid == f"{cfg.cluster_name}@{cfg.xmpp_domain}".lower():
        raise ConfigError("ima_jid must not be the cluster agent's JID")
    if cfg.model_window < 1:
        raise ConfigError(f"model_window must be >= 1, got {cfg.model_window}")
    if not 1 <= cfg.scale_max_instances <= 64:
        raise ConfigError(f"scale_max_instances must be 1..64, got {cfg.scale_max_instances}")
    if not re.fullmatch(r"[A-Za-z0-9:_.\\-]+@", cfg.scale_unit):
        raise ConfigError(f"scale_unit must be a systemd template prefix ending in '@', got {cfg.scale_unit!r}")
    try:
        argv = shlex.split(cfg.scale_systemctl)
    except ValueError as exc:
        raise ConfigError(f"scale_systemctl {cfg.scale_systemctl[:80]!r}: {exc}") from None
    if not argv:
        raise ConfigError("scale_systemctl is empty")
    src = cfg.model_source
    if not (src == "online" or src.startswith("file:") or src.startswith("mlflow:")):
        raise ConfigError(f"model_source must be online, file:PATH or mlflow:URI, got {src!r}")
    return cfg


def _check_kafka(k: KafkaConfig) -> None:
    for server in k.servers():
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"kafka.bootstrap_servers: {server[:80]!r} is not HOST:PORT")
    if k.security_protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(f"kafka.security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, "
                          f"got {k.security_protocol[:40]!r}")
    if k.sasl_mechanism not in SASL_MECHANISMS:
        raise ConfigError(f"kafka.sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)}, "
                          f"got {k.sasl_mechanism[:40]!r}")
    sasl = k.security_protocol.startswith("SASL_")
    tls = k.security_protocol.endswith("SSL")
    if sasl:
        if not k.sasl_username or not k.sasl_password_file:
            raise ConfigError(f"kafka.security_protocol {k.security_protocol} needs kafka.sasl_username "
                              "and kafka.sasl_password_file")
        if k.bootstrap_servers:
            k.sasl_password = _read_secret(k.sasl_password_file, "kafka.sasl_password_file")
    elif k.sasl_username or k.sasl_password_file:
        raise ConfigError(f"kafka.sasl_username and kafka.sasl_password_file need security_protocol "
                          f"SASL_PLAINTEXT or SASL_SSL, not {k.security_protocol}")
    if k.ssl_cafile:
        if not tls:
            raise ConfigError(f"kafka.ssl_cafile needs security_protocol SSL or SASL_SSL, not {k.security_protocol}")
        try:
            ssl.create_default_context(cafile=k.ssl_cafile)
        except FileNotFoundError:
            raise ConfigError(f"kafka.ssl_cafile {k.ssl_cafile} does not exist") from None
        except ssl.SSLError:
            raise ConfigError(f"kafka.ssl_cafile {k.ssl_cafile} holds no PEM certificate") from None
        except OSError as exc:
            raise ConfigError(f"cannot read kafka.ssl_cafile {k.ssl_cafile}: {exc.strerror or exc}") from None


def load_cluster_config(path: str = CLUSTER_CONFIG, env: Mapping[str, str] | None = None) -> ClusterConfig:
    env = os.environ if env is None else env
    cfg = _build(ClusterConfig, _read_yaml(path))
    _check_agent(cfg, CLUSTER_ENV, "CLUSTER_PASSWORD", env)
    for i, name in enumerate(cfg.nodes):
        check_localpart(f"nodes[{i}]", name)
    if cfg.missed_beats < 1:
        raise ConfigError(f"missed_beats must be >= 1, got {cfg.missed_beats}")
    p = cfg.policy
    _positive("policy.per_instance", p.per_instance)
    if not 0 <= p.min_instances <= p.max_instances:
        raise ConfigError(f"policy: need 0 <= min_instances <= max_instances, got {p.min_instances}, {p.max_instances}")
    if p.down_after < 1:
        raise ConfigError(f"policy.down_after must be >= 1, got {p.down_after}")
    if not 0 <= p.cooldown <= 3600:
        raise ConfigError(f"policy.cooldown must be from 0 to 3600 seconds, got {p.cooldown}")
    if cfg.actuator.name == "kubernetes" and not cfg.actuator.deployment:
        raise ConfigError("actuator.deployment is required for the kubernetes actuator")
    _positive("actuator.timeout", cfg.actuator.timeout)
    _positive("command_max_age", cfg.command_max_age)
    if cfg.ima_jid and cfg.ima_jid in {f"{n}@{cfg.xmpp_domain}".lower() for n in cfg.nodes}:
        raise ConfigError(f"ima_jid {cfg.ima_jid!r} is one of the nodes: the IMA needs an account of its own")
    _check_kafka(cfg.kafka)
    return cfg
