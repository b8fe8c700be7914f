"""The chosen forecaster of an evaluation, usable on live data.

`evaluate()` returns it as `Evaluation.model`: the candidate it chose, exactly as it
was evaluated (models trained on the training part, the scaler fitted there), so the
figures in the report are the figures of the model that forecasts. It forecasts from
the last `window` grid rows of the KPI and the metrics (`forecast_next`) or, like a
scikit-learn regressor, from window features (`predict`, the layout of
`forecast.window_features`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import LearnError
from .forecast import BASELINES, MODELS, _filled, window_features


@dataclass
class Forecaster:
    """kind: persistence, moving_average, ridge or hgb; target: the KPI's name; names:
    the metrics it reads, in order; step seconds; window and horizon in steps; scaler
    and estimator: the fitted scikit-learn objects (ridge: both, hgb: the estimator)."""

    kind: str
    target: str
    names: list[str]
    step: float
    window: int
    horizon: int
    scaler: Any = field(default=None, repr=False)
    estimator: Any = field(default=None, repr=False)
    test_nmae: float = float("nan")
    kpi_inputs: bool = True  # False: the metrics alone (see forecast.evaluate)
    level: float = float("nan")  # training_mean's forecast

    def __post_init__(self) -> None:
        if self.kind not in BASELINES + MODELS + ("training_mean",):
            raise LearnError("unknown forecaster kind %r" % self.kind)
        if self.kind in MODELS and self.estimator is None:
            raise LearnError("forecaster %s has no fitted estimator" % self.kind)

    @property
    def horizon_seconds(self) -> float:
        return self.horizon * self.step

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Forecasts (s,) from window features (s, p): the KPI's last value (column 0)
        plus the learnt change, or a baseline."""
        features = np.asarray(features, dtype=np.float32)
        if self.kind == "training_mean":
            return np.full(len(features), self.level)
        last = features[:, 0].astype(np.float64) if self.kpi_inputs else np.zeros(len(features))
        if self.kind == "persistence":
            return last
        if self.kind == "moving_average":
            return features[:, 2].astype(np.float64)
        inputs = self.scaler.transform(features) if self.scaler is not None else features
        return last + np.asarray(self.estimator.predict(inputs), dtype=np.float64)

    def forecast_next(self, kpi: Sequence[float], metrics: np.ndarray) -> float:
        """The KPI `horizon` steps after the last row, from the last `window` rows of
        the KPI (NaN where not observed; ignored without kpi_inputs) and the metrics
        (rows, len(names))."""
        y = np.asarray(kpi, dtype=np.float64)
        x = np.asarray(metrics, dtype=np.float64).reshape(len(y), len(self.names))
        if len(y) < self.window:
            raise LearnError("the forecaster needs %d rows, got %d" % (self.window, len(y)))
        y, x = y[-self.window:], x[-self.window:]
        yf = _filled(y) if self.kpi_inputs else np.zeros(len(y))
        if np.isnan(yf[0]) or np.isnan(x).any():
            raise LearnError("the window has a value missing (the KPI before its first value, or a metric)")
        features, _names = window_features(x, yf, self.names, np.array([self.window - 1]), self.window,
                                           self.kpi_inputs)
        return float(self.predict(features)[0])

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "target": self.target, "metrics": self.names, "step_seconds": self.step,
                "window_seconds": self.window * self.step, "horizon_seconds": self.horizon_seconds,
                "test_nmae": round(self.test_nmae, 6), "kpi_inputs": self.kpi_inputs}
