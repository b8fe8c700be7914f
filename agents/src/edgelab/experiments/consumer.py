"""edgelab-consumer: object detection on the frames topic, results to the results topic.

One process is one member of a Kafka consumer group (--group) on the frames topic;
systemd instance N of edgelab-consumer@ runs `--instance N`, and the cluster agent
scales the group by starting and stopping instances. Each frame (binary PPM as the
feeder sends it, .npy, or an image file Pillow reads) is letterboxed and run through a
YOLO-format ONNX model with ONNX Runtime (--model FILE, or the current model of
--exp-id in the node's model store --model-store DIR); boxes are decoded and
suppressed (NMS) in numpy. For every frame one JSON record goes to the results topic,
keyed like the frame:

    {"frame": "feeder-17", "partition": 3, "offset": 120, "consumer": "edgelab-consumer@2",
     "host": "nuc2", "model": {"name": ..., "version": ...}, "frame_bytes": 921615, "width": 640, "height": 480,
     "produced": T0, "received": T1, "inference_start": T2, "inference_end": T3, "published": T4,
     "detections": [{"box": [x1, y1, x2, y2], "score": 0.61, "class": 3}, ...], "error": null}

(times: epoch seconds, UTC; `produced` is the frame record's Kafka timestamp).
Offsets are committed after a poll's results were acknowledged by the broker, so a
consumer that dies mid-batch loses nothing: its uncommitted frames are processed
again by whoever gets the partition (at-least-once; duplicates are possible). The
producer is not flushed after every poll: a batch's results are acknowledged while
the next batch is processed, and its offsets committed (asynchronously) after that one,
so a crash can have up to two batches (2 x --max-poll-records frames) of a member
processed again; before a rebalance takes partitions away, the member waits for its
results' acknowledgements and commits them.

The Kafka clients are confluent-kafka's (librdkafka, frames read in C): a consumer
joins its group in about 3 s (half the 6 s session timeout, on Tansu), a member
added or stopped gets every partition consumed again within a few seconds, one
killed after its session timed out. The topics' metadata is refreshed every
--metadata-max-age seconds (default 30), so a partition count changed on the broker
reaches the group within that.

/metrics (default port 9466 + N - 1, --metrics-port) exposes frames processed, frame
errors, detections, the inference and end-to-end latency histograms, per-stage time
and the group lag of this member's partitions.

Kafka settings are the cluster agent's: --bootstrap HOST:PORT[,...], --security-protocol,
--sasl-mechanism, --sasl-username, --sasl-password-file (read from the file, never taken
on the command line), --ssl-cafile. SIGTERM finishes the current batch, waits for the
acknowledgement of every result sent, commits, exits.
--report FILE writes the closing summary: frames, time per stage, the process's CPU
time, the inference thread's CPU time in ONNX Runtime and the CPU time of each thread
(librdkafka's threads by name).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import cli
from ..config import SASL_MECHANISMS, SECURITY_PROTOCOLS, ConfigError
from ..kafka import KafkaSettings
from .yolo import FrameError, letterbox, postprocess, read_frame

log = logging.getLogger(__name__)

PROG = "edgelab-consumer"
BASE_METRICS_PORT = 9466  # the `consumers` scrape job's port of instance 1
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# How long a stopping member waits, at most, for a rebalance it is in (or learns of at
# its next heartbeats) to end before it leaves the group (PublishingConsumer.settle).
SETTLE_S = 10.0
RESULT_BATCH_BYTES = 256 * 1024  # results' producer batches (a result is at most ~10 KB)
STAGES = ("poll", "decode", "inference", "postprocess", "publish")


# ---------------------------------------------------------------- the model
@dataclass
class Model:
    session: Any
    input_name: str
    size: int
    name: str
    version: str
    path: str

    def run(self, tensor: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: tensor})[0])


def load_model(path: str, *, threads: int, name: str | None = None, version: str | None = None,
               size: int | None = None) -> Model:
    """An ONNX Runtime session on the CPU with `threads` threads; name and version from
    the arguments, else the model's metadata (name, version), else the file name and
    the model's model_version."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ConfigError(f"model {path}: no such file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise ConfigError(f"model {path}: {' '.join(str(exc).split())[:300]}") from None
    inputs = session.get_inputs()
    shape = inputs[0].shape
    if len(shape) != 4 or shape[1] not in (3, "3"):
        raise ConfigError(f"model {path}: input {inputs[0].name} has shape {shape}, not [1, 3, S, S]")
    fixed = [d for d in shape[2:] if isinstance(d, int)]
    if fixed and (len(fixed) != 2 or fixed[0] != fixed[1]):
        raise ConfigError(f"model {path}: input {shape} is not square")
    input_size = fixed[0] if fixed else (size or 640)
    if size and fixed and size != input_size:
        raise ConfigError(f"--imgsz {size} but model {path} takes {input_size}x{input_size}")
    outputs = session.get_outputs()[0].shape
    if len(outputs) != 3 or (isinstance(outputs[1], int) and outputs[1] < 5):
        raise ConfigError(f"model {path}: output shape {outputs} is not YOLO's [1, 4 + classes, anchors]")
    meta = session.get_modelmeta()
    props = meta.custom_metadata_map or {}
    return Model(session=session, input_name=inputs[0].name, size=int(input_size),
                 name=name or props.get("name") or Path(path).stem,
                 version=version or props.get("version") or str(meta.version), path=path)


