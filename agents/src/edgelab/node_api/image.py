"""Inference services from container images, run by containerd through its client
`ctr` (no Docker socket, no dockerd): what `docker_img` in a deploy request does on a
host whose node API has `container_runtime: containerd`.

The image contract (what an image must do to be deployed):
- serve HTTP on the host's network (the container shares it) on the port in the
  environment variable PORT, or on a port it is built for that is one of
  image_fixed_ports (8080 for MLflow's `mlflow models build-docker` images; the deploy
  request names it as image_port, and then only one deployment can use it);
- answer GET /ping with 200 once it is ready, and predictions on POST /predict or
  POST /invocations (MLflow's images serve /ping and /invocations);
- read the model, if it uses the node's, from /opt/ml/model: the store's directory of
  the experiment's current version, mounted read-only (MLflow's images look there).
  It also gets EDGELAB_EXP_ID, EDGELAB_MODEL and EDGELAB_MODEL_VERSION.
The image must already be in containerd's namespace (`ctr -n edgelab image import
FILE`) or come from a registry listed in image_registries (then it is pulled).

    python -m edgelab.node_api.image [--config /etc/edgelab/node-api.yml] prepare|run|stop EXP_ID

run as root by edgelab-inference-image@EXP_ID.service (ctr needs containerd's socket,
which the node API's user cannot reach): `prepare` (ExecStartPre) finds or pulls the
deployment record's image and leaves a one-line JSON error beside the record for the
node API when it cannot; `run` (ExecStart) removes a container left by a crash and
replaces itself with `ctr run --rm --net-host ...`; `stop` (ExecStop) sends SIGTERM to
the container and SIGKILL after image_stop_timeout seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import cli
from ..config import ConfigError
from .settings import NODE_API_CONFIG, Settings, load_settings, read_deployment
from .store import StoreError, check_exp_id

PROG = "edgelab-inference-image"
MODEL_MOUNT = "/opt/ml/model"
log = logging.getLogger("edgelab.node_api.image")

_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REF = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
                       r"(?:@sha256:[0-9a-f]{64})?$")
# containerd's identifier rule: alphanumeric runs joined by single '.', '_' or '-'.
CONTAINER_ID = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")


def check_image_ref(ref: str) -> None:
    """StoreError 422 unless ref is an image reference ctr can take (REGISTRY/PATH:TAG or @sha256:...)."""
    if len(ref) > 512 or not IMAGE_REF.match(ref):
        raise StoreError(422, f"invalid docker_img {ref[:100]!r}: expected an image reference such as "
                              "registry.example:5000/team/model:1 or docker.io/library/name:tag "
                              "(lowercase path, optional :tag and @sha256:digest)")


def registry_of(ref: str) -> str:
    """The registry host a reference names (docker.io when its first part is not a host)."""
    first, sep, _ = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def container_id(exp_id: str) -> str:
    cid = f"edgelab-inference-{exp_id}"
    if not CONTAINER_ID.match(cid):
        raise StoreError(422, f"exp_id {exp_id!r} cannot name a container: for docker_img use letters and "
                              "digits joined by single '.', '_' or '-'")
    return cid


def error_file(settings: Settings, exp_id: str) -> Path:
    """Where `prepare` leaves {"status", "detail"} for the node API when it fails."""
    return settings.deployment_file(exp_id).with_suffix(".image-error")


def refusal(settings: Settings) -> StoreError | None:
    """Why this host cannot run images (None when it can), as the node API answers it."""
    if settings.container_runtime != "containerd":
        return StoreError(400, "docker_img refused: this host has no container runtime for the node API "
                               "(container_runtime: none); set node_api_container_runtime: containerd for it in "
                               "the inventory (installs Debian's containerd package) and re-run the playbook, "
                               "or omit docker_img to serve the experiment's MLflow model")
    if not os.access(settings.ctr, os.X_OK):
        return StoreError(501, f"docker_img refused: container_runtime is containerd but its client "
                               f"{settings.ctr} is missing; install the containerd package "
                               "(apt-get install containerd) or set ctr: in the node API's settings")
    if not Path(settings.containerd_address).exists():
        return StoreError(503, f"docker_img refused: containerd is not running (no socket "
                               f"{settings.containerd_address}); start it: systemctl start containerd")
    return None


class Containerd:
    """The ctr calls an image deployment needs, in one namespace of one containerd."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.namespace = settings.containerd_namespace

    def ctr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = [self.settings.ctr, "--address", self.settings.containerd_address, "-n", self.namespace, *args]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise StoreError(504, f"ctr {' '.join(args)} took longer than {timeout:g} s") from None
        except OSError as exc:
            raise StoreError(501, f"cannot run {self.settings.ctr}: {exc.strerror or exc}") from None

    @staticmethod
    def detail(result: subprocess.CompletedProcess[str]) -> str:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        return " ".join(lines[-1].split())[:300] if lines else f"exit code {result.returncode}"

    def has_image(self, ref: str) -> bool:
        result = self.ctr("image", "ls", "-q")
        if result.returncode != 0:
            raise StoreError(503, f"cannot list containerd's images ({self.detail(result)}); "
                                  "is containerd running? systemctl status containerd")
        return ref in result.stdout.split()

    def pull(self, ref: str) -> None:
        result = self.ctr("image", "pull", ref, timeout=self.settings.image_pull_timeout)
        if result.returncode != 0:
            raise StoreError(502, f"pulling image {ref!r} from {registry_of(ref)} failed: {self.detail(result)}; "
                                  f"import it instead with ctr -n {self.namespace} image import FILE")

    def running(self, cid: str) -> bool | None:
        """True while the container's task runs, False once it stopped, None without a task."""
        result = self.ctr("task", "ls")
        for line in result.stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return len(fields) > 2 and fields[2] == "RUNNING"
        return None

    def exists(self, cid: str) -> bool:
        return cid in self.ctr("container", "ls", "-q").stdout.split()

    def remove(self, cid: str) -> None:
        """Remove the container and its task, whatever state they are in."""
        if self.running(cid) is not None:
            self.ctr("task", "delete", "--force", cid)
        if self.exists(cid):
            result = self.ctr("container", "delete", cid)
            if result.returncode != 0 and self.exists(cid):
                raise StoreError(500, f"cannot remove the old container {cid}: {self.detail(result)}")

    def run_command(self, record: dict[str, Any], cid: str) -> list[str]:
        env = {"PORT": str(record["port"]), "EDGELAB_EXP_ID": str(record["exp_id"]),
               "EDGELAB_MODEL": str(record.get("model") or ""),
               "EDGELAB_MODEL_VERSION": str(record.get("version") or "")}
        command = [self.settings.ctr, "--address", self.settings.containerd_address, "-n", self.namespace,
                   "run", "--rm", "--net-host"]
        for key, value in env.items():
            command += ["--env", f"{key}={value}"]
        if record.get("model_path"):
            command += ["--mount", f"type=bind,src={record['model_path']},dst={MODEL_MOUNT},options=rbind:ro"]
        if self.settings.image_memory_max:
            command += ["--memory-limit", str(self.settings.image_memory_max)]
        return [*command, str(record["image"]), cid]


