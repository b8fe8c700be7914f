"""edgelab.learn tables and alignment: timestamp parsing, CSV/Parquet reading, bucket
resampling without look-ahead, dropping constant and near-empty metrics."""

from __future__ import annotations

import io

import numpy as np
import pytest
from edgelab.learn.align import align, from_table, infer_step, make_grid, resample
from edgelab.learn.errors import LearnError
from edgelab.learn.tables import Table, parse_time, read_csv_text, read_table

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(("text", "expected"), [
    ("1767225600", T0),
    ("1767225600.5", T0 + 0.5),
    ("2026-01-01T00:00:00Z", T0),
    ("2026-01-01T01:00:00+01:00", T0),
    ("2026-01-01 00:00:01.123456789Z", T0 + 1.123456),
])
def test_parse_time_accepts_epoch_and_zoned_iso(text: str, expected: float) -> None:
    assert parse_time(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("text", "message"), [
    ("2026-01-01T00:00:00", "no time zone"),
    ("1767225600000", "milliseconds"),
    ("yesterday", "neither epoch seconds nor ISO 8601"),
])
def test_parse_time_refuses_naive_milliseconds_and_garbage(text: str, message: str) -> None:
    with pytest.raises(LearnError, match=message):
        parse_time(text)


def test_read_csv_parses_sorts_and_marks_missing() -> None:
    table = read_csv_text("ts,a,b\n%d,1,\n%d,2,NaN\n%d,3,7\n" % (T0 + 2, T0, T0 + 1))
    assert table.columns == ["a", "b"]
    assert list(table.timestamps) == [T0, T0 + 1, T0 + 2]
    assert list(table.values[:, 0]) == [2, 3, 1]
    assert np.isnan(table.values[0, 1]) and table.values[1, 1] == 7 and np.isnan(table.values[2, 1])


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("ts,a\n", "no data rows"),
    ("ts,a\n%d,1\n%d,2,3\n" % (T0, T0 + 1), "line 3 has 3 cells, the header has 2"),
    ("ts,a\n%d,1\n%d,x\n" % (T0, T0 + 1), "column 'a', data row 2: 'x' is not a number"),
    ("ts,a\n2026-01-01T00:00:00,1\n", "no time zone"),
    ("ts\n%d\n" % T0, "at least one value column"),
    ("ts,a,a\n%d,1,2\n" % T0, "duplicate column names: a"),
])
def test_read_csv_bad_input_says_what(text: str, message: str) -> None:
    with pytest.raises(LearnError, match=message):
        read_csv_text(text)


def test_named_timestamp_column_must_exist() -> None:
    with pytest.raises(LearnError, match="no timestamp column 'time'"):
        read_csv_text("ts,a\n%d,1\n" % T0, "time")
    table = read_csv_text("a,time\n5,%d\n" % T0, "time")
    assert table.columns == ["a"] and table.timestamps[0] == T0


def test_parquet_with_zoned_timestamps_and_naive_refused() -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    stamps = pa.array([T0 * 1_000_000, (T0 + 5) * 1_000_000], type=pa.timestamp("us", tz="UTC"))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"time": stamps, "kpi": [1.0, 2.0], "m": [3, 4]}), buffer)
    buffer.seek(0)
    table = read_table(buffer)
    assert list(table.timestamps) == [T0, T0 + 5] and table.columns == ["kpi", "m"]
    assert table.values.tolist() == [[1.0, 3.0], [2.0, 4.0]]
    naive = io.BytesIO()
    pq.write_table(pa.table({"time": pa.array([T0 * 1_000_000], type=pa.timestamp("us")), "kpi": [1.0]}), naive)
    naive.seek(0)
    with pytest.raises(LearnError, match="without a time zone"):
        read_table(naive)


def test_read_table_reads_csv_bytes() -> None:
    table = read_table(io.BytesIO(b"\xef\xbb\xbfts,a\n1767225600,1\n"))  # with a UTF-8 BOM
    assert table.columns == ["a"]


