"""edgelab's Kafka producer and consumer helpers (kafka-python), as the feeder and the
agents use them (docs/kafka.md, "Helpers"). KafkaSettings also gives the same settings
in librdkafka's names, for the detection consumer's confluent-kafka clients.

Deliberately thin: settings in one typed object, defaults chosen for the testbed,
at-least-once consumption (a record is committed only after the handler returned), and
nothing between the caller and kafka-python's own batching. benchmarks/kafka_bench.py
holds it to its target (throughput >= 90 % of bare kafka-python's).

    settings = KafkaSettings(bootstrap=["10.213.0.11:9092"])
    with FrameProducer(settings, topic="edgelab.frames") as producer:
        producer.send(b"camera-1", frame_bytes)
    with GroupConsumer(settings, topic="edgelab.frames", group="detectors") as consumer:
        consumer.run(handle_frame, max_records=1000, timeout_s=60)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer  # type: ignore[import-untyped, unused-ignore]
from kafka.consumer.fetcher import ConsumerRecord  # type: ignore[import-untyped, unused-ignore]

Handler = Callable[[ConsumerRecord], None]


@dataclass(frozen=True)
class KafkaSettings:
    """Where the brokers are and how to authenticate (role kafka's listener settings)."""

    bootstrap: list[str]
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    client_id: str = "edgelab"

    def client_config(self) -> dict[str, object]:
        config: dict[str, object] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.security_protocol.startswith("SASL_"):
            config.update(sasl_mechanism=self.sasl_mechanism or "SCRAM-SHA-512",
                          sasl_plain_username=self.sasl_username, sasl_plain_password=self.sasl_password)
        if self.ssl_cafile:
            config["ssl_cafile"] = self.ssl_cafile
        return config

    def librdkafka_config(self) -> dict[str, object]:
        """The same settings for confluent-kafka (librdkafka's property names), which the
        detection consumer uses to move frames; SASL defaults to SCRAM-SHA-512 as above."""
        config: dict[str, object] = {
            "bootstrap.servers": ",".join(self.bootstrap),
            "security.protocol": self.security_protocol.lower(),
            "client.id": self.client_id,
        }
        if self.security_protocol.startswith("SASL_"):
            config.update({"sasl.mechanism": self.sasl_mechanism or "SCRAM-SHA-512",
                           "sasl.username": self.sasl_username, "sasl.password": self.sasl_password})
        if self.ssl_cafile:
            config["ssl.ca.location"] = self.ssl_cafile
        return config


class FrameProducer:
    """A keyed producer for one topic. Frames of one source share a key, so they stay in order."""

    def __init__(self, settings: KafkaSettings, topic: str, *, acks: int | str = 1, linger_ms: int = 5,
                 max_request_size: int = 8 * 1024 * 1024, **overrides: object) -> None:
        self.topic = topic
        config = settings.client_config()
        config.update(acks=acks, linger_ms=linger_ms, max_request_size=max_request_size,
                      batch_size=256 * 1024, retries=10, retry_backoff_ms=200)
        config.update(overrides)
        self._producer = KafkaProducer(**config)
        self.sent = 0

    def send(self, key: bytes | None, value: bytes) -> Any:
        """Hand one record to kafka-python; returns its future (kafka-python's
        FutureRecordMetadata: .get(timeout), .add_callback, .add_errback), which
        resolves when the broker acknowledged the record or failed when it did not.
        `sent` counts records handed over, not acknowledged ones."""
        future = self._producer.send(self.topic, key=key, value=value)
        self.sent += 1
        return future

    def send_many(self, items: Iterable[tuple[bytes | None, bytes]]) -> int:
        count = 0
        for key, value in items:
            self.send(key, value)
            count += 1
        return count

    def flush(self, timeout_s: float = 60.0) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Send what is buffered (waiting at most timeout_s, None: as long as it takes) and close."""
        self._producer.close(timeout=timeout_s)

    def __enter__(self) -> FrameProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        self.close()


class GroupConsumer:
    """A consumer in a group, at-least-once: offsets are committed after the handler ran.

    Partitions of a consumer that dies are handed to the others of the group when the
    broker stops hearing from it (session_timeout_ms); whatever it had handled but not
    committed is handled again (duplicates, never gaps).
    """

    def __init__(self, settings: KafkaSettings, topic: str, group: str, *, session_timeout_ms: int = 6000,
                 heartbeat_interval_ms: int = 1000, max_poll_records: int = 500, **overrides: object) -> None:
        config = settings.client_config()
        config.update(group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
                      session_timeout_ms=session_timeout_ms, heartbeat_interval_ms=heartbeat_interval_ms,
                      max_poll_records=max_poll_records, fetch_max_bytes=64 * 1024 * 1024,
                      max_partition_fetch_bytes=16 * 1024 * 1024)
        config.update(overrides)
        self._consumer = KafkaConsumer(topic, **config)
        self.handled = 0

    def poll_once(self, handler: Handler, timeout_ms: int = 500) -> int:
        """Handle one poll's records, then commit them; returns how many were handled."""
        batches = self._consumer.poll(timeout_ms=timeout_ms)
        count = 0
        for records in batches.values():
            for record in records:
                handler(record)
                count += 1
        if count:
            self._consumer.commit()
            self.handled += count
        return count

    def run(self, handler: Handler, *, max_records: int | None = None, timeout_s: float = 60.0) -> int:
        """Poll until max_records were handled or timeout_s passed; returns the number handled."""
        deadline = time.monotonic() + timeout_s
        start = self.handled
        while time.monotonic() < deadline and (max_records is None or self.handled - start < max_records):
            self.poll_once(handler)
        return self.handled - start

    def assignment(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> GroupConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

