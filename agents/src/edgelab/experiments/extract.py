"""edgelab-extract: turn a time range of Prometheus into one dataset (Parquet or CSV).

Times: --start and --end are ISO 8601 with a zone ("2024-01-30T19:10:15+02:00",
"...Z"), epoch seconds, or "now" / "now-90m"; a time WITHOUT a zone is taken as UTC
(never as the machine's local time). --end may not lie in the future.

What: every series (default) or those of --selector (repeatable, a PromQL series
selector). Series are found with /api/v1/series, grouped by metric family (the name
up to its second "_"), and families are packed into requests with one
`{__name__=~"a|b|..."}` matcher each, at most --max-points-per-request points (raw
samples for remote read) per request; a --selector is queried as it is.

API (--api): auto (default) is remote read, with range queries where it cannot serve:
a server or proxy that answers /api/v1/read with 404, 405, 406, 415 or 501 or with
something other than streamed chunks, and a --selector that is an expression rather
than a series selector. remote_read reads, with Prometheus's remote-read API (POST
/api/v1/read, which Prometheus serves by default), the server's stored XOR chunks of
every segment and the lookback before it (streamed, so the server decodes nothing),
decodes them here and resamples them to the --sampling grid exactly as a range query
evaluates (the last sample no older than --lookback, none after a staleness marker),
so the dataset is the same as query_range's; measured against Prometheus 2.42 on
loopback it costs the server far less CPU than JSON, the client about the same, and
moves a tenth of the bytes (docs/benchmarks.md). Its
requests are sized by raw samples: a probe reads 30 s of every series at the start,
middle and end of the range to find the densest. Remote read adds the server's
external labels; they are removed. query_range uses JSON range queries only.

How: the range is cut at --sampling seconds into segments of --segment_size
evaluation points (at most 11,000, Prometheus's limit per series); --n_threads
requests run at once, each retried with exponential backoff on connection errors,
timeouts, 429 and 5xx (--retries). Every finished (segment, query) is written at once
as an Arrow part under OUT/parts/ and recorded in OUT/manifest.json, so memory
does not grow with the range and a rerun of the same command after an interruption
skips what is done. At the end the parts are merged, one segment at a time, into
OUT/dataset.parquet (or OUT/dataset.csv with --format csv): a `timestamp` column
(UTC; epoch seconds in CSV) and one float column per series named as PromQL prints
it (`name{label="value",...}`), empty where Prometheus had no value; OUT/metadata.json
records the range, the step, the queries and their API, every column's labels and
the timings. `edgelab-sro evaluate --dataset OUT/dataset.parquet` reads it as it is.

Prometheus: --prometheus URL (or PROMETHEUS_URL), --username with --password-file
(or PROMETHEUS_USERNAME and PROMETHEUS_PASSWORD_FILE), --ca-file.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import cli
from ..config import ConfigError
from ..prometheus import PrometheusClient, PrometheusError, PrometheusHTTPError, PrometheusQueryError
from .remote_read import RemoteReadClient, RemoteReadError, parse_selector, resample_many

log = logging.getLogger(__name__)

PROG = "edgelab-extract"
MAX_POINTS = 11_000  # evaluation times per series in one range query (Prometheus's limit)
MANIFEST_VERSION = 2
ALL_SERIES = '{__name__=~".+"}'
LOOKBACK_S = 300.0  # Prometheus's default --query.lookback-delta


class ExtractError(Exception):
    """The extraction stopped (a query failed after its retries); what is done is kept."""


# ---------------------------------------------------------------- times
RELATIVE = re.compile(r"^now(?:\s*-\s*(\d+(?:\.\d*)?)\s*(s|m|h|d))?$")


def parse_time(text: str, *, now: float | None = None) -> float:
    """Epoch seconds from ISO 8601 (zone optional; none means UTC), epoch seconds, or
    now[-N{s,m,h,d}]."""
    value = text.strip()
    moment = time.time() if now is None else now
    match = RELATIVE.match(value)
    if match:
        if match.group(1) is None:
            return moment
        return moment - float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number) or abs(number) >= 1e11:
            raise ValueError("%r is not epoch seconds (milliseconds?)" % text)
        return number
    normal = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    normal = re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "000000")[:6], normal, count=1)
    try:
        parsed = datetime.fromisoformat(normal)
    except ValueError:
        raise ValueError("%r is neither ISO 8601, epoch seconds nor now[-N{s,m,h,d}]" % text) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Segment:
    index: int
    start: float  # first evaluation time (epoch seconds)
    points: int

    def end(self, step: float) -> float:
        return self.start + (self.points - 1) * step


def segments(start: float, end: float, step: float, segment_size: int) -> list[Segment]:
    """Consecutive segments of at most segment_size evaluation times each, covering the
    grid of multiples of step from the first at or after start to the last at or
    before end."""
    if not (math.isfinite(step) and step > 0):
        raise ValueError("--sampling must be > 0 seconds, got %g" % step)
    if not 1 <= segment_size <= MAX_POINTS:
        raise ValueError("--segment_size must be 1 to %d points, got %d" % (MAX_POINTS, segment_size))
    first = math.ceil(start / step - 1e-9) * step
    last = math.floor(end / step + 1e-9) * step
    if last < first:
        raise ValueError("the range %s .. %s holds no evaluation time at a %gs step" % (iso(start), iso(end), step))
    count = round((last - first) / step) + 1
    return [Segment(k, first + offset * step, min(segment_size, count - offset))
            for k, offset in enumerate(range(0, count, segment_size))]


def family(name: str) -> str:
    """A metric's family: its name up to the second "_" (node_cpu_seconds_total ->
    node_cpu, kepler_container_joules_total -> kepler_container, up -> up)."""
    parts = name.split("_")
    return "_".join(parts[:2])


def name_regex(names: Sequence[str]) -> str:
    """A regular expression matching exactly these metric names."""
    return "|".join(re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", n) for n in sorted(names))


def name_matcher(names: Sequence[str]) -> str:
    return '{__name__=~"%s"}' % name_regex(names).replace("\\", "\\\\").replace('"', '\\"')


def _query(names: Sequence[str], size: int) -> dict[str, Any]:
    return {"query": name_matcher(names), "series": size, "metrics": len(names),
            "matchers": [(2, "__name__", name_regex(names))]}


def plan_queries(series: Sequence[dict[str, str]], points: int, max_points: int) -> list[dict[str, Any]]:
    """Range queries for all `series`: families packed whole while they fit
    max_points (series x points per segment); a family that does not fit alone is
    split by metric name, and a single metric larger than that is queried alone."""
    counts: dict[str, int] = {}
    for labels in series:
        name = labels.get("__name__", "")
        if name:
            counts[name] = counts.get(name, 0) + 1
    families: dict[str, list[str]] = {}
    for name in sorted(counts):
        families.setdefault(family(name), []).append(name)
    budget = max(1, max_points // max(points, 1))
    groups: list[list[str]] = []
    for names in families.values():
        total = sum(counts[n] for n in names)
        if total <= budget:
            groups.append(names)
            continue
        chunk: list[str] = []
        size = 0
        for n in names:
            if chunk and size + counts[n] > budget:
                groups.append(chunk)
                chunk, size = [], 0
            chunk.append(n)
            size += counts[n]
        groups.append(chunk)
    queries: list[dict[str, Any]] = []
    current: list[str] = []
    size = 0
    for names in groups:
        weight = sum(counts[n] for n in names)
        if current and size + weight > budget:
            queries.append(_query(current, size))
            current, size = [], 0
        current.extend(names)
        size += weight
    if current:
        queries.append(_query(current, size))
    return queries


# ---------------------------------------------------------------- decoding a matrix
def series_name(labels: dict[str, str]) -> str:
    """A series as PromQL prints it: name{label="value",...}, labels sorted."""
    name = labels.get("__name__", "")
    rest = ",".join('%s="%s"' % (k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
                    for k, v in sorted(labels.items()) if k != "__name__")
    return "%s{%s}" % (name, rest) if rest else (name or "{}")


_DECODER = json.JSONDecoder()
_VALUES = b',"values":['


def decode_matrix(body: bytes) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
    """(labels, timestamps, values) of every series in a query_range response.

    The labels are decoded as JSON; the [time,"value"] pairs, which are most of the
    bytes, are turned into CSV lines and parsed by pyarrow's CSV reader (C++, in
    parallel), which is several times faster than json.loads on large matrices. A
    response of another shape falls back to json."""
    try:
        return _decode_fast(body)
    except (ValueError, KeyError, IndexError) as exc:
        log.debug("fast matrix decoding did not apply (%s); using json", exc)
    payload = json.loads(body)
    out = []
    for item in payload["data"]["result"]:
        pairs = item.get("values", [])
        times = np.array([float(t) for t, _v in pairs], dtype=np.float64)
        values = np.array([float(v) for _t, v in pairs], dtype=np.float64)
        out.append(({str(k): str(v) for k, v in item.get("metric", {}).items()}, times, values))
    return out


def _decode_fast(body: bytes) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # Inside JSON strings quotes are escaped, so the markers below only match structure.
    head = body.find(b'"result":[')
    if not body.startswith(b'{"status":"success"') or head < 0 or b'"resultType":"matrix"' not in body[:head]:
        raise ValueError("not a matrix response")
    pos = head + len(b'"result":[')
    view = memoryview(body)
    labels: list[dict[str, str]] = []
    pieces: list[memoryview] = []
    counts: list[int] = []
    while True:
        while body[pos:pos + 1] in (b" ", b",", b"\n"):
            pos += 1
        if body[pos:pos + 1] == b"]":
            break
        if not body.startswith(b'{"metric":', pos):
            raise ValueError("unexpected series at byte %d" % pos)
        values = body.index(_VALUES, pos)
        metric = json.loads(body[pos + len(b'{"metric":'):values])
        if not isinstance(metric, dict):
            raise ValueError("metric at byte %d is not an object" % pos)
        pos = values + len(_VALUES)
        if body[pos:pos + 1] == b"]":
            count = 0
            pos += 1
        else:
            close = body.index(b"]]", pos)
            pieces.append(view[pos + 1:close])  # t,"v"],[t,"v"],...,[t,"v"
            count = body.count(b"],[", pos, close) + 1
            pos = close + 2
        if body[pos:pos + 1] != b"}":
            raise ValueError("series with more than values at byte %d" % pos)
        pos += 1
        labels.append({str(k): str(v) for k, v in metric.items()})
        counts.append(count)
    total = sum(counts)
    if total == 0:
        empty = np.empty(0, dtype=np.float64)
        return [(lab, empty, empty) for lab in labels]
    csv_bytes = b"\n".join(pieces).replace(b"],[", b"\n").replace(b'"', b"")
    table = pacsv.read_csv(io.BytesIO(csv_bytes),
                           read_options=pacsv.ReadOptions(column_names=["t", "v"]),
                           convert_options=pacsv.ConvertOptions(column_types={"t": pa.float64(), "v": pa.float64()},
                                                                null_values=[], strings_can_be_null=False))
    if table.num_rows != total:
        raise ValueError("decoded %d points, expected %d" % (table.num_rows, total))
    times = numpy_of(table.column("t"))
    values_ = numpy_of(table.column("v"))
    out = []
    offset = 0
    for lab, count in zip(labels, counts, strict=True):
        out.append((lab, times[offset:offset + count], values_[offset:offset + count]))
        offset += count
    return out


# ---------------------------------------------------------------- the work
def _atomic_bytes(path: Path, write: Callable[[str], object]) -> None:
    temporary = path.with_name(".%s.tmp%d" % (path.name, threading.get_ident()))
    try:
        write(str(temporary))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def part_path(out: Path, segment: int, query: int) -> Path:
    return out / "parts" / ("s%06d-q%04d.arrow" % (segment, query))


def fetch_part(client: PrometheusClient, query: str, segment: Segment, step: float, path: Path) -> int:
    """One range query for one segment, written as a part; its point count."""
    end = segment.end(step)
    try:
        body = client.query_range_raw(query, segment.start, end, step)
    except PrometheusQueryError as exc:
        raise cli.InputError("query %s from %s to %s: %s" % (query, iso(segment.start), iso(end), exc)) from None
    except PrometheusError as exc:
        raise ExtractError("query %s from %s to %s: %s" % (query, iso(segment.start), iso(end), exc)) from None
    columns: dict[str, np.ndarray] = {}
    labels: dict[str, dict[str, str]] = {}
    points = 0
    for lab, times, values in decode_matrix(body):
        name = series_name(lab)
        column = columns.get(name)
        if column is None:
            column = columns[name] = np.full(segment.points, np.nan)
            labels[name] = lab
        index = np.rint((times - segment.start) / step).astype(np.int64)
        keep = (index >= 0) & (index < segment.points)
        column[index[keep]] = values[keep]
        points += int(keep.sum())
    write_part(path, segment, step, columns, labels)
    return points


def grid_ms(segment: Segment, step: float) -> np.ndarray:
    """The segment's evaluation times in milliseconds, as they are stored."""
    return np.rint((segment.start + np.arange(segment.points) * step) * 1000).astype(np.int64)


