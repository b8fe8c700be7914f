"""Models from an MLflow registry alias, against a real MLflow tracking server (PyPI's
mlflow, `mlflow server` on loopback with a SQLite store and served artifacts):
a scikit-learn model logged and registered, the alias `production` set, and the node
agent's loader (`model_source: mlflow:models:/NAME@production`) predicting with it;
moving the alias moves what a new loader gets; a missing alias or model is a clear
ModelError."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from edgelab.models import ModelError, lagged, load_model
from support.mlflow_server import running_mlflow

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (requirements.txt)")
from mlflow.tracking import MlflowClient  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402

WINDOW = 3
MODEL = "edgelab-load-forecast"


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as server:
        yield server.uri


@pytest.fixture
def mlflow_env(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    mlflow.set_tracking_uri(tracking_uri)
    return tracking_uri


def train(slope: float) -> LinearRegression:
    """A model of 'next window mean = slope * last sample' from a synthetic load series."""
    series = np.random.default_rng(7).random(60).reshape(-1, 1)
    x, _ = lagged(series, 0, WINDOW, 1)
    y = slope * x[:, -1]
    return LinearRegression().fit(x, y)


def register(model: LinearRegression) -> str:
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=MODEL,
                                        input_example=np.zeros((1, WINDOW)))
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(MODEL, "production", version)
    return version


def test_model_from_the_production_alias(mlflow_env: str) -> None:
    first = register(train(1.0))
    model = load_model(f"mlflow:models:/{MODEL}@production", "cpu_utilisation", WINDOW)
    assert model.name == f"mlflow:models:/{MODEL}@production"
    for value in (0.2, 0.3, 0.4):
        model.update({"cpu_utilisation": value})
    assert model.predict() == pytest.approx(0.4, abs=1e-6)

    # A new version behind the alias: a loader made afterwards (the node agent at its
    # next start) gets it; the alias, not a version number, is the contract.
    second = register(train(2.0))
    assert int(second) == int(first) + 1
    assert MlflowClient().get_model_version_by_alias(MODEL, "production").version == second
    moved = load_model(f"mlflow:models:/{MODEL}@production", "cpu_utilisation", WINDOW)
    for value in (0.2, 0.3, 0.4):
        moved.update({"cpu_utilisation": value})
    assert moved.predict() == pytest.approx(0.8, abs=1e-6)


def test_missing_alias_or_model_is_a_clear_error(mlflow_env: str) -> None:
    register(train(1.0))
    with pytest.raises(ModelError, match=f"cannot load models:/{MODEL}@staging"):
        load_model(f"mlflow:models:/{MODEL}@staging", "cpu_utilisation", WINDOW)
    with pytest.raises(ModelError, match="cannot load models:/no-such-model@production"):
        load_model("mlflow:models:/no-such-model@production", "cpu_utilisation", WINDOW)


def test_node_agent_entry_point_reads_the_tracking_uri_from_its_environment(mlflow_env: str) -> None:
    """The variable a unit's Environment= sets reaches mlflow in a fresh process."""
    register(train(1.0))
    code = ("from edgelab.models import load_model; "
            f"m = load_model('mlflow:models:/{MODEL}@production', 'cpu_utilisation', {WINDOW}); "
            "[m.update({'cpu_utilisation': v}) for v in (0.5, 0.5, 0.5)]; print(round(m.predict(), 6))")
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_env)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0.5"
