"""edgelab-report: an experiment run as PNG plots, one HTML page and summary.json.

    edgelab-report --dataset runs/X/extract [--results results.jsonl[.gz]] [--feeder feeder.json]
                   [--decisions decisions.jsonl] [--spec experiments/lab-smoke.yml] --out runs/X/report

Inputs (every one but --dataset may be left out; what it would show is then named as
missing on the page, never invented):
  --dataset    edgelab-extract's output: its directory (dataset.parquet or dataset.csv)
               or the file. Read: node CPU (node:cpu_utilisation:rate1m, else
               node_cpu_seconds_total{mode="idle"}), node power (node:power_watts:rate1m,
               node:kepler_power_watts:rate1m, else the RAPL or Kepler joule counters),
               edgelab_agent_prediction and the agents' measured targets,
               edgelab_agent_instances, edgelab_consumer_lag_records.
  --results    the results topic as JSON lines, one edgelab-consumer record a line
               (.gz read as gzip); streamed and aggregated per --step, so memory does
               not grow with the number of lines.
  --feeder     edgelab-feeder --report JSON: the frames offered (acknowledged by the
               broker) per 10 s window, relative to the feeder's start: its `started`
               (epoch seconds) when the report has one, else the earliest `produced`
               time of the results (the feeder's first frame), else --since.
  --decisions  the cluster agent's decision records, one JSON object a line (its log
               lines "TIME LEVEL edgelab.cluster_agent.decisions: {...}" are read too).
  --spec       the experiment spec: the KPI and SLA, evaluated per kpi.percentile_window.
  --bootstrap  copy the results topic (--results-topic) into the --results file first:
               records with a timestamp from --since (else all) to when the copy began,
               without a consumer group; Kafka settings as edgelab-feeder's.
  --since, --until  only results produced in [since, until) count (the run's range).

Output in --out: throughput.png, latency.png, consumers.png, nodes.png,
predictions.png, sla.png, report.html (the images embedded: one self-contained file)
and summary.json (the figures; every top-level number is a metric, null = not measured).

Latency percentiles come from histograms with bins 2 % wide (a percentile is its
bin's geometric middle: within 1 % of the exact nearest-rank value). A frame result
is placed in time by `produced` for latency and the processed fraction, by `published`
for the processed frames per second. Results repeated by at-least-once delivery count
once as processed frames (all of them count for latency).
"""

from __future__ import annotations

import argparse
import base64
import csv
import gzip
import html
import io
import json
import logging
import math
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from .. import cli
from ..config import SASL_MECHANISMS, SECURITY_PROTOCOLS

PROG = "edgelab-report"
log = logging.getLogger(__name__)
PLOTS = {
    "throughput": "Offered vs processed frames per second",
    "latency": "End-to-end and inference latency percentiles",
    "consumers": "Consumers and the cluster agent's decisions",
    "nodes": "Node CPU and power",
    "predictions": "Agent predictions against the load that came",
    "sla": "SLA per window",
}
NO_POWER = "no power series in the dataset"
QUIET_S = 3.0  # a copied topic is done when it brought nothing new for this long

# Latency histogram: bins of 2 % from 0.1 ms to 10,000 s; below and above go to the end bins.
BIN_RATIO = 1.02
BIN_LOW = 1e-4
BIN_HIGH = 1e4
N_BINS = math.ceil(math.log(BIN_HIGH / BIN_LOW) / math.log(BIN_RATIO))
_LOG_RATIO = math.log(BIN_RATIO)

SERIES = re.compile(r"^([^{}]+)(?:\{(.*)\})?$")
LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
LATENCY_KPIS = {"end_to_end_latency_p95": ("e2e", 0.95), "end_to_end_latency_p99": ("e2e", 0.99),
                "inference_latency_p95": ("inference", 0.95)}


# ---------------------------------------------------------------- latency histograms
def bin_of(seconds: float) -> int:
    if not seconds > BIN_LOW:  # also NaN
        return 0
    return min(N_BINS - 1, int(math.log(seconds / BIN_LOW) / _LOG_RATIO))


def bin_value(index: int) -> float:
    return BIN_LOW * BIN_RATIO ** (index + 0.5)


def percentile(hist: np.ndarray, q: float) -> float | None:
    """The nearest-rank q-quantile of the values counted in hist (its bin's middle)."""
    total = int(hist.sum())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    return bin_value(int(np.searchsorted(np.cumsum(hist), rank)))


# ---------------------------------------------------------------- results
class SeenFrames:
    """Frame keys seen so far: SOURCE-SEQUENCE keys as bits per source, others in a set."""

    def __init__(self) -> None:
        self.bits: dict[str, bytearray] = {}
        self.other: set[str] = set()

    def add(self, key: str) -> bool:
        """True when key is new."""
        source, _, number = key.rpartition("-")
        if source and number.isdigit() and len(number) <= 8:  # at most 12.5 MB of bits per source
            seq = int(number)
            bits = self.bits.setdefault(source, bytearray())
            byte, bit = divmod(seq, 8)
            if byte >= len(bits):
                bits.extend(bytes(max(byte + 1 - len(bits), len(bits))))
            if bits[byte] >> bit & 1:
                return False
            bits[byte] |= 1 << bit
            return True
        if key in self.other:
            return False
        self.other.add(key)
        return True


@dataclass
class Results:
    """The results file aggregated per step (bucket = floor(epoch / step))."""

    step: float
    records: int = 0
    bad: int = 0
    first_bad: str = ""
    duplicates: int = 0
    outside: int = 0
    errors: int = 0
    negative: int = 0
    first_produced: float = math.inf
    last_published: float = -math.inf
    processed: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # distinct, by published
    processed_by_produced: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    e2e: dict[int, np.ndarray] = field(default_factory=dict)
    inference: dict[int, np.ndarray] = field(default_factory=dict)
    consumers: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    names: set[str] = field(default_factory=set)

    def hist(self, table: dict[int, np.ndarray], bucket: int) -> np.ndarray:
        found = table.get(bucket)
        if found is None:
            found = table[bucket] = np.zeros(N_BINS, dtype=np.int32)
        return found

    @property
    def distinct(self) -> int:
        return sum(self.processed.values())


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def _time(record: dict[str, Any], name: str) -> float:
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} is not a number")
    return float(value)


