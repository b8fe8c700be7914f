"""The IMA service's settings: /etc/edgelab/ima.yml (rendered by the Ansible role),
with PROMETHEUS_URL, PROMETHEUS_USERNAME, PROMETHEUS_PASSWORD_FILE and
PROMETHEUS_CA_FILE applied over its `prometheus` section.

    listen: "0.0.0.0:8010"
    prometheus: {url, username, password_file, ca_file, query}
    kafka: {bootstrap_servers: [HOST:PORT, ...], security_protocol, sasl_mechanism,
            sasl_username, sasl_password_file, ssl_cafile, topic}
    xmpp: {jid, password_file, server, port, ca_file, cluster_agent_jid}
    state_dir: /var/lib/edgelab-ima
    max_upload_bytes: 10485760
    profile_window: 1h
    profile_step: 15s
    slices: {<sliceId>: {kpi_query: PROMQL, hosts: [node agent names]}}
    flavors: {<flavorId>: {actuator: consumers|bandwidth|kubernetes, ...}}

Flavor parameters per actuator:
    consumers   instances (required, >= 0), unit (default edgelab-consumer@), timeout (s, default 5)
    bandwidth   rate_mbit (required, > 0), timeout (s, default 5); the hosts are the slice's
    kubernetes  deployment and replicas (required), namespace (default "default"), kubeconfig
                (default: in-cluster credentials)

Every problem raises ConfigError with one line naming the key (edgelab.cli prints it
and exits 2). Passwords are read from files only and never part of a repr.
"""

from __future__ import annotations

import importlib.util
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, KafkaConfig, _check_kafka, _read_secret, _read_yaml, check_hostname
from ..learn.duration import parse_duration
from ..learn.errors import LearnError
from .source import ALL_SERIES

ACTUATORS = ("consumers", "bandwidth", "kubernetes")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TOP_KEYS = {"listen", "prometheus", "kafka", "xmpp", "state_dir", "max_upload_bytes", "profile_window",
            "profile_step", "slices", "flavors"}
PROMETHEUS_ENV = {"PROMETHEUS_URL": "url", "PROMETHEUS_USERNAME": "username",
                  "PROMETHEUS_PASSWORD_FILE": "password_file", "PROMETHEUS_CA_FILE": "ca_file"}
FLAVOR_KEYS = {
    "consumers": ({"instances"}, {"unit", "timeout"}),
    "bandwidth": ({"rate_mbit"}, {"timeout"}),
    "kubernetes": ({"deployment", "replicas"}, {"namespace", "kubeconfig"}),
}


@dataclass
class PrometheusSettings:
    url: str = ""
    username: str = ""
    password_file: str = ""
    ca_file: str = ""
    query: str = ALL_SERIES


@dataclass
class XmppSettings:
    jid: str = ""
    password_file: str = ""
    server: str = ""
    port: int = 5222
    ca_file: str = ""
    cluster_agent_jid: str = ""
    password: str = field(default="", repr=False)

    @property
    def domain(self) -> str:
        return self.jid.partition("@")[2]


@dataclass
class Flavor:
    name: str
    actuator: str
    params: dict[str, Any]


@dataclass
class SliceSettings:
    kpi_query: str = ""
    hosts: list[str] = field(default_factory=list)


@dataclass
class ImaConfig:
    listen: str = "0.0.0.0:8010"
    prometheus: PrometheusSettings = field(default_factory=PrometheusSettings)
    kafka: KafkaConfig = field(default_factory=lambda: KafkaConfig(topic="edgelab.metrics.selected"))
    xmpp: XmppSettings = field(default_factory=XmppSettings)
    state_dir: str = "/var/lib/edgelab-ima"
    max_upload_bytes: int = 10 * 2**20
    profile_window: float = 3600.0
    profile_step: float = 15.0
    slices: dict[str, SliceSettings] = field(default_factory=dict)
    flavors: dict[str, Flavor] = field(default_factory=dict)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ConfigError(f"unknown key {where}{unknown[0]} (known: {', '.join(sorted(allowed))})")


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected a whole number >= {minimum}, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"{where}: expected a number > 0, got {value!r}")
    return float(value)


