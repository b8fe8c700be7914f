"""Live values of a slice's selected metrics, from Prometheus to Kafka.

Each streaming slice has a thread that, every `interval` seconds (the selection's
sampling step), asks Prometheus for the current value of all its selected series in
one instant query (selector() below) and queues one record

    key sliceId, value {"slice": ..., "flavor": ..., "timestamp": epoch s,
                        "metrics": {series: value or null when Prometheus has none},
                        "kpi": KPI name}

When the KPI is a Prometheus series too (the selection's or the slice's kpi_query), a
second instant query at the same evaluation time reads it, and `metrics` also holds
the KPI under the KPI's name (the selection's target: the Y column, or the PromQL
expression with currentTimestamp); `kpi` names that entry. Without a KPI query the
record has no `kpi` key and `metrics` only the selected series. The KPI is null when
its query fails (counted as a prometheus failure) or returns other than one series.

One sender thread produces the queued records to the topic (edgelab.kafka's
FrameProducer, acks=1). The queue is bounded: when Kafka is slow or down the oldest
record is dropped. The producer is (re)created with capped exponential backoff.
Counters on the service's /metrics:

    edgelab_ima_stream_records_total{outcome="queued|sent|dropped"}
    edgelab_ima_stream_failures_total{stage="prometheus|connect|kafka"}
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from ..kafka import KafkaSettings
from ..prometheus import PrometheusClient, PrometheusError
from ..xmpp import RateLimitedLog, backoff_delay
from .source import series_name

log = logging.getLogger(__name__)

PRODUCER_OPTIONS: dict[str, object] = {"request_timeout_ms": 10000, "delivery_timeout_ms": 30000,
                                       "max_block_ms": 10000}


def selector(metrics: list[str], fallback: str) -> str:
    """One PromQL expression whose instant value holds every one of the series (and
    maybe others, which the caller drops): their metric names as one regular
    expression. `a or b` would not do: `or` matches label sets without the metric
    name, so of two metrics with the same labels it keeps only the first. A series
    without a metric name (a candidate query with functions) can only be found again
    through the candidate query itself, `fallback`."""
    names = sorted({m.partition("{")[0] for m in metrics})
    if not all(re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", n) for n in names):
        return fallback
    return '{__name__=~"%s"}' % "|".join(names)


@dataclass(frozen=True)
class Kpi:
    """The KPI streamed with a slice's metrics: its name in the records and the PromQL
    expression giving its current value."""

    name: str
    query: str


@dataclass
class Stream:
    slice_id: str
    flavor: str
    metrics: list[str]
    interval: float
    stop: threading.Event
    thread: threading.Thread
    kpi: Kpi | None = None


class Streamer:
    def __init__(self, client_factory: Callable[[], PrometheusClient], settings: KafkaSettings | None, topic: str,
                 registry: CollectorRegistry, *, candidates: str, queue_size: int = 1000, backoff_cap: float = 30.0,
                 producer_options: dict[str, object] | None = None) -> None:
        self.client_factory = client_factory
        self.candidates = candidates
        self.settings = settings
        self.topic = topic
        self.queue: deque[tuple[bytes, bytes]] = deque(maxlen=queue_size)
        self.backoff_cap = backoff_cap
        self.options: dict[str, Any] = {**PRODUCER_OPTIONS, **(producer_options or {})}
        self.streams: dict[str, Stream] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.closing = threading.Event()
        self.producer: Any = None
        self.records = Counter("edgelab_ima_stream_records", "Records of selected metrics, by outcome",
                               ["outcome"], registry=registry)
        self.failures = Counter("edgelab_ima_stream_failures", "Streaming failures, by stage", ["stage"],
                                registry=registry)
        for outcome in ("queued", "sent", "dropped"):
            self.records.labels(outcome)
        for stage in ("prometheus", "connect", "kafka"):
            self.failures.labels(stage)
        self._warn_prometheus = RateLimitedLog(log)
        self._warn_kafka = RateLimitedLog(log)
        self.sender: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.settings is not None

    # ------------------------------------------------------------ slices
    def start(self, slice_id: str, flavor: str, metrics: list[str], interval: float, kpi: Kpi | None = None) -> None:
        """Stream the slice's metrics, and the KPI when given (replacing what it streamed before)."""
        self.stop(slice_id)
        stop = threading.Event()
        thread = threading.Thread(target=self._sample, args=(slice_id, flavor, list(metrics), interval, stop, kpi),
                                  name=f"ima-stream-{slice_id}", daemon=True)
        with self.lock:
            self.streams[slice_id] = Stream(slice_id, flavor, list(metrics), interval, stop, thread, kpi)
            if self.sender is None:
                self.sender = threading.Thread(target=self._send_loop, name="ima-kafka", daemon=True)
                self.sender.start()
        thread.start()
        log.info("streaming slice %s (flavor %s): %d metrics%s every %gs to %s", slice_id, flavor, len(metrics),
                 " and the KPI %s" % kpi.name if kpi else "", interval, self.topic)

    def stop(self, slice_id: str) -> bool:
        with self.lock:
            stream = self.streams.pop(slice_id, None)
        if stream is None:
            return False
        stream.stop.set()
        stream.thread.join(timeout=15)
        log.info("stopped streaming slice %s", slice_id)
        return True

    def active(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {s.slice_id: {"sliceFlavor": s.flavor, "metrics": s.metrics, "interval_seconds": s.interval,
                                 "kpi": s.kpi.name if s.kpi else None}
                    for s in self.streams.values()}

    def sample_once(self, slice_id: str, flavor: str, metrics: list[str], kpi: Kpi | None = None) -> dict[str, Any]:
        """One record of the slice's current values (PrometheusError when the metrics'
        query fails; a failing KPI query gives a null KPI)."""
        client = self.client_factory()
        now = time.time()
        samples = client.query(selector(metrics, self.candidates), time=now)
        found = {series_name(s.labels): s.value for s in samples}
        values: dict[str, float | None] = {
            name: (found[name] if name in found and math.isfinite(found[name]) else None) for name in metrics}
        record: dict[str, Any] = {"slice": slice_id, "flavor": flavor, "timestamp": round(now, 3), "metrics": values}
        if kpi is not None:
            values[kpi.name] = self._kpi_value(client, slice_id, kpi, now)
            record["kpi"] = kpi.name
        return record

    def _kpi_value(self, client: PrometheusClient, slice_id: str, kpi: Kpi, now: float) -> float | None:
        try:
            samples = client.query(kpi.query, time=now)
        except PrometheusError as exc:
            self.failures.labels("prometheus").inc()
            self._warn_prometheus.warning("stream %s: KPI query %r failed: %s", slice_id, kpi.query, exc)
            return None
        if len(samples) != 1:
            self._warn_prometheus.warning("stream %s: KPI query %r returned %d series, not one", slice_id,
                                          kpi.query, len(samples))
            return None
        value = samples[0].value
        return value if math.isfinite(value) else None

    def _sample(self, slice_id: str, flavor: str, metrics: list[str], interval: float, stop: threading.Event,
                kpi: Kpi | None = None) -> None:
        due = time.monotonic()
        while not stop.is_set() and not self.closing.is_set():
            try:
                record = self.sample_once(slice_id, flavor, metrics, kpi)
            except PrometheusError as exc:
                self.failures.labels("prometheus").inc()
                self._warn_prometheus.warning("stream %s: Prometheus query failed: %s", slice_id, exc)
            else:
                self.put(slice_id, record)
            due += interval
            delay = due - time.monotonic()
            if delay < 0:  # a slow query: skip the missed ticks instead of bursting
                due = time.monotonic()
                delay = 0.0
            stop.wait(delay)

    def put(self, slice_id: str, record: dict[str, Any]) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.records.labels("dropped").inc()
        self.queue.append((slice_id.encode(), json.dumps(record, separators=(",", ":")).encode()))
        self.records.labels("queued").inc()
        self.wake.set()

    # ------------------------------------------------------------ Kafka
    def _connect(self) -> Any:
        from ..kafka import FrameProducer

        assert self.settings is not None
        if self.settings.security_protocol.endswith("SSL"):
            from ..cluster_agent.agent import tls_preflight

            tls_preflight(self.settings.bootstrap, self.settings.ssl_cafile, 10.0)
        return FrameProducer(self.settings, self.topic, acks=1, **self.options)

    def _acknowledged(self, _metadata: Any) -> None:
        self.records.labels("sent").inc()

    def _refused(self, exc: BaseException) -> None:
        self.failures.labels("kafka").inc()
        self._warn_kafka.warning("kafka %s: record not acknowledged: %s", self.topic,
                                 str(exc)[:200] or type(exc).__name__)

    def _send_loop(self) -> None:
        attempt = 0
        while not self.closing.is_set():
            if self.producer is None:
                try:
                    self.producer = self._connect()
                    attempt = 0
                    log.info("kafka %s: producing selected metrics to %s", ",".join(self.settings.bootstrap)
                             if self.settings else "-", self.topic)
                except Exception as exc:
                    self.failures.labels("connect").inc()
                    delay = backoff_delay(attempt, base=0.5, cap=self.backoff_cap)
                    attempt += 1
                    self._warn_kafka.warning("kafka %s: no producer (retrying in %.1fs): %s", self.topic, delay,
                                             str(exc)[:200] or type(exc).__name__)
                    self.closing.wait(delay)
                    continue
            self.wake.wait(1.0)
            self.wake.clear()
            while self.queue and not self.closing.is_set():
                key, value = self.queue.popleft()
                try:
                    future = self.producer.send(key, value)
                    future.add_callback(self._acknowledged)
                    future.add_errback(self._refused)
                except Exception as exc:  # refused before it left: buffer full, no metadata
                    self._refused(exc)

    def close(self) -> None:
        for slice_id in list(self.streams):
            self.stop(slice_id)
        self.closing.set()
        self.wake.set()
        if self.sender is not None:
            self.sender.join(timeout=15)
        if self.producer is not None:
            try:
                self.producer.close(5.0)
            except Exception as exc:
                log.warning("kafka %s: close failed: %s", self.topic, exc)
