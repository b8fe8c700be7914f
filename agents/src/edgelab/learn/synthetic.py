"""A synthetic service with a known answer, for tests and benchmarks (no I/O).

The KPI (a latency in ms) depends on a few "informative" metrics, each driven by its
own slowly varying load process, through nonlinear terms and with delays of 30 to
60 s; so the metrics' present values tell where the KPI goes next. Around them:
thousands of distractors (independent slow processes, periodic ones, and noisy
copies of the informative metrics), plus a few constant and near-empty series that
alignment must drop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

INFORMATIVE = ("svc_request_rate", "svc_queue_depth", "node_cpu_busy", "node_disk_io_wait",
               "svc_cache_miss_ratio", "node_net_rx_bytes")
DELAYS_SECONDS = (45.0, 60.0, 30.0, 50.0, 40.0, 35.0)


@dataclass
class Service:
    timestamps: np.ndarray  # epoch seconds, regular
    step: float
    names: list[str]
    x: np.ndarray  # (n, m), NaN in the near-empty series
    y: np.ndarray  # (n,) KPI
    informative: list[str]
    constant: list[str]
    sparse: list[str]


def smooth_process(rng: np.random.Generator, n: int, columns: int, time_constant: float,
                   dtype: type[np.floating] = np.float64) -> np.ndarray:
    """Unit-variance AR(1) processes (n, columns) with the given time constant in steps."""
    phi = float(np.exp(-1.0 / max(time_constant, 1e-6)))
    noise = rng.standard_normal((n, columns)).astype(dtype)
    out = lfilter([np.sqrt(1 - phi * phi)], [1.0, -phi], noise, axis=0)
    return np.asarray(out, dtype=dtype)


def _delayed(values: np.ndarray, steps: int) -> np.ndarray:
    out = np.empty_like(values)
    out[steps:] = values[:len(values) - steps]
    out[:steps] = values[0]
    return out


def service(n_samples: int = 8000, n_metrics: int = 2000, *, step: float = 5.0, informative: int = 4,
            noisy_copies: int = 20, seed: int = 0, start: float = 1_767_225_600.0,
            dtype: type[np.floating] = np.float64, extras: bool = True) -> Service:
    """A service with `informative` (1..6) metrics that drive the KPI among n_metrics."""
    if not 1 <= informative <= len(INFORMATIVE):
        raise ValueError("informative must be 1..%d" % len(INFORMATIVE))
    extra = 4 if extras else 0
    if n_metrics < informative + noisy_copies + extra:
        raise ValueError("n_metrics too small for the informative metrics, copies and extras")
    rng = np.random.default_rng(seed)
    n = n_samples
    t = np.arange(n) * step
    # Drivers: slowly varying load processes (time constants 2.5-5 min).
    drivers = np.column_stack([smooth_process(rng, n, 1, (150.0 + 30.0 * i) / step)[:, 0]
                               for i in range(informative)])
    names = list(INFORMATIVE[:informative])
    x = np.empty((n, n_metrics), dtype=dtype)
    x[:, :informative] = drivers + 0.05 * rng.standard_normal((n, informative))
    # The KPI: base latency plus delayed nonlinear effects of the drivers, plus noise.
    y = np.full(n, 40.0)
    for i in range(informative):
        delayed = _delayed(drivers[:, i], round(DELAYS_SECONDS[i] / step))
        if i % 2 == 0:
            y += 12.0 * np.exp(0.6 * delayed)  # saturating service: latency climbs fast with load
        else:
            y += 8.0 * delayed + 4.0 * np.maximum(delayed, 0.0) ** 2
    y += 1.5 * rng.standard_normal(n)
    column = informative
    # Noisy copies of the informative metrics (as correlated exporters give).
    for j in range(noisy_copies):
        source = j % informative
        x[:, column] = drivers[:, source] + (1.0 + 0.2 * j) * rng.standard_normal(n)
        names.append("%s_copy%d" % (INFORMATIVE[source], j))
        column += 1
    constant: list[str] = []
    sparse: list[str] = []
    if extras:
        for j in range(2):
            x[:, column] = float(j + 1)
            constant.append("const_metric_%d" % j)
            names.append(constant[-1])
            column += 1
        for j in range(2):
            values = smooth_process(rng, n, 1, 30.0)[:, 0]
            values[rng.random(n) < 0.9] = np.nan
            x[:, column] = values
            sparse.append("sparse_metric_%d" % j)
            names.append(sparse[-1])
            column += 1
    # Distractors: independent processes (time constants 5 s to 2 min), some with a wave.
    rest = n_metrics - column
    if rest:
        block = 256  # one time constant per block of distractors
        for first in range(0, rest, block):
            width = min(block, rest - first)
            time_constant = float(rng.uniform(5.0, 120.0)) / step
            values = smooth_process(rng, n, width, time_constant, dtype)
            waves = rng.random(width) < 0.1
            if waves.any():
                periods = rng.uniform(600.0, 7200.0, waves.sum())
                phases = rng.uniform(0, 2 * np.pi, waves.sum())
                values[:, waves] += np.sin(2 * np.pi * t[:, None] / periods + phases).astype(dtype)
            x[:, column + first:column + first + width] = values
        names.extend("distractor_%05d" % j for j in range(rest))
    return Service(start + t, step, names, x, y, list(INFORMATIVE[:informative]), constant, sparse)
