"""Models from an MLflow registry alias, against a real MLflow tracking server (PyPI's
mlflow, `mlflow server` on loopback with a SQLite store and served artifacts):
a scikit-learn model logged and registered, the alias `production` set, and the node
agent's loader (`model_source: mlflow:models:/NAME@production`) predicting with it;
moving the alias moves what a new loader gets; a missing alias or model is a clear
ModelError. The tracking server is the run's shared one (fixture mlflow_server); each
test registers a model name of its own."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from edgelab.models import ModelError, lagged, load_model
from support.mlflow_server import MlflowServer, unique_name

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (requirements.txt)")
from mlflow.tracking import MlflowClient  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402

WINDOW = 3


@pytest.fixture
def mlflow_env(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    mlflow.set_tracking_uri(mlflow_server.uri)
    # Runs go to an experiment of this test's, not to whichever one an earlier test
    # in this process made active (an id that may not exist on this server).
    mlflow.set_experiment(unique_name("load-forecast"))
    return mlflow_server.uri


@pytest.fixture
def model_name() -> str:
    """This test's registered model name (the tracking server is shared)."""
    return unique_name("edgelab-load-forecast")


def train(slope: float) -> LinearRegression:
    """A model of 'next window mean = slope * last sample' from a synthetic load series."""
    series = np.random.default_rng(7).random(60).reshape(-1, 1)
    x, _ = lagged(series, 0, WINDOW, 1)
    y = slope * x[:, -1]
    return LinearRegression().fit(x, y)


def register(name: str, model: LinearRegression) -> str:
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                        input_example=np.zeros((1, WINDOW)))
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(name, "production", version)
    return version


def test_model_from_the_production_alias(mlflow_env: str, model_name: str) -> None:
    first = register(model_name, train(1.0))
    model = load_model(f"mlflow:models:/{model_name}@production", "cpu_utilisation", WINDOW)
    assert model.name == f"mlflow:models:/{model_name}@production"
    for value in (0.2, 0.3, 0.4):
        model.update({"cpu_utilisation": value})
    assert model.predict() == pytest.approx(0.4, abs=1e-6)

    # A new version behind the alias: a loader made afterwards (the node agent at its
    # next start) gets it; the alias, not a version number, is the contract.
    second = register(model_name, train(2.0))
    assert int(second) == int(first) + 1
    assert MlflowClient().get_model_version_by_alias(model_name, "production").version == second
    moved = load_model(f"mlflow:models:/{model_name}@production", "cpu_utilisation", WINDOW)
    for value in (0.2, 0.3, 0.4):
        moved.update({"cpu_utilisation": value})
    assert moved.predict() == pytest.approx(0.8, abs=1e-6)


def test_missing_alias_or_model_is_a_clear_error(mlflow_env: str, model_name: str) -> None:
    register(model_name, train(1.0))
    with pytest.raises(ModelError, match=f"cannot load models:/{model_name}@staging"):
        load_model(f"mlflow:models:/{model_name}@staging", "cpu_utilisation", WINDOW)
    with pytest.raises(ModelError, match="cannot load models:/no-such-model@production"):
        load_model("mlflow:models:/no-such-model@production", "cpu_utilisation", WINDOW)


def test_node_agent_entry_point_reads_the_tracking_uri_from_its_environment(mlflow_env: str, model_name: str) -> None:
    """The variable a unit's Environment= sets reaches mlflow in a fresh process."""
    register(model_name, train(1.0))
    code = ("from edgelab.models import load_model; "
            f"m = load_model('mlflow:models:/{model_name}@production', 'cpu_utilisation', {WINDOW}); "
            "[m.update({'cpu_utilisation': v}) for v in (0.5, 0.5, 0.5)]; print(round(m.predict(), 6))")
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_env)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0.5"