def store_model(store_dir: str, exp_id: str) -> tuple[str, str, str]:
    """(onnx file, name, version) of exp_id's current model in the node's model store."""
    from ..node_api.store import ModelStore, StoreError

    try:
        current = ModelStore(store_dir).current(exp_id)
    except StoreError as exc:
        raise ConfigError(f"--exp-id: {exc}") from None
    if current is None:
        raise ConfigError(f"model store {store_dir} has no current model for {exp_id} "
                          "(pull one through the node API first)")
    files = sorted(Path(current.path).rglob("*.onnx"))
    if not files:
        raise ConfigError(f"model store {store_dir}: {exp_id} version {current.version} holds no .onnx file")
    preferred = [f for f in files if f.name == "model.onnx"]
    if len(files) > 1 and not preferred:
        raise ConfigError(f"model store {store_dir}: {exp_id} version {current.version} holds several .onnx "
                          f"files ({', '.join(f.name for f in files[:5])}) and none is model.onnx")
    return str((preferred or files)[0]), current.name, current.version


# ---------------------------------------------------------------- metrics
class Metrics:
    def __init__(self, consumer: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = {"consumer": consumer}
        self.frames = Counter("edgelab_consumer_frames", "Frames processed and published",
                              registry=self.registry, labelnames=["consumer"]).labels(**labels)
        self.errors = Counter("edgelab_consumer_frame_errors", "Frames that could not be decoded",
                              registry=self.registry, labelnames=["consumer"]).labels(**labels)
        self.detections = Counter("edgelab_consumer_detections", "Detections published",
                                  registry=self.registry, labelnames=["consumer"]).labels(**labels)
        self.inference = Histogram("edgelab_consumer_inference_seconds", "Model inference time per frame",
                                   registry=self.registry, labelnames=["consumer"],
                                   buckets=LATENCY_BUCKETS).labels(**labels)
        self.end_to_end = Histogram("edgelab_consumer_end_to_end_seconds",
                                    "From the frame's Kafka timestamp to its result's publication",
                                    registry=self.registry, labelnames=["consumer"],
                                    buckets=LATENCY_BUCKETS).labels(**labels)
        self.stage = Counter("edgelab_consumer_stage_seconds", "Time spent per pipeline stage",
                             registry=self.registry, labelnames=["consumer", "stage"])
        self.lag = Gauge("edgelab_consumer_lag_records", "Records of this member's partitions not yet consumed",
                         registry=self.registry, labelnames=["consumer"]).labels(**labels)
        self.partitions = Gauge("edgelab_consumer_partitions", "Partitions assigned to this member",
                                registry=self.registry, labelnames=["consumer"]).labels(**labels)
        self.info = Gauge("edgelab_consumer_model_info", "The model in use (value 1)",
                          registry=self.registry, labelnames=["consumer", "model", "version"])
        self.consumer = consumer

    def serve(self, address: str, port: int) -> None:
        from prometheus_client import start_http_server

        try:
            start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"metrics {address}:{port}: {exc.strerror}") from None


