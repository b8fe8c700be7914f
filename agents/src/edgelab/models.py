"""Load models: a window of samples -> the target's mean over the next window.

Sources (config key model_source):
  online            ridge regression over lagged windows, refitted on this node's own
                    recent history; used only while it beats persistence on a held-out
                    tail of that history (never on its training rows)
  file:PATH.json    linear model, {"format": "edgelab.linear/1", "target", "features",
                    "window", "coef" (window*len(features), oldest sample first),
                    "intercept"}
  file:PATH.joblib  a scikit-learn regressor (or {"model", "features", "window"});
                    needs the optional extra `sklearn`, imported only then
  mlflow:URI        mlflow.pyfunc model (optional extra `mlflow`), imported only then;
                    models:/NAME@production (or models:/NAME/Production) is read from
                    the node's model store when the node API pulled NAME there, so the
                    node runs without reaching MLflow; otherwise from MLflow
  mlflow:store:EXP  the store's current model of experiment EXP (never MLflow)

The node's model store is the node API's (edgelab.node_api.store): STORE/<exp_id>/current
links to an MLflow model directory with edgelab-model.json ({"name", "version", ...});
STORE is $EDGELAB_MODEL_STORE, default /var/lib/edgelab/models.

Until a window is full, the oldest sample is repeated to fill it, so every model
predicts from the first sample.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .config import ConfigError

LINEAR_FORMAT = "edgelab.linear/1"
MODEL_STORE = "/var/lib/edgelab/models"
STORE_META = "edgelab-model.json"


class ModelError(ConfigError):
    """A model that cannot be loaded or used (a config error at start: exit code 2)."""


class Predictor(Protocol):
    target: str
    validation_error: float | None

    @property
    def name(self) -> str: ...

    def update(self, values: dict[str, float]) -> None: ...

    def predict(self) -> float | None: ...


class _Windowed:
    """Keeps the last `window` feature vectors."""

    def __init__(self, features: Sequence[str], window: int, target: str) -> None:
        self.features = list(features)
        self.window = window
        self.target = target
        self.recent: deque[list[float]] = deque(maxlen=window)
        self.validation_error: float | None = None

    def update(self, values: dict[str, float]) -> None:
        row = [float(values.get(f, math.nan)) for f in self.features]
        if any(math.isnan(v) for v in row):
            return  # a sample without the features (e.g. app endpoint down) is skipped
        self.recent.append(row)

    def vector(self) -> np.ndarray | None:
        if not self.recent:
            return None
        rows = list(self.recent)
        rows = [rows[0]] * (self.window - len(rows)) + rows
        return np.asarray(rows, dtype=float).reshape(-1)


class LinearModel(_Windowed):
    def __init__(self, path: str, spec: dict[str, Any]) -> None:
        if spec.get("format") != LINEAR_FORMAT:
            raise ModelError(f"{path}: format must be {LINEAR_FORMAT!r}")
        features, window = spec.get("features"), spec.get("window")
        if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
            raise ModelError(f"{path}: features must be a non-empty list of names")
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ModelError(f"{path}: window must be an integer >= 1")
        coef, intercept = spec.get("coef"), spec.get("intercept")
        if (not isinstance(coef, list) or len(coef) != window * len(features)
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coef)):
            raise ModelError(f"{path}: coef must be {window * len(features)} numbers (window * features)")
        if not isinstance(intercept, (int, float)) or isinstance(intercept, bool):
            raise ModelError(f"{path}: intercept must be a number")
        target = spec.get("target", features[0])
        if not isinstance(target, str):
            raise ModelError(f"{path}: target must be a string")
        super().__init__(features, window, target)
        self.coef = np.asarray(coef, dtype=float)
        self.intercept = float(intercept)
        self.name = "file:" + Path(path).name
        err = spec.get("validation_error")
        self.validation_error = float(err) if isinstance(err, (int, float)) and not isinstance(err, bool) else None

    def predict(self) -> float | None:
        x = self.vector()
        if x is None:
            return None
        return float(x @ self.coef + self.intercept)


class SklearnModel(_Windowed):
    def __init__(self, path: str, target: str, window: int) -> None:
        try:
            import joblib  # type: ignore[import-untyped, unused-ignore]
            import sklearn  # type: ignore[import-untyped, unused-ignore]  # noqa: F401 - what the pickle needs
        except ImportError:
            raise ModelError(f"{path}: .joblib models need scikit-learn: "
                             "pip install 'edgelab-agents[sklearn]'") from None
        try:
            obj = joblib.load(path)
        except Exception as exc:
            raise ModelError(f"{path}: cannot load: {exc}") from None
        features: list[str] = [target]
        if isinstance(obj, dict):
            model = obj.get("model")
            features = list(obj.get("features", features))
            window = int(obj.get("window", window))
            target = str(obj.get("target", target))
        else:
            model = obj
        if model is None or not hasattr(model, "predict"):
            raise ModelError(f"{path}: the object has no predict()")
        expected = getattr(model, "n_features_in_", None)
        if expected is not None and expected != window * len(features):
            raise ModelError(f"{path}: model expects {expected} inputs, window*features is {window * len(features)}")
        super().__init__(features, window, target)
        self.model = model
        self.name = "file:" + Path(path).name

    def predict(self) -> float | None:
        x = self.vector()
        if x is None:
            return None
        return float(np.ravel(self.model.predict(x.reshape(1, -1)))[0])


def model_store() -> Path:
    return Path(os.environ.get("EDGELAB_MODEL_STORE") or MODEL_STORE)


def _stored(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / STORE_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def store_location(uri: str) -> str | None:
    """The store's copy of a production model URI (None: not in the store)."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@production|/Production|/production)", uri)
    root = model_store()
    if match is None or not root.is_dir():
        return None
    for current in sorted(root.glob("*/current")):
        meta = _stored(current)
        if meta is not None and meta.get("name") == match.group(1):
            return str(current.resolve())
    return None