def fetch_part_remote(client: RemoteReadClient, query: dict[str, Any], segment: Segment, step: float, path: Path,
                      server: dict[str, Any]) -> tuple[int, int]:
    """One remote read of query's matchers over the segment and the lookback before
    it, resampled to the segment's grid as a range query evaluates it and written as
    a part; (points, raw samples)."""
    grid = grid_ms(segment, step)
    lookback_ms = round(server["lookback"] * 1000)
    matchers = [(int(kind), str(name), str(value)) for kind, name, value in query["matchers"]]
    try:
        found = client.read_chunks([(int(grid[0]) - lookback_ms, int(grid[-1]), matchers)])
    except PrometheusQueryError as exc:
        raise cli.InputError("remote read of %s from %s to %s: %s"
                             % (query["query"], iso(segment.start), iso(segment.end(step)), exc)) from None
    except (PrometheusError, RemoteReadError) as exc:
        raise ExtractError("remote read of %s from %s to %s: %s"
                           % (query["query"], iso(segment.start), iso(segment.end(step)), exc)) from None
    external = server["external_labels"]
    columns: dict[str, np.ndarray] = {}
    labels: dict[str, dict[str, str]] = {}
    series = found[0] if found else []
    values, counts = resample_many(series, grid, lookback_ms, left_open=server["left_open"])
    points, samples = int(counts.sum()), sum(len(raw.timestamps) for raw in series)
    for raw, row, count in zip(series, values, counts.tolist(), strict=True):
        if count == 0:
            continue  # a range query leaves out a series without a value in the segment
        lab = {k: v for k, v in raw.labels.items() if external.get(k) != v}
        name = series_name(lab)
        columns[name] = row
        labels[name] = lab
    write_part(path, segment, step, columns, labels)
    return points, samples