# ---------------------------------------------------------------- processing
@dataclass
class Stages:
    """Seconds per pipeline stage and frames, for the closing summary and the benchmark."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    frames: int = 0
    errors: int = 0
    inference_cpu: float = 0.0  # CPU seconds of the inference thread in model.run

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds


class Detector:
    """Turns one frame record into its result record (JSON bytes)."""

    def __init__(self, model: Model, consumer: str, metrics: Metrics, *, conf: float, iou: float,
                 max_detections: int, host: str | None = None) -> None:
        self.model = model
        self.consumer = consumer
        # Every worker runs edgelab-consumer@1..N: the host tells them apart in the results.
        self.host = socket.gethostname() if host is None else host
        self.metrics = metrics
        self.conf, self.iou, self.max_detections = conf, iou, max_detections
        self.stages = Stages()
        metrics.info.labels(consumer, model.name, model.version).set(1)

    def handle(self, key: bytes | None, value: bytes | None, partition: int, offset: int,
               timestamp_ms: int | None, received: float) -> bytes:
        """One frame record (key, value, partition, offset, Kafka timestamp in ms or None)
        received at `received` (epoch seconds) into its result record."""
        t0 = time.perf_counter()
        result: dict[str, Any] = {
            "frame": key.decode("utf-8", "replace") if key is not None else None,
            "partition": partition, "offset": offset, "consumer": self.consumer, "host": self.host,
            "model": {"name": self.model.name, "version": self.model.version},
            "frame_bytes": len(value or b""), "width": None, "height": None,
            "produced": timestamp_ms / 1000.0 if timestamp_ms is not None else None,
            "received": received, "inference_start": None, "inference_end": None,
            "detections": [], "error": None,
        }
        try:
            image = read_frame(value or b"")
            tensor, geometry = letterbox(image, self.model.size)
        except FrameError as exc:
            result["error"] = str(exc)
            self.stages.errors += 1
            self.metrics.errors.inc()
            self.stages.add("decode", time.perf_counter() - t0)
            return self.finish(result)
        result["width"], result["height"] = geometry.width, geometry.height
        t1 = time.perf_counter()
        cpu = time.thread_time()  # ONNX Runtime with one thread runs in this one
        result["inference_start"] = time.time()
        output = self.model.run(tensor)
        result["inference_end"] = time.time()
        t2 = time.perf_counter()
        self.stages.inference_cpu += time.thread_time() - cpu
        boxes, scores, classes = postprocess(output, geometry, conf=self.conf, iou=self.iou,
                                             max_detections=self.max_detections)
        result["detections"] = detections(boxes, scores, classes)
        t3 = time.perf_counter()
        self.stages.add("decode", t1 - t0)
        self.stages.add("inference", t2 - t1)
        self.stages.add("postprocess", t3 - t2)
        self.metrics.inference.observe(t2 - t1)
        self.metrics.detections.inc(len(boxes))
        return self.finish(result)

    def finish(self, result: dict[str, Any]) -> bytes:
        t0 = time.perf_counter()
        result["published"] = now = time.time()
        data = json.dumps(result, separators=(",", ":")).encode()
        if result["produced"] is not None:
            self.metrics.end_to_end.observe(max(0.0, now - result["produced"]))
        self.stages.frames += 1
        self.metrics.frames.inc()
        self.stages.add("publish", time.perf_counter() - t0)
        return data


def detections(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> list[dict[str, Any]]:
    """The result record's detections: boxes to 0.1 pixel, scores to 4 decimals. Rounded
    as whole arrays in float64 (float32 values would print as 12.300000190734863) and
    turned into Python numbers by tolist(), not one float() and round() per number."""
    return [{"box": box, "score": score, "class": cls} for box, score, cls in zip(
        np.round(boxes.astype(np.float64), 1).tolist(), np.round(scores.astype(np.float64), 4).tolist(),
        classes.astype(np.int64).tolist(), strict=True)]


class _Batch:
    """One poll's frames: their results not yet acknowledged, the first delivery error,
    and the offsets (next to consume, per (topic, partition)) that the results cover."""

    __slots__ = ("failed", "offsets", "remaining", "sent")

    def __init__(self) -> None:
        self.remaining = 0
        self.sent = 0
        self.failed: list[str] = []
        self.offsets: dict[tuple[str, int], int] = {}

    def delivered(self, err: Any, _msg: Any) -> None:  # a producer delivery report, on poll()/flush()
        self.remaining -= 1
        if err is not None:
            self.failed.append(str(err))


class PublishingConsumer:
    """A group member whose commits wait for the results (confluent-kafka, librdkafka: it
    reads the frames in C, where kafka-python reads its socket 4 KB at a time in Python).
    A poll's frames are handled and their results produced; the poll's offsets are
    committed once the broker acknowledged every one of its results. The producer is not
    flushed after each poll: a batch's acknowledgements arrive while the next batch is
    processed, and its offsets go out with an asynchronous commit after that next poll.
    When more than `max_pending` batches still wait for acknowledgements after a poll,
    the producer is flushed and they are committed synchronously; finish() does that,
    and so does a rebalance before this member gives its partitions up.

    Group timing: the session times out after session_timeout_ms (a dead member's
    partitions move after that), heartbeats every heartbeat_interval_ms tell a member of
    a rebalance; the broker in the lab (Tansu) answers a first JoinGroup after half the
    session timeout. metadata_max_age_ms bounds how long a changed partition count of
    the topic goes unnoticed (librdkafka's default is 5 minutes)."""

    def __init__(self, settings: KafkaSettings, topic: str, group: str, results_topic: str, *,
                 max_poll_records: int, max_pending: int = 1, session_timeout_ms: int = 6000,
                 heartbeat_interval_ms: int = 1000, metadata_max_age_ms: int = 30_000,
                 connect_timeout_s: float = 10.0) -> None:
        from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

        # librdkafka's warnings and errors go to this module's log (served by poll()).
        common = {**settings.librdkafka_config(), "topic.metadata.refresh.interval.ms": metadata_max_age_ms,
                  "log_level": 4, "logger": logging.getLogger(f"{__name__}.librdkafka")}
        where = ",".join(settings.bootstrap)
        try:
            # A poll's results fit one batch: the sender is woken once per batch, not per result.
            self.producer: Any = Producer({**common, "acks": 1, "linger.ms": 5, "batch.size": RESULT_BATCH_BYTES,
                                      "message.timeout.ms": 60_000})
            # Connected, with the results topic's metadata, before the first frame.
            self.producer.list_topics(results_topic, timeout=connect_timeout_s)
            self._consumer: Any = Consumer({
                **common, "group.id": group, "enable.auto.commit": False, "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest", "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": heartbeat_interval_ms, "on_commit": self._committed,
                # Prefetch about a second of frames (16 MiB, ~17 of 640x480), topped up every
                # 20 ms: what a rebalance discards stays small, the queue never runs dry.
                "queued.max.messages.kbytes": 16 * 1024, "queued.min.messages": 4 * max_poll_records,
                "fetch.queue.backoff.ms": 20, "fetch.max.bytes": 16 * 1024 * 1024,
                "max.partition.fetch.bytes": 8 * 1024 * 1024})
            self._consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked,
                                     on_lost=self._lost)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            text = error.str() if isinstance(error, KafkaError) else str(exc)
            raise ConfigError(f"kafka {where}: {' '.join(text.split())[:300]}") from None
        self.topic = topic
        self.results_topic = results_topic
        self.max_poll_records = max_poll_records
        self.heartbeat_interval_s = heartbeat_interval_ms / 1000
        self.max_pending = max_pending
        self.pending: deque[_Batch] = deque()
        self.handled = 0
        self.commit_errors = 0
        self.rebalances = 0
        # Between a JoinGroup and the assignment that ends it (the first one included).
        self.rebalancing = True

    # -- the group's callbacks (run inside consume() on this thread)
    def _assigned(self, _consumer: Any, partitions: list[Any]) -> None:
        self.rebalances += 1
        self.rebalancing = False
        log.debug("assigned %s", [p.partition for p in partitions])

    def _revoked(self, _consumer: Any, partitions: list[Any]) -> None:
        """Before the partitions go: commit what their acknowledged results cover, so the
        next owner repeats as little as possible."""
        self.rebalancing = True
        try:
            self.commit_acknowledged(wait=True, timeout_s=5.0)
        except Exception as exc:  # librdkafka's KafkaException, or results the broker refused
            log.warning("commit before giving up %d partitions failed: %s", len(partitions), exc)

    def _lost(self, _consumer: Any, partitions: list[Any]) -> None:
        self.rebalancing = True
        log.warning("%d partitions lost (session expired): their next owner processes them again",
                    len(partitions))

    def _committed(self, err: Any, partitions: list[Any]) -> None:
        if err is not None:  # the frames are processed again by the partition's next owner
            self.commit_errors += 1
            log.warning("commit of %d partition offsets failed: %s", len(partitions), err)

    # -- processing
    def poll_batch(self, handle: Callable[..., bytes], stages: Stages, timeout_ms: int = 500) -> int:
        """One poll: handle(key, value, partition, offset, timestamp_ms, received) per frame,
        its result produced keyed like the frame; returns the number of frames handled."""
        t0 = time.perf_counter()
        # Wait for one frame, then take what else is already fetched: consume(N, timeout)
        # alone would hold a short batch back until the timeout in search of N.
        messages = self._consumer.consume(num_messages=1, timeout=timeout_ms / 1000)
        if messages and self.max_poll_records > 1:
            messages += self._consumer.consume(num_messages=self.max_poll_records - 1, timeout=0)
        received = time.time()
        stages.add("poll", time.perf_counter() - t0)
        batch = _Batch()
        produce, results_topic = self.producer.produce, self.results_topic
        for message in messages:
            error = message.error()
            if error is not None:
                log.warning("consume: %s", error.str())
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:  # not a record
                continue
            kind, timestamp = message.timestamp()
            key = message.key()
            value = handle(key, message.value(), partition, offset, timestamp if kind else None, received)
            t1 = time.perf_counter()
            batch.remaining += 1
            try:
                produce(results_topic, value, key, on_delivery=batch.delivered)
            except BufferError:  # the producer's queue is full: let it drain, then queue
                self.producer.flush(60)
                produce(results_topic, value, key, on_delivery=batch.delivered)
            batch.sent += 1
            batch.offsets[(topic, partition)] = offset + 1
            stages.add("publish", time.perf_counter() - t1)
        t1 = time.perf_counter()
        if batch.sent:
            self.pending.append(batch)
            self.handled += batch.sent
        self.commit_acknowledged(wait=False)
        if len(self.pending) > self.max_pending:  # the broker is behind: wait for it
            self.commit_acknowledged(wait=True)
        stages.add("publish", time.perf_counter() - t1)
        return batch.sent

    def commit_acknowledged(self, *, wait: bool, timeout_s: float = 60.0) -> None:
        """Commit the offsets of the oldest batches whose results were all acknowledged
        (asynchronously); with wait, flush the producer first so that every batch is,
        and commit synchronously. Offsets of partitions this member no longer holds
        (a rebalance) are left to their new owner, which processes them again."""
        from confluent_kafka import TopicPartition

        if wait and self.pending:
            self.producer.flush(timeout_s)
        else:
            self.producer.poll(0)  # serve the delivery reports that arrived
        offsets: dict[tuple[str, int], int] = {}
        while self.pending and self.pending[0].remaining == 0:
            batch = self.pending.popleft()
            if batch.failed:
                raise RuntimeError(f"{len(batch.failed)} of {batch.sent} results were not acknowledged by the "
                                   f"broker ({' '.join(batch.failed[0].split())[:200]}); offsets not committed")
            offsets.update(batch.offsets)
        if not offsets:
            return
        held = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        commit = [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()
                  if (topic, partition) in held]
        if not commit:
            return
        if wait:
            self._consumer.commit(offsets=commit, asynchronous=False)
        else:
            self._consumer.commit(offsets=commit, asynchronous=True)

    def finish(self) -> None:
        """Wait for every result's acknowledgement and commit what they cover."""
        self.commit_acknowledged(wait=True)

    def assignment(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}

    def lag(self) -> int | None:
        """Records between this member's positions and the partitions' high watermarks
        (as of the last fetch; None before this member consumed from any partition)."""
        assigned = self._consumer.assignment()
        if not assigned:
            return None
        total, known = 0, False
        for tp in self._consumer.position(assigned):
            if tp.offset < 0:  # nothing consumed from it yet
                continue
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                continue
            total += max(0, high - tp.offset)
            known = True
        return total if known else None

    def settle(self, timeout_s: float | None = None) -> bool:
        """Wait (up to timeout_s) for a rebalance this member is in to end; whether it
        ended. On Tansu 0.6 a group whose leader leaves while the group is forming (after
        a member joined or left, before the leader's SyncGroup) is wedged for good: no
        member, old or new, is given a partition again (seen in the lab when the node
        agent stopped an instance a few seconds after another one joined; reproduced on
        loopback, tests/agents/test_consumer.py). A rebalance another member began shows
        here only at this member's next heartbeat, so settle() first polls through two
        heartbeat intervals, then until the rebalance it learnt of ends. Frames fetched
        meanwhile are dropped unprocessed and uncommitted: the partitions' next owner
        handles them."""
        now = time.monotonic()
        deadline = now + (SETTLE_S if timeout_s is None else timeout_s)
        heard = min(deadline, now + 2 * self.heartbeat_interval_s + 0.5)
        while time.monotonic() < deadline and (self.rebalancing or time.monotonic() < heard):
            self._consumer.consume(num_messages=self.max_poll_records, timeout=0.2)
        return not self.rebalancing

    def close(self) -> None:
        """Leave the group (its partitions move at once; after settle(), never in the
        middle of a rebalance) and send what is queued. The clients are dropped: their
        callbacks refer to this object, and the producer's threads would otherwise
        live on until the garbage collector finds the cycle."""
        try:
            if not self.settle():
                log.warning("left the group of %s in the middle of a rebalance (%g s passed)", self.topic, SETTLE_S)
            self._consumer.close()
        finally:
            self.producer.flush(10)
            self._consumer = self.producer = None


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by each thread of this process, by name: Python threads by
    their Python name, the others (librdkafka's "rdk:main", "rdk:broker...", ONNX Runtime's
    pool) by the kernel's; where the time goes besides inference. Read from /proc (Linux;
    {} where there is none)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    python_names = {thread.native_id: thread.name for thread in threading.enumerate()}
    found: dict[str, float] = {}
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
            kernel_name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
        name = python_names.get(int(task.name), kernel_name)
        found[name] = found.get(name, 0.0) + seconds
    return found


