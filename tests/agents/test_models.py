from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgelab.models import LinearModel, ModelError, OnlineModel, SklearnModel, lagged, load_model


def load_series(n: int = 600, seed: int = 1) -> np.ndarray:
    """A load-like series: daily-ish cycle + bursts + AR(1) noise, clipped to 0..1."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    noise = np.zeros(n)
    for i in range(1, n):
        noise[i] = 0.8 * noise[i - 1] + rng.normal(0, 0.03)
    y = 0.45 + 0.25 * np.sin(2 * np.pi * t / 96) + 0.1 * np.sin(2 * np.pi * t / 23) + noise
    return np.clip(y, 0, 1)


def test_lagged_windows_and_targets() -> None:
    s = np.arange(10, dtype=float)[:, None]
    x, y = lagged(s, 0, window=3, horizon=2)
    assert x.shape == (6, 3)
    assert x[0].tolist() == [0, 1, 2] and x[-1].tolist() == [5, 6, 7]
    assert y.tolist() == [3.5, 4.5, 5.5, 6.5, 7.5, 8.5]


def test_online_model_beats_persistence_on_held_out_data() -> None:
    series = load_series()
    model = OnlineModel("cpu_utilisation", window=12)
    assert model.name == "online:persistence"
    errors_model, errors_persist = [], []
    for i, v in enumerate(series):
        model.update({"cpu_utilisation": float(v)})
        pred = model.predict()
        assert pred is not None
        future = series[i + 1:i + 13]
        if i >= 300 and len(future) == 12:  # score only after it had time to fit
            errors_model.append(abs(pred - future.mean()))
            errors_persist.append(abs(v - future.mean()))
    assert model.fits > 10
    assert model.name == "online:ridge"
    assert model.validation_error is not None and model.persistence_error is not None
    assert model.validation_error < model.persistence_error
    # On data it never saw, too (the series after the training window).
    mae_model, mae_persist = float(np.mean(errors_model)), float(np.mean(errors_persist))
    assert mae_model < 0.9 * mae_persist, (mae_model, mae_persist)


def test_online_model_keeps_persistence_on_a_random_walk() -> None:
    rng = np.random.default_rng(3)
    walk = np.cumsum(rng.normal(0, 0.02, 400)) + 0.5
    model = OnlineModel("cpu_utilisation", window=12)
    wins = 0
    for v in walk:
        model.update({"cpu_utilisation": float(v)})
        wins += model.name == "online:ridge"
    # A random walk's best forecast is the last value: ridge rarely wins there.
    assert model.fits > 10
    assert wins < len(walk) * 0.5
    assert len(model.history) <= 720


def test_online_history_bounded() -> None:
    model = OnlineModel("x", window=4, history=50, min_samples=40, refit_every=5)
    for i in range(500):
        model.update({"x": float(i % 17)})
    assert len(model.history) == 50 and len(model.recent) == 4


def write_json(tmp_path: Path, **spec: object) -> str:
    base = {"format": "edgelab.linear/1", "target": "cpu_utilisation", "features": ["cpu_utilisation"],
            "window": 3, "coef": [0.0, 0.0, 0.0], "intercept": 0.95}
    base.update(spec)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(base))
    return "file:" + str(path)


def test_json_constant_model(tmp_path: Path) -> None:
    model = load_model(write_json(tmp_path), "cpu_utilisation", 12)
    assert isinstance(model, LinearModel) and model.name == "file:model.json"
    assert model.predict() is None
    for v in (0.1, 0.5, 0.0, 0.3):
        model.update({"cpu_utilisation": v})
        assert model.predict() == pytest.approx(0.95)


def test_json_linear_model_weights_oldest_first(tmp_path: Path) -> None:
    model = load_model(write_json(tmp_path, coef=[1.0, 10.0, 100.0], intercept=0.5, validation_error=0.1),
                       "cpu_utilisation", 12)
    model.update({"cpu_utilisation": 1.0})  # window padded with the oldest sample
    assert model.predict() == pytest.approx(111.5)
    model.update({"cpu_utilisation": 2.0})
    model.update({"cpu_utilisation": 3.0})
    assert model.predict() == pytest.approx(1 + 20 + 300 + 0.5)
    model.update({"memory": 9.0})  # a sample without the feature is skipped
    assert model.predict() == pytest.approx(321.5)
    assert model.validation_error == 0.1


@pytest.mark.parametrize(("spec", "error"), [
    ({"format": "other"}, "format must be"),
    ({"coef": [0.0, 0.0]}, "coef must be 3 numbers"),
    ({"window": 0}, "window must be"),
    ({"features": []}, "features must be"),
    ({"intercept": "x"}, "intercept must be"),
])
def test_json_model_errors(tmp_path: Path, spec: dict[str, object], error: str) -> None:
    with pytest.raises(ModelError, match=error):
        load_model(write_json(tmp_path, **spec), "cpu_utilisation", 12)


def test_other_sources_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        load_model("file:" + str(tmp_path / "missing.json"), "t", 3)
    with pytest.raises(ModelError, match="unknown model file type"):
        load_model("file:/x/model.onnx", "t", 3)
    try:
        import mlflow  # noqa: F401
    except ImportError:
        with pytest.raises(ModelError, match="optional extra"):
            load_model("mlflow:models:/m@production", "t", 3)


def test_sklearn_joblib_model_equals_sklearn_predict(tmp_path: Path) -> None:
    import joblib
    from sklearn.ensemble import GradientBoostingRegressor

    series = load_series(300)[:, None]
    x, y = lagged(series, 0, window=6, horizon=6)
    est = GradientBoostingRegressor(n_estimators=20, random_state=0).fit(x, y)
    path = tmp_path / "gbr.joblib"
    joblib.dump({"model": est, "features": ["cpu_utilisation"], "window": 6}, path)
    model = load_model("file:" + str(path), "cpu_utilisation", 12)
    assert isinstance(model, SklearnModel) and model.window == 6
    for i in range(20):
        model.update({"cpu_utilisation": float(series[i, 0])})
    assert model.predict() == pytest.approx(float(est.predict(x[14:15])[0]))
    # A bare estimator uses model_window and model_target.
    joblib.dump(est, tmp_path / "bare.joblib")
    with pytest.raises(ModelError, match="expects 6 inputs"):
        load_model("file:" + str(tmp_path / "bare.joblib"), "cpu_utilisation", 12)
    bare = load_model("file:" + str(tmp_path / "bare.joblib"), "cpu_utilisation", 6)
    for i in range(20):
        bare.update({"cpu_utilisation": float(series[i, 0])})
    assert bare.predict() == model.predict()


def test_default_models_do_not_import_sklearn(tmp_path: Path) -> None:
    code = ("import sys; from edgelab.models import load_model; "
            "import edgelab.node_agent, edgelab.cluster_agent.agent; "
            f"m = load_model({write_json(tmp_path)!r}, 'cpu_utilisation', 12); "
            "o = load_model('online', 'cpu_utilisation', 12); o.update({'cpu_utilisation': 0.5}); "
            "print('sklearn' in sys.modules, 'kafka' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_joblib_model_without_scikit_learn_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import joblib
    from sklearn.linear_model import Ridge

    path = tmp_path / "ridge.joblib"
    joblib.dump(Ridge().fit([[0.0], [1.0]], [0.0, 1.0]), path)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn` now fails as if not installed
    with pytest.raises(ModelError) as info:
        load_model("file:" + str(path), "cpu_utilisation", 1)
    assert str(info.value) == f"{path}: .joblib models need scikit-learn: pip install 'edgelab-agents[sklearn]'"