def numpy_of(column: Any) -> np.ndarray:
    """A numpy view of an int64 or float64 Arrow (chunked) array without nulls. Taken
    from the buffer rather than with to_numpy(), which imports pandas when it is
    installed (half a second)."""
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise ValueError("a column with nulls")
    kind = np.float64 if pa.types.is_float64(array.type) else np.int64
    return np.frombuffer(array.buffers()[1], dtype=kind, count=len(array), offset=array.offset * 8)


def arrow_array(values: np.ndarray, kind: Any) -> Any:
    """An Arrow array over a numpy array's memory (int64 or float64, no nulls). Built
    from the buffer rather than with pa.array(), whose first call imports pandas when it
    is installed (half a second)."""
    import pyarrow as pa

    data = np.ascontiguousarray(values, dtype=np.int64 if pa.types.is_timestamp(kind) else np.float64)
    return pa.Array.from_buffers(kind, len(data), [None, pa.py_buffer(data)])


def write_part(path: Path, segment: Segment, step: float, columns: dict[str, np.ndarray],
               labels: dict[str, dict[str, str]]) -> None:
    """A part: an Arrow IPC file (no encoding or compression to pay twice) with the
    segment's timestamps and one column per series, labels in its metadata."""
    import pyarrow as pa

    names = sorted(columns)
    arrays = [arrow_array(grid_ms(segment, step), pa.timestamp("ms", tz="UTC"))]
    arrays += [arrow_array(columns[n], pa.float64()) for n in names]
    schema = pa.schema([pa.field("timestamp", pa.timestamp("ms", tz="UTC"))]
                       + [pa.field(n, pa.float64()) for n in names],
                       metadata={b"edgelab.labels": json.dumps([labels[n] for n in names]).encode()})
    table = pa.Table.from_arrays(arrays, schema=schema)

    def write(tmp: str) -> None:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            writer.write_table(table)

    _atomic_bytes(path, write)