# ---------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--model", metavar="FILE", help="YOLO-format ONNX model ([1,3,S,S] -> [1,4+C,N])")
    model.add_argument("--model-store", metavar="DIR", help="the node's model store (with --exp-id)")
    model.add_argument("--exp-id", help="use the current model of this experiment in --model-store")
    model.add_argument("--model-name", help="name to publish (default: the model's metadata, or the file name)")
    model.add_argument("--model-version", help="version to publish (default: the model's metadata)")
    model.add_argument("--imgsz", type=int, help="input side for models with a dynamic input (default 640)")
    model.add_argument("--conf", type=float, default=0.25, help="score threshold (default 0.25)")
    model.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    model.add_argument("--max-detections", type=int, default=100, help="per frame (default 100)")
    model.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1: one core)")
    group = parser.add_argument_group("group")
    group.add_argument("--instance", type=int, default=1, help="this consumer's number N, from 1 (the unit's %%i)")
    group.add_argument("--group", default="edgelab-detectors", help="consumer group (default edgelab-detectors)")
    group.add_argument("--max-poll-records", type=int, default=8,
                       help="frames per poll and commit (default 8: short batches let the group rebalance fast)")
    group.add_argument("--max-frames", type=int, help="exit after this many frames (default: run until stopped)")
    group.add_argument("--idle-exit", type=float, metavar="SECONDS",
                       help="exit after this long without frames while holding partitions, counted from the "
                            "last frame or rebalance (default: run until stopped)")
    kafka = parser.add_argument_group("kafka")
    kafka.add_argument("--bootstrap", required=True, metavar="HOST:PORT[,...]", help="Kafka bootstrap servers")
    kafka.add_argument("--topic", default="edgelab.frames", help="frames topic (default edgelab.frames)")
    kafka.add_argument("--results-topic", default="edgelab.detections",
                       help="results topic (default edgelab.detections)")
    kafka.add_argument("--metadata-max-age", type=float, default=30.0, metavar="SECONDS",
                       help="refresh the topics' metadata this often: a changed partition count is seen "
                            "within it (default 30)")
    kafka.add_argument("--security-protocol", default="PLAINTEXT", choices=SECURITY_PROTOCOLS)
    kafka.add_argument("--sasl-mechanism", default="SCRAM-SHA-512", choices=SASL_MECHANISMS)
    kafka.add_argument("--sasl-username")
    kafka.add_argument("--sasl-password-file", metavar="FILE", help="file holding the SASL password")
    kafka.add_argument("--ssl-cafile", metavar="FILE", help="CA bundle for SSL and SASL_SSL")
    out = parser.add_argument_group("metrics")
    out.add_argument("--metrics-address", default="0.0.0.0", help="/metrics address (default 0.0.0.0)")
    out.add_argument("--metrics-port", type=int,
                     help="/metrics port (default %d + instance - 1; 0: no /metrics)" % BASE_METRICS_PORT)
    out.add_argument("--report", metavar="FILE", help="write the closing summary as JSON")


