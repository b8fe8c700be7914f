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


# ---------------------------------------------------------------- remote read
# The protobuf library (installed with OpenTelemetry) builds the remote-read messages
# from descriptors written here: an encoder and decoder independent of remote_read.py.
def _messages() -> dict[str, type]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    types = descriptor_pb2.FieldDescriptorProto
    repeated, optional = types.LABEL_REPEATED, types.LABEL_OPTIONAL
    layout: dict[str, list[tuple[str, int, int, int, str | None]]] = {
        "Label": [("name", 1, types.TYPE_STRING, optional, None), ("value", 2, types.TYPE_STRING, optional, None)],
        "Sample": [("value", 1, types.TYPE_DOUBLE, optional, None), ("timestamp", 2, types.TYPE_INT64, optional, None)],
        "Exemplar": [("labels", 1, types.TYPE_MESSAGE, repeated, "Label"),
                     ("value", 2, types.TYPE_DOUBLE, optional, None),
                     ("timestamp", 3, types.TYPE_INT64, optional, None)],
        "TimeSeries": [("labels", 1, types.TYPE_MESSAGE, repeated, "Label"),
                       ("samples", 2, types.TYPE_MESSAGE, repeated, "Sample"),
                       ("exemplars", 3, types.TYPE_MESSAGE, repeated, "Exemplar")],
        "QueryResult": [("timeseries", 1, types.TYPE_MESSAGE, repeated, "TimeSeries")],
        "ReadResponse": [("results", 1, types.TYPE_MESSAGE, repeated, "QueryResult")],
        "LabelMatcher": [("type", 1, types.TYPE_INT32, optional, None), ("name", 2, types.TYPE_STRING, optional, None),
                         ("value", 3, types.TYPE_STRING, optional, None)],
        "Query": [("start_timestamp_ms", 1, types.TYPE_INT64, optional, None),
                  ("end_timestamp_ms", 2, types.TYPE_INT64, optional, None),
                  ("matchers", 3, types.TYPE_MESSAGE, repeated, "LabelMatcher")],
        "ReadRequest": [("queries", 1, types.TYPE_MESSAGE, repeated, "Query"),
                        ("accepted_response_types", 2, types.TYPE_INT32, repeated, None)],
    }
    proto = descriptor_pb2.FileDescriptorProto(name="edgelab_test_remote.proto", package="edgelabtest",
                                               syntax="proto3")
    for name, fields in layout.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = ".edgelabtest." + type_name
            if label == repeated and kind == types.TYPE_INT32:
                field.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName("edgelabtest." + name))
            for name in layout}


STALE = np.array([0x7FF0000000000002], dtype=np.uint64).view(np.float64)[0]


def _response(messages: dict[str, type], queries: list[list[tuple[dict[str, str], list[tuple[int, float]]]]],
              exemplar: bool = False) -> bytes:
    response = messages["ReadResponse"]()
    for series_list in queries:
        result = response.results.add()
        for labels, samples in series_list:
            series = result.timeseries.add()
            for name, text in labels.items():
                series.labels.add(name=name, value=text)
            for stamp, number in samples:
                series.samples.add(timestamp=stamp, value=number)
            if exemplar:
                example = series.exemplars.add(value=1.0, timestamp=samples[0][0] if samples else 0)
                example.labels.add(name="t", value="x")
    return bytes(response.SerializeToString())


