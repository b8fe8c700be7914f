"""edgelab.learn.select: each method finds the metrics the KPI really depends on
(synthetic service with a known answer); K and input checks."""

from __future__ import annotations

import numpy as np
import pytest
from edgelab.learn import synthetic
from edgelab.learn.align import clean
from edgelab.learn.errors import LearnError
from edgelab.learn.select import METHODS, abs_correlation, abs_spearman, select


@pytest.fixture(scope="module")
def service() -> synthetic.Service:
    return synthetic.service(3000, 300, step=5.0, seed=3)


@pytest.mark.parametrize("method", METHODS)
def test_selection_finds_the_informative_metrics(service: synthetic.Service, method: str) -> None:
    data = clean(service.timestamps, service.step, service.names, service.x, service.y, "latency")
    assert set(service.constant) | set(service.sparse) <= set(data.dropped)
    chosen = select(data.x, data.y, data.names, 10, method)
    assert set(service.informative) <= set(chosen.names), chosen.names
    assert chosen.k == 10 and len(chosen.names) == 10 and chosen.candidates == len(data.names)
    assert chosen.scores == sorted(chosen.scores, reverse=True)


def test_shift_scores_against_the_later_kpi() -> None:
    rng = np.random.default_rng(1)
    lead = rng.standard_normal(500)
    now = rng.standard_normal(500)
    y = np.empty(500)
    y[6:] = lead[:-6]  # y follows `lead` 6 steps later
    y[:6] = 0.0
    y += 0.5 * now
    x = np.column_stack([now, lead])
    assert select(x, y, ["now", "lead"], 1).names == ["now"]
    assert select(x, y, ["now", "lead"], 1, shift=6).names == ["lead"]


def test_correlation_helpers_match_numpy() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 5))
    y = x[:, 2] * 2 + rng.standard_normal(200)
    expected = [abs(np.corrcoef(x[:, j], y)[0, 1]) for j in range(5)]
    assert abs_correlation(x, y, chunk=2) == pytest.approx(expected)
    assert abs_spearman(np.exp(x), y)[2] == pytest.approx(abs_spearman(x, y)[2])  # monotone maps keep ranks
    assert abs_correlation(np.ones((10, 1)), np.arange(10.0))[0] == 0.0


@pytest.mark.parametrize(("k", "message"), [
    (0, "K must be a whole number > 0"),
    (-3, "K must be a whole number > 0"),
    (4, "K=4 but there are only 3 usable metrics"),
])
def test_bad_k(k: int, message: str) -> None:
    x = np.random.default_rng(0).standard_normal((50, 3))
    with pytest.raises(LearnError, match=message):
        select(x, x[:, 0], ["a", "b", "c"], k)


def test_bad_method_constant_kpi_and_missing_values() -> None:
    x = np.random.default_rng(0).standard_normal((50, 3))
    with pytest.raises(LearnError, match="unknown selection method 'anova'"):
        select(x, x[:, 0], ["a", "b", "c"], 1, "anova")
    with pytest.raises(LearnError, match="the KPI is constant"):
        select(x, np.ones(50), ["a", "b", "c"], 1)
    x[3, 1] = np.nan
    with pytest.raises(LearnError, match="missing values"):
        select(x, x[:, 0], ["a", "b", "c"], 1)
