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
allows exactly that template). A PUT that brings a newer version to a deployed
experiment answers once the running service serves it (or says it does not yet).
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from .. import cli
from ..config import ConfigError
from .settings import (
    NODE_API_CONFIG,
    UNIT_TEMPLATE,
    Settings,
    load_settings,
    mlflow_environment,
    read_deployment,
    read_token,
)
from .store import MlflowPuller, ModelStore, StoreError, check_exp_id

PROG = "edgelab-node-api"
CONTAINER_RUNTIMES = ("podman", "nerdctl", "docker")
log = logging.getLogger("edgelab.node_api")


class UnitError(Exception):
    """systemctl failed; the message carries its stderr."""


class Units:
    """The few systemctl operations the node API needs, on one executable (systemctl,
    or a stand-in in tests). Secrets in this process's environment are not passed on."""

    def __init__(self, systemctl: str, timeout: float = 60.0) -> None:
        self.systemctl = systemctl
        self.timeout = timeout

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_PASSWORD"}
        try:
            return subprocess.run([self.systemctl, *args], capture_output=True, text=True, env=env,
                                  timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UnitError(f"{self.systemctl} {' '.join(args)}: {exc}") from None

    def _checked(self, *args: str) -> None:
        result = self._run(*args)
        if result.returncode != 0:
            detail = " ".join((result.stderr or result.stdout).split())[:300]
            raise UnitError(f"systemctl {' '.join(args)} failed ({result.returncode}): {detail}")

    def start(self, unit: str) -> None:
        self._checked("start", unit)

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
        if record is not None:
            answer["service"] = self._wait_serving(exp_id, int(record["port"]), model.version)
        return answer

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

    def deploy(self, exp_id: str, model_name: str | None, docker_img: str | None) -> dict[str, Any]:
        check_exp_id(exp_id)
        if docker_img:
            runtime = next((r for r in CONTAINER_RUNTIMES if shutil.which(r)), None)
            if runtime is None:
                raise StoreError(400, f"docker_img {docker_img!r} refused: this host has no container runtime "
                                      f"({', '.join(CONTAINER_RUNTIMES)}); deploy the experiment's MLflow "
                                      "model instead (omit docker_img)")
            raise StoreError(501, f"docker_img {docker_img!r} refused: the node API serves MLflow models "
                                  f"as systemd units and does not run images, even with {runtime} present; "
                                  "omit docker_img")
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

    def _wait_healthy(self, unit: str, port: int) -> dict[str, Any]:
        deadline = time.monotonic() + self.settings.start_timeout
        checked_active = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            health = _get_json(self.local_url(port) + "/health", timeout=1.0)
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
            if port in taken:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind(("0.0.0.0" if self.settings.inference_address in ("", "::")
                                else self.settings.inference_address, port))
                except OSError:
                    continue
            return port
        raise StoreError(503, f"no free port in {self.settings.port_min}-{self.settings.port_max} "
                              f"({len(taken)} services deployed): DELETE a deployment or widen the range "
                              "(node_api_inference_port_min/max)")

    def undeploy(self, exp_id: str) -> dict[str, Any]:
        check_exp_id(exp_id)
        unit = UNIT_TEMPLATE.format(exp_id)
        with self.lock:
            record = read_deployment(self.settings, exp_id)
            if record is None:
                raise StoreError(404, f"exp_id {exp_id!r} is not deployed (GET /api/inference/all lists them)")
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
            unit = UNIT_TEMPLATE.format(exp_id)
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


class ModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exp_id: str = Field(description="experiment identifier (the registered model's name unless mapped)")


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exp_id: str = Field(description="experiment identifier; names the unit edgelab-inference@EXP_ID")
    model: str | None = Field(None, description="registered model name, when it is not the exp_id's")
    docker_img: str | None = Field(None, description="CLARUS's image field: refused (no container runtime use)")


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
        return api.deploy(body.exp_id, body.model, body.docker_img)

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