def test_resample_bucket_ends_at_grid_time_so_nothing_later_leaks() -> None:
    grid = np.array([10.0, 20.0, 30.0])
    times = np.array([10.0, 10.5, 19.0, 20.0, 29.0])
    values = np.array([[1.0], [100.0], [3.0], [5.0], [7.0]])
    out = resample(times, values, grid, 10.0)[:, 0]
    # 10.5 lies after grid time 10, so it belongs to 20's bucket (10, 20], never to 10.
    assert out[0] == 1.0
    assert out[1] == pytest.approx((100.0 + 3.0 + 5.0) / 3)
    assert out[2] == 7.0


def test_infer_step_and_grid() -> None:
    assert infer_step(np.array([0.0, 5.0, 10.0, 20.0, 25.0])) == 5.0
    assert list(make_grid(3.0, 21.0, 5.0)) == [5.0, 10.0, 15.0, 20.0]
    with pytest.raises(LearnError, match="two distinct timestamps"):
        infer_step(np.array([1.0, 1.0]))


def _table(times: np.ndarray, columns: dict[str, np.ndarray]) -> Table:
    return Table(times.astype(float), list(columns), np.column_stack(list(columns.values())).astype(float))


def test_align_puts_fast_metrics_on_the_kpi_step_and_drops_useless_ones() -> None:
    n = 600
    x_times = T0 + np.arange(n)  # every second
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(n)
    sparse = rng.standard_normal(n)
    sparse[rng.random(n) < 0.97] = np.nan  # a value in ~14% of the 5-s buckets
    x = _table(x_times, {"signal": signal, "flat": np.full(n, 3.0), "sparse": sparse})
    y_times = T0 + np.arange(0, n, 5)  # every 5 s
    y = _table(y_times, {"kpi": np.arange(len(y_times), dtype=float)})
    data = align(x, y)
    assert data.step == 5.0 and data.target == "kpi"
    assert data.names == ["signal"]
    assert data.dropped["flat"] == "constant"
    assert data.dropped["sparse"].startswith("near-empty")
    # The grid value at g is the mean of the 1-s samples in (g - 5, g].
    g = 3
    at = int(data.timestamps[g] - T0)
    assert data.x[g, 0] == pytest.approx(signal[at - 4:at + 1].mean())


def test_align_fills_gaps_from_the_past_only() -> None:
    times = T0 + np.arange(0, 50, 5)
    metric = np.array([1.0, 2.0, np.nan, np.nan, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    data = align(_table(times, {"m": metric}), _table(times, {"kpi": np.arange(10.0)}))
    assert list(data.x[:, 0]) == [1.0, 2.0, 2.0, 2.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]


def test_align_refuses_disjoint_ranges_and_unknown_kpi() -> None:
    a = _table(T0 + np.arange(0, 50, 5), {"m": np.arange(10.0)})
    b = _table(T0 + 1000 + np.arange(0, 50, 5), {"kpi": np.arange(10.0)})
    with pytest.raises(LearnError, match="no common time range"):
        align(a, b)
    with pytest.raises(LearnError, match="unknown column 'latency'"):
        align(a, a, "latency")


def test_from_table_selects_features_and_refuses_unknown() -> None:
    times = T0 + np.arange(0, 100, 10)
    table = _table(times, {"kpi": np.arange(10.0), "a": np.sin(np.arange(10.0)), "b": np.cos(np.arange(10.0))})
    data = from_table(table, "kpi", ["b"])
    assert data.names == ["b"] and data.step == 10.0 and len(data.y) == 10
    with pytest.raises(LearnError, match="unknown column 'c'"):
        from_table(table, "kpi", ["c"])
    with pytest.raises(LearnError, match="cannot also be a feature"):
        from_table(table, "kpi", ["kpi", "a"])