class Manifest:
    """OUT/manifest.json: what is asked for, the plan, and which parts are done."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.lock = threading.Lock()

    def save(self) -> None:
        text = json.dumps(self.data, separators=(",", ":")) + "\n"  # compact: json's fast encoder
        _atomic_bytes(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def segment_done(self, index: int) -> None:
        with self.lock:
            if index not in self.data["done"]:
                self.data["done"].append(index)
                self.data["done"].sort()
            self.save()


def merge(out: Path, plan: list[Segment], n_queries: int, fmt: str) -> tuple[Path, list[str], dict[str, Any]]:
    """The parts, one segment at a time, into one dataset with the union of columns."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    labels: dict[str, dict[str, str]] = {}
    for segment in plan:
        for q in range(n_queries):
            with pa.memory_map(str(part_path(out, segment.index, q))) as source:
                schema = pa.ipc.open_file(source).schema
            names = schema.names[1:]
            stored = json.loads((schema.metadata or {}).get(b"edgelab.labels", b"[]"))
            for name, lab in zip(names, stored, strict=False):
                labels.setdefault(name, lab)
            for name in names:
                labels.setdefault(name, {})
    names = sorted(labels)
    time_type = pa.timestamp("ms", tz="UTC")
    schema = pa.schema([pa.field("timestamp", time_type)] + [pa.field(n, pa.float64()) for n in names])
    target = out / ("dataset.parquet" if fmt == "parquet" else "dataset.csv")
    rows = 0

    def write(tmp: str) -> None:
        nonlocal rows
        writer: Any
        if fmt == "parquet":
            writer = pq.ParquetWriter(tmp, schema, compression="snappy")
        else:
            csv_schema = pa.schema([pa.field("timestamp", pa.float64()), *list(schema)[1:]])
            writer = pacsv.CSVWriter(tmp, csv_schema)
        try:
            for segment in plan:
                merged: dict[str, Any] = {}
                timestamps = None
                for q in range(n_queries):
                    with pa.memory_map(str(part_path(out, segment.index, q))) as source:
                        part = pa.ipc.open_file(source).read_all()
                    if timestamps is None:
                        timestamps = part.column("timestamp")
                    for name in part.column_names[1:]:
                        merged.setdefault(name, part.column(name))
                assert timestamps is not None
                missing = pa.nulls(segment.points, pa.float64())
                if fmt == "parquet":
                    arrays = [timestamps] + [merged.get(n, missing) for n in names]
                    writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                else:
                    seconds = arrow_array(numpy_of(timestamps.cast(pa.int64())) / 1000.0, pa.float64())
                    arrays = [seconds] + [merged.get(n, missing) for n in names]
                    writer.write_table(pa.Table.from_arrays(arrays, schema=csv_schema))
                rows += segment.points
        finally:
            writer.close()

    _atomic_bytes(target, write)
    return target, names, {"rows": rows, "labels": labels}


