"""Forecast the KPI H seconds ahead from lagged windows, and evaluate it honestly.

A sample is anchored at grid row t: its inputs are rows t-W+1 .. t of the KPI and the
metrics (W = window), its target is the KPI at row t+H (H = horizon). So a sample
touches rows t-W+1 .. t+H.

The split is by time: the first part trains, the next validates (model choice), the
last tests (the reported figures). Between two parts, W+H-1 anchors are left out, so
no validation or test sample shares a single row with a training sample (see
`Split.rows`; tests/agents/test_learn_forecast.py checks it).

Candidates: the baselines `persistence` (the KPI's last value) and `moving_average`
(its mean over the window), and the models `ridge` (standardised features, scaler
fitted on the training part only, alpha chosen on validation) and `hgb`
(scikit-learn's HistGradientBoostingRegressor). Models learn the change from the last
value (target y[t+H] - y[t]), which keeps trees from flattening a trend. The chosen
candidate has the lowest validation NMAE; a model must beat the best baseline
strictly, or the baseline is chosen and the evaluation says so.

Window features of each series (the KPI and each metric): last value, mean of the
last quarter window, mean of the window, and last minus first; the KPI also gives
its values 1, 2 and 3 steps back.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .align import Dataset
from .errors import LearnError, require_sklearn
from .select import DEFAULT_METHOD, Selection, select

if TYPE_CHECKING:
    from .model import Forecaster

BASELINES = ("persistence", "moving_average")
MODELS = ("ridge", "hgb")
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
FRACTIONS = (0.6, 0.2, 0.2)
MIN_SAMPLES = {"train": 30, "validation": 10, "test": 10}


def nmae(actual: np.ndarray, forecast: np.ndarray) -> float:
    """Normalised mean absolute error: mean |forecast - actual| / mean |actual|."""
    scale = float(np.mean(np.abs(actual)))
    if scale == 0.0 or not math.isfinite(scale):
        raise LearnError("NMAE is undefined: the KPI's mean absolute value on this part is %r" % scale)
    return float(np.mean(np.abs(forecast - actual)) / scale)


def steps_of(seconds: float, step: float, what: str) -> int:
    """A duration as a whole number of grid steps."""
    if not seconds > 0 or not math.isfinite(seconds):
        raise LearnError("%s must be a positive duration, got %r s" % (what, seconds))
    count = seconds / step
    if abs(count - round(count)) > 1e-6 * max(1.0, count) or round(count) < 1:
        raise LearnError("%s %gs is not a whole number of sampling steps (%gs)" % (what, seconds, step))
    return round(count)


# ---------------------------------------------------------------- windows
@dataclass
class Windows:
    """Samples: features (s, p) float32, target y[t+H], last y[t], moving average of
    y over the window, and the anchor row t of each sample."""

    features: np.ndarray
    target: np.ndarray
    last: np.ndarray
    mean: np.ndarray
    anchor: np.ndarray
    feature_names: list[str]
    window: int
    horizon: int


def _filled(y: np.ndarray) -> np.ndarray:
    present = ~np.isnan(y)
    index = np.where(present, np.arange(len(y)), 0)
    np.maximum.accumulate(index, out=index)
    out = y[index]
    out[~np.maximum.accumulate(present)] = np.nan
    return out


def _window_stats(series: np.ndarray, anchors: np.ndarray, window: int) -> list[np.ndarray]:
    """last, mean of the last quarter, mean of the window, last - first, for each
    column of series (n, c) at each anchor; returns 4 arrays (s, c)."""
    quarter = max(1, window // 4)
    total = np.zeros((series.shape[0] + 1, series.shape[1]))
    np.cumsum(series, axis=0, out=total[1:])
    last = series[anchors]
    recent = (total[anchors + 1] - total[anchors + 1 - quarter]) / quarter
    whole = (total[anchors + 1] - total[anchors + 1 - window]) / window
    change = last - series[anchors - window + 1]
    return [last, recent, whole, change]


def window_features(x: np.ndarray, yf: np.ndarray, names: Sequence[str], anchors: np.ndarray, window: int,
                    kpi_inputs: bool = True) -> tuple[np.ndarray, list[str]]:
    """The feature matrix (s, p) float32 of the windows ending at `anchors` (each at
    least window - 1), from metrics x (n, m) and the forward-filled KPI yf (n,); and
    the feature names. With kpi_inputs, column 0 is the KPI's last value and column 2
    its window mean; without, the features are the metrics' only."""
    parts: list[np.ndarray] = []
    feature_names: list[str] = []
    kinds = ("last", "mean_recent", "mean_window", "change")
    if kpi_inputs:
        for kind, values in zip(kinds, _window_stats(yf[:, None], anchors, window), strict=False):
            parts.append(values)
            feature_names.append("kpi:%s" % kind)
        for lag in (1, 2, 3):
            if lag < window:
                parts.append(yf[anchors - lag][:, None])
                feature_names.append("kpi:lag%d" % lag)
    if x.shape[1]:
        for kind, values in zip(kinds, _window_stats(x, anchors, window), strict=False):
            parts.append(values)
            feature_names.extend("%s:%s" % (name, kind) for name in names)
    features = np.empty((len(anchors), sum(p.shape[1] for p in parts)), dtype=np.float32)
    column = 0
    for part in parts:
        features[:, column:column + part.shape[1]] = part
        column += part.shape[1]
    return features, feature_names