def _record(settings: Settings, exp_id: str) -> dict[str, Any]:
    try:
        check_exp_id(exp_id)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    record = read_deployment(settings, exp_id)
    if record is None or not isinstance(record.get("image"), str) or not isinstance(record.get("port"), int):
        raise ConfigError(f"no image deployment record {settings.deployment_file(exp_id)}: deploy through the "
                          "node API (POST /api/inference/deploy with docker_img)")
    return record


def prepare(settings: Settings, exp_id: str) -> None:
    record = _record(settings, exp_id)
    target = error_file(settings, exp_id)
    target.unlink(missing_ok=True)
    ref = str(record["image"])
    try:
        check_image_ref(ref)
        container_id(exp_id)
        model_path = record.get("model_path")
        if model_path and not (Path(model_path) / "MLmodel").is_file():
            raise StoreError(409, f"the model directory {model_path} is gone from the store; "
                                  "deploy again (PUT /api/mlflow/model first)")
        engine = Containerd(settings)
        if not engine.has_image(ref):
            registry = registry_of(ref)
            if registry not in settings.image_registries:
                raise StoreError(404, f"image {ref!r} is not in containerd's namespace {engine.namespace} on "
                                      f"this host: import it with ctr -n {engine.namespace} image import FILE "
                                      f"(an OCI or Docker image archive; the name as ctr -n {engine.namespace} "
                                      f"image ls shows it), or set node_api_image_registries to include "
                                      f"{registry} so that it is pulled")
            log.info("pulling %s from %s", ref, registry)
            engine.pull(ref)
    except StoreError as exc:
        text = json.dumps({"status": exc.status, "detail": str(exc)}) + "\n"
        target.write_text(text, encoding="utf-8")
        target.chmod(0o644)
        raise ConfigError(str(exc)) from None


def run(settings: Settings, exp_id: str) -> None:
    record = _record(settings, exp_id)
    try:
        cid = container_id(exp_id)
        engine = Containerd(settings)
        engine.remove(cid)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    command = engine.run_command(record, cid)
    log.info("running %s as container %s on port %s", record["image"], cid, record["port"])
    os.execv(command[0], command)


def stop(settings: Settings, exp_id: str) -> None:
    try:
        check_exp_id(exp_id)
        cid = container_id(exp_id)
        engine = Containerd(settings)
        if engine.running(cid) is None:
            return
        engine.ctr("task", "kill", "--signal", "SIGTERM", cid)
        deadline = time.monotonic() + settings.image_stop_timeout
        while engine.running(cid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if engine.running(cid):
            log.info("%s did not stop within %g s of SIGTERM: SIGKILL", cid, settings.image_stop_timeout)
            engine.ctr("task", "kill", "--signal", "SIGKILL", cid)
        # `ctr run --rm` removes what it started once the task ended; clean up if it cannot.
        deadline = time.monotonic() + 10.0
        while engine.exists(cid) and time.monotonic() < deadline:
            time.sleep(0.2)
        engine.remove(cid)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None


ACTIONS = {"prepare": prepare, "run": run, "stop": stop}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=sorted(ACTIONS), help="what the unit's step does")
    parser.add_argument("exp_id", help="the experiment (the unit's instance name)")


def start(args: argparse.Namespace) -> None:
    settings = load_settings(args.config)
    ACTIONS[args.action](settings, args.exp_id)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, default_config=NODE_API_CONFIG, description=__doc__,
                   add_arguments=add_arguments)


if __name__ == "__main__":
    raise SystemExit(main())
