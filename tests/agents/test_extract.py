"""edgelab-extract's pieces without a server: window cutting (the 11,000-point limit),
times and zones, packing metric families into queries, decoding a matrix."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from edgelab.experiments import extract as ex


def test_segments_respect_the_point_limit_and_tile_the_grid() -> None:
    pieces = ex.segments(100.0, 100.0 + 24_999 * 2.0, 2.0, 11_000)
    assert [p.points for p in pieces] == [11_000, 11_000, 3_000]
    assert [p.index for p in pieces] == [0, 1, 2]
    for earlier, later in itertools.pairwise(pieces):
        assert later.start - earlier.end(2.0) == 2.0  # consecutive, no gap, no overlap
    # The grid is multiples of the step inside the range.
    pieces = ex.segments(1001.0, 1020.5, 5.0, 2)
    assert [(p.start, p.points) for p in pieces] == [(1005.0, 2), (1015.0, 2)]  # 1005, 1010 | 1015, 1020
    with pytest.raises(ValueError, match="1 to 11000 points"):
        ex.segments(0, 100, 1, 11_001)
    with pytest.raises(ValueError, match="holds no evaluation time"):
        ex.segments(1001, 1004, 5, 10)


def test_times_carry_a_zone_or_are_utc() -> None:
    utc = ex.parse_time("2024-01-30T19:10:15Z")
    assert utc == 1706641815.0
    assert ex.parse_time("2024-01-30 19:10:15") == utc  # the seed's form, taken as UTC
    assert ex.parse_time("2024-01-30T21:10:15+02:00") == utc
    assert ex.parse_time("2024-01-30T19:10:15.250000000Z") == utc + 0.25
    assert ex.parse_time("1706641815") == utc
    assert ex.parse_time("now", now=5000.0) == 5000.0
    assert ex.parse_time("now-90m", now=10_000.0) == 10_000.0 - 5400
    with pytest.raises(ValueError, match="milliseconds"):
        ex.parse_time("1706641815000")
    with pytest.raises(ValueError, match="neither ISO 8601"):
        ex.parse_time("yesterday")
    assert ex.iso(utc) == "2024-01-30T19:10:15Z"


def test_families_are_packed_into_queries_under_the_budget() -> None:
    series = ([{"__name__": "node_cpu_seconds_total", "cpu": str(i)} for i in range(4)]
              + [{"__name__": "node_cpu_guest_seconds_total", "cpu": "0"}]
              + [{"__name__": "node_memory_free_bytes"}, {"__name__": "up", "job": "a"}, {"__name__": "up"}])
    assert ex.family("node_cpu_seconds_total") == "node_cpu" and ex.family("up") == "up"
    # 10 points a segment, budget 100 points = 10 series: everything in one query.
    one = ex.plan_queries(series, 10, 100)
    assert len(one) == 1 and one[0]["series"] == 8 and one[0]["metrics"] == 4
    # Budget 5 series: node_cpu (5) alone, then node_memory + up (3).
    two = ex.plan_queries(series, 10, 50)
    assert [(q["series"], q["metrics"]) for q in two] == [(5, 2), (3, 2)]
    assert two[0]["query"] == '{__name__=~"node_cpu_guest_seconds_total|node_cpu_seconds_total"}'
    # Budget 3 series: the node_cpu family is split by name; a 4-series metric goes alone.
    three = ex.plan_queries(series, 10, 30)
    assert [q["series"] for q in three] == [1, 4, 3]


def body(result: list[dict[str, object]]) -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}},
                      separators=(",", ":")).encode()


def test_fast_matrix_decoding_matches_json() -> None:
    result = [
        {"metric": {"__name__": "a", "path": 'x"]],"values":[}y'},
         "values": [[10, "1.5"], [11, "NaN"], [12.5, "+Inf"]]},
        {"metric": {}, "values": [[10, "-Inf"], [11, "2e-05"]]},
        {"metric": {"__name__": "b"}, "values": []},
        {"metric": {"__name__": "c", "k": "\u00e9\\n"}, "values": [[1706641815.123, "-3"]]},
    ]
    raw = body(result)
    fast = ex._decode_fast(raw)
    assert [labels for labels, _t, _v in fast] == [r["metric"] for r in result]
    for (_labels, times, values), item in zip(fast, result, strict=True):
        pairs = item["values"]
        assert np.array_equal(times, np.array([t for t, _v in pairs], dtype=float))  # type: ignore[union-attr]
        assert np.array_equal(values, np.array([float(v) for _t, v in pairs]), equal_nan=True)  # type: ignore[union-attr]
    # Prometheus's own spacing and a response of another shape take the json path.
    spaced = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()
    decoded = ex.decode_matrix(spaced)
    assert [labels for labels, _t, _v in decoded] == [r["metric"] for r in result]
    with pytest.raises(ValueError):
        ex._decode_fast(spaced)


def test_series_names_print_like_promql() -> None:
    assert ex.series_name({"__name__": "up", "job": "node", "instance": 'a"b'}) == 'up{instance="a\\"b",job="node"}'
    assert ex.series_name({"__name__": "up"}) == "up"