def make_windows(x: np.ndarray, y: np.ndarray, names: Sequence[str], window: int, horizon: int,
                 kpi_inputs: bool = True) -> Windows:
    """Every sample whose inputs exist and whose target was observed."""
    if window < 1 or horizon < 1:
        raise LearnError("window and horizon must be at least one step (window %d, horizon %d)" % (window, horizon))
    n = len(y)
    if n < window + horizon:
        raise LearnError("%d grid points are fewer than one window (%d) plus the horizon (%d): give a longer "
                         "dataset or a shorter window or horizon" % (n, window, horizon))
    yf = _filled(y)
    anchors = np.arange(window - 1, n - horizon)
    usable = ~np.isnan(y[anchors + horizon]) & ~np.isnan(yf[anchors - window + 1])
    anchors = anchors[usable]
    if len(anchors) == 0:
        raise LearnError("no window has both its inputs and an observed KPI %d steps later" % horizon)
    features, feature_names = window_features(x, yf, names, anchors, window, kpi_inputs)
    whole = _window_stats(yf[:, None], anchors, window)[2][:, 0]
    return Windows(features, y[anchors + horizon], yf[anchors], whole, anchors, feature_names, window, horizon)


# ---------------------------------------------------------------- split
@dataclass
class Split:
    """Sample positions (into Windows arrays) of each part, in time order."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    gap: int  # anchors left out between two parts

    def rows(self, anchors: np.ndarray, part: str, window: int, horizon: int) -> tuple[int, int]:
        """First and last grid row any sample of `part` touches."""
        chosen = anchors[getattr(self, part)]
        return int(chosen.min()) - window + 1, int(chosen.max()) + horizon


def split(anchors: np.ndarray, window: int, horizon: int, fractions: Sequence[float] = FRACTIONS) -> Split:
    """Time-ordered train/validation/test by anchor row, `window + horizon - 1`
    anchors left out between parts."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise LearnError("split fractions must be three positive numbers adding up to 1, got %s" % (fractions,))
    gap = window + horizon - 1
    first, last = int(anchors[0]), int(anchors[-1])
    span = last - first + 1 - 2 * gap
    if span <= 0:
        raise LearnError("the data is too short for three parts separated by %d steps" % gap)
    end_train = first + int(span * fractions[0])
    end_validation = end_train + gap + int(span * fractions[1])
    start_test = end_validation + gap
    train = np.flatnonzero(anchors < end_train)
    validation = np.flatnonzero((anchors >= end_train + gap) & (anchors < end_validation))
    test = np.flatnonzero(anchors >= start_test)
    counts = {"train": len(train), "validation": len(validation), "test": len(test)}
    short = {part: count for part, count in counts.items() if count < MIN_SAMPLES[part]}
    if short:
        raise LearnError("too few samples for an honest evaluation (%s; need at least %s): give a longer "
                         "dataset or a shorter window or horizon" % (
                             ", ".join("%s %d" % kv for kv in counts.items()),
                             ", ".join("%s %d" % kv for kv in MIN_SAMPLES.items())))
    return Split(train, validation, test, gap)


