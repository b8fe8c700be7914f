"""edgelab.learn.model: the forecaster evaluate() chose is the one its figures describe,
its scaler saw the training rows only, and it forecasts from a live window."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from edgelab.learn import synthetic
from edgelab.learn.align import clean
from edgelab.learn.errors import LearnError
from edgelab.learn.forecast import evaluate, make_windows, split
from edgelab.learn.model import Forecaster


@pytest.fixture(scope="module")
def trending() -> tuple[object, object]:
    # A KPI with a strong upward trend: the features' means differ between the
    # training part and the whole data set, so a scaler fitted on more is caught.
    s = synthetic.service(1500, 6, step=5.0, informative=2, noisy_copies=0, seed=3, extras=False)
    y = s.y + np.linspace(0.0, 400.0, len(s.y))
    data = clean(s.timestamps, s.step, s.names, s.x, y, "latency")
    return data, evaluate(data, 30.0, models=["ridge"])


def test_scaler_is_fitted_on_training_rows_only(trending: tuple[object, object]) -> None:
    data, result = trending
    model = result.model  # type: ignore[attr-defined]
    assert model is not None and model.scaler is not None, "ridge must be evaluated with its scaler"
    windows = make_windows(data.x, data.y, data.names, model.window, model.horizon)  # type: ignore[attr-defined]
    part = split(windows.anchor, model.window, model.horizon)
    train = windows.features[part.train].astype(np.float64)
    assert model.scaler.n_samples_seen_ == len(part.train)
    assert np.allclose(model.scaler.mean_, train.mean(axis=0), rtol=1e-5, atol=1e-6)
    everything = windows.features.astype(np.float64).mean(axis=0)
    assert not np.allclose(model.scaler.mean_[0], everything[0], rtol=1e-3)  # the KPI's level moved


def test_chosen_model_reproduces_the_reported_test_forecasts() -> None:
    s = synthetic.service(2000, 10, step=5.0, informative=3, noisy_copies=0, seed=8, extras=False)
    data = clean(s.timestamps, s.step, s.names, s.x, s.y, "latency")
    result = evaluate(data, 30.0)
    model = result.model
    assert model is not None and model.kind == result.chosen and model.kind in ("ridge", "hgb")
    # Each reported test forecast equals forecast_next over its window of raw rows.
    index = np.searchsorted(data.timestamps, result.timestamps) - model.horizon
    for position in (0, len(index) // 2, len(index) - 1):
        anchor = int(index[position])
        rows = slice(anchor - model.window + 1, anchor + 1)
        value = model.forecast_next(data.y[rows], data.x[rows])
        assert value == pytest.approx(float(result.forecast[position]), rel=1e-5)
    again = pickle.loads(pickle.dumps(model))  # the SRO keeps it on disk this way
    rows = slice(0, model.window)
    assert again.forecast_next(data.y[rows], data.x[rows]) == model.forecast_next(data.y[rows], data.x[rows])


def test_baselines_and_bad_windows() -> None:
    persistence = Forecaster("persistence", "kpi", ["m"], 1.0, 4, 2)
    average = Forecaster("moving_average", "kpi", ["m"], 1.0, 4, 2)
    y, x = [1.0, np.nan, 3.0, 8.0], np.ones((4, 1))
    assert persistence.forecast_next(y, x) == 8.0
    assert average.forecast_next(y, x) == pytest.approx((1 + 1 + 3 + 8) / 4)  # the gap holds the last value
    with pytest.raises(LearnError, match="needs 4 rows, got 3"):
        persistence.forecast_next(y[:3], x[:3])
    with pytest.raises(LearnError, match="a value missing"):
        persistence.forecast_next(y, np.array([[1.0], [np.nan], [1.0], [1.0]]))
    with pytest.raises(LearnError, match="no fitted estimator"):
        Forecaster("ridge", "kpi", ["m"], 1.0, 4, 2)


def test_metrics_only_models_never_read_the_kpi() -> None:
    s = synthetic.service(2000, 10, step=5.0, informative=3, noisy_copies=0, seed=8, extras=False)
    data = clean(s.timestamps, s.step, s.names, s.x, s.y, "latency")
    result = evaluate(data, 30.0, kpi_inputs=False)
    model = result.model
    assert model is not None and not model.kpi_inputs and model.kind in ("ridge", "hgb")
    kinds = {c.name: c.kind for c in result.candidates}
    assert kinds == {"training_mean": "baseline", "persistence": "reference", "moving_average": "reference",
                     "ridge": "model", "hgb": "model"}
    # The reported test forecasts come from the metrics alone: a window of KPI values
    # that are all missing gives the same forecast.
    index = np.searchsorted(data.timestamps, result.timestamps) - model.horizon
    for position in (0, len(index) - 1):
        anchor = int(index[position])
        rows = slice(anchor - model.window + 1, anchor + 1)
        blind = model.forecast_next([np.nan] * model.window, data.x[rows])
        assert blind == pytest.approx(float(result.forecast[position]), rel=1e-5)


def test_metrics_only_on_noise_chooses_the_training_mean() -> None:
    rng = np.random.default_rng(2)
    n = 900
    y = 50 + rng.standard_normal(n)
    x = rng.standard_normal((n, 3))
    data = clean(1_767_225_600.0 + 5.0 * np.arange(n), 5.0, ["a", "b", "c"], x, y, "kpi")
    result = evaluate(data, 30.0, kpi_inputs=False)
    assert result.chosen == "training_mean" and result.model is not None
    level = float(result.model.level)
    assert result.model.forecast_next([np.nan] * result.model.window, x[:result.model.window]) == level
    assert np.allclose(result.forecast, level)
