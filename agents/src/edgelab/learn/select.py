"""Pick the K metrics that best explain a continuous KPI.

Methods (scores are comparable within one method only):
- `f_regression`: |Pearson r| between each metric and the KPI (the ranking of
  scikit-learn's f_regression F statistic). One pass over the data; the default,
  chosen by benchmarks/learn_bench.py (fastest, and as good as the others at finding
  the informative metrics of the synthetic service there).
- `mutual_info`: scikit-learn's k-NN mutual information estimate, which also sees
  non-monotone relations. It costs ~1 ms per metric per 1,000 rows, so rows are
  thinned evenly in time to `max_rows` and, with more than `screen` metrics, only the
  `screen` with the highest |Spearman rho| (any monotone relation) are scored.
- `tree`: impurity importance of extremely randomised trees fitted to predict the
  KPI from all candidates at once (sees interactions), with the same thinning and
  screening.

Rows where the KPI has no value are left out. `shift` scores metric values against
the KPI `shift` grid steps later (the forecasting target) instead of at the same time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import LearnError, require_sklearn

METHODS = ("f_regression", "mutual_info", "tree")
DEFAULT_METHOD = "f_regression"
SCREEN_FACTOR = 20  # screen to SCREEN_FACTOR * K metrics before mutual_info/tree
MAX_ROWS = {"mutual_info": 1500, "tree": 3000}


@dataclass
class Selection:
    """The selected metrics in rank order with their scores, and what the run cost."""

    method: str
    k: int
    names: list[str]
    indices: list[int]
    scores: list[float]
    candidates: int
    rows: int
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {"method": self.method, "k": self.k, "candidates": self.candidates, "rows": self.rows,
                "seconds": round(self.seconds, 4),
                "selected": [{"rank": i + 1, "metric": n, "score": s}
                             for i, (n, s) in enumerate(zip(self.names, self.scores, strict=False))]}


def abs_correlation(x: np.ndarray, y: np.ndarray, chunk: int = 512) -> np.ndarray:
    """|Pearson r| of each column of x with y (0 for a constant column), computed in
    column chunks so that memory stays at one chunk's copy."""
    yc = y - y.mean()
    y_norm = float(np.sqrt(yc @ yc))
    out = np.zeros(x.shape[1])
    if y_norm == 0.0:
        return out
    for start in range(0, x.shape[1], chunk):
        block = np.asarray(x[:, start:start + chunk], dtype=np.float64)
        centred = block - block.mean(axis=0)
        norms = np.sqrt(np.einsum("ij,ij->j", centred, centred))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (yc @ centred) / (norms * y_norm)
        out[start:start + chunk] = np.abs(np.nan_to_num(r, nan=0.0))
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, axis=0, kind="stable")
    ranks = np.empty_like(order, dtype=np.float64)
    np.put_along_axis(ranks, order, np.arange(values.shape[0], dtype=np.float64)[:, None], axis=0)
    return ranks


def abs_spearman(x: np.ndarray, y: np.ndarray, chunk: int = 512) -> np.ndarray:
    """|Spearman rho| of each column of x with y (ties broken by order, which is
    enough for screening)."""
    ry = _ranks(y[:, None])[:, 0]
    out = np.zeros(x.shape[1])
    for start in range(0, x.shape[1], chunk):
        out[start:start + chunk] = abs_correlation(_ranks(x[:, start:start + chunk]), ry)
    return out


def _thin(n: int, max_rows: int) -> np.ndarray:
    if n <= max_rows:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_rows).round().astype(np.int64))


def select(x: np.ndarray, y: np.ndarray, names: Sequence[str], k: int, method: str = DEFAULT_METHOD, *,
           shift: int = 0, screen: int | None = None, max_rows: int | None = None,
           random_state: int = 0) -> Selection:
    """The top k of the metrics x (n, m) named `names` for the KPI y (n,)."""
    started = time.perf_counter()
    if method not in METHODS:
        raise LearnError("unknown selection method %r (choose from %s)" % (method, ", ".join(METHODS)))
    if x.ndim != 2 or x.shape[0] != len(y) or x.shape[1] != len(names):
        raise LearnError("x must be (samples, metrics) matching y and names; got %s, %d, %d"
                         % (x.shape, len(y), len(names)))
    m = x.shape[1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise LearnError("K must be a whole number > 0, got %r" % (k,))
    if k > m:
        raise LearnError("K=%d but there are only %d usable metrics (constant and near-empty ones are dropped)"
                         % (k, m))
    if shift < 0:
        raise LearnError("shift must be >= 0, got %d" % shift)
    xs, ys = (x[:-shift], y[shift:]) if shift else (x, y)
    rows = ~np.isnan(ys)
    for start in range(0, m, 1024):  # in column blocks: no full-size temporary
        if np.isnan(xs[:, start:start + 1024]).any():
            raise LearnError("metrics contain missing values: align them first (learn.align)")
    if not rows.all():
        xs, ys = xs[rows], ys[rows]
    if len(ys) < 3:
        raise LearnError("need at least 3 samples with a KPI value to select metrics, got %d" % len(ys))
    if float(np.ptp(ys)) == 0.0:
        raise LearnError("the KPI is constant: nothing can explain it")
    scores = np.zeros(m)
    if method == "f_regression":
        scores = abs_correlation(xs, ys)
    else:
        require_sklearn()
        thin = _thin(len(ys), MAX_ROWS[method] if max_rows is None else max_rows)
        xt, yt = xs[thin], ys[thin]
        limit = SCREEN_FACTOR * k if screen is None else screen
        candidates = np.arange(m)
        if m > limit:
            candidates = np.sort(np.argsort(-abs_spearman(xt, yt), kind="stable")[:limit])
        if method == "mutual_info":
            from sklearn.feature_selection import mutual_info_regression

            scores[candidates] = mutual_info_regression(xt[:, candidates], yt, n_neighbors=3,
                                                        random_state=random_state)
        else:
            from sklearn.ensemble import ExtraTreesRegressor

            forest = ExtraTreesRegressor(n_estimators=100, max_features=0.3, min_samples_leaf=5,
                                         random_state=random_state)
            forest.fit(xt[:, candidates], yt)
            scores[candidates] = forest.feature_importances_
        xs = xt
    order = np.argsort(-scores, kind="stable")[:k]
    return Selection(method, int(k), [names[i] for i in order], [int(i) for i in order],
                     [float(scores[i]) for i in order], m, len(xs), time.perf_counter() - started)