# ---------------------------------------------------------------- candidates
@dataclass
class Candidate:
    name: str
    kind: str  # "baseline" or "model"
    validation_nmae: float
    test_nmae: float
    train_seconds: float
    detail: str = ""
    chosen: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "validation_nmae": round(self.validation_nmae, 6),
                "test_nmae": round(self.test_nmae, 6), "train_seconds": round(self.train_seconds, 4),
                "detail": self.detail, "chosen": self.chosen}


@dataclass
class Evaluation:
    target: str
    step: float
    horizon: int
    window: int
    features: list[str]
    counts: dict[str, int]
    gap: int
    candidates: list[Candidate]
    chosen: str
    note: str
    timestamps: np.ndarray  # test: time the forecast is for
    actual: np.ndarray
    forecast: np.ndarray
    selection: Selection | None = None
    dropped: dict[str, str] = field(default_factory=dict)
    model: Forecaster | None = None  # the chosen candidate, as evaluated (trained on the training part)

    @property
    def chosen_candidate(self) -> Candidate:
        return next(c for c in self.candidates if c.name == self.chosen)

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target, "step_seconds": self.step, "horizon_seconds": self.horizon * self.step,
            "window_seconds": self.window * self.step, "features": self.features, "samples": self.counts,
            "gap_samples": self.gap, "chosen": self.chosen, "note": self.note,
            "test_nmae": round(self.chosen_candidate.test_nmae, 6),
            "candidates": [c.as_dict() for c in self.candidates],
            "selection": self.selection.as_dict() if self.selection else None,
            "dropped_metrics": self.dropped,
        }


def _fit_ridge(features: np.ndarray, delta: np.ndarray, part: Split, windows: Windows, offset: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, str, tuple[Any, Any]]:
    from scipy.linalg import LinAlgWarning
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features[part.train])  # training part only
    train = scaler.transform(features[part.train])
    best: tuple[float, float, Ridge] | None = None
    validation_x = scaler.transform(features[part.validation])
    for alpha in RIDGE_ALPHAS:
        with warnings.catch_warnings():  # near-collinear window features: the penalty is what handles them
            warnings.simplefilter("ignore", LinAlgWarning)
            model = Ridge(alpha=alpha).fit(train, delta)
        guess = offset[part.validation] + model.predict(validation_x)
        score = nmae(windows.target[part.validation], guess)
        if best is None or score < best[0]:
            best = (score, alpha, model)
    assert best is not None
    _score, alpha, model = best
    return (offset[part.validation] + model.predict(validation_x),
            offset[part.test] + model.predict(scaler.transform(features[part.test])), "alpha=%g" % alpha,
            (scaler, model))


def _fit_hgb(features: np.ndarray, delta: np.ndarray, part: Split, offset: np.ndarray, random_state: int,
             threads: int | None) -> tuple[np.ndarray, np.ndarray, str, tuple[Any, Any]]:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    model = HistGradientBoostingRegressor(max_iter=100, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=40,
                                          l2_regularization=1.0, early_stopping=False, random_state=random_state)
    with threadpool_limits(limits=threads, user_api="openmp"):
        model.fit(features[part.train], delta)
        return (offset[part.validation] + model.predict(features[part.validation]),
                offset[part.test] + model.predict(features[part.test]), "100 trees, 15 leaves",
                (None, model))