NOT_SERVED = frozenset({404, 405, 406, 415, 501})  # statuses of a server or proxy without remote read


def remote_read_server(client: PrometheusClient, api: str, lookback: float, at: float) -> dict[str, Any] | None:
    """What resampling remote-read samples needs to know about the server (lookback,
    whether it is left-open, external labels), or None when api is "auto" and the
    server does not serve remote read (a clear error when api is "remote_read")."""
    if not isinstance(client, RemoteReadClient):
        return None
    probe = [(round(at * 1000) - 1, round(at * 1000), [(0, "__name__", "edgelab_extract_probe")])]
    try:
        client.read_chunks(probe)
    except (PrometheusHTTPError, RemoteReadError) as exc:
        if isinstance(exc, PrometheusHTTPError) and exc.status not in NOT_SERVED:
            raise ExtractError("remote read: %s" % exc) from None
        if api == "remote_read":
            raise cli.InputError("%s does not serve remote read (%s%s): use --api query_range or auto"
                                 % (client.url, exc, "" if isinstance(exc, PrometheusError)
                                    else "; a proxy in between?")) from None
        log.warning("%s does not serve remote read (%s); using range queries", client.url, exc)
        return None
    except PrometheusError as exc:
        raise ExtractError("remote read: %s" % exc) from None
    try:
        version = str(client.buildinfo().get("version", ""))
        external = client.external_labels()
    except PrometheusError as exc:
        raise ExtractError("reading Prometheus's version and external labels: %s" % exc) from None
    major = re.match(r"(\d+)\.", version)
    return {"version": version, "lookback": lookback, "left_open": bool(major and int(major.group(1)) >= 3),
            "external_labels": external}


PROBE_S = 30  # seconds of raw samples read at three times to estimate how dense series are


def raw_samples_per_series(client: RemoteReadClient, plan: list[Segment], step: float, lookback: float) -> int:
    """An upper estimate of the raw samples one series has in a segment and the lookback
    before it, from the densest series in PROBE_S seconds at the start, middle and end
    of the range; at least one sample per evaluation time. Remote read's window, like a
    range query's, is thus bounded by samples, not seconds."""
    first, last = plan[0].start, plan[-1].end(step)
    times = sorted({round(first * 1000), round((first + last) / 2 * 1000), round(last * 1000)})
    try:
        found = client.read_counts([(t - PROBE_S * 1000, t, [(2, "__name__", ".+")]) for t in times])
    except (PrometheusError, RemoteReadError) as exc:
        raise ExtractError("remote read of %ds to estimate sample density: %s" % (PROBE_S, exc)) from None
    densest = max([count for result in found for count in result], default=0) / PROBE_S
    seconds = (plan[0].points - 1) * step + lookback
    return max(plan[0].points, math.ceil(densest * seconds) + 1)