def test_remote_read_decoder_matches_protobuf() -> None:
    from edgelab.experiments import remote_read as rr

    messages = _messages()
    rng = np.random.default_rng(3)
    t0 = 1_796_148_000_000
    many = [(t0 + 1000 * i, float(rng.integers(1, 1000))) for i in range(3000)]
    zeros = [(t, 0.0 if i % 997 == 5 else v) for i, (t, v) in enumerate(many)]  # a few short records
    alternating = [(t, 0.0 if i % 2 else v) for i, (t, v) in enumerate(many[:400])]  # lengths change every record
    special = [(t0, float("nan")), (t0 + 1, float("inf")), (t0 + 2, -float("inf")), (t0 + 3, STALE), (t0 + 4, -2.5),
               (t0 + 5, 1e-300)]
    odd_times = [(-5000, 1.0), (0, 2.0), (3, 3.0), (2**40, 4.0), (2**56 + 1, 5.0)]  # 10-, 0-, 1-, 6-, 9-byte varints
    queries = [
        [({"__name__": "a", "path": 'x"}', "\u00e9": "\u00fc"}, many), ({"__name__": "b"}, zeros),
         ({"__name__": "c"}, alternating), ({"__name__": "d"}, []), ({"__name__": "e"}, special),
         ({"__name__": "f"}, odd_times), ({"__name__": "g"}, [(t, 0.0) for t, _v in many[:50]])],
        [],
        [({"__name__": "tiny", "i": str(i)}, many[i:i + 3]) for i in range(300)],
    ]
    raw = _response(messages, queries)
    decoded = rr.decode_read_response(raw)
    assert len(decoded) == 3
    for got, want in zip(decoded, queries, strict=True):
        assert len(got) == len(want)
        for series, (labels, samples) in zip(got, want, strict=True):
            assert series.labels == labels
            assert series.timestamps.tolist() == [t for t, _v in samples], labels
            assert np.array_equal(series.values.view(np.uint64),
                                  np.array([v for _t, v in samples], dtype=np.float64).view(np.uint64)), labels
    # Counting without decoding.
    assert rr.count_samples(raw) == [[len(samples) for _labels, samples in q] for q in queries]
    # Exemplars after the samples are skipped; the series decoded alone give the same.
    with_exemplars = rr.decode_read_response(_response(messages, queries[:1], exemplar=True))[0]
    assert [s.timestamps.tolist() for s in with_exemplars] == [s.timestamps.tolist() for s in decoded[0]]
    # Compressed on the wire with snappy's block format.
    assert rr.decompress(rr.compress(raw)) == raw
    with pytest.raises(rr.RemoteReadError, match="not snappy"):
        rr.decompress(b"\x10 not snappy at all")
    with pytest.raises(rr.RemoteReadError):
        rr.decode_read_response(raw[: len(raw) // 2])


def test_remote_read_request_as_protobuf_reads_it() -> None:
    from edgelab.experiments import remote_read as rr

    messages = _messages()
    body = rr.encode_read_request([(1000, 2000, [(2, "__name__", "a|b"), (1, "job", "\u00e9")]),
                                   (-5, 0, [(0, "__name__", "up")])])
    request = messages["ReadRequest"]()
    request.ParseFromString(body)
    assert list(request.accepted_response_types) == [0]  # SAMPLES
    first, second = request.queries
    assert (first.start_timestamp_ms, first.end_timestamp_ms) == (1000, 2000)
    assert [(m.type, m.name, m.value) for m in first.matchers] == [(2, "__name__", "a|b"), (1, "job", "\u00e9")]
    assert (second.start_timestamp_ms, second.end_timestamp_ms) == (-5, 0)
    assert [(m.type, m.name, m.value) for m in second.matchers] == [(0, "__name__", "up")]


def test_resampling_follows_the_range_query_rules() -> None:
    from edgelab.experiments.remote_read import RawSeries, resample

    times = np.array([10_000, 20_000, 25_000, 40_000], dtype=np.int64)
    values = np.array([1.0, 2.0, STALE, float("nan")])
    grid = np.array([5_000, 10_000, 15_000, 20_000, 24_000, 25_000, 30_000, 40_000, 44_000, 45_000, 46_000])
    series = RawSeries({"__name__": "x"}, times, values)
    got, count = resample(series, grid, 5_000, left_open=False)
    # before the first sample | at it | within the lookback | stale | real NaN | lookback closed at 5 s
    expected = [np.nan, 1.0, 1.0, 2.0, 2.0, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan]
    assert np.array_equal(got, expected, equal_nan=True)
    assert count == 7  # the NaN sample at 40 s is a value (in 40, 44, 45), the stale marker is not
    got, count = resample(series, grid, 5_000, left_open=True)  # Prometheus 3: a sample 5 s old is out
    assert count == 5 and np.isnan(got[2]) and np.isnan(got[9]) and got[1] == 1.0 and np.isnan(got[8])
    assert resample(RawSeries({}, np.empty(0, dtype=np.int64), np.empty(0)), grid, 5_000, left_open=False)[1] == 0
    # Out-of-order samples are put in order first.
    shuffled = RawSeries({}, times[::-1].copy(), values[::-1].copy())
    assert np.array_equal(resample(shuffled, grid, 5_000, left_open=False)[0], expected, equal_nan=True)


def test_series_selectors_become_matchers() -> None:
    from edgelab.experiments.remote_read import parse_selector

    assert parse_selector("up") == [(0, "__name__", "up")]
    assert parse_selector(' node_cpu_seconds_total{mode!="idle", cpu=~\'1|2\',job!~`x"y`} ') == [
        (0, "__name__", "node_cpu_seconds_total"), (1, "mode", "idle"), (2, "cpu", "1|2"), (3, "job", 'x"y')]
    assert parse_selector('{__name__="lab_cpu_busy_ratio",path="a\\"]]}\\nb"}') == [
        (0, "__name__", "lab_cpu_busy_ratio"), (0, "path", 'a"]]}\nb')]
    for expression in ("rate(up[1m])", "up + 1", 'sum(up{job="a"})', "up[5m]", '{job=~".*"}', "", "up offset 5m"):
        assert parse_selector(expression) is None, expression


# ---------------------------------------------------------------- streamed XOR chunks
class _Bits:
    """A bit stream as Prometheus's chunk encoder writes it (first bit highest)."""

    def __init__(self) -> None:
        self.value, self.size = 0, 0

    def put(self, value: int, bits: int) -> None:
        self.value = self.value << bits | (value & ((1 << bits) - 1))
        self.size += bits

    def data(self) -> bytes:
        pad = -self.size % 8
        return (self.value << pad).to_bytes((self.size + pad) // 8, "big")


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _xor_chunk(samples: list[tuple[int, float]]) -> bytes:
    """An XOR chunk of samples, written from the format's description: delta-of-delta
    timestamps in 1/14/17/20/64-bit buckets, Gorilla XOR values with leading zeros
    capped at 31 and a reused window where the new bits fit in it."""
    bits = _Bits()
    bits.put(len(samples), 16)
    previous_time = previous_delta = previous_bits = 0
    leading, trailing = 0xFF, 0
    for i, (stamp, number) in enumerate(samples):
        raw = int(np.float64(number).view(np.uint64))
        if i == 0:
            for byte in _uvarint((stamp << 1) ^ (stamp >> 63) if stamp >= 0 else ((-stamp - 1) << 1) | 1):
                bits.put(byte, 8)
            bits.put(raw, 64)
        else:
            delta = stamp - previous_time
            if i == 1:
                for byte in _uvarint(delta):
                    bits.put(byte, 8)
            else:
                dod = delta - previous_delta
                for prefix, width in ((0b10, 14), (0b110, 17), (0b1110, 20)):
                    if dod == 0:
                        bits.put(0, 1)
                        break
                    if -((1 << (width - 1)) - 1) <= dod <= 1 << (width - 1):
                        bits.put(prefix, prefix.bit_length())
                        bits.put(dod, width)
                        break
                else:
                    bits.put(0b1111, 4)
                    bits.put(dod, 64)
            previous_delta = delta
            diff = raw ^ previous_bits
            if diff == 0:
                bits.put(0, 1)
            else:
                bits.put(1, 1)
                lead, trail = min(31, 64 - diff.bit_length()), (diff & -diff).bit_length() - 1
                if leading != 0xFF and lead >= leading and trail >= trailing:
                    bits.put(0, 1)
                    bits.put(diff >> trailing, 64 - leading - trailing)
                else:
                    leading, trailing = lead, trail
                    bits.put(1, 1)
                    bits.put(lead, 5)
                    bits.put(64 - lead - trail, 6)  # 64 is written as 0
                    bits.put(diff >> trail, 64 - lead - trail)
        previous_time, previous_bits = stamp, raw
    return bits.data()


def _field(number: int, payload: bytes) -> bytes:
    return _uvarint(number << 3 | 2) + _uvarint(len(payload)) + payload


def _frame(query: int, series: list[tuple[dict[str, str], list[bytes]]], encoding: int = 1) -> bytes:
    message = b"".join(_field(1, b"".join(_field(1, _field(1, k.encode()) + _field(2, v.encode()))
                                          for k, v in labels.items())
                              + b"".join(_field(2, b"\x08\x01\x10\x02" + bytes([0x18, encoding]) + _field(4, chunk))
                                         for chunk in chunks))
                       for labels, chunks in series)
    message += (b"\x10" + _uvarint(query)) if query else b""
    return _uvarint(len(message)) + b"\0\0\0\0" + message  # the CRC is not checked


def test_streamed_xor_chunks_decode_to_their_samples() -> None:
    from edgelab.experiments import remote_read as rr

    rng = np.random.default_rng(7)
    t0 = 1_796_148_000_000
    regular = [(t0 + 1000 * i, float(rng.integers(0, 1000))) for i in range(120)]
    noisy = [(t0 + 15_000 * i + int(rng.integers(-900, 900)), float(rng.normal())) for i in range(250)]  # 64 bits
    # Deltas of deltas in every bucket (0, 14, 17, 20 and 64 bits), both signs.
    deltas = [10, 10, 5, 20, 9_020, 20, 100_020, 20, 600_020, 20, 2**40, 20, 1, 1]
    jumps = [(t0 + int(sum(deltas[:i])), float(i // 3)) for i in range(len(deltas) + 1)]
    special = [(t0 + i, v) for i, v in enumerate([float("nan"), STALE, float("inf"), -0.0, 0.0, 1e-300, 5e300, 1.0])]
    early = [(-70_000, 1.5), (-1, 2.5), (0, 2.5), (3, 0.1)]  # a negative first time
    cases = {"regular": [regular], "noisy": [noisy[:120], noisy[120:240], noisy[240:]], "jumps": [jumps],
             "special": [special], "early": [early], "overlap": [regular[:60], regular[30:90]],  # two blocks
             "one": [regular[:1]], "two": [regular[:2], regular[2:3]]}
    frames = b"".join([
        _frame(0, [({"__name__": name, "i": "0"}, [_xor_chunk(c) for c in chunks]) for name, chunks in cases.items()]),
        _frame(0, [({"__name__": "two", "i": "0"}, [_xor_chunk(regular[3:6])])]),  # continues the last series
        _frame(2, [({"__name__": "later"}, [_xor_chunk(regular[:40]), _xor_chunk(regular[40:])])]),
    ])
    got = rr.decode_chunked_response(frames, 3)
    assert [[s.labels["__name__"] for s in q] for q in got] == [list(cases), [], ["later"]]
    want = {name: sorted(dict(sample for chunk in chunks for sample in chunk).items())
            for name, chunks in cases.items()}
    want["two"], want["later"] = regular[:6], regular
    for series in got[0] + got[2]:
        name = series.labels["__name__"]
        assert series.timestamps.tolist() == [t for t, _v in want[name]], name
        assert np.array_equal(series.values.view(np.uint64),
                              np.array([v for _t, v in want[name]]).view(np.uint64)), name  # NaN payloads kept
    # The request asks for streamed chunks only.
    assert rr.encode_read_request([(0, 1, [(0, "__name__", "up")])], chunks=True).endswith(b"\x10\x01")
    # A chunk shorter than its sample count, a frame cut short: one clear error.
    short = _xor_chunk(noisy[:120])
    with pytest.raises(rr.RemoteReadError, match="ends before"):
        rr.decode_chunked_response(_frame(0, [({"__name__": "x"}, [short[:len(short) // 2]])]), 1)
    with pytest.raises(rr.RemoteReadError, match="runs past"):
        rr.decode_chunked_response(frames[:-30], 3)
    # A native-histogram chunk is left out, like the histograms of a SAMPLES answer.
    histogram = rr.decode_chunked_response(_frame(0, [({"__name__": "h"}, [short])], encoding=2), 1)
    assert [(s.labels, len(s.timestamps)) for s in histogram[0]] == [({"__name__": "h"}, 0)]
    with pytest.raises(rr.RemoteReadError, match="query"):
        rr.decode_chunked_response(frames, 2)
