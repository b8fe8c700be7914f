"""The SRO service's settings: /etc/edgelab/sro.yml (rendered by role ima_sro).

    listen: "0.0.0.0:8011"
    ima_url: http://10.213.0.11:8010
    prometheus: {url, username, password_file, ca_file}       # optional
    kafka: {bootstrap_servers, security_protocol, sasl_mechanism, sasl_username,
            sasl_password_file, ssl_cafile, metrics_topic, forecasts_topic}
    mlflow: {tracking_uri, username, password_file, experiment}  # optional
    state_dir: /var/lib/edgelab-sro
    horizon: 30s
    kpi_in_stream: false        # true: the IMA's records carry the KPI too (then an input)
    max_upload_bytes: 10485760
    orchestration:
      <sliceId>: {upper: 180, lower: 30, consecutive: 1, cooldown: 60s,
                  flavors: [small, medium, large]}

Any problem raises ConfigError with one line naming the key (edgelab-sro: exit 2).
Passwords are read from their files at start and never logged.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, _read_secret, _read_yaml
from ..learn.duration import parse_duration
from ..learn.errors import LearnError

SRO_CONFIG = "/etc/edgelab/sro.yml"
METRICS_TOPIC = "edgelab.metrics.selected"
FORECASTS_TOPIC = "edgelab.forecasts"
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


@dataclass
class PrometheusSettings:
    url: str
    username: str = ""
    password_file: str = ""
    ca_file: str = ""


@dataclass
class KafkaSettingsSection:
    bootstrap_servers: list[str]
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""
    metrics_topic: str = METRICS_TOPIC
    forecasts_topic: str = FORECASTS_TOPIC


@dataclass
class MlflowSettings:
    tracking_uri: str
    username: str = ""
    password: str = field(default="", repr=False)
    experiment: str = "edgelab-sro"


@dataclass
class SlicePolicy:
    """Upgrade when `consecutive` forecasts in a row are above `upper`, downgrade when
    as many are below `lower`; after an action none for `cooldown` seconds. flavors:
    from the smallest to the largest."""

    upper: float
    lower: float
    consecutive: int
    cooldown: float
    flavors: list[str]


@dataclass
class SroConfig:
    listen_host: str = "0.0.0.0"
    listen_port: int = 8011
    ima_url: str = ""
    prometheus: PrometheusSettings | None = None
    kafka: KafkaSettingsSection | None = None
    mlflow: MlflowSettings | None = None
    state_dir: str = "/var/lib/edgelab-sro"
    horizon: float = 30.0
    kpi_in_stream: bool = False
    max_upload_bytes: int = 10 * 2**20
    orchestration: dict[str, SlicePolicy] = field(default_factory=dict)


TOP = {"listen", "ima_url", "prometheus", "kafka", "mlflow", "state_dir", "horizon", "kpi_in_stream",
       "max_upload_bytes", "orchestration"}


def _section(data: Mapping[str, Any], key: str, allowed: set[str]) -> Mapping[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError("%s: expected a mapping, got %s" % (key, type(value).__name__))
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise ConfigError("unknown key %s.%s (known: %s)" % (key, unknown[0], ", ".join(sorted(allowed))))
    return value


def _text(section: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
    value = section.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConfigError("%s: expected a string, got %r" % (where, value))
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError("%s: expected a number, got %r" % (where, value))
    return float(value)


def _duration(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        raise ConfigError("%s: expected a duration such as 30s, got %r" % (where, value))
    try:
        return parse_duration(text)
    except LearnError as exc:
        raise ConfigError("%s: %s" % (where, exc)) from None


def _http_url(value: str, where: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("%s must be an http(s) URL, got %r" % (where, value))
    if parts.username or parts.password:
        raise ConfigError("%s: put no credentials in the URL (use the password_file key)" % where)
    return value.rstrip("/")


def _existing(path: str, where: str) -> str:
    if path and not os.access(path, os.R_OK):
        raise ConfigError("%s %s is not a readable file" % (where, path))
    return path


def _listen(value: Any) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError("listen: expected HOST:PORT such as \"0.0.0.0:8011\", got %r" % (value,))
    host, _sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("listen: expected HOST:PORT with a port 1-65535, got %r" % value)
    return host, int(port)


def _policy(slice_id: str, data: Any) -> SlicePolicy:
    where = "orchestration.%s" % slice_id
    if not isinstance(data, Mapping):
        raise ConfigError("%s: expected a mapping" % where)
    allowed = {"upper", "lower", "consecutive", "cooldown", "flavors"}
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ConfigError("unknown key %s.%s (known: %s)" % (where, unknown[0], ", ".join(sorted(allowed))))
    for key in ("upper", "lower", "flavors"):
        if key not in data:
            raise ConfigError("%s needs %s" % (where, key))
    upper, lower = _number(data["upper"], where + ".upper"), _number(data["lower"], where + ".lower")
    if not lower < upper:
        raise ConfigError("%s: lower (%g) must be below upper (%g)" % (where, lower, upper))
    consecutive = data.get("consecutive", 1)
    if isinstance(consecutive, bool) or not isinstance(consecutive, int) or consecutive < 1:
        raise ConfigError("%s.consecutive must be a whole number >= 1, got %r" % (where, consecutive))
    cooldown = _duration(data.get("cooldown", "60s"), where + ".cooldown")
    flavors = data["flavors"]
    if (not isinstance(flavors, list) or len(flavors) < 2 or not all(isinstance(f, str) and f for f in flavors)
            or len(set(flavors)) != len(flavors)):
        raise ConfigError("%s.flavors must list at least two distinct flavor names, smallest first" % where)
    return SlicePolicy(upper, lower, consecutive, cooldown, list(flavors))


def parse_config(data: Mapping[str, Any]) -> SroConfig:
    unknown = sorted(str(k) for k in data if k not in TOP)
    if unknown:
        raise ConfigError("unknown key %s (known: %s)" % (unknown[0], ", ".join(sorted(TOP))))
    cfg = SroConfig()
    if "listen" in data:
        cfg.listen_host, cfg.listen_port = _listen(data["listen"])
    if not data.get("ima_url"):
        raise ConfigError("missing required key ima_url (the IMA's base URL, e.g. http://10.213.0.11:8010)")
    cfg.ima_url = _http_url(_text(data, "ima_url", "ima_url"), "ima_url")
    prom = _section(data, "prometheus", {"url", "username", "password_file", "ca_file"})
    if prom is not None and prom.get("url"):
        cfg.prometheus = PrometheusSettings(
            _http_url(_text(prom, "url", "prometheus.url"), "prometheus.url"),
            _text(prom, "username", "prometheus.username"),
            _existing(_text(prom, "password_file", "prometheus.password_file"), "prometheus.password_file"),
            _existing(_text(prom, "ca_file", "prometheus.ca_file"), "prometheus.ca_file"))
        if bool(cfg.prometheus.username) != bool(cfg.prometheus.password_file):
            raise ConfigError("prometheus: basic auth needs both username and password_file")
    kafka = _section(data, "kafka", {"bootstrap_servers", "security_protocol", "sasl_mechanism", "sasl_username",
                                     "sasl_password_file", "ssl_cafile", "metrics_topic", "forecasts_topic"})
    if kafka is not None and kafka.get("bootstrap_servers"):
        servers = kafka["bootstrap_servers"]
        if isinstance(servers, str):
            servers = [s.strip() for s in servers.split(",") if s.strip()]
        if not isinstance(servers, list) or not servers or not all(isinstance(s, str) and ":" in s for s in servers):
            raise ConfigError("kafka.bootstrap_servers: expected a list of HOST:PORT")
        protocol = _text(kafka, "security_protocol", "kafka.security_protocol", "PLAINTEXT")
        if protocol not in PROTOCOLS:
            raise ConfigError("kafka.security_protocol must be one of %s, got %r" % (", ".join(PROTOCOLS), protocol))
        section = KafkaSettingsSection(
            servers, protocol, _text(kafka, "sasl_mechanism", "kafka.sasl_mechanism", "SCRAM-SHA-512"),
            _text(kafka, "sasl_username", "kafka.sasl_username"), "",
            _existing(_text(kafka, "ssl_cafile", "kafka.ssl_cafile"), "kafka.ssl_cafile"),
            _text(kafka, "metrics_topic", "kafka.metrics_topic", METRICS_TOPIC) or METRICS_TOPIC,
            _text(kafka, "forecasts_topic", "kafka.forecasts_topic", FORECASTS_TOPIC) or FORECASTS_TOPIC)
        if protocol.startswith("SASL_"):
            password_file = _text(kafka, "sasl_password_file", "kafka.sasl_password_file")
            if not section.sasl_username or not password_file:
                raise ConfigError("kafka: %s needs sasl_username and sasl_password_file" % protocol)
            section.sasl_password = _read_secret(password_file, "kafka.sasl_password_file")
        cfg.kafka = section
    mlflow = _section(data, "mlflow", {"tracking_uri", "username", "password_file", "experiment"})
    if mlflow is not None and mlflow.get("tracking_uri"):
        uri = _text(mlflow, "tracking_uri", "mlflow.tracking_uri")
        if urllib.parse.urlsplit(uri).scheme in ("http", "https"):
            uri = _http_url(uri, "mlflow.tracking_uri")
        settings = MlflowSettings(uri, _text(mlflow, "username", "mlflow.username"),
                                  experiment=_text(mlflow, "experiment", "mlflow.experiment") or "edgelab-sro")
        password_file = _text(mlflow, "password_file", "mlflow.password_file")
        if bool(settings.username) != bool(password_file):
            raise ConfigError("mlflow: credentials need both username and password_file")
        if password_file:
            settings.password = _read_secret(password_file, "mlflow.password_file")
        cfg.mlflow = settings
    if data.get("state_dir") is not None:
        cfg.state_dir = _text(data, "state_dir", "state_dir") or cfg.state_dir
    if data.get("horizon") is not None:
        cfg.horizon = _duration(data["horizon"], "horizon")
    if data.get("kpi_in_stream") is not None:
        if not isinstance(data["kpi_in_stream"], bool):
            raise ConfigError("kpi_in_stream: expected true or false, got %r" % (data["kpi_in_stream"],))
        cfg.kpi_in_stream = data["kpi_in_stream"]
    if data.get("max_upload_bytes") is not None:
        size = data["max_upload_bytes"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError("max_upload_bytes must be a whole number > 0, got %r" % (size,))
        cfg.max_upload_bytes = size
    policies = data.get("orchestration") or {}
    if not isinstance(policies, Mapping):
        raise ConfigError("orchestration: expected a mapping of slice ids to policies")
    cfg.orchestration = {str(k): _policy(str(k), v) for k, v in policies.items()}
    return cfg


def load_config(path: str) -> SroConfig:
    return parse_config(_read_yaml(path))
