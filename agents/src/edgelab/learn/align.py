"""Put X (metrics) and Y (the KPI) on one time grid and keep only usable metrics.

The grid has one point every `step` seconds; the value at grid time g is the mean of
the samples in (g - step, g], so a grid value never uses anything observed after its
time (no look-ahead from resampling). When X comes from Prometheus at the same step,
each bucket holds exactly one sample and resampling changes nothing.

Metrics dropped, each with its reason in `Dataset.dropped`: near-empty (values in
fewer than `min_coverage` of the grid points), constant. Gaps in the metrics that
remain are filled with the last value seen (never a later one); grid points before a
metric's first value are removed from the start of the dataset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import LearnError
from .tables import Table

MIN_COVERAGE = 0.5


@dataclass
class Dataset:
    """Aligned data on a regular grid: timestamps (n,), step seconds, metric names and
    values x (n, m), the target y (n,) (NaN where the KPI was not observed), dropped
    metrics with the reason."""

    timestamps: np.ndarray
    step: float
    names: list[str]
    x: np.ndarray
    y: np.ndarray
    target: str
    dropped: dict[str, str] = field(default_factory=dict)

    @property
    def observed(self) -> np.ndarray:
        """Mask of grid points where the KPI has a value."""
        return ~np.isnan(self.y)


def infer_step(timestamps: np.ndarray) -> float:
    """The sampling step: the median of the positive differences between consecutive
    timestamps, rounded to milliseconds."""
    diffs = np.diff(np.unique(timestamps))
    if len(diffs) == 0:
        raise LearnError("need at least two distinct timestamps to infer the sampling step")
    return float(round(float(np.median(diffs)), 3))


def resample(timestamps: np.ndarray, values: np.ndarray, grid: np.ndarray, step: float) -> np.ndarray:
    """Bucket means of values (n, m) on grid (k,): grid point g takes the samples with
    time in (g - step, g]; NaN where a bucket has no value. Timestamps sorted."""
    if values.ndim != 2:
        raise LearnError("values must be a 2-D array")
    out = np.full((len(grid), values.shape[1]), np.nan)
    if len(grid) == 0 or len(timestamps) == 0:
        return out
    position = (timestamps - grid[0]) / step
    index = np.ceil(position - 1e-9).astype(np.int64)
    inside = (index >= 0) & (index < len(grid))
    index, chosen = index[inside], values[inside]
    if len(index) == 0:
        return out
    buckets, starts = np.unique(index, return_index=True)
    present = ~np.isnan(chosen)
    sums = np.add.reduceat(np.where(present, chosen, 0.0), starts, axis=0)
    counts = np.add.reduceat(present.astype(np.int64), starts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[buckets] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def make_grid(start: float, end: float, step: float) -> np.ndarray:
    """Grid times k*step (multiples of step since the epoch) from the first at or after
    start to the last at or before end."""
    if not step > 0 or not math.isfinite(step):
        raise LearnError("the step must be a positive number of seconds, got %r" % step)
    first = math.ceil(start / step - 1e-9)
    last = math.floor(end / step + 1e-9)
    if last < first:
        return np.empty(0)
    return np.arange(first, last + 1, dtype=np.float64) * step


def _forward_fill(values: np.ndarray) -> np.ndarray:
    """Each NaN replaced by the last earlier value in its column (leading NaN stay)."""
    n = values.shape[0]
    present = ~np.isnan(values)
    last = np.where(present, np.arange(n)[:, None], 0)
    np.maximum.accumulate(last, axis=0, out=last)
    filled = values[last, np.arange(values.shape[1])[None, :]]
    before_first = ~np.maximum.accumulate(present, axis=0)
    filled[before_first] = np.nan
    return filled


def clean(timestamps: np.ndarray, step: float, names: Sequence[str], x: np.ndarray, y: np.ndarray, target: str,
          *, min_coverage: float = MIN_COVERAGE, dropped: dict[str, str] | None = None) -> Dataset:
    """Drop near-empty and constant metrics, fill gaps forward, cut the leading grid
    points where a kept metric has no value yet, and the trailing ones without KPI."""
    if not 0.0 <= min_coverage <= 1.0:
        raise LearnError("min_coverage must be between 0 and 1, got %r" % min_coverage)
    dropped = dict(dropped or {})
    observed_y = ~np.isnan(y)
    if not observed_y.any():
        raise LearnError("the KPI %r has no value on the common time range" % target)
    # Coverage is measured where the KPI is observed, the only points that count.
    present = ~np.isnan(x[observed_y])
    coverage = present.mean(axis=0) if len(present) else np.zeros(x.shape[1])
    keep = coverage >= min_coverage
    for j in np.flatnonzero(~keep):
        dropped[names[int(j)]] = "near-empty (a value at %.0f%% of the KPI's points)" % (100 * coverage[j])
    with np.errstate(invalid="ignore"):
        spread = np.nanmax(np.where(keep, x, np.nan), axis=0, initial=-np.inf) - np.nanmin(
            np.where(keep, x, np.nan), axis=0, initial=np.inf)
    scale = np.nanmax(np.abs(np.where(keep, x, np.nan)), axis=0, initial=0.0)
    constant = keep & ~(spread > 1e-12 * np.maximum(scale, 1.0))
    for j in np.flatnonzero(constant):
        dropped[names[int(j)]] = "constant"
    keep &= ~constant
    kept_names = [name for j, name in enumerate(names) if keep[j]]
    xs = _forward_fill(x[:, keep])
    ready = ~np.isnan(xs).any(axis=1) if xs.shape[1] else np.ones(len(timestamps), dtype=bool)
    if not ready.any():
        raise LearnError("no grid point has a value for every kept metric")
    first = int(np.argmax(ready))
    last = int(len(y) - 1 - np.argmax(observed_y[::-1]))
    if last < first:
        raise LearnError("the KPI %r has no value after the metrics start" % target)
    span = slice(first, last + 1)
    return Dataset(timestamps[span], step, kept_names, xs[span], y[span], target, dropped)


def from_table(table: Table, target: str, features: Sequence[str] | None = None, *, step: float | None = None,
               min_coverage: float = MIN_COVERAGE) -> Dataset:
    """One table holding the KPI column and the metrics (the SRO's dataset, the
    extractor's output): resampled to `step` (default: inferred from the timestamps)."""
    y_raw = table.column(target)
    names = [c for c in table.columns if c != target] if features is None else list(features)
    if target in names:
        raise LearnError("the target %r cannot also be a feature" % target)
    metrics = table.subset(names)
    step = infer_step(table.timestamps) if step is None else float(step)
    grid = make_grid(float(table.timestamps[0]), float(table.timestamps[-1]), step)
    values = resample(table.timestamps, np.column_stack([y_raw, metrics.values]), grid, step)
    return clean(grid, step, names, values[:, 1:], values[:, 0], target, min_coverage=min_coverage)


def align(x: Table, y: Table, target: str | None = None, *, step: float | None = None,
          min_coverage: float = MIN_COVERAGE) -> Dataset:
    """X (metrics) and Y (KPI; `target` is its column, default the first value column)
    on one grid over their common time range; step defaults to Y's sampling step."""
    target = y.columns[0] if target is None else target
    y_raw = y.column(target)
    overlap = [c for c in x.columns if c == target]
    if overlap:
        raise LearnError("the KPI column %r is also a metric in X" % target)
    step = infer_step(y.timestamps) if step is None else float(step)
    start = max(float(x.timestamps[0]), float(y.timestamps[0]))
    end = min(float(x.timestamps[-1]), float(y.timestamps[-1]))
    grid = make_grid(start, end, step) if end >= start else np.empty(0)
    if len(grid) == 0:
        raise LearnError("X (%s .. %s) and Y (%s .. %s) have no common time range"
                         % (_iso(x.timestamps[0]), _iso(x.timestamps[-1]), _iso(y.timestamps[0]),
                            _iso(y.timestamps[-1])))
    y_grid = resample(y.timestamps, y_raw[:, None], grid, step)[:, 0]
    x_grid = resample(x.timestamps, x.values, grid, step)
    return clean(grid, step, list(x.columns), x_grid, y_grid, target, min_coverage=min_coverage)


def _iso(timestamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(float(timestamp), tz=timezone.utc).isoformat()