def plan_remote(client: PrometheusClient, plan: list[Segment], step: float, selectors: Sequence[str],
                max_points: int, api: str, server: dict[str, Any] | None,
                lookback: float) -> tuple[list[dict[str, Any]], int]:
    """The queries of an extraction, each with the API that fetches it; the series found."""
    if selectors:
        queries: list[dict[str, Any]] = []
        for selector in selectors:
            matchers = parse_selector(selector) if server is not None else None
            if matchers is None and api == "remote_read":
                raise cli.InputError("remote read takes series selectors (name{label=\"value\",...}), not %r: "
                                     "use --api query_range or auto" % selector)
            queries.append({"query": selector, "series": None, "metrics": None,
                            "api": "query_range" if matchers is None else "remote_read",
                            **({"matchers": matchers} if matchers is not None else {})})
        return queries, 0
    try:
        # Range queries see samples up to the lookback before each evaluation time.
        found = client.series(ALL_SERIES, plan[0].start - lookback, plan[-1].end(step))
    except PrometheusError as exc:
        raise ExtractError("listing series: %s" % exc) from None
    if not found:
        raise cli.InputError("Prometheus has no series between %s and %s" % (iso(plan[0].start),
                                                                             iso(plan[-1].end(step))))
    if server is None:
        queries = plan_queries(found, plan[0].points, max_points)
        for query in queries:
            del query["matchers"]
            query["api"] = "query_range"
        return queries, len(found)
    assert isinstance(client, RemoteReadClient)
    cost = raw_samples_per_series(client, plan, step, lookback)
    queries = plan_queries(found, cost, max_points)
    for query in queries:
        query["api"] = "remote_read"
        query["raw_samples_per_series"] = cost
    return queries, len(found)


