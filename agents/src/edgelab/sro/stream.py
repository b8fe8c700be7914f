"""The live forecast of one slice: metric records in from Kafka, forecasts out.

The IMA produces a record per slice and sampling interval to `metrics_topic`
(key = sliceId, value JSON {slice, flavor, timestamp, metrics: {name: value}}). The
worker reads every partition of that topic from its end (no consumer group: each
worker sees all of its slice's records, and a restart does not replay old ones),
keeps the last `window` rows of the model's inputs (the selected metrics, and the KPI
under its own name when the model uses it; a metric missing from a record keeps its
last value, as in training), and once the window is full forecasts the KPI `horizon` seconds ahead on
every record. Each forecast goes to `forecasts_topic` (key = sliceId, value JSON
{slice, flavor, timestamp, for_timestamp, forecast, model}), to the gauge
edgelab_sro_forecast{slice} and to the slice's orchestrator when one runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer  # type: ignore[import-untyped, unused-ignore]
from kafka import TopicPartition as Partition  # type: ignore[import-untyped, unused-ignore]

from ..kafka import KafkaSettings
from ..learn.errors import LearnError
from ..learn.model import Forecaster

log = logging.getLogger(__name__)

OnForecast = Callable[[dict[str, Any]], None]


class ForecastWorker:
    """A thread forecasting one slice. model_for(flavor) gives the model to use after
    a flavor change (None: keep the current one)."""

    def __init__(self, slice_id: str, flavor: str, model: Forecaster, settings: KafkaSettings, metrics_topic: str,
                 forecasts_topic: str, on_forecast: OnForecast, *,
                 model_for: Callable[[str], Forecaster | None] | None = None, poll_ms: int = 100) -> None:
        self.slice_id = slice_id
        self.flavor = flavor
        self.model = model
        self._settings = settings
        self._metrics_topic = metrics_topic
        self._forecasts_topic = forecasts_topic
        self._on_forecast = on_forecast
        self._model_for = model_for
        self._poll_ms = poll_ms
        self._rows: deque[tuple[float, float, list[float]]] = deque(maxlen=model.window)
        self._stop = threading.Event()
        self.ready = threading.Event()  # set once the consumer sits at the topic's end
        self.error: str | None = None
        self.records = 0
        self.forecasts = 0
        self.skipped = 0
        self.problem: str | None = None  # why the latest record gave no forecast
        self._thread = threading.Thread(target=self._run, name="forecast-%s" % slice_id, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def set_flavor(self, flavor: str) -> None:
        self.flavor = flavor
        model = self._model_for(flavor) if self._model_for else None
        if model is not None and model is not self.model:
            self.model = model
            self._rows = deque(self._rows, maxlen=model.window)

    def status(self) -> dict[str, object]:
        return {"slice": self.slice_id, "flavor": self.flavor, "running": self.running, "ready": self.ready.is_set(),
                "records": self.records, "forecasts": self.forecasts, "skipped": self.skipped,
                "problem": self.problem, "error": self.error,
                "model": self.model.describe()}

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        consumer = producer = None
        try:
            config = self._settings.client_config()
            consumer = KafkaConsumer(**config, enable_auto_commit=False, fetch_max_wait_ms=self._poll_ms,
                                     group_id=None)
            producer = KafkaProducer(**config, acks=1, linger_ms=0, retries=5)
            partitions = self._partitions(consumer)
            if partitions is None:
                return
            consumer.assign(partitions)
            consumer.seek_to_end(*partitions)
            for partition in partitions:
                consumer.position(partition)  # resolve the end offset now, before records arrive
            self.ready.set()
            log.info("slice %s: forecasting from %s (%d partitions) to %s", self.slice_id, self._metrics_topic,
                     len(partitions), self._forecasts_topic)
            while not self._stop.is_set():
                batches = consumer.poll(timeout_ms=self._poll_ms)
                for records in batches.values():
                    for record in records:
                        self._handle(record.key, record.value, producer)
        except Exception as exc:  # a broker gone for good: the status says why
            self.error = " ".join(str(exc).split()) or type(exc).__name__
            log.warning("slice %s: forecasting stopped: %s", self.slice_id, self.error)
        finally:
            # Closing a client whose broker is gone may fail too: nothing left to report.
            if producer is not None:
                with contextlib.suppress(Exception):
                    producer.close(timeout=5)
            if consumer is not None:
                with contextlib.suppress(Exception):
                    consumer.close()

    def _partitions(self, consumer: Any) -> list[Any] | None:
        """The metric topic's partitions, waiting for the topic to exist."""
        while not self._stop.is_set():
            found = consumer.partitions_for_topic(self._metrics_topic)
            if found:
                return [Partition(self._metrics_topic, p) for p in sorted(found)]
            self._stop.wait(0.5)
        return None

    def _handle(self, key: bytes | None, value: bytes, producer: Any) -> None:
        if key is not None and key != self.slice_id.encode("utf-8"):
            return
        try:
            data = json.loads(value)
            if data.get("slice") != self.slice_id:
                return
            timestamp = float(data["timestamp"])
            metrics = data["metrics"]
            if not isinstance(metrics, dict) or not math.isfinite(timestamp):
                raise ValueError("metrics must be an object and timestamp a number")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.skipped += 1
            self.problem = "malformed record: %s" % exc
            log.debug("slice %s: skipping a malformed record: %s", self.slice_id, exc)
            return
        self.records += 1
        model = self.model
        previous = self._rows[-1][2] if self._rows else [math.nan] * len(model.names)
        row = []
        for index, name in enumerate(model.names):
            cell = metrics.get(name)
            row.append(float(cell) if isinstance(cell, (int, float)) and math.isfinite(cell) else previous[index])
        kpi = metrics.get(model.target)
        kpi_value = float(kpi) if isinstance(kpi, (int, float)) and math.isfinite(kpi) else math.nan
        self._rows.append((timestamp, kpi_value, row))
        if len(self._rows) < model.window:
            return
        try:
            forecast = model.forecast_next([r[1] for r in self._rows], np.array([r[2] for r in self._rows]))
        except LearnError as exc:
            self.skipped += 1
            self.problem = "%s (the records must carry the metrics %s%s)" % (
                exc, ", ".join(model.names), " and the KPI %r" % model.target if model.kpi_inputs else "")
            return
        self.problem = None
        message = {"slice": self.slice_id, "flavor": self.flavor, "timestamp": timestamp,
                   "for_timestamp": timestamp + model.horizon_seconds, "forecast": forecast, "model": model.kind}
        producer.send(self._forecasts_topic, key=self.slice_id.encode("utf-8"),
                      value=json.dumps(message).encode("utf-8"))
        self.forecasts += 1
        self._on_forecast(message)


def wait_ready(worker: ForecastWorker, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.running:
        if worker.ready.wait(0.1):
            return True
    return worker.ready.is_set()