def read_results(path: Path, step: float, since: float = -math.inf, until: float = math.inf) -> Results:
    """Stream the results file; records produced outside [since, until) are counted apart."""
    agg = Results(step)
    seen = SeenFrames()
    try:
        stream = _open_text(path)
        with stream:
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                    frame = record["frame"]
                    if not isinstance(frame, str):
                        raise ValueError("frame is not a string")
                    produced, published = _time(record, "produced"), _time(record, "published")
                    start, end = _time(record, "inference_start"), _time(record, "inference_end")
                except (ValueError, KeyError, TypeError) as exc:
                    agg.bad += 1
                    if not agg.first_bad:
                        detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
                        agg.first_bad = f"line {number}: {' '.join(detail.split())[:120]}"
                    continue
                if not since <= produced < until:
                    agg.outside += 1
                    continue
                agg.records += 1
                bucket = int(produced // step)
                if seen.add(frame):
                    agg.processed[int(published // step)] += 1
                    agg.processed_by_produced[bucket] += 1
                else:
                    agg.duplicates += 1
                if record.get("error"):
                    agg.errors += 1
                latency = published - produced
                if latency < 0:
                    agg.negative += 1
                agg.hist(agg.e2e, bucket)[bin_of(latency)] += 1
                agg.hist(agg.inference, bucket)[bin_of(end - start)] += 1
                # The same edgelab-consumer@N runs on every worker: the record's host
                # (written since 2026-12-03) tells them apart.
                consumer = str(record.get("consumer", ""))[:80]
                if record.get("host"):
                    consumer = f"{str(record['host'])[:64]}/{consumer}"
                agg.consumers[int(published // step)].add(consumer)
                agg.names.add(consumer)
                agg.first_produced = min(agg.first_produced, produced)
                agg.last_published = max(agg.last_published, published)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise cli.InputError(f"--results {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if agg.records == 0:
        why = f" ({agg.bad} unusable, first at {agg.first_bad})" if agg.bad else ""
        if agg.outside:
            why += f" ({agg.outside} produced outside --since/--until)"
        raise cli.InputError(f"--results {path}: no consumer result records{why}")
    return agg


def topic_records(settings: Any, topic: str, *, since: float | None, timeout_s: float,
                  option: str = "--results-topic") -> Iterator[Any]:
    """The topic's records with a timestamp from `since` (else all) to when the read
    began, every partition read from its beginning and past the end offsets the broker
    reported until the topic is quiet for QUIET_S. Tansu with S3 storage reports end
    offsets short of the last batch and answers time lookups (offsets_for_times) in
    whole seconds: a read that trusted either lost records (2 of 112 results in a CI
    run). Each record's own timestamp decides. No consumer group: nothing is
    committed. Connecting and finding the topic happen on the call (their errors name
    `option`); the records come as the result is iterated."""
    from kafka import KafkaConsumer, TopicPartition  # type: ignore[import-untyped, unused-ignore]
    from kafka.errors import KafkaError  # type: ignore[import-untyped, unused-ignore]

    where = ",".join(settings.bootstrap)
    options: dict[str, Any] = {"request_timeout_ms": max(10_000, int(timeout_s * 1000) // 2 + 1000)}
    if "bootstrap_timeout_ms" in KafkaConsumer.DEFAULT_CONFIG:  # kafka-python 3: else 30 s to say "no broker"
        options["bootstrap_timeout_ms"] = 10_000
    try:
        consumer = KafkaConsumer(**settings.client_config(), group_id=None, enable_auto_commit=False,
                                 auto_offset_reset="earliest", **options)
    except KafkaError as exc:
        raise cli.InputError(f"kafka {where}: {' '.join(str(exc).split())}") from None
    try:
        ids = consumer.partitions_for_topic(topic)
        if not ids:
            raise cli.InputError(f"{option} {topic}: no such topic on {where}")
        parts = [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(parts)
        end = consumer.end_offsets(parts)
        consumer.seek_to_beginning(*parts)
    except KafkaError as exc:
        consumer.close()
        raise cli.InputError(f"kafka {where}: {' '.join(str(exc).split())}") from None
    except BaseException:
        consumer.close()
        raise

    def records() -> Iterator[Any]:
        first_ms = -1 if since is None else int(since * 1000)
        began_ms = int(time.time() * 1000)
        last = time.monotonic()
        try:
            while True:
                got = 0
                for batch in consumer.poll(timeout_ms=250, max_records=5000).values():
                    got += len(batch)
                    yield from (r for r in batch if r.value is not None and first_ms <= r.timestamp < began_ms)
                now = time.monotonic()
                last = now if got else last
                behind = [tp for tp in parts if consumer.position(tp) < end[tp]]
                if behind and now - last > timeout_s:
                    left = sum(end[tp] - consumer.position(tp) for tp in behind)
                    raise cli.InputError(f"{option} {topic}: no record for {timeout_s:g} s with {left} still to read")
                if not behind and now - last >= QUIET_S:
                    return
        except KafkaError as exc:
            raise cli.InputError(f"kafka {where}: {' '.join(str(exc).split())}") from None
        finally:
            consumer.close()

    return records()


def dump_topic(settings: Any, topic: str, path: Path, *, since: float | None, timeout_s: float) -> int:
    """Copy the topic's records (topic_records) to path, one record value a line; the
    number of records."""
    written = 0
    found = topic_records(settings, topic, since=since, timeout_s=timeout_s)
    try:
        with _open_write(path) as out:
            for record in found:
                out.write(record.value.decode("utf-8", "replace").replace("\n", " ") + "\n")
                written += 1
    except OSError as exc:
        raise cli.InputError(f"--results {path}: {exc.strerror or exc}") from None
    return written


def _open_write(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "wb"), encoding="utf-8")
    return path.open("w", encoding="utf-8")


# ---------------------------------------------------------------- feeder, decisions, spec
def read_feeder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise cli.InputError(f"--feeder {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise cli.InputError(f"--feeder {path}: not JSON: {exc}") from None
    rows = data.get("per_window") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and isinstance(r.get("start_s"), int | float) and isinstance(r.get("frames"), int)
            and isinstance(r.get("seconds"), int | float) and r["seconds"] > 0 for r in rows):
        raise cli.InputError(f"--feeder {path}: not an edgelab-feeder report (per_window rows with start_s, "
                             "seconds, frames)")
    if not isinstance(data.get("frames_acked"), int):
        raise cli.InputError(f"--feeder {path}: not an edgelab-feeder report (no frames_acked)")
    return data


def read_decisions(path: Path) -> list[dict[str, Any]]:
    """Decision, actuation and IMA command records in time order (hold decisions kept
    for their predictions)."""
    records: list[dict[str, Any]] = []
    try:
        with _open_text(path) as stream:
            for line in stream:
                brace = line.find("{")
                if brace < 0:
                    continue
                try:
                    record = json.loads(line[brace:])
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("event") in ("decision", "actuation", "ima_command") \
                        and isinstance(record.get("ts"), int | float):
                    records.append(record)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise cli.InputError(f"--decisions {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not records:
        raise cli.InputError(f"--decisions {path}: no cluster agent decision records")
    records.sort(key=lambda r: float(r["ts"]))
    return records


def read_spec(path: Path) -> dict[str, Any]:
    from .spec import SpecError, load_spec

    try:
        return load_spec(path)
    except SpecError as exc:
        raise cli.InputError(f"--spec {exc}") from None


# ---------------------------------------------------------------- the dataset
def parse_series(name: str) -> tuple[str, dict[str, str]]:
    match = SERIES.match(name)
    if not match:
        return name, {}
    labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in LABEL.findall(match.group(2) or "")}
    return match.group(1), labels


WANTED = ("node:cpu_utilisation:rate1m", "node_cpu_seconds_total", "node:power_watts:rate1m",
          "node:kepler_power_watts:rate1m", "node_rapl_package_joules_total", "node_rapl_dram_joules_total",
          "kepler_node_cpu_joules_total", "edgelab_agent_instances", "edgelab_consumer_lag_records",
          "edgelab_agent_prediction")


def _wanted(name: str) -> bool:
    metric, labels = parse_series(name)
    if metric == "node_cpu_seconds_total":
        return labels.get("mode") == "idle"
    if metric == "kepler_node_cpu_joules_total":
        return labels.get("zone") in ("package", "dram")
    return metric in WANTED or metric.startswith("edgelab_agent_")


@dataclass
class Dataset:
    path: Path
    times: np.ndarray
    columns: dict[str, np.ndarray]


def find_dataset(path: Path) -> Path:
    if path.is_dir():
        for name in ("dataset.parquet", "dataset.csv"):
            if (path / name).is_file():
                return path / name
        raise cli.InputError(f"--dataset {path}: no dataset.parquet or dataset.csv in the directory")
    if not path.is_file():
        raise cli.InputError(f"--dataset {path}: no such file or directory")
    return path


def read_dataset(path: Path) -> Dataset:
    """The timestamps and the columns the report plots, nothing else."""
    file = find_dataset(path)
    try:
        with file.open("rb") as stream:
            parquet = stream.read(4) == b"PAR1"
        times, columns = _read_parquet(file) if parquet else _read_csv(file)
    except OSError as exc:
        raise cli.InputError(f"--dataset {file}: {exc.strerror or exc}") from None
    if len(times) == 0:
        raise cli.InputError(f"--dataset {file}: no rows")
    if not columns:
        raise cli.InputError(f"--dataset {file}: no usable column (none of node CPU, power, agent predictions, "
                             "instances, consumer lag)")
    order = np.argsort(times, kind="stable")
    return Dataset(file, times[order], {k: v[order] for k, v in columns.items()})


def _read_parquet(file: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise cli.InputError("reading Parquet needs pyarrow (pip install 'edgelab-agents[report]')") from None
    try:
        schema = pq.read_schema(file)
        if "timestamp" not in schema.names:
            raise cli.InputError(f"--dataset {file}: no timestamp column")
        names = [n for n in schema.names if n != "timestamp" and _wanted(n)]
        table = pq.read_table(file, columns=["timestamp", *names])
    except pa.ArrowException as exc:
        raise cli.InputError(f"--dataset {file}: not a readable Parquet file: {' '.join(str(exc).split())}") from None
    stamp = table.column("timestamp")
    if pa.types.is_timestamp(stamp.type):
        if stamp.type.tz is None:
            raise cli.InputError(f"--dataset {file}: timestamp column has no time zone")
        micros = stamp.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
        times = micros.astype(np.float64) / 1e6
    elif pa.types.is_integer(stamp.type) or pa.types.is_floating(stamp.type):
        times = stamp.cast(pa.float64()).to_numpy(zero_copy_only=False)
    else:
        raise cli.InputError(f"--dataset {file}: timestamp column is {stamp.type}, not a time")
    columns = {}
    for name in names:
        column = table.column(name)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            columns[name] = column.cast(pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False)
    return times, columns


def _float(cell: str) -> float:
    try:
        return float(cell) if cell else math.nan
    except ValueError:
        return math.nan


def _read_csv(file: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with file.open(encoding="utf-8-sig", newline="") as stream:
        reader = csv.reader(stream)
        header = next(reader, None)
        if not header or "timestamp" not in header:
            raise cli.InputError(f"--dataset {file}: not an edgelab-extract dataset (no timestamp column)")
        at = header.index("timestamp")
        keep = [(i, n) for i, n in enumerate(header) if i != at and _wanted(n)]
        times: list[float] = []
        values: list[list[float]] = [[] for _ in keep]
        for number, row in enumerate(reader, 2):
            if len(row) != len(header):
                raise cli.InputError(f"--dataset {file}: line {number} has {len(row)} cells, the header {len(header)}")
            stamp = _float(row[at])
            if not math.isfinite(stamp):
                raise cli.InputError(f"--dataset {file}: line {number}: timestamp {row[at]!r} is not epoch seconds")
            times.append(stamp)
            for out, (i, _) in zip(values, keep, strict=True):
                out.append(_float(row[i]))
    return np.asarray(times, dtype=np.float64), {n: np.asarray(v) for (_, n), v in zip(keep, values, strict=True)}


def _group(ds: Dataset, metric: str, key: str, **match: str) -> dict[str, list[np.ndarray]]:
    groups: dict[str, list[np.ndarray]] = defaultdict(list)
    for name, values in ds.columns.items():
        got, labels = parse_series(name)
        if got == metric and all(labels.get(k) in v.split("|") for k, v in match.items()):
            groups[labels.get(key) or labels.get("instance") or "-"].append(values)
    return groups


def _rate(times: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Per-second increase between samples (NaN at the first and after a reset)."""
    out = np.full(len(times), math.nan)
    if len(times) > 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.diff(counter) / np.diff(times)
        rate[rate < 0] = math.nan
        out[1:] = rate
    return out


def node_cpu(ds: Dataset) -> tuple[dict[str, np.ndarray], str]:
    gauges = _group(ds, "node:cpu_utilisation:rate1m", "node")
    if gauges:
        return {n: _mean_rows(v) for n, v in sorted(gauges.items())}, "node:cpu_utilisation:rate1m"
    idle = _group(ds, "node_cpu_seconds_total", "node", mode="idle")
    out = {}
    for node, columns in sorted(idle.items()):
        busy = 1.0 - _rate(ds.times, np.sum(np.vstack(columns), axis=0)) / len(columns)
        out[node] = np.clip(busy, 0.0, 1.0)
    return out, "1 - rate(node_cpu_seconds_total{mode=idle}) per CPU" if out else ""


def node_power(ds: Dataset) -> tuple[dict[str, np.ndarray], str]:
    for metric in ("node:power_watts:rate1m", "node:kepler_power_watts:rate1m"):
        gauges = _group(ds, metric, "node")
        if gauges:
            return {n: np.sum(np.vstack(v), axis=0) for n, v in sorted(gauges.items())}, metric
    for metric, match in (("node_rapl_package_joules_total", {}), ("kepler_node_cpu_joules_total",
                                                                   {"zone": "package|dram"})):
        counters = _group(ds, metric, "node", **match)
        if metric == "node_rapl_package_joules_total":
            for node, columns in _group(ds, "node_rapl_dram_joules_total", "node").items():
                counters[node].extend(columns)
        if counters:
            label = "rate(node_rapl_{package,dram}_joules_total)" if metric.startswith("node_rapl") else \
                f"rate({metric}{{zone=package|dram}})"
            return {n: np.sum([_rate(ds.times, c) for c in v], axis=0) for n, v in sorted(counters.items())}, label
    return {}, ""


def _sum_rows(columns: list[np.ndarray]) -> np.ndarray:
    stack = np.vstack(columns)
    total = np.nansum(stack, axis=0)
    total[np.all(np.isnan(stack), axis=0)] = math.nan
    return total


def _mean_rows(columns: list[np.ndarray]) -> np.ndarray:
    """Per row, the mean of the columns that have a value (NaN where none has)."""
    stack = np.vstack(columns)
    count = np.sum(~np.isnan(stack), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, np.nansum(stack, axis=0) / count, math.nan)


def predictions(ds: Dataset) -> list[tuple[str, str, np.ndarray, np.ndarray | None]]:
    """(agent, target, predicted, measured or None) per agent."""
    out = []
    for name, values in sorted(ds.columns.items()):
        metric, labels = parse_series(name)
        if metric != "edgelab_agent_prediction":
            continue
        agent, target = labels.get("agent", "-"), labels.get("target", "")
        measured = None
        for other, series in sorted(ds.columns.items()):
            got, lab = parse_series(other)
            if target and got.startswith(f"edgelab_agent_{target}") and lab.get("agent") == agent:
                measured = series
                break
        out.append((agent, target, values, measured))
    return out


# ---------------------------------------------------------------- the analysis
def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _r(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


@dataclass
class Run:
    """Everything the plots and the summary are drawn from."""

    step: float
    t0: float
    t1: float
    dataset: Dataset
    results: Results | None
    feeder: dict[str, Any] | None
    decisions: list[dict[str, Any]] | None
    spec: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)

    def buckets(self) -> np.ndarray:
        first, last = int(self.t0 // self.step), math.ceil(self.t1 / self.step)
        return np.arange(first, max(last, first + 1))

    def offered_per_bucket(self) -> dict[int, float] | None:
        """Frames offered per step bucket, the feeder's windows spread evenly over their seconds."""
        if self.feeder is None:
            return None
        out: dict[int, float] = defaultdict(float)
        for row in self.feeder["per_window"]:
            a = self.t0 + float(row["start_s"])
            b = a + float(row["seconds"])
            per_s = row["frames"] / (b - a)
            bucket = int(a // self.step)
            while bucket * self.step < b:
                lo, hi = max(a, bucket * self.step), min(b, (bucket + 1) * self.step)
                out[bucket] += per_s * max(0.0, hi - lo)
                bucket += 1
        return out


def _window_steps(run: Run) -> int:
    window = run.spec["kpi"]["window_s"] if run.spec else 60.0
    return max(1, round(window / run.step))


def sla_windows(run: Run) -> dict[str, Any]:
    """Per KPI window: start (s from t0), the KPI value, whether it violates the SLA."""
    if run.spec is None:
        return {"evaluated": False, "why": "no --spec given"}
    kpi = run.spec["kpi"]
    steps = _window_steps(run)
    buckets = run.buckets()
    windows = [buckets[i:i + steps] for i in range(0, len(buckets), steps)]
    rows: list[dict[str, Any]] = []
    name = kpi["name"]
    if name in LATENCY_KPIS:
        if run.results is None:
            return {"evaluated": False, "why": f"{name} needs --results"}
        which, q = LATENCY_KPIS[name]
        table = run.results.e2e if which == "e2e" else run.results.inference
        for group in windows:
            hist = sum((table[b] for b in group if b in table), np.zeros(N_BINS, dtype=np.int64))
            rows.append({"start_s": group[0] * run.step - run.t0, "value": percentile(hist, q)})
    elif name == "processed_fraction":
        offered = run.offered_per_bucket()
        if run.results is None or offered is None:
            return {"evaluated": False, "why": "processed_fraction needs --results and --feeder"}
        for group in windows:
            want = sum(offered.get(b, 0.0) for b in group)
            got = sum(run.results.processed_by_produced.get(b, 0) for b in group)
            rows.append({"start_s": group[0] * run.step - run.t0, "value": got / want if want > 0 else None})
    else:  # consumer_lag: the largest summed lag of the window's samples
        lag = _group(run.dataset, "edgelab_consumer_lag_records", "consumer")
        if not lag:
            return {"evaluated": False, "why": "no edgelab_consumer_lag_records series in the dataset"}
        total = _sum_rows([c for cols in lag.values() for c in cols])
        for group in windows:
            a, b = group[0] * run.step, (group[-1] + 1) * run.step
            inside = total[(run.dataset.times >= a) & (run.dataset.times < b)]
            inside = inside[~np.isnan(inside)]
            rows.append({"start_s": group[0] * run.step - run.t0,
                         "value": float(inside.max()) if len(inside) else None})
    upper = kpi["bound"] == "upper"
    for row in rows:
        value = row["value"]
        row["violation"] = value is not None and (value > kpi["sla"] if upper else value < kpi["sla"])
    measured = [r for r in rows if r["value"] is not None]
    return {"evaluated": True, "kpi": name, "sla": kpi["sla"], "bound": kpi["bound"], "unit": kpi["unit"],
            "window_s": steps * run.step, "windows": rows, "windows_measured": len(measured),
            "violations": sum(1 for r in rows if r["violation"])}


def summarise(run: Run, sla: dict[str, Any]) -> dict[str, Any]:
    res = run.results
    summary: dict[str, Any] = {
        "run_start": iso(run.t0), "run_end": iso(run.t1), "duration_s": _r(run.t1 - run.t0, 3),
        "step_s": run.step,
    }
    offered = run.feeder["frames_acked"] if run.feeder else None
    processed = res.distinct if res else None
    lost = max(0, offered - processed) if offered is not None and processed is not None else None
    summary.update(frames_offered=offered, frames_processed=processed, frames_lost=lost,
                   lost_fraction=_r(lost / offered) if offered and lost is not None else None,
                   result_records=res.records if res else None, duplicate_results=res.duplicates if res else None,
                   frame_errors=res.errors if res else None, unusable_records=res.bad if res else None,
                   negative_latencies=res.negative if res else None,
                   consumers_seen=len(res.names) if res else None)
    for label, table in (("end_to_end", res.e2e if res else None), ("inference", res.inference if res else None)):
        total = sum(table.values(), np.zeros(N_BINS, dtype=np.int64)) if table else None
        for q in (50, 95, 99):
            summary[f"{label}_latency_p{q}_s"] = _r(percentile(total, q / 100)) if total is not None else None
    seconds = run.t1 - run.t0
    fed = float(run.feeder.get("duration_s") or 0.0) if run.feeder else 0.0
    summary["offered_fps_mean"] = _r(offered / fed, 3) if offered is not None and fed > 0 else None
    summary["processed_fps_mean"] = _r(processed / seconds, 3) if processed is not None and seconds > 0 else None
    summary["sla_kpi"] = sla.get("kpi")
    summary["sla"] = sla.get("sla")
    summary["sla_windows"] = sla.get("windows_measured")
    summary["sla_violations"] = sla.get("violations")
    if run.decisions is not None:
        decided = [d for d in run.decisions if d["event"] == "decision"]
        summary["scale_ups"] = sum(1 for d in decided if d.get("action") == "scale_up")
        summary["scale_downs"] = sum(1 for d in decided if d.get("action") == "scale_down")
        summary["ima_commands"] = sum(1 for d in run.decisions if d["event"] == "ima_command")
        summary["scale_actions"] = summary["scale_ups"] + summary["scale_downs"] + summary["ima_commands"]
        actuations = [d for d in run.decisions if d["event"] == "actuation"]
        summary["actuations_failed"] = sum(1 for d in actuations if not d.get("ok"))
    else:
        summary.update(scale_ups=None, scale_downs=None, ima_commands=None, scale_actions=None,
                       actuations_failed=None)
    inside = (run.dataset.times >= run.t0) & (run.dataset.times <= run.t1)
    cpu, _ = node_cpu(run.dataset)
    power, _ = node_power(run.dataset)
    summary["node_cpu_mean"] = _r(_mean(cpu, inside))
    summary["node_power_watts_mean"] = _r(_mean(power, inside), 3)
    return summary


def _mean(series: dict[str, np.ndarray], inside: np.ndarray) -> float | None:
    """The mean over the nodes of each node's mean during the run."""
    means = []
    for values in series.values():
        picked = values[inside]
        picked = picked[~np.isnan(picked)]
        if len(picked):
            means.append(float(picked.mean()))
    return sum(means) / len(means) if means else None


# ---------------------------------------------------------------- plots
def _figure(rows: int = 1, height: float = 3.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(10, height * rows), sharex=True, squeeze=False)
    return fig, [a[0] for a in axes]


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12, color="0.35")
    ax.set_yticks([])


def _save(fig: Any, run: Run, path: Path) -> None:
    import matplotlib.pyplot as plt

    for ax in fig.axes:
        ax.set_xlim(0, max(run.t1 - run.t0, run.step))
        ax.grid(True, alpha=0.3)
    fig.axes[-1].set_xlabel(f"seconds since {iso(run.t0)}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_throughput(run: Run, path: Path) -> None:
    fig, (ax,) = _figure()
    ax.set_title(PLOTS["throughput"])
    ax.set_ylabel("frames/s")
    buckets = run.buckets()
    edges = np.r_[buckets, buckets[-1] + 1] * run.step - run.t0
    offered = run.offered_per_bucket()
    if offered is not None:
        ax.stairs([offered.get(b, 0.0) / run.step for b in buckets], edges, linewidth=2,
                  label="offered (feeder, acknowledged by the broker)")
    if run.results is not None:
        ax.stairs([run.results.processed.get(b, 0) / run.step for b in buckets], edges, linewidth=1.5,
                  label="processed (distinct frames, by publish time)")
    if offered is None and run.results is None:
        _note(ax, "no --feeder report and no --results")
    else:
        ax.legend(loc="upper left")
    _save(fig, run, path)


def plot_latency(run: Run, sla: dict[str, Any], path: Path) -> None:
    fig, axes = _figure(2)
    axes[0].set_title(PLOTS["latency"])
    buckets = run.buckets()
    x = buckets * run.step + run.step / 2 - run.t0
    for ax, label, which in ((axes[0], "end to end (published - produced)", "e2e"),
                             (axes[1], "inference", "inference")):
        ax.set_ylabel(f"{label} (s)", fontsize=8)
        if run.results is None:
            _note(ax, "no --results")
            continue
        table = run.results.e2e if which == "e2e" else run.results.inference
        for q in (0.5, 0.95, 0.99):
            ys = [percentile(table[b], q) if b in table else None for b in buckets]
            ax.plot(x, [math.nan if y is None else y for y in ys], marker=".", label=f"p{round(q * 100)}")
        if sla.get("evaluated") and sla["kpi"] in LATENCY_KPIS and LATENCY_KPIS[sla["kpi"]][0] == which:
            ax.axhline(sla["sla"], color="red", linestyle="--", label=f"SLA {sla['kpi']} {sla['sla']:g} s")
            _shade(ax, sla)
        ax.legend(loc="upper left", fontsize=8)
    _save(fig, run, path)


def _shade(ax: Any, sla: dict[str, Any]) -> None:
    for row in sla["windows"]:
        if row["violation"]:
            ax.axvspan(row["start_s"], row["start_s"] + sla["window_s"], color="red", alpha=0.12)


def plot_consumers(run: Run, path: Path) -> None:
    fig, (ax,) = _figure(height=3.6)
    ax.set_title(PLOTS["consumers"])
    ax.set_ylabel("consumers")
    ax.yaxis.get_major_locator().set_params(integer=True)
    shown = False
    if run.results is not None:
        buckets = run.buckets()
        edges = np.r_[buckets, buckets[-1] + 1] * run.step - run.t0
        ax.stairs([len(run.results.consumers.get(b, ())) for b in buckets], edges, linewidth=3, alpha=0.5,
                  label="consumers publishing results")
        shown = True
    instances = _group(run.dataset, "edgelab_agent_instances", "agent")
    if instances:
        total = _sum_rows([c for cols in instances.values() for c in cols])
        ax.plot(run.dataset.times - run.t0, total, drawstyle="steps-post", label="instances (node agents)")
        shown = True
    if run.decisions is not None:
        for action, marker, color in (("scale_up", "^", "green"), ("scale_down", "v", "red")):
            picked = [d for d in run.decisions if d["event"] == "decision" and d.get("action") == action]
            if picked:
                ax.scatter([float(d["ts"]) - run.t0 for d in picked], [d.get("target", 0) for d in picked],
                           marker=marker, s=70, color=color, zorder=3, label=f"{action} (target)")
        done = [d for d in run.decisions if d["event"] == "actuation"]
        if done:
            ax.scatter([float(d["ts"]) - run.t0 for d in done], [d.get("instances", 0) for d in done], marker="x",
                       color=["black" if d.get("ok") else "red" for d in done], zorder=3, label="actuation done")
        shown = True
    if shown:
        ax.legend(loc="upper left", fontsize=8)
    else:
        _note(ax, "no --results, no --decisions and no edgelab_agent_instances series")
    _save(fig, run, path)


def plot_nodes(run: Run, path: Path) -> None:
    fig, axes = _figure(2)
    axes[0].set_title(PLOTS["nodes"])
    x = run.dataset.times - run.t0
    for ax, (series, source), label, missing in (
            (axes[0], node_cpu(run.dataset), "CPU utilisation", "no CPU series in the dataset"),
            (axes[1], node_power(run.dataset), "power (W)", NO_POWER)):
        ax.set_ylabel(label)
        if not series:
            _note(ax, missing)
            continue
        for node, values in series.items():
            ax.plot(x, values, label=node)
        ax.legend(loc="upper left", fontsize=8, title=source, title_fontsize=7)
    _save(fig, run, path)


def plot_predictions(run: Run, path: Path) -> None:
    fig, (ax,) = _figure(height=3.6)
    ax.set_title(PLOTS["predictions"])
    x = run.dataset.times - run.t0
    shown = False
    for agent, target, predicted, measured in predictions(run.dataset):
        line = ax.plot(x, predicted, linestyle="--", label=f"{agent}: predicted {target}")
        if measured is not None:
            ax.plot(x, measured, color=line[0].get_color(), label=f"{agent}: measured {target}")
        shown = True
    if run.decisions is not None:
        by_worker: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for d in run.decisions:
            if d["event"] == "decision" and isinstance(d.get("prediction"), int | float):
                by_worker[str(d.get("worker"))].append((float(d["ts"]) - run.t0, float(d["prediction"])))
        for worker, points in sorted(by_worker.items()):
            ax.scatter(*zip(*points, strict=True), s=10, label=f"{worker}: prediction the cluster agent got")
            shown = True
    if shown:
        ax.legend(loc="upper left", fontsize=8)
    else:
        _note(ax, "no edgelab_agent_prediction series in the dataset and no --decisions")
    _save(fig, run, path)


def plot_sla(run: Run, sla: dict[str, Any], path: Path) -> None:
    fig, (ax,) = _figure()
    ax.set_title(PLOTS["sla"])
    if not sla.get("evaluated"):
        _note(ax, f"SLA not evaluated: {sla['why']}")
    else:
        rows = [r for r in sla["windows"] if r["value"] is not None]
        ax.bar([r["start_s"] for r in rows], [r["value"] for r in rows], width=sla["window_s"] * 0.9, align="edge",
               color=["tab:red" if r["violation"] else "tab:green" for r in rows])
        ax.axhline(sla["sla"], color="red", linestyle="--",
                   label=f"SLA {'<=' if sla['bound'] == 'upper' else '>='} {sla['sla']:g} {sla['unit']}")
        ax.set_ylabel(f"{sla['kpi']} ({sla['unit']})", fontsize=8)
        ax.legend(loc="upper left", title=f"{sla['violations']} of {sla['windows_measured']} windows violate",
                  fontsize=8, title_fontsize=8)
    _save(fig, run, path)


# ---------------------------------------------------------------- the page
ROWS = (("frames offered", "frames_offered", "{:d}"), ("frames processed", "frames_processed", "{:d}"),
        ("frames lost", "frames_lost", "{:d}"), ("lost fraction", "lost_fraction", "{:.2%}"),
        ("end-to-end latency p50", "end_to_end_latency_p50_s", "{:.3f} s"),
        ("end-to-end latency p99", "end_to_end_latency_p99_s", "{:.3f} s"),
        ("inference latency p50", "inference_latency_p50_s", "{:.3f} s"),
        ("inference latency p99", "inference_latency_p99_s", "{:.3f} s"),
        ("SLA violations", "sla_violations", "{:d}"), ("scale actions", "scale_actions", "{:d}"),
        ("actuations failed", "actuations_failed", "{:d}"),
        ("mean node CPU", "node_cpu_mean", "{:.1%}"), ("mean node power", "node_power_watts_mean", "{:.1f} W"))


def render_html(run: Run, summary: dict[str, Any], sla: dict[str, Any], images: dict[str, Path]) -> str:
    esc = html.escape
    rows = []
    for label, key, fmt in ROWS:
        value = summary.get(key)
        text = "not measured" if value is None else fmt.format(value)
        if key == "node_power_watts_mean" and value is None:
            text = NO_POWER
        bad = (key in ("frames_lost", "sla_violations", "actuations_failed") and value) or \
              (key == "lost_fraction" and value and value > 0.01)
        rows.append(f"<tr{' class=bad' if bad else ''}><th>{esc(label)}</th><td>{esc(text)}</td></tr>")
    if sla.get("evaluated"):
        bound = "&le;" if sla["bound"] == "upper" else "&ge;"
        sla_text = (f"{esc(sla['kpi'])} {bound} {sla['sla']:g} {esc(sla['unit'])}"
                    f" per {sla['window_s']:g} s window: {sla['violations']} of {sla['windows_measured']} windows "
                    "violate")
    else:
        sla_text = f"SLA not evaluated: {esc(sla['why'])}"
    notes = list(run.notes)
    if not node_power(run.dataset)[0]:
        notes.append(NO_POWER)
    sections = []
    for name, title in PLOTS.items():
        data = base64.b64encode(images[name].read_bytes()).decode()
        sections.append(f'<h2 id="{name}">{esc(title)}</h2>\n<p class=file>{esc(images[name].name)}</p>\n'
                        f'<img alt="{esc(title)}" src="data:image/png;base64,{data}">')
    sources = [f"dataset: {esc(str(run.dataset.path))}"] + [
        f"{k}: {esc(v)}" for k, v in (("results", summary.get("_results")), ("feeder", summary.get("_feeder")),
                                      ("decisions", summary.get("_decisions")), ("spec", summary.get("_spec"))) if v]
    spec_name = esc(run.spec["name"]) if run.spec else "experiment"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>edgelab report: {spec_name} {esc(summary['run_start'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:1em auto}table{border-collapse:collapse}"
        "th,td{border:1px solid #bbb;padding:.25em .6em;text-align:left}tr.bad td{color:#b00;font-weight:bold}"
        "img{max-width:100%}.file{color:#777;font-size:small;margin:0}.note{color:#a60}</style></head><body>",
        f"<h1>edgelab report: {spec_name}</h1>",
        f"<p>{esc(summary['run_start'])} to {esc(summary['run_end'])} ({summary['duration_s']:g} s)</p>",
        '<table id="summary">', *rows, "</table>", f'<p id="verdict">{sla_text}</p>',
        *(f'<p class="note">{esc(n)}</p>' for n in notes),
        *sections,
        "<h2>Sources</h2><ul>", *(f"<li>{s}</li>" for s in sources), "</ul>",
        "<p>Figures: summary.json. Latency percentiles within 1 % (2 % histogram bins).</p>",
        "</body></html>", ""])


# ---------------------------------------------------------------- command line
def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, type=Path, metavar="DIR_OR_FILE",
                        help="edgelab-extract's output directory, or its dataset.parquet / dataset.csv")
    parser.add_argument("--results", type=Path, metavar="FILE",
                        help="the results topic as JSON lines (.gz: gzip), one consumer record a line")
    parser.add_argument("--feeder", type=Path, metavar="FILE", help="edgelab-feeder --report JSON")
    parser.add_argument("--decisions", type=Path, metavar="FILE",
                        help="the cluster agent's decision records (JSON lines or its log lines)")
    parser.add_argument("--spec", type=Path, metavar="FILE", help="the experiment spec (the KPI and its SLA)")
    parser.add_argument("--step", type=positive_float, default=10.0, metavar="SECONDS",
                        help="time resolution of the plots (default 10)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="where the report goes (created)")
    parser.add_argument("--since", type=when, metavar="TIME",
                        help="only results produced at or after TIME (ISO 8601, no zone = UTC; epoch seconds)")
    parser.add_argument("--until", type=when, metavar="TIME", help="only results produced before TIME")
    kafka = parser.add_argument_group(
        "kafka", "with --bootstrap the results topic is first copied into --results (records with a timestamp "
                 "from --since, else all, to when the copy begins), then reported")
    kafka.add_argument("--bootstrap", metavar="HOST:PORT[,...]", help="Kafka bootstrap servers")
    kafka.add_argument("--results-topic", default="edgelab.detections", metavar="TOPIC",
                       help="default edgelab.detections")
    kafka.add_argument("--kafka-timeout", type=positive_float, default=60.0, metavar="SECONDS",
                       help="give up after this long without a record while some are left (default 60)")
    kafka.add_argument("--security-protocol", default="PLAINTEXT", choices=SECURITY_PROTOCOLS)
    kafka.add_argument("--sasl-mechanism", default="SCRAM-SHA-512", choices=SASL_MECHANISMS)
    kafka.add_argument("--sasl-username")
    kafka.add_argument("--sasl-password-file", metavar="FILE", help="file holding the SASL password")
    kafka.add_argument("--ssl-cafile", metavar="FILE", help="CA bundle for SSL and SASL_SSL")


def when(text: str) -> float:
    from .extract import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Read the inputs, write the report; the summary."""
    spec = read_spec(args.spec) if args.spec else None
    dataset = read_dataset(args.dataset)
    if args.bootstrap:
        if not args.results:
            raise cli.InputError("--bootstrap needs --results FILE: where the results topic is copied to")
        from dataclasses import replace

        from .feeder import kafka_settings

        settings = replace(kafka_settings(args), client_id=PROG)
        copied = dump_topic(settings, args.results_topic, args.results, since=args.since, timeout_s=args.kafka_timeout)
        log.info("copied %d records of %s to %s", copied, args.results_topic, args.results)
    since = -math.inf if args.since is None else args.since
    until = math.inf if args.until is None else args.until
    results = read_results(args.results, args.step, since, until) if args.results else None
    feeder = read_feeder(args.feeder) if args.feeder else None
    decisions = read_decisions(args.decisions) if args.decisions else None
    notes = []
    if results is not None:
        if results.outside:
            notes.append(f"{results.outside} results were produced outside --since/--until and left out")
        if results.bad:
            notes.append(f"{results.bad} result lines were not usable (first: {results.first_bad})")
        if results.negative:
            notes.append(f"{results.negative} results were published before they were produced: the hosts' clocks "
                         "disagree")
    else:
        notes.append("no --results: frames and latencies are not measured")
    t0, t1, origin = run_range(dataset, results, feeder, spec, args.since)
    if feeder is None:
        notes.append("no --feeder report: the frames offered are not measured")
    elif origin not in ("feeder", "results"):
        notes.append(f"the feeder's windows are placed at {origin} (the feeder report has no start time)")
    if decisions is None:
        notes.append("no --decisions: the cluster agent's decisions are not shown")
    run = Run(args.step, t0, max(t1, t0 + args.step), dataset, results, feeder, decisions, spec, notes)
    sla = sla_windows(run)
    summary = summarise(run, sla)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cli.InputError(f"--out {args.out}: {exc.strerror}") from None
    images = {name: args.out / f"{name}.png" for name in PLOTS}
    plot_throughput(run, images["throughput"])
    plot_latency(run, sla, images["latency"])
    plot_consumers(run, images["consumers"])
    plot_nodes(run, images["nodes"])
    plot_predictions(run, images["predictions"])
    plot_sla(run, sla, images["sla"])
    sources = {f"_{k}": str(getattr(args, k)) for k in ("results", "feeder", "decisions", "spec")
               if getattr(args, k)}
    cli.write_atomic(str(args.out / "report.html"), render_html(run, {**summary, **sources}, sla, images))
    document = {**summary, "sla_windows_detail": sla.get("windows", []), "notes": notes}
    cli.write_atomic(str(args.out / "summary.json"), json.dumps(document, indent=1) + "\n")
    for name in ("report.html", "summary.json"):  # no secrets: readable like the images
        (args.out / name).chmod(0o644)
    return summary


def run_range(dataset: Dataset, results: Results | None, feeder: dict[str, Any] | None,
              spec: dict[str, Any] | None, since: float | None) -> tuple[float, float, str]:
    """The run's start and end, and where the start came from: the feeder report's
    `started` (epoch seconds) when it has one, else the first frame produced, else
    --since, else the dataset's first row."""
    started = feeder.get("started") if feeder else None
    if isinstance(started, int | float) and not isinstance(started, bool) and math.isfinite(started):
        t0, origin = float(started), "feeder"
    elif results is not None:
        t0, origin = results.first_produced, "results"
    elif since is not None:
        t0, origin = since, "--since"
    else:
        t0, origin = float(dataset.times[0]), "the dataset's start"
    ends = [results.last_published] if results is not None else []
    if feeder is not None:
        ends.append(t0 + float(feeder.get("duration_s") or 0.0))
    if spec is not None:
        ends.append(t0 + spec["duration_s"] * spec["cycles"])
    t1 = max(ends) if ends else float(dataset.times[-1])
    return t0, t1, origin


def start(args: argparse.Namespace) -> None:
    summary = build(args)
    print(f"{args.out / 'report.html'}: frames offered {summary['frames_offered']}, processed "
          f"{summary['frames_processed']}, lost {summary['frames_lost']}; end-to-end p50 "
          f"{summary['end_to_end_latency_p50_s']} s, p99 {summary['end_to_end_latency_p99_s']} s; "
          f"SLA violations {summary['sla_violations']}; scale actions {summary['scale_actions']}")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, description=__doc__, add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())
