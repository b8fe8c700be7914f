"""Candidate metrics from Prometheus over the KPI's time range, on the KPI's step.

A range query is refused by Prometheus when (end - start) / step > 11,000, so the
range is fetched in consecutive pieces of at most `max_points` evaluation times each.
Every series becomes one column named like PromQL prints it:
`name{label="value",...}` (labels sorted).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..learn.errors import LearnError
from ..learn.tables import Table
from ..prometheus import PrometheusClient, Series

log = logging.getLogger(__name__)

MAX_POINTS = 11_000  # evaluation times per range query (Prometheus's limit)
ALL_SERIES = '{__name__=~".+"}'


def series_name(labels: dict[str, str]) -> str:
    name = labels.get("__name__", "")
    rest = ",".join('%s="%s"' % (k, v.replace("\\", "\\\\").replace('"', '\\"'))
                    for k, v in sorted(labels.items()) if k != "__name__")
    return "%s{%s}" % (name, rest) if rest else (name or "{}")


def time_pieces(start: float, end: float, step: float, max_points: int = MAX_POINTS) -> list[tuple[float, float]]:
    """(start, end) of consecutive range queries covering start..end at `step`, each with
    at most max_points evaluation times; the first time is start."""
    if max_points < 1:
        raise ValueError("max_points must be >= 1")
    pieces = []
    count = math.floor((end - start) / step + 1e-9) + 1
    for first in range(0, count, max_points):
        last = min(count, first + max_points) - 1
        pieces.append((start + first * step, start + last * step))
    return pieces


def fetch(client: PrometheusClient, start: float, end: float, step: float, query: str = ALL_SERIES,
          max_points: int = MAX_POINTS) -> Table:
    """Every series `query` returns from start to end (grid times on multiples of step)."""
    first = math.ceil(start / step - 1e-9) * step
    if end < first:
        raise LearnError("the KPI's time range is shorter than one step (%gs)" % step)
    pieces = time_pieces(first, end, step, max_points)
    count = round((pieces[-1][1] - first) / step) + 1
    columns: dict[str, np.ndarray] = {}
    for piece_start, piece_end in pieces:
        series: list[Series] = client.query_range(query, piece_start, piece_end, step)
        log.debug("Prometheus %s .. %s: %d series", piece_start, piece_end, len(series))
        for item in series:
            name = series_name(item.labels)
            values = columns.get(name)
            if values is None:
                values = columns[name] = np.full(count, np.nan)
            for timestamp, value in item.points:
                index = round((timestamp - first) / step)
                if 0 <= index < count:
                    values[index] = value
    if not columns:
        raise LearnError("Prometheus has no data for %s between %s and %s (epoch seconds)" % (query, start, end))
    names = sorted(columns)
    values = np.column_stack([columns[name] for name in names])
    values[~np.isfinite(values)] = np.nan
    return Table(first + np.arange(count) * step, names, values)
