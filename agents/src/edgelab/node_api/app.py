"""edgelab-node-api: deploy inference services for experiments, with their production
models pulled from MLflow (the CLARUS node agent's REST API, without Docker).

    edgelab-node-api [--config /etc/edgelab/node-api.yml]

    GET    /api/ping                    health, no token
    PUT    /api/mlflow/model            {exp_id}: pull the production model into the store
    POST   /api/inference/deploy        {exp_id, model?, docker_img?}: start a service
    DELETE /api/inference/deploy?exp_id=   stop and remove it
    GET    /api/inference/all           exp_id, port, model, version, status, since
    GET    /swagger, /openapi.json      the API's documentation

Every endpoint but ping wants `Authorization: Bearer TOKEN` (token_file). A service is
the systemd unit edgelab-inference@EXP_ID.service (inference.py) on a free port of
port_min..port_max; the node API starts and stops it with systemctl (a polkit rule
allows exactly its templates). A PUT that brings a newer version to a deployed
experiment answers once the running service serves it (or says it does not yet).

With docker_img (hosts with container_runtime: containerd) the service is
edgelab-inference-image@EXP_ID.service instead: the image run by containerd with the
store's model mounted at /opt/ml/model (image.py has the image contract); it is ready
when it answers GET /ping, and a newer model restarts it.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from .. import cli
from ..config import ConfigError
from .image import check_image_ref, container_id, error_file, refusal
from .settings import (
    IMAGE_UNIT_TEMPLATE,
    NODE_API_CONFIG,
    UNIT_TEMPLATE,
    Settings,
    load_settings,
    mlflow_environment,
    read_deployment,
    read_token,
)
from .store import MlflowPuller, ModelStore, StoredModel, StoreError, check_exp_id

PROG = "edgelab-node-api"
log = logging.getLogger("edgelab.node_api")


class UnitError(Exception):
    """systemctl failed; the message carries its stderr."""


class Units:
    """The few systemctl operations the node API needs, on one executable (systemctl,
    or a stand-in in tests). Secrets in this process's environment are not passed on."""

    def __init__(self, systemctl: str, timeout: float = 60.0) -> None:
        self.systemctl = systemctl
        self.timeout = timeout

    def _run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_PASSWORD"}
        try:
            return subprocess.run([self.systemctl, *args], capture_output=True, text=True, env=env,
                                  timeout=timeout or self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UnitError(f"{self.systemctl} {' '.join(args)}: {exc}") from None

    def _checked(self, *args: str, timeout: float | None = None) -> None:
        result = self._run(*args, timeout=timeout)
        if result.returncode != 0:
            detail = " ".join((result.stderr or result.stdout).split())[:300]
            raise UnitError(f"systemctl {' '.join(args)} failed ({result.returncode}): {detail}")

    def start(self, unit: str, timeout: float | None = None) -> None:
        self._checked("start", unit, timeout=timeout)

    def stop(self, unit: str) -> None:
        self._checked("stop", unit)

    def is_active(self, unit: str) -> bool:
        return self._run("is-active", unit).stdout.strip() == "active"


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a deployment record atomically, readable by the store's group (0640):
    the inference service (another user) reads its port from it."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
        os.chmod(temporary, 0o640)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _answers(url: str, timeout: float = 1.0) -> int | None:
    """The HTTP status of a 2xx answer to GET url, or None."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read(1024)
            return int(response.status)
    except (OSError, ValueError):
        return None


def _get_json(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class NodeApi:
    """What the endpoints do, without HTTP: one deployment change at a time."""

    def __init__(self, settings: Settings, units: Units) -> None:
        self.settings = settings
        self.units = units
        self.store = ModelStore(settings.store_dir)
        self.puller = MlflowPuller(self.store, settings.mlflow_tracking_uri, settings.models)
        self.lock = threading.Lock()
        self.deployments = Path(settings.state_dir) / "deployments"

    def local_url(self, port: int) -> str:
        address = self.settings.inference_address
        host = "127.0.0.1" if address in ("0.0.0.0", "") else ("::1" if address == "::" else address)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @staticmethod
    def unit_of(record: dict[str, Any]) -> str:
        template = IMAGE_UNIT_TEMPLATE if record.get("image") else UNIT_TEMPLATE
        return template.format(record.get("exp_id"))

    def records(self) -> list[dict[str, Any]]:
        if not self.deployments.is_dir():
            return []
        found = []
        for path in sorted(self.deployments.glob("*.json")):
            record = read_deployment(self.settings, path.stem)
            if record is not None:
                found.append(record)
        return found

    def pull(self, exp_id: str) -> dict[str, Any]:
        check_exp_id(exp_id)
        with self.lock:
            record = read_deployment(self.settings, exp_id)
            model = self.puller.pull(exp_id, record.get("model") if record else None)
        answer = model.public()
        previous = self.store.previous(exp_id)
        answer["previous_version"] = previous.version if previous else None
        if record is not None and record.get("image"):
            answer["service"] = self._restart_image(record, model)
        elif record is not None:
            answer["service"] = self._wait_serving(exp_id, int(record["port"]), model.version)
        return answer

    def _restart_image(self, record: dict[str, Any], model: StoredModel) -> dict[str, Any]:
        """Restart an image deployment on a newer model (its mount names one version)."""
        exp_id, port = str(record["exp_id"]), int(record["port"])
        if record.get("version") == model.version and record.get("model_path") == model.path:
            return {"port": port, "version": model.version, "switched": True}
        unit = IMAGE_UNIT_TEMPLATE.format(exp_id)
        with self.lock:
            write_record(self.settings.deployment_file(exp_id),
                         {**record, "model": model.name, "version": model.version, "model_path": model.path})
            try:
                self.units.stop(unit)
                self._start_image(exp_id, unit, port)
            except (UnitError, StoreError) as exc:
                return {"port": port, "version": None, "switched": False,
                        "message": f"restarting {unit} on version {model.version} failed: {exc}"}
        return {"port": port, "version": model.version, "switched": True, "restarted": True}

    def _wait_serving(self, exp_id: str, port: int, version: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.settings.start_timeout
        health = None
        while time.monotonic() < deadline:
            health = _get_json(self.local_url(port) + "/health")
            if health is not None and health.get("version") == version:
                return {"port": port, "version": version, "switched": True}
            time.sleep(0.2)
        served = health.get("version") if health else None
        return {"port": port, "version": served, "switched": False,
                "message": f"the service still serves version {served}; "
                           f"see journalctl -u {UNIT_TEMPLATE.format(exp_id)}"}

    def deploy(self, exp_id: str, model_name: str | None, docker_img: str | None,
               image_port: int | None = None) -> dict[str, Any]:
        check_exp_id(exp_id)
        if docker_img:
            return self.deploy_image(exp_id, model_name, docker_img, image_port)
        if image_port is not None:
            raise StoreError(422, "image_port is for docker_img deployments only; omit it")
        unit = UNIT_TEMPLATE.format(exp_id)
        with self.lock:
            existing = read_deployment(self.settings, exp_id)
            if existing is not None:
                raise StoreError(409, f"exp_id {exp_id!r} is already deployed on port {existing.get('port')}; "
                                      "DELETE /api/inference/deploy?exp_id=... first, or PUT "
                                      "/api/mlflow/model to update its model in place")
            model = self.store.current(exp_id)
            if model is None or (model_name and model.name != model_name):
                model = self.puller.pull(exp_id, model_name)
            port = self._free_port()
            record = {"exp_id": exp_id, "port": port, "since": time.time(), "model": model.name}
            self.deployments.mkdir(parents=True, exist_ok=True)
            write_record(self.settings.deployment_file(exp_id), record)
            try:
                self.units.start(unit)
                health = self._wait_healthy(unit, port)
            except (UnitError, StoreError) as exc:
                self._remove(exp_id, unit)
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(500, f"{exc}; the deployment was not made") from None
        return {"exp_id": exp_id, "port": port, "unit": unit, "model": health.get("model"),
                "version": health.get("version"), "since": record["since"]}

    def deploy_image(self, exp_id: str, model_name: str | None, docker_img: str,
                     image_port: int | None) -> dict[str, Any]:
        refused = refusal(self.settings)
        if refused is not None:
            raise refused
        check_image_ref(docker_img)
        container_id(exp_id)
        if image_port is not None and image_port not in self.settings.image_fixed_ports:
            raise StoreError(422, f"image_port {image_port} is not one of image_fixed_ports "
                                  f"{self.settings.image_fixed_ports}: omit it and make the image listen on "
                                  "$PORT, or add the port to node_api_image_fixed_ports")
        unit = IMAGE_UNIT_TEMPLATE.format(exp_id)
        with self.lock:
            existing = read_deployment(self.settings, exp_id)
            if existing is not None:
                raise StoreError(409, f"exp_id {exp_id!r} is already deployed on port {existing.get('port')}; "
                                      "DELETE /api/inference/deploy?exp_id=... first")
            model = self.store.current(exp_id)
            if model is None or (model_name and model.name != model_name):
                try:
                    model = self.puller.pull(exp_id, model_name)
                except StoreError as exc:
                    # An image may carry its own model: one MLflow does not know runs without the mount.
                    if exc.status != 404 or model_name:
                        raise
                    model = None
            port = self._fixed_port(image_port) if image_port is not None else self._free_port()
            record = {"exp_id": exp_id, "port": port, "since": time.time(), "model": model.name if model else None,
                      "version": model.version if model else None, "model_path": model.path if model else None,
                      "image": docker_img}
            self.deployments.mkdir(parents=True, exist_ok=True)
            write_record(self.settings.deployment_file(exp_id), record)
            try:
                self._start_image(exp_id, unit, port)
            except (UnitError, StoreError) as exc:
                self._remove(exp_id, unit)
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(500, f"{exc}; the deployment was not made") from None
        return {"exp_id": exp_id, "port": port, "unit": unit, "image": docker_img, "model": record["model"],
                "version": record["version"], "since": record["since"]}

    def _start_image(self, exp_id: str, unit: str, port: int) -> None:
        """Start an image unit and wait for its /ping; a failed image lookup or pull comes
        back as the status and message its ExecStartPre left."""
        problem = error_file(self.settings, exp_id)
        try:
            self.units.start(unit, timeout=self.settings.image_pull_timeout + 30)
        except UnitError as exc:
            try:
                left = json.loads(problem.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise exc from None
            raise StoreError(int(left.get("status", 500)),
                             f"{left.get('detail')}; the deployment was not made") from None
        finally:
            problem.unlink(missing_ok=True)
        self._wait_ready(unit, port, "/ping", _answers)

    def _fixed_port(self, port: int) -> int:
        if any(r.get("port") == port for r in self.records()) or not self._bindable(port):
            raise StoreError(409, f"image_port {port} is in use on this host (GET /api/inference/all); "
                                  "DELETE the deployment that has it, or build the image to listen on $PORT")
        return port

    def _bindable(self, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("0.0.0.0" if self.settings.inference_address in ("", "::")
                            else self.settings.inference_address, port))
            except OSError:
                return False
        return True

    def _wait_healthy(self, unit: str, port: int) -> dict[str, Any]:
        return self._wait_ready(unit, port, "/health", lambda url: _get_json(url, timeout=1.0))

    def _wait_ready(self, unit: str, port: int, path: str, probe: Callable[[str], Any]) -> Any:
        deadline = time.monotonic() + self.settings.start_timeout
        checked_active = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            health = probe(self.local_url(port) + path)
            if health is not None:
                return health
            if time.monotonic() > checked_active:
                if not self.units.is_active(unit):
                    raise StoreError(500, f"{unit} stopped before it answered; see journalctl -u {unit}; "
                                          "the deployment was not made")
                checked_active = time.monotonic() + 2.0
            time.sleep(0.2)
        raise StoreError(504, f"{unit} did not answer on port {port} within {self.settings.start_timeout:g} s; "
                              f"see journalctl -u {unit}; the deployment was not made")

    def _remove(self, exp_id: str, unit: str) -> None:
        try:
            self.units.stop(unit)
        finally:
            self.settings.deployment_file(exp_id).unlink(missing_ok=True)

    def _free_port(self) -> int:
        taken = {r.get("port") for r in self.records()}
        for port in range(self.settings.port_min, self.settings.port_max + 1):
            if port in taken or not self._bindable(port):
                continue
            return port
        raise StoreError(503, f"no free port in {self.settings.port_min}-{self.settings.port_max} "
                              f"({len(taken)} services deployed): DELETE a deployment or widen the range "
                              "(node_api_inference_port_min/max)")

    def undeploy(self, exp_id: str) -> dict[str, Any]:
        check_exp_id(exp_id)
        with self.lock:
            record = read_deployment(self.settings, exp_id)
            if record is None:
                raise StoreError(404, f"exp_id {exp_id!r} is not deployed (GET /api/inference/all lists them)")
            unit = self.unit_of(record)
            try:
                self._remove(exp_id, unit)
            except UnitError as exc:
                raise StoreError(500, f"{exc}; the deployment record is removed, check the unit "
                                      f"with systemctl status {unit}") from None
        return {"exp_id": exp_id, "port": record.get("port"), "stopped": True}

    def all(self) -> list[dict[str, Any]]:
        answer = []
        for record in self.records():
            exp_id = str(record.get("exp_id"))
            port = int(record.get("port", 0))
            unit = self.unit_of(record)
            if record.get("image"):
                answer.append(self._image_status(record, unit))
                continue
            health = _get_json(self.local_url(port) + "/health", timeout=1.0)
            active = health is not None or self.units.is_active(unit)
            status = "running" if health is not None else ("starting" if active else "stopped")
            stored = self.store.current(exp_id)
            answer.append({"exp_id": exp_id, "port": port, "unit": unit,
                           "model": health.get("model") if health else (stored.name if stored else None),
                           "version": health.get("version") if health else None,
                           "stored_version": stored.version if stored else None,
                           "status": status, "since": record.get("since")})
        return answer

    def _image_status(self, record: dict[str, Any], unit: str) -> dict[str, Any]:
        port = int(record.get("port", 0))
        ready = _answers(self.local_url(port) + "/ping") is not None
        status = "running" if ready else ("starting" if self.units.is_active(unit) else "stopped")
        stored = self.store.current(str(record.get("exp_id")))
        return {"exp_id": record.get("exp_id"), "port": port, "unit": unit, "image": record.get("image"),
                "model": record.get("model"), "version": record.get("version"),
                "stored_version": stored.version if stored else None, "status": status,
                "since": record.get("since")}


class ModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exp_id: str = Field(description="experiment identifier (the registered model's name unless mapped)")


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exp_id: str = Field(description="experiment identifier; names the unit edgelab-inference@EXP_ID")
    model: str | None = Field(None, description="registered model name, when it is not the exp_id's")
    docker_img: str | None = Field(None, description="an image to run with containerd instead of the MLflow model "
                                   "service (hosts with container_runtime: containerd; refused elsewhere)")
    image_port: int | None = Field(None, description="with docker_img: the fixed port the image listens on "
                                   "(one of image_fixed_ports, e.g. 8080 for MLflow's images) instead of $PORT")


def build_app(api: NodeApi, token: str) -> FastAPI:
    bearer = HTTPBearer(auto_error=False)

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token: send Authorization: Bearer <token from "
                                     "the node API's token_file>", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="edgelab node API", description=__doc__, version="1", docs_url="/swagger",
                  redoc_url=None)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.get("/api/ping")
    def ping() -> dict[str, str]:
        return {"status": "ok"}

    @app.put("/api/mlflow/model", dependencies=[Depends(authorized)])
    def put_model(body: ModelRequest) -> dict[str, Any]:
        return api.pull(body.exp_id)

    @app.post("/api/inference/deploy", status_code=201, dependencies=[Depends(authorized)])
    def deploy(body: DeployRequest) -> dict[str, Any]:
        return api.deploy(body.exp_id, body.model, body.docker_img, body.image_port)

    @app.delete("/api/inference/deploy", dependencies=[Depends(authorized)])
    def undeploy(exp_id: str = Query(..., description="the experiment to stop")) -> dict[str, Any]:
        return api.undeploy(exp_id)

    @app.get("/api/inference/all", dependencies=[Depends(authorized)])
    def all_services() -> list[dict[str, Any]]:
        return api.all()

    return app


def start(args: argparse.Namespace) -> None:
    settings = load_settings(args.config)
    if not settings.mlflow_tracking_uri:
        raise ConfigError("missing required key mlflow_tracking_uri")
    token = read_token(settings)
    mlflow_environment(settings)
    api = NodeApi(settings, Units(settings.systemctl))
    app = build_app(api, token)
    import uvicorn

    host, port = settings.host_port
    log.info("node API on %s:%d, store %s, MLflow %s", host, port, settings.store_dir,
             settings.mlflow_tracking_uri)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, default_config=NODE_API_CONFIG, description=__doc__)