def _duration(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number(value, where)
    try:
        return parse_duration(_string(value, where))
    except LearnError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_name(what: str, value: str) -> None:
    """Slice and flavor ids name files in state_dir: letters, digits, '.', '_', '-'."""
    if not NAME.fullmatch(value):
        raise ValueError(f"{what} {value[:80]!r} must be 1-128 letters, digits, '.', '_' or '-' "
                         "(starting with a letter or digit)")


def _entry(section: str, what: str, name: str, data: Any) -> tuple[str, Mapping[str, Any]]:
    """An entry of flavors or slices: its place for messages and its mapping, once its id is checked."""
    where = f"{section}.{name}"
    try:
        check_name(what, name)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return where, _mapping(data, where)


def _flavor(name: str, data: Any) -> Flavor:
    where, data = _entry("flavors", "flavor id", name, data)
    actuator = data.get("actuator")
    if actuator not in ACTUATORS:
        raise ConfigError(f"{where}.actuator must be one of {', '.join(ACTUATORS)}, got {actuator!r}")
    required, optional = FLAVOR_KEYS[actuator]
    params = {k: v for k, v in data.items() if k != "actuator"}
    _keys(params, required | optional, where + ".")
    missing = sorted(required - set(params))
    if missing:
        raise ConfigError(f"{where}: actuator {actuator} needs {missing[0]}")
    if actuator == "consumers":
        params["instances"] = _integer(params["instances"], where + ".instances", 0)
        params["unit"] = _string(params.get("unit", "edgelab-consumer@"), where + ".unit")
        if not re.fullmatch(r"[A-Za-z0-9:_.\\-]+@", params["unit"]):
            raise ConfigError(f"{where}.unit must be a systemd template prefix ending in '@'")
    if actuator == "bandwidth":
        params["rate_mbit"] = _number(params["rate_mbit"], where + ".rate_mbit")
    if actuator in ("consumers", "bandwidth"):
        params["timeout"] = _number(params.get("timeout", 5.0), where + ".timeout")
    if actuator == "kubernetes":
        params["replicas"] = _integer(params["replicas"], where + ".replicas", 0)
        params["deployment"] = _string(params["deployment"], where + ".deployment")
        params["namespace"] = _string(params.get("namespace", "default"), where + ".namespace")
        params["kubeconfig"] = _string(params.get("kubeconfig", ""), where + ".kubeconfig")
        if not params["deployment"]:
            raise ConfigError(f"{where}.deployment is empty")
        if params["kubeconfig"] and not Path(params["kubeconfig"]).is_file():
            raise ConfigError(f"{where}.kubeconfig {params['kubeconfig']} is not a file")
        if importlib.util.find_spec("kubernetes") is None:
            raise ConfigError(f"{where}: actuator kubernetes needs the package's kubernetes extra "
                              "(pip install 'edgelab-agents[kubernetes]')")
    return Flavor(name, actuator, params)


def _slice(name: str, data: Any) -> SliceSettings:
    where, data = _entry("slices", "slice id", name, data)
    _keys(data, {"kpi_query", "hosts"}, where + ".")
    hosts = data.get("hosts") or []
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise ConfigError(f"{where}.hosts: expected a list of node agent names")
    return SliceSettings(_string(data.get("kpi_query"), where + ".kpi_query"), hosts)


def _kafka(data: Mapping[str, Any]) -> KafkaConfig:
    _keys(data, {"bootstrap_servers", "security_protocol", "sasl_mechanism", "sasl_username",
                 "sasl_password_file", "ssl_cafile", "topic"}, "kafka.")
    servers = data.get("bootstrap_servers") or []
    if isinstance(servers, str):
        servers = [s for s in servers.split(",") if s.strip()]
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        raise ConfigError("kafka.bootstrap_servers: expected a list of HOST:PORT")
    cfg = KafkaConfig(bootstrap_servers=",".join(servers), topic="edgelab.metrics.selected")
    for key in ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password_file", "ssl_cafile", "topic"):
        if data.get(key) is not None:
            setattr(cfg, key, _string(data[key], "kafka." + key))
    if not cfg.topic:
        raise ConfigError("kafka.topic is empty")
    _check_kafka(cfg)
    return cfg


def _xmpp(data: Mapping[str, Any]) -> XmppSettings:
    _keys(data, {"jid", "password_file", "server", "port", "ca_file", "cluster_agent_jid"}, "xmpp.")
    cfg = XmppSettings()
    for key, value in data.items():
        if key != "port":
            setattr(cfg, key, _string(value, "xmpp." + key))
    if "port" in data:
        cfg.port = _integer(data["port"], "xmpp.port", 1)
        if cfg.port > 65535:
            raise ConfigError(f"xmpp.port must be 1-65535, got {cfg.port}")
    if not cfg.jid:
        if any(data.get(k) for k in ("password_file", "cluster_agent_jid")):
            raise ConfigError("xmpp.jid is required when the xmpp section is used")
        return cfg
    local, at, domain = cfg.jid.partition("@")
    if not at or not local or "/" in cfg.jid:
        raise ConfigError(f"xmpp.jid must be a bare JID (name@domain), got {cfg.jid[:80]!r}")
    check_hostname("xmpp.jid's domain", domain)
    cfg.server = cfg.server or domain
    check_hostname("xmpp.server", cfg.server)
    if not cfg.ca_file or not Path(cfg.ca_file).is_file():
        raise ConfigError(f"xmpp.ca_file {cfg.ca_file or '(empty)'} is not a file")
    try:
        ssl.create_default_context(cafile=cfg.ca_file)
    except (ssl.SSLError, OSError):
        raise ConfigError(f"xmpp.ca_file {cfg.ca_file} holds no PEM certificate") from None
    if not cfg.password_file:
        raise ConfigError("xmpp.password_file is required with xmpp.jid")
    cfg.password = _read_secret(cfg.password_file, "xmpp.password_file")
    if cfg.cluster_agent_jid and "@" not in cfg.cluster_agent_jid:
        raise ConfigError(f"xmpp.cluster_agent_jid must be name@domain, got {cfg.cluster_agent_jid[:80]!r}")
    return cfg


def build_config(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ImaConfig:
    """A checked ImaConfig from the YAML's mapping and the environment."""
    env = os.environ if env is None else env
    _keys(data, TOP_KEYS, "")
    cfg = ImaConfig()
    if data.get("listen") is not None:
        cfg.listen = _string(data["listen"], "listen")
    host, _, port = cfg.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen must be HOST:PORT, got {cfg.listen!r}")
    prom = dict(_mapping(data.get("prometheus"), "prometheus"))
    _keys(prom, {"url", "username", "password_file", "ca_file", "query"}, "prometheus.")
    for var, key in PROMETHEUS_ENV.items():
        if env.get(var):
            prom[key] = env[var]
    cfg.prometheus = PrometheusSettings(**{k: _string(v, "prometheus." + k) for k, v in prom.items()})
    cfg.prometheus.query = cfg.prometheus.query or ALL_SERIES
    if not cfg.prometheus.url:
        raise ConfigError("missing required key prometheus.url (or PROMETHEUS_URL)")
    cfg.kafka = _kafka(_mapping(data.get("kafka"), "kafka"))
    cfg.xmpp = _xmpp(_mapping(data.get("xmpp"), "xmpp"))
    if data.get("state_dir") is not None:
        cfg.state_dir = _string(data["state_dir"], "state_dir")
    if not cfg.state_dir:
        raise ConfigError("state_dir is empty")
    if data.get("max_upload_bytes") is not None:
        cfg.max_upload_bytes = _integer(data["max_upload_bytes"], "max_upload_bytes", 1)
    if data.get("profile_window") is not None:
        cfg.profile_window = _duration(data["profile_window"], "profile_window")
    if data.get("profile_step") is not None:
        cfg.profile_step = _duration(data["profile_step"], "profile_step")
    cfg.slices = {str(k): _slice(str(k), v) for k, v in _mapping(data.get("slices"), "slices").items()}
    cfg.flavors = {str(k): _flavor(str(k), v) for k, v in _mapping(data.get("flavors"), "flavors").items()}
    needs_xmpp = sorted(f.name for f in cfg.flavors.values() if f.actuator in ("consumers", "bandwidth"))
    if needs_xmpp and not cfg.xmpp.jid:
        raise ConfigError(f"flavor {needs_xmpp[0]} acts over XMPP: set xmpp.jid, xmpp.password_file, xmpp.ca_file")
    consumers = sorted(f.name for f in cfg.flavors.values() if f.actuator == "consumers")
    if consumers and not cfg.xmpp.cluster_agent_jid:
        raise ConfigError(f"flavor {consumers[0]} (actuator consumers) needs xmpp.cluster_agent_jid")
    return cfg


def load_config(path: str | None, env: Mapping[str, str] | None = None) -> ImaConfig:
    """The settings from a YAML file (None: from the environment and defaults only)."""
    return build_config(_read_yaml(path) if path else {}, env)
