"""Settings of the node API and its inference services: one YAML file (rendered by
role node_api) that both read.

    listen: 0.0.0.0:8081                 the node API (CLARUS's port)
    token_file: /etc/edgelab/node-api/token     bearer token for every endpoint but ping
    store_dir: /var/lib/edgelab/models   the model store (store.py)
    state_dir: /var/lib/edgelab/node-api deployments (one JSON record per exp_id)
    mlflow_tracking_uri: http://...      MLflow; user and password file optional
    mlflow_username: edgelab
    mlflow_password_file: /etc/edgelab/node-api/mlflow-password
    models: {exp_id: registered model name}   default: the model named exp_id
    port_min: 8100, port_max: 8199       inference services' ports
    inference_address: 0.0.0.0           where inference services listen
    systemctl: systemctl                 the systemctl the node API runs
    start_timeout: 60                    seconds for a new service to answer /health
    reload_interval: 1.0                 how often a service looks for a new model
    container_runtime: none              none, or containerd: deploys with docker_img run
                                         images with ctr (image.py)
    ctr: /usr/bin/ctr                    containerd's client
    containerd_address: /run/containerd/containerd.sock
    containerd_namespace: edgelab        where images are looked up and containers run
    image_registries: []                 registries an absent image may be pulled from
    image_fixed_ports: [8080]            ports an image may ask for (image_port) instead
                                         of one from port_min..port_max
    image_pull_timeout: 600              seconds a pull may take
    image_stop_timeout: 10               seconds between SIGTERM and SIGKILL on stop
    image_memory_max: 1073741824         bytes a container may use (0: no limit)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, _build, _read_secret, _read_yaml
from .store import DEFAULT_STORE, EXP_ID

NODE_API_CONFIG = "/etc/edgelab/node-api.yml"
UNIT_TEMPLATE = "edgelab-inference@{}.service"
IMAGE_UNIT_TEMPLATE = "edgelab-inference-image@{}.service"
CONTAINER_RUNTIMES = ("none", "containerd")


@dataclass
class Settings:
    listen: str = "0.0.0.0:8081"
    token_file: str = "/etc/edgelab/node-api/token"
    store_dir: str = DEFAULT_STORE
    state_dir: str = "/var/lib/edgelab/node-api"
    mlflow_tracking_uri: str = ""
    mlflow_username: str = ""
    mlflow_password_file: str = ""
    port_min: int = 8100
    port_max: int = 8199
    inference_address: str = "0.0.0.0"
    systemctl: str = "systemctl"
    start_timeout: float = 60.0
    reload_interval: float = 1.0
    container_runtime: str = "none"
    ctr: str = "/usr/bin/ctr"
    containerd_address: str = "/run/containerd/containerd.sock"
    containerd_namespace: str = "edgelab"
    image_registries: list[str] = field(default_factory=list)
    image_fixed_ports: list[int] = field(default_factory=lambda: [8080])
    image_pull_timeout: float = 600.0
    image_stop_timeout: float = 10.0
    image_memory_max: int = 1 << 30
    models: dict[str, str] = field(default_factory=dict, metadata={"internal": True})

    @property
    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"listen: expected HOST:PORT, got {self.listen!r}")
        return host.strip("[]") or "0.0.0.0", int(port)

    def deployment_file(self, exp_id: str) -> Path:
        return Path(self.state_dir) / "deployments" / f"{exp_id}.json"


def load_settings(path: str) -> Settings:
    data = dict(_read_yaml(path))
    models = data.pop("models", None) or {}
    if not isinstance(models, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                               for k, v in models.items()):
        raise ConfigError("models: expected a mapping of exp_id to registered model name")
    for exp_id in models:
        if not EXP_ID.match(exp_id):
            raise ConfigError(f"models: invalid exp_id {exp_id!r} (1-64 letters, digits, '_', '.', '-')")
    settings = _build(Settings, data)
    settings.models = dict(models)
    settings.host_port  # noqa: B018 - validates listen
    if not 0 < settings.port_min <= settings.port_max < 65536:
        raise ConfigError(f"port_min..port_max must be a range of ports, got {settings.port_min}..{settings.port_max}")
    if settings.start_timeout <= 0 or settings.reload_interval <= 0:
        raise ConfigError("start_timeout and reload_interval must be > 0")
    if settings.container_runtime not in CONTAINER_RUNTIMES:
        raise ConfigError(f"container_runtime: expected one of {', '.join(CONTAINER_RUNTIMES)}, "
                          f"got {settings.container_runtime!r}")
    if not all(0 < port < 65536 for port in settings.image_fixed_ports):
        raise ConfigError(f"image_fixed_ports: expected ports, got {settings.image_fixed_ports}")
    if settings.image_pull_timeout <= 0 or settings.image_stop_timeout <= 0 or settings.image_memory_max < 0:
        raise ConfigError("image_pull_timeout and image_stop_timeout must be > 0, image_memory_max >= 0")
    return settings


def read_token(settings: Settings) -> str:
    token = _read_secret(settings.token_file, "token_file")
    if len(token) < 16:
        raise ConfigError(f"token_file {settings.token_file}: the token is shorter than 16 characters")
    return token


def mlflow_environment(settings: Settings) -> None:
    """MLflow's client reads its URL and account from the environment; set them in this
    process only (never on a command line). Failures come back in seconds, not minutes."""
    if settings.mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    if settings.mlflow_username:
        os.environ["MLFLOW_TRACKING_USERNAME"] = settings.mlflow_username
    if settings.mlflow_password_file:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = _read_secret(settings.mlflow_password_file,
                                                              "mlflow_password_file")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def read_deployment(settings: Settings, exp_id: str) -> dict[str, Any] | None:
    try:
        data = json.loads(settings.deployment_file(exp_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def public_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings) if not f.metadata.get("internal")]