def evaluate(dataset: Dataset, horizon_seconds: float, window_seconds: float | None = None, *,
             k: int | None = None, method: str = DEFAULT_METHOD, models: Sequence[str] = MODELS,
             fractions: Sequence[float] = FRACTIONS, random_state: int = 0, threads: int | None = 1,
             kpi_inputs: bool = True) -> Evaluation:
    """Train every candidate on the training part, choose on validation, report test.

    kpi_inputs=False: forecasts from the metrics alone, for a live stream that does
    not carry the KPI. The models then learn the KPI itself (not its change), the one
    choosable baseline is `training_mean` (the KPI's mean over the training targets),
    and persistence and moving_average are reported as references only.

    With k, the K metrics are first selected on the training part's rows only.
    threads: OpenMP threads for the tree model (None: one per core). The default is
    one: with more busy processes than cores, OpenMP's waiting threads made a fit ten
    times slower on the shared 2-core machine."""
    from .model import Forecaster

    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise LearnError("unknown model %s (choose from %s)" % (", ".join(unknown), ", ".join(MODELS)))
    if models:
        require_sklearn()
    step = dataset.step
    horizon = steps_of(horizon_seconds, step, "the horizon")
    window = steps_of(window_seconds, step, "the window") if window_seconds else max(8, 4 * horizon)
    names, x = list(dataset.names), dataset.x
    # Windows over the KPI alone fix the anchors and so the split before any selection.
    anchors = make_windows(np.empty((len(dataset.y), 0)), dataset.y, [], window, horizon).anchor
    part = split(anchors, window, horizon, fractions)
    selection = None
    if k is not None:
        train_rows = int(anchors[part.train].max()) + horizon + 1  # rows the training samples touch
        selection = select(x[:train_rows], dataset.y[:train_rows], names, k, method)
        names, x = selection.names, x[:, selection.indices]
    windows = make_windows(x, dataset.y, names, window, horizon, kpi_inputs)
    if not np.array_equal(windows.anchor, anchors):
        raise LearnError("metrics and KPI windows disagree")  # clean() leaves no gap in metrics
    target = windows.target
    candidates: list[Candidate] = []
    results: dict[str, np.ndarray] = {}
    fitted: dict[str, tuple[Any, Any]] = {}
    level = float(np.mean(target[part.train]))
    references: list[tuple[str, np.ndarray, str]] = [
        ("persistence", windows.last, "last value"), ("moving_average", windows.mean, "mean of %d steps" % window)]
    if not kpi_inputs:
        references.insert(0, ("training_mean", np.full(len(target), level), "KPI mean of the training part"))
    for name, guess, detail in references:
        kind = "baseline" if kpi_inputs or name == "training_mean" else "reference"
        candidates.append(Candidate(name, kind, nmae(target[part.validation], guess[part.validation]),
                                    nmae(target[part.test], guess[part.test]), 0.0, detail))
        results[name] = guess[part.test]
    offset = windows.last if kpi_inputs else np.zeros(len(target))
    delta = (target - offset)[part.train]
    for name in models:
        started = time.perf_counter()
        if name == "ridge":
            validation, test, detail, fitted[name] = _fit_ridge(windows.features, delta, part, windows, offset)
        else:
            validation, test, detail, fitted[name] = _fit_hgb(windows.features, delta, part, offset,
                                                              random_state, threads)
        seconds = time.perf_counter() - started
        candidates.append(Candidate(name, "model", nmae(target[part.validation], validation),
                                    nmae(target[part.test], test), seconds, detail))
        results[name] = test
    best_baseline = min((c for c in candidates if c.kind == "baseline"), key=lambda c: c.validation_nmae)
    chosen = best_baseline
    for candidate in candidates:
        if candidate.kind == "model" and candidate.validation_nmae < chosen.validation_nmae:
            chosen = candidate
    chosen.chosen = True
    if chosen.kind == "baseline":
        note = "baseline %s chosen: no model beat it on validation (best model NMAE %.4f vs %.4f)" % (
            chosen.name, min((c.validation_nmae for c in candidates if c.kind == "model"), default=float("nan")),
            chosen.validation_nmae)
    else:
        note = "model %s chosen: validation NMAE %.4f vs best baseline %s %.4f" % (
            chosen.name, chosen.validation_nmae, best_baseline.name, best_baseline.validation_nmae)
    test_anchor = windows.anchor[part.test]
    scaler, estimator = fitted.get(chosen.name, (None, None))
    model = Forecaster(kind=chosen.name, target=dataset.target, names=list(names), step=step, window=window,
                       horizon=horizon, scaler=scaler, estimator=estimator, test_nmae=chosen.test_nmae,
                       kpi_inputs=kpi_inputs, level=level)
    return Evaluation(
        target=dataset.target, step=step, horizon=horizon, window=window, features=names,
        counts={"train": len(part.train), "validation": len(part.validation), "test": len(part.test)},
        gap=part.gap, candidates=candidates, chosen=chosen.name, note=note,
        timestamps=dataset.timestamps[test_anchor + horizon], actual=target[part.test],
        forecast=results[chosen.name], selection=selection, dropped=dict(dataset.dropped), model=model)