def check_args(args: argparse.Namespace) -> None:
    if bool(args.model) == bool(args.model_store or args.exp_id):
        raise cli.InputError("give either --model FILE or --model-store DIR with --exp-id")
    if bool(args.model_store) != bool(args.exp_id):
        raise cli.InputError("--model-store and --exp-id go together")
    checks = [("--instance", args.instance >= 1, ">= 1"), ("--threads", args.threads >= 1, ">= 1"),
              ("--conf", 0.0 <= args.conf <= 1.0, "from 0 to 1"), ("--iou", 0.0 <= args.iou <= 1.0, "from 0 to 1"),
              ("--max-detections", args.max_detections >= 1, ">= 1"),
              ("--max-poll-records", args.max_poll_records >= 1, ">= 1"),
              ("--max-frames", args.max_frames is None or args.max_frames >= 1, ">= 1"),
              ("--idle-exit", args.idle_exit is None or args.idle_exit > 0, "> 0"),
              ("--metadata-max-age", 1.0 <= args.metadata_max_age <= 3600.0, "from 1 to 3600"),
              ("--imgsz", args.imgsz is None or (args.imgsz >= 32 and args.imgsz % 32 == 0), "a multiple of 32"),
              ("--metrics-port", args.metrics_port is None or 0 <= args.metrics_port <= 65535, "from 0 to 65535")]
    for flag, ok, rule in checks:
        if not ok:
            raise cli.InputError(f"{flag} must be {rule}, got {getattr(args, flag[2:].replace('-', '_'))}")


