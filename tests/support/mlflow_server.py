"""A real MLflow tracking server for the tests: PyPI's `mlflow server` on loopback with
a SQLite store and served artifacts (mlflow-artifacts:/), started in a directory the
caller gives and stopped when the context ends.

    with running_mlflow(tmp_path) as server:
        server.uri        # http://127.0.0.1:PORT
        server.dir        # the directory (mlflow.db, artifacts/, server.log)
        server.log_tail() # the last lines of its log, for failure messages

The session fixture `mlflow_server` (tests/conftest.py) is one such server for the
whole run: a start costs up to minutes on a loaded machine. Tests that share it keep
out of each other's way by naming their experiments and models with unique_name().

register(name, slope) logs a scikit-learn model (prediction = slope * the last of
WIDTH inputs) to the current tracking URI, in the experiment `name`, and registers it,
aliased `production`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Generous: on a loaded 2-core machine the server's first start takes minutes.
START_TIMEOUT = 300.0
WIDTH = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_name(prefix: str) -> str:
    """A model or experiment name no other test on a shared server uses."""
    return "%s-%s" % (prefix, os.urandom(4).hex())


def mlflow_executable() -> str:
    """The `mlflow` command of the running interpreter's environment (the venv's)."""
    return shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"


@dataclass
class MlflowServer:
    uri: str
    port: int
    dir: Path

    def log_tail(self, size: int = 2000) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""


def wait_for_health(uri: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mlflow server exited {proc.returncode}: {tail}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not answer /health in {timeout:g} s")
        time.sleep(0.5)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def running_mlflow(directory: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[MlflowServer]:
    """A server with its store and artifacts in `directory`; `extra` arguments (e.g.
    --app-name basic-auth) and `env` (the whole environment) for the tests that need
    a server of their own."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = directory / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [mlflow_executable(), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
             "--artifacts-destination", str(directory / "artifacts"), "--serve-artifacts", *extra],
            stdout=log, stderr=subprocess.STDOUT, cwd=directory, env=env)
        try:
            server = MlflowServer(f"http://127.0.0.1:{port}", port, directory)
            wait_for_health(server.uri, proc, log_path)
            yield server
        finally:
            stop(proc)


def train(slope: float) -> Any:
    """A linear model predicting slope * (last of WIDTH inputs)."""
    import numpy as np
    from sklearn.linear_model import LinearRegression

    x = np.random.default_rng(3).random((40, WIDTH))
    return LinearRegression().fit(x, slope * x[:, -1])


def register(name: str, slope: float, *, alias: bool = True, stage: bool = False) -> str:
    """Log and register a model version; alias it `production` (MLflow 3) or put it in
    the legacy stage Production. Returns the version."""
    import mlflow
    import numpy as np
    from mlflow.tracking import MlflowClient

    # The run in an experiment of the model's name: the experiment an earlier test made
    # active in this process may belong to another server.
    mlflow.set_experiment(name)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(train(slope), name="model", registered_model_name=name,
                                        input_example=np.zeros((1, WIDTH)))
    version = str(info.registered_model_version)
    client = MlflowClient()
    if alias:
        client.set_registered_model_alias(name, "production", version)
    if stage:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client.transition_model_version_stage(name, version, "Production")
    return version
