"""edgelab.learn.forecast: window features, a split with no look-ahead, and a model
choice that is never worse than the best baseline on validation."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from edgelab.learn import synthetic
from edgelab.learn.align import Dataset, clean
from edgelab.learn.errors import LearnError
from edgelab.learn.forecast import evaluate, make_windows, nmae, split, steps_of


def test_window_features_and_target_by_hand() -> None:
    y = np.arange(20.0) ** 2
    x = np.column_stack([np.arange(20.0) * 10])
    w = make_windows(x, y, ["m"], window=8, horizon=3)
    assert w.anchor[0] == 7 and w.anchor[-1] == 16
    assert list(w.target) == list(y[w.anchor + 3])
    assert list(w.last) == list(y[w.anchor])
    row, t = 2, int(w.anchor[2])  # anchor 9
    feature = dict(zip(w.feature_names, w.features[row], strict=True))
    assert feature["kpi:last"] == y[t]
    assert feature["kpi:mean_recent"] == pytest.approx(y[t - 1:t + 1].mean())  # a quarter of 8 rows
    assert feature["kpi:mean_window"] == pytest.approx(y[t - 7:t + 1].mean())
    assert feature["kpi:change"] == y[t] - y[t - 7]
    assert feature["kpi:lag2"] == y[t - 2]
    assert feature["m:mean_window"] == pytest.approx(x[t - 7:t + 1, 0].mean())


def test_windows_skip_unobserved_targets() -> None:
    y = np.arange(30.0)
    y[20] = np.nan
    w = make_windows(np.empty((30, 0)), y, [], window=4, horizon=2)
    assert 18 not in w.anchor  # its target (row 20) was not observed
    assert not np.isnan(w.target).any()


@pytest.mark.parametrize(("n", "window", "horizon", "fractions"), [
    (400, 8, 1, (0.6, 0.2, 0.2)),
    (400, 24, 6, (0.6, 0.2, 0.2)),
    (1000, 48, 6, (0.5, 0.2, 0.3)),
    (700, 1, 30, (0.7, 0.15, 0.15)),
])
def test_no_validation_or_test_window_touches_a_training_row(n: int, window: int, horizon: int,
                                                             fractions: tuple[float, float, float]) -> None:
    w = make_windows(np.empty((n, 0)), np.sin(np.arange(n) / 7.0), [], window, horizon)
    part = split(w.anchor, window, horizon, fractions)

    def rows(positions: np.ndarray) -> set[int]:
        touched: set[int] = set()
        for anchor in w.anchor[positions]:
            touched.update(range(int(anchor) - window + 1, int(anchor) + horizon + 1))  # inputs .. target
        return touched

    train, validation, test = rows(part.train), rows(part.validation), rows(part.test)
    assert not train & validation and not train & test and not validation & test
    assert max(train) < min(validation) and max(validation) < min(test)  # time order
    # Nothing usable is wasted: each gap is exactly what keeps the parts apart.
    for earlier, later in ((part.train, part.validation), (part.validation, part.test)):
        assert int(w.anchor[later[0]]) - int(w.anchor[earlier[-1]]) == window + horizon
    assert part.rows(w.anchor, "train", window, horizon)[1] < part.rows(w.anchor, "validation", window, horizon)[0]


def test_split_refuses_too_little_data() -> None:
    w = make_windows(np.empty((120, 0)), np.arange(120.0), [], 24, 6)
    with pytest.raises(LearnError, match="too few samples"):
        split(w.anchor, 24, 6)


def test_nmae_and_steps() -> None:
    assert nmae(np.array([10.0, -10.0]), np.array([11.0, -8.0])) == pytest.approx(1.5 / 10.0)
    with pytest.raises(LearnError, match="undefined"):
        nmae(np.zeros(3), np.ones(3))
    assert steps_of(30.0, 5.0, "the horizon") == 6
    with pytest.raises(LearnError, match="not a whole number of sampling steps"):
        steps_of(32.0, 5.0, "the horizon")


def _dataset(y: np.ndarray, x: np.ndarray, step: float = 5.0) -> Dataset:
    times = 1_767_225_600.0 + np.arange(len(y)) * step
    return clean(times, step, ["m%d" % j for j in range(x.shape[1])], x, y, "kpi")


def test_on_noise_a_model_never_replaces_a_better_baseline() -> None:
    # A random walk with unrelated metrics: nothing beats the last value reliably.
    rng = np.random.default_rng(5)
    y = 100.0 + np.cumsum(rng.standard_normal(1500))
    result = evaluate(_dataset(y, rng.standard_normal((1500, 20))), 30.0)
    baselines = [c for c in result.candidates if c.kind == "baseline"]
    chosen = result.chosen_candidate
    best_baseline = min(c.validation_nmae for c in baselines)
    assert chosen.validation_nmae <= best_baseline
    if chosen.kind == "model":
        assert chosen.validation_nmae < best_baseline
    else:
        assert result.note.startswith("baseline %s chosen" % chosen.name)
    for a, b in itertools.combinations(result.candidates, 2):
        assert a.name != b.name


def test_informative_metrics_beat_persistence_on_the_synthetic_service() -> None:
    s = synthetic.service(3000, 40, step=5.0, seed=4)
    data = clean(s.timestamps, s.step, s.names, s.x, s.y, "latency")
    result = evaluate(data, 30.0, k=8)
    assert result.selection is not None and set(s.informative) <= set(result.selection.names)
    persistence = next(c for c in result.candidates if c.name == "persistence")
    chosen = result.chosen_candidate
    assert chosen.kind == "model"
    assert chosen.test_nmae < 0.8 * persistence.test_nmae
    # The forecasts reported are the chosen model's, for times H after their anchors.
    assert nmae(result.actual, result.forecast) == pytest.approx(chosen.test_nmae)
    index = np.searchsorted(data.timestamps, result.timestamps)
    assert np.array_equal(data.timestamps[index], result.timestamps)
    assert np.array_equal(data.y[index], result.actual)


def test_selection_inside_evaluate_sees_only_training_rows() -> None:
    # A metric that equals the KPI only after the training part must not be selected.
    rng = np.random.default_rng(6)
    n = 1200
    y = 50 + np.cumsum(rng.standard_normal(n))
    late = rng.standard_normal(n)
    late[800:] = y[800:]  # identical to the KPI in validation and test only
    honest = y + 5 * rng.standard_normal(n)
    result = evaluate(_dataset(y, np.column_stack([late, honest])), 10.0, k=1)
    assert result.selection is not None and result.selection.names == ["m1"]


def test_evaluate_refuses_bad_horizon_and_unknown_model() -> None:
    data = _dataset(np.sin(np.arange(600) / 9.0) + 2, np.random.default_rng(0).standard_normal((600, 2)))
    with pytest.raises(LearnError, match="not a whole number of sampling steps"):
        evaluate(data, 12.0)
    with pytest.raises(LearnError, match="unknown model lstm"):
        evaluate(data, 10.0, models=["lstm"])


def test_missing_scikit_learn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _dataset(np.sin(np.arange(600) / 9.0) + 2, np.random.default_rng(0).standard_normal((600, 2)))
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if it were not installed
    with pytest.raises(RuntimeError, match=r"edgelab-agents\[learn\]"):
        evaluate(data, 10.0)
    # The baselines alone need nothing beyond numpy.
    assert evaluate(data, 10.0, models=[]).chosen in ("persistence", "moving_average")