def start(args: argparse.Namespace) -> None:
    from .feeder import kafka_settings

    check_args(args)
    name = f"{PROG}@{args.instance}"
    if args.model:
        path, model_name, version = args.model, args.model_name, args.model_version
    else:
        path, model_name, version = store_model(args.model_store, args.exp_id)
        model_name, version = args.model_name or model_name, args.model_version or version
    model = load_model(path, threads=args.threads, name=model_name, version=version, size=args.imgsz)
    settings = dataclasses.replace(kafka_settings(args), client_id=name)
    metrics = Metrics(name)
    port = BASE_METRICS_PORT + args.instance - 1 if args.metrics_port is None else args.metrics_port
    if port:
        metrics.serve(args.metrics_address, port)
    detector = Detector(model, name, metrics, conf=args.conf, iou=args.iou, max_detections=args.max_detections)
    consumer = PublishingConsumer(settings, args.topic, args.group, args.results_topic,
                                  max_poll_records=args.max_poll_records,
                                  metadata_max_age_ms=int(args.metadata_max_age * 1000))
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    log.info("%s: %s v%s (%dx%d, %d thread%s) on %s, group %s, results to %s, /metrics on %s", name, model.name,
             model.version, model.size, model.size, args.threads, "" if args.threads == 1 else "s", args.topic,
             args.group, args.results_topic, port or "none")
    started = time.monotonic()
    cpu_started = time.process_time()
    busy_cpu_started: float | None = None
    last_frame = started
    exported = dict.fromkeys(STAGES, 0.0)
    assigned: set[int] = set()
    try:
        while not stopping:
            before_poll = time.process_time()
            count = consumer.poll_batch(detector.handle, detector.stages)
            now = time.monotonic()
            if count:
                last_frame = now
                if busy_cpu_started is None:  # from the poll that brought the first frame
                    busy_cpu_started = before_poll
            lag = consumer.lag()
            if lag is not None:
                metrics.lag.set(lag)
            assignment = consumer.assignment()
            if assignment != assigned:  # a rebalance: idle time counts from here
                assigned, last_frame = assignment, now
                log.info("%s: partitions %s of %s", name, ",".join(map(str, sorted(assignment))) or "none",
                         args.topic)
            metrics.partitions.set(len(assignment))
            for stage, seconds in detector.stages.seconds.items():
                metrics.stage.labels(name, stage).inc(seconds - exported[stage])
                exported[stage] = seconds
            if args.max_frames and consumer.handled >= args.max_frames:
                break
            if args.idle_exit and assigned and now - last_frame >= args.idle_exit:
                break
        consumer.finish()
        threads = thread_cpu_seconds()  # before close() ends the clients' threads
    finally:
        consumer.close()
    summary = {"consumer": name, "model": model.name, "version": model.version, "frames": detector.stages.frames,
               "errors": detector.stages.errors, "seconds": round(time.monotonic() - started, 3),
               "stage_seconds": {k: round(v, 4) for k, v in detector.stages.seconds.items()},
               "cpu_seconds": round(time.process_time() - cpu_started, 4),
               "cpu_seconds_since_first_frame": round(time.process_time() - (busy_cpu_started or cpu_started), 4),
               "inference_cpu_seconds": round(detector.stages.inference_cpu, 4),
               "thread_cpu_seconds": {k: round(v, 2) for k, v in sorted(threads.items())}}
    log.info("%s: %d frames (%d errors) in %.1f s", name, summary["frames"], summary["errors"], summary["seconds"])
    if args.report:
        cli.write_atomic(args.report, json.dumps(summary, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, description=__doc__, add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())