def run_extraction(client: PrometheusClient, out: Path, *, start: float, end: float, step: float,
                   segment_size: int, selectors: Sequence[str], n_threads: int, max_points: int,
                   fmt: str = "parquet", progress: bool = True, api: str = "query_range",
                   lookback: float = LOOKBACK_S) -> dict[str, Any]:
    """Plan (or resume), fetch every missing part, merge; the metadata."""
    from tqdm import tqdm

    began = time.monotonic()
    plan = segments(start, end, step, segment_size)
    params = {"prometheus": client.url, "start": start, "end": end, "step": step, "segment_size": segment_size,
              "selectors": list(selectors), "max_points_per_request": max_points, "api": api,
              "lookback": lookback}
    out.mkdir(parents=True, exist_ok=True)
    (out / "parts").mkdir(exist_ok=True)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError:
            raise cli.InputError("%s is not JSON: remove it or choose another --out" % manifest_path) from None
        if data.get("version") != MANIFEST_VERSION or data.get("params") != params:
            raise cli.InputError("%s holds another extraction (%s): choose another --out, or rerun with its "
                                 "parameters to resume" % (out, ", ".join(
                                     "%s=%s" % (k, v) for k, v in sorted(data.get("params", {}).items())
                                     if params.get(k) != v) or "other version"))
        manifest = Manifest(manifest_path, data)
        queries = data["queries"]
        server = data.get("remote_read")
        log.info("resuming %s: %d of %d segments done", out, len(data["done"]), len(plan))
    else:
        server = None if api == "query_range" else remote_read_server(client, api, lookback, plan[-1].end(step))
        queries, found = plan_remote(client, plan, step, selectors, max_points, api, server, lookback)
        manifest = Manifest(manifest_path, {"version": MANIFEST_VERSION, "params": params, "queries": queries,
                                            "remote_read": server, "segments": len(plan), "done": [],
                                            "created": iso(time.time())})
        manifest.save()
        log.info("%s in %d queries (%s), %d segments of up to %d points",
                 "%d series" % found if found else "selectors", len(queries),
                 ", ".join(sorted({q["api"] for q in queries})), len(plan), segment_size)
    if server is not None and not isinstance(client, RemoteReadClient):
        raise cli.InputError("%s was planned for remote read: resume it with edgelab-extract" % out)
    done_segments = set(manifest.data["done"])
    reused = len(done_segments)
    tasks = [(segment, q) for segment in plan if segment.index not in done_segments
             for q in range(len(queries)) if not part_path(out, segment.index, q).exists()]
    remaining: dict[int, int] = {}
    for segment, _q in tasks:
        remaining[segment.index] = remaining.get(segment.index, 0) + 1
    for segment in plan:  # parts all there from an interrupted run, segment not yet recorded
        if segment.index not in done_segments and segment.index not in remaining:
            manifest.segment_done(segment.index)
    points = samples = 0
    lock = threading.Lock()
    bar = tqdm(total=len(tasks), unit="query", desc=PROG, disable=None if progress else True, file=sys.stderr,
               leave=False)

    def work(segment: Segment, q: int) -> None:
        nonlocal points, samples
        path = part_path(out, segment.index, q)
        if queries[q].get("api") == "remote_read":
            assert server is not None and isinstance(client, RemoteReadClient)
            got, raw = fetch_part_remote(client, queries[q], segment, step, path, server)
        else:
            got, raw = fetch_part(client, queries[q]["query"], segment, step, path), 0
        with lock:
            points += got
            samples += raw
            remaining[segment.index] -= 1
            finished = remaining[segment.index] == 0
            bar.update(1)
        if finished:
            manifest.segment_done(segment.index)

    try:
        with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="extract") as pool:
            # A bounded window of submitted tasks: a failure stops the rest soon.
            pending: set[Future[None]] = set()
            for segment, q in tasks:
                pending.add(pool.submit(work, segment, q))
                if len(pending) >= 2 * n_threads:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    _raise_first(finished, pending)
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            _raise_first(finished, pending)
    except ExtractError as exc:
        done = len(manifest.data["done"])
        raise ExtractError("%s (%d of %d segments done in %s; rerun the same command to resume)"
                        % (exc, done, len(plan), out)) from None
    finally:
        bar.close()
    fetched = time.monotonic()
    target, names, merged = merge(out, plan, len(queries), fmt)
    elapsed = time.monotonic() - began
    metadata = {
        "dataset": target.name, "format": fmt, "rows": merged["rows"], "series": len(names),
        "start": iso(plan[0].start), "end": iso(plan[-1].end(step)), "step_seconds": step,
        "timestamp": "timestamp: UTC (Parquet timestamp[ms, UTC]; epoch seconds in CSV)",
        "requested": {"start": iso(start), "end": iso(end)},
        "prometheus": client.url, "selectors": list(selectors) or [ALL_SERIES], "queries": queries,
        "segments": len(plan), "segment_size": segment_size, "segments_reused": reused,
        "requests": len(tasks), "points_fetched": points, "raw_samples_fetched": samples,
        "apis": sorted({q.get("api", "query_range") for q in queries}),
        "fetch_seconds": round(fetched - began, 3), "merge_seconds": round(time.monotonic() - fetched, 3),
        "elapsed_seconds": round(elapsed, 3),
        "columns": [{"name": n, "labels": merged["labels"].get(n, {})} for n in names],
        "created": iso(time.time()),
    }
    cli.write_atomic(str(out / "metadata.json"), readable_json(metadata))
    return metadata


def readable_json(data: dict[str, Any]) -> str:
    """JSON with a line per key and per item of a list value, the rest compact: as easy
    to read as an indented file and written by json's fast encoder."""
    def value(item: Any) -> str:
        if isinstance(item, list) and item:
            return "[\n  " + ",\n  ".join(json.dumps(element) for element in item) + "\n ]"
        return json.dumps(item)

    return "{\n" + ",\n".join(" %s: %s" % (json.dumps(key), value(item)) for key, item in data.items()) + "\n}\n"


def _raise_first(finished: set[Future[None]], pending: set[Future[None]]) -> None:
    for future in finished:
        exc = future.exception()
        if exc is not None:
            for other in pending:
                other.cancel()
            raise exc