class MlflowModel(_Windowed):
    def __init__(self, uri: str, target: str, window: int) -> None:
        try:
            import mlflow.pyfunc  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise ModelError("model_source mlflow: needs the optional extra: "
                             "pip install 'edgelab-agents[mlflow]'") from None
        if uri.startswith("store:"):
            exp_id = uri[len("store:"):]
            current = model_store() / exp_id / "current"
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", exp_id) or _stored(current) is None:
                raise ModelError(f"cannot load {uri}: no model for experiment {exp_id!r} in the node's store "
                                 f"{model_store()} (pull it with the node API: PUT /api/mlflow/model)")
            location: str | None = str(current.resolve())
        else:
            location = store_location(uri)
        try:
            self.model = mlflow.pyfunc.load_model(location or uri)
        except Exception as exc:
            raise ModelError(f"cannot load {uri}: {exc}") from None
        super().__init__([target], window, target)
        self.name = "mlflow:" + uri
        self.location = location or uri
        stored = _stored(Path(location)) if location else None
        self.version = str(stored["version"]) if stored and "version" in stored else None

    def predict(self) -> float | None:
        x = self.vector()
        if x is None:
            return None
        return float(np.ravel(self.model.predict(x.reshape(1, -1)))[0])


def lagged(series: np.ndarray, target_col: int, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `window` lagged samples (flattened, oldest first) and, as y, the
    target's mean over the following `horizon` samples."""
    n = len(series) - window - horizon + 1
    if n <= 0:
        return np.empty((0, window * series.shape[1])), np.empty(0)
    idx = np.arange(window)[None, :] + np.arange(n)[:, None]
    x = series[idx].reshape(n, -1)
    csum = np.concatenate([[0.0], np.cumsum(series[:, target_col])])
    starts = np.arange(n) + window
    y = (csum[starts + horizon] - csum[starts]) / horizon
    return x, y


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Closed-form ridge with an unpenalised intercept."""
    xm, ym = x.mean(axis=0), y.mean()
    xc = x - xm
    gram = xc.T @ xc + alpha * np.eye(x.shape[1])
    coef = np.linalg.solve(gram, xc.T @ (y - ym))
    return coef, float(ym - xm @ coef)


class OnlineModel(_Windowed):
    """Ridge regression trained on the node's live data, with persistence as fallback.

    Every `refit_every` samples once `min_samples` are held: rows = lagged windows of
    the bounded history; the last `holdout` fraction (after a gap, so no training row
    overlaps a validation target) is held out; the model is used only when its mean
    absolute error there is lower than persistence's (the last value)."""

    def __init__(self, target: str, window: int, *, history: int = 720, refit_every: int = 12,
                 min_samples: int = 96, holdout: float = 0.25, alpha: float = 1e-3) -> None:
        super().__init__([target], window, target)
        self.horizon = window
        self.history: deque[float] = deque(maxlen=history)
        self.refit_every = refit_every
        self.min_samples = max(min_samples, 3 * (window + self.horizon) + 8)
        self.holdout = holdout
        self.alpha = alpha
        self.coef: np.ndarray | None = None
        self.intercept = 0.0
        self.persistence_error: float | None = None
        self._since_fit = 0
        self.fits = 0

    @property
    def name(self) -> str:
        return "online:ridge" if self.coef is not None else "online:persistence"

    def update(self, values: dict[str, float]) -> None:
        value = values.get(self.target)
        if value is None or not math.isfinite(value):
            return
        self.recent.append([float(value)])
        self.history.append(float(value))
        self._since_fit += 1
        if len(self.history) >= self.min_samples and self._since_fit >= self.refit_every:
            self._since_fit = 0
            self.refit()

    def refit(self) -> None:
        series = np.asarray(self.history, dtype=float)[:, None]
        x, y = lagged(series, 0, self.window, self.horizon)
        n_val = max(4, int(len(y) * self.holdout))
        gap = self.window + self.horizon
        n_train = len(y) - n_val - gap
        if n_train < 2 * self.window:
            return
        # Scale alpha with the data's variance so it means the same for any unit.
        alpha = self.alpha * len(x) * float(np.var(x[:n_train]) + 1e-12)
        coef, intercept = ridge_fit(x[:n_train], y[:n_train], alpha)
        xv, yv = x[-n_val:], y[-n_val:]
        model_err = float(np.mean(np.abs(xv @ coef + intercept - yv)))
        persist_err = float(np.mean(np.abs(xv[:, -1] - yv)))
        self.fits += 1
        self.persistence_error = persist_err
        if model_err < persist_err:
            self.coef, self.intercept, self.validation_error = coef, intercept, model_err
        else:
            self.coef, self.validation_error = None, persist_err

    def predict(self) -> float | None:
        x = self.vector()
        if x is None:
            return None
        if self.coef is None:
            return float(x[-1])
        return float(x @ self.coef + self.intercept)


def load_model(source: str, target: str, window: int) -> Predictor:
    """The model for a model_source value (ModelError if it cannot be used)."""
    if source == "online":
        return OnlineModel(target, window)
    if source.startswith("file:"):
        path = source[len("file:"):]
        if path.endswith(".json"):
            try:
                spec = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelError(f"{path}: cannot read: {exc}") from None
            if not isinstance(spec, dict):
                raise ModelError(f"{path}: expected a JSON object")
            return LinearModel(path, spec)
        if path.endswith(".joblib"):
            return SklearnModel(path, target, window)
        raise ModelError(f"{path}: unknown model file type (want .json or .joblib)")
    if source.startswith("mlflow:"):
        return MlflowModel(source[len("mlflow:"):], target, window)
    raise ModelError(f"unknown model_source {source!r}")