# ---------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    when = parser.add_argument_group("range (times without a zone are UTC)")
    when.add_argument("--start", required=True,
                      help='ISO 8601 ("2024-01-30T19:10:15+02:00", "...Z"; no zone = UTC), epoch seconds, '
                           'or now-N{s,m,h,d}')
    when.add_argument("--end", required=True, help="same forms as --start; not in the future")
    when.add_argument("--sampling", type=float, default=5.0, help="step between points, seconds (default 5)")
    when.add_argument("--segment_size", type=int, default=2000,
                      help="evaluation points per segment, 1 to 11000 (default 2000)")
    what = parser.add_argument_group("what")
    what.add_argument("--selector", action="append", default=[], metavar="SELECTOR",
                      help='a PromQL series selector, e.g. \'{job="node"}\' (repeatable; default: every series)')
    what.add_argument("--max-points-per-request", type=int, default=250_000, metavar="N",
                      help="points per range query when packing metric families (default 250000)")
    how = parser.add_argument_group("how")
    how.add_argument("--api", choices=("auto", "remote_read", "query_range"), default="auto",
                     help="auto (default): remote read, with range queries when the server does not serve it "
                          "or for a --selector that is a PromQL expression rather than a series selector. "
                          "remote_read: the server's stored chunks from /api/v1/read (streamed; Prometheus "
                          "serves it by default, a proxy in front may not), decoded and resampled to the "
                          "--sampling grid exactly as a range query evaluates: the same dataset for far less "
                          "server CPU (docs/benchmarks.md). query_range: JSON range queries")
    how.add_argument("--lookback", type=float, default=LOOKBACK_S, metavar="SECONDS",
                     help="the server's --query.lookback-delta, for resampling remote-read samples (default 300)")
    how.add_argument("--n_threads", type=int, default=4, help="queries at once (default 4)")
    how.add_argument("--retries", type=int, default=5, help="retries per query with backoff (default 5)")
    how.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    how.add_argument("--out", required=True, metavar="DIR", help="output directory (rerun with it to resume)")
    how.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="dataset format")
    how.add_argument("--no-progress", action="store_true", help="no progress bar (none off a terminal anyway)")
    prom = parser.add_argument_group("Prometheus")
    prom.add_argument("--prometheus", metavar="URL", help="base URL (default $PROMETHEUS_URL)")
    prom.add_argument("--username", help="basic auth user (default $PROMETHEUS_USERNAME)")
    prom.add_argument("--password-file", metavar="FILE", help="basic auth password file")
    prom.add_argument("--ca-file", metavar="FILE", help="CA bundle for https")


def make_client(args: argparse.Namespace) -> RemoteReadClient:
    env = os.environ
    url = args.prometheus or env.get("PROMETHEUS_URL")
    if not url:
        raise ConfigError("give --prometheus URL or set PROMETHEUS_URL")
    try:
        return RemoteReadClient(url, username=args.username or env.get("PROMETHEUS_USERNAME") or None,
                                password_file=args.password_file or env.get("PROMETHEUS_PASSWORD_FILE") or None,
                                ca_file=args.ca_file or env.get("PROMETHEUS_CA_FILE") or None,
                                timeout=args.timeout, retries=args.retries)
    except OSError as exc:
        raise ConfigError("Prometheus password or CA file: %s" % (exc.strerror or exc)) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def start(args: argparse.Namespace) -> None:
    now = time.time()
    try:
        t0, t1 = parse_time(args.start, now=now), parse_time(args.end, now=now)
    except ValueError as exc:
        raise cli.InputError("--start/--end: %s" % exc) from None
    if t1 <= t0:
        raise cli.InputError("--end (%s) is not after --start (%s)" % (iso(t1), iso(t0)))
    if t1 > now + 1:
        raise cli.InputError("--end (%s) is in the future (now %s): a resumed run would miss what comes later"
                             % (iso(t1), iso(now)))
    if args.n_threads < 1 or args.retries < 0 or args.max_points_per_request < 1:
        raise cli.InputError("--n_threads and --max-points-per-request must be >= 1, --retries >= 0")
    if not (math.isfinite(args.lookback) and args.lookback > 0):
        raise cli.InputError("--lookback must be > 0 seconds, got %g" % args.lookback)
    for selector in args.selector:
        if not selector.strip():
            raise cli.InputError("--selector is empty")
    client = make_client(args)
    try:
        segments(t0, t1, args.sampling, args.segment_size)
    except ValueError as exc:
        raise cli.InputError(str(exc)) from None
    metadata = run_extraction(client, Path(args.out), start=t0, end=t1, step=args.sampling,
                              segment_size=args.segment_size, selectors=args.selector, n_threads=args.n_threads,
                              max_points=args.max_points_per_request, fmt=args.format,
                              progress=not args.no_progress, api=args.api, lookback=args.lookback)
    print("%s: %d rows x %d series, %s .. %s every %gs, %d requests (%s; %d segments reused) in %.1fs" % (
        Path(args.out) / metadata["dataset"], metadata["rows"], metadata["series"], metadata["start"],
        metadata["end"], metadata["step_seconds"], metadata["requests"], "+".join(metadata["apis"]),
        metadata["segments_reused"], metadata["elapsed_seconds"]))


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, description=__doc__, add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())

