"""OpenTelemetry for the agents: one MeterProvider with a Prometheus reader (served on
metrics_address:metrics_port) and, when an OTLP endpoint is set, a periodic OTLP gRPC
push. Also the node's samples: psutil (CPU 0..1, memory, disk, network rates) plus
the application's metrics (a Prometheus text endpoint or one process's CPU and RSS).

Metric names follow docs/monitoring.md: instrument `edgelab.agent.heartbeat_timestamp`
(unit s) is exported as `edgelab_agent_heartbeat_timestamp_seconds`. No label is
called `node` (Prometheus sets that one from the inventory).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psutil
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server

from .config import ConfigError

log = logging.getLogger(__name__)

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class Telemetry:
    """MeterProvider + Prometheus endpoint (+ OTLP push). Each instance has its own
    registry, so several agents can live in one process (tests, benchmarks)."""

    def __init__(self, service: str, agent: str, *, address: str, port: int, otlp_endpoint: str = "",
                 otlp_interval: float = 5.0, serve: bool = True) -> None:
        self.registry = CollectorRegistry()
        readers: list[MetricReader] = [
            PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=self.registry)
        ]
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            exporter = OTLPMetricExporter(endpoint=otlp_endpoint, insecure=not otlp_endpoint.startswith("https"))
            readers.append(PeriodicExportingMetricReader(exporter, export_interval_millis=int(otlp_interval * 1000)))
        self.provider = MeterProvider(
            metric_readers=readers,
            resource=Resource.create({"service.name": service, "service.instance.id": agent}),
        )
        self.meter: Meter = self.provider.get_meter("edgelab")
        self.server: Any = None
        self.port = port
        if serve:
            try:
                self.server, _thread = start_http_server(port, addr=address, registry=self.registry)
            except OSError as exc:
                self.provider.shutdown(timeout_millis=1000)
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(f"metrics port {port} on {address} is busy (metrics_port)") from None
                raise ConfigError(f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}") from None
            self.port = self.server.server_port

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        try:
            self.provider.shutdown(timeout_millis=2000)
        except Exception:
            log.debug("meter provider shutdown failed", exc_info=True)


@dataclass
class Sample:
    """One telemetry sample: wall time and named values."""

    ts: float
    values: dict[str, float] = field(default_factory=dict)


class NodeCollector:
    """psutil node metrics, app metrics, as one flat dict per call."""

    def __init__(self, local_otel_endpoint: str = "", app_process: str = "", disk_path: str = "/",
                 http_timeout: float = 1.0) -> None:
        self.endpoint = local_otel_endpoint
        self.app_process = app_process
        self.disk_path = disk_path
        self.http_timeout = http_timeout
        self._net_prev: tuple[float, int, int] | None = None
        self._proc: psutil.Process | None = None
        psutil.cpu_percent(interval=None)  # prime: the next call measures since now

    def collect(self) -> Sample:
        now = time.time()
        values: dict[str, float] = {"cpu_utilisation": psutil.cpu_percent(interval=None) / 100.0}
        mem = psutil.virtual_memory()
        values["memory_utilisation"] = mem.percent / 100.0
        values["memory_available_bytes"] = float(mem.available)
        with contextlib.suppress(OSError):
            values["disk_utilisation"] = psutil.disk_usage(self.disk_path).percent / 100.0
        net = psutil.net_io_counters()
        mono = time.monotonic()
        if net is not None:
            if self._net_prev is not None:
                dt = max(mono - self._net_prev[0], 1e-6)
                values["network_receive_bytes_rate"] = max(0.0, (net.bytes_recv - self._net_prev[1]) / dt)
                values["network_transmit_bytes_rate"] = max(0.0, (net.bytes_sent - self._net_prev[2]) / dt)
            self._net_prev = (mono, net.bytes_recv, net.bytes_sent)
        if self.endpoint:
            values.update(self._scrape_app())
        if self.app_process:
            values.update(self._process_stats())
        return Sample(now, values)

    def _scrape_app(self) -> dict[str, float]:

        try:
            with urllib.request.urlopen(self.endpoint, timeout=self.http_timeout) as resp:
                text = resp.read(2_000_000).decode("utf-8", "replace")
        except (OSError, ValueError) as exc:
            log.debug("app metrics %s: %s", self.endpoint, exc)
            return {}
        return parse_app_metrics(text)

    def _process_stats(self) -> dict[str, float]:
        proc = self._proc
        if proc is None or not proc.is_running():
            proc = self._proc = _find_process(self.app_process)
            if proc is None:
                return {}
            proc.cpu_percent(None)
            return {}
        try:
            with proc.oneshot():
                return {"app_cpu_utilisation": proc.cpu_percent(None) / 100.0,
                        "app_rss_bytes": float(proc.memory_info().rss)}
        except psutil.Error:
            self._proc = None
            return {}


def parse_app_metrics(text: str, limit: int = 200) -> dict[str, float]:
    """Prometheus text -> {"app:<name>": value}, summing over label sets (bounded)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = "app:" + s.name
                if key not in out and len(out) >= limit:
                    continue
                out[key] = out.get(key, 0.0) + float(s.value)
    except ValueError as exc:
        log.debug("app metrics unparsable: %s", exc)
    return out


def _find_process(name: str) -> psutil.Process | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info.get("name") == name:
            return proc
    return None


class NodeInstruments:
    """The node agent's metrics (the last sample is read by observable gauges)."""

    GAUGES: ClassVar[dict[str, tuple[str, str]]] = {
        "cpu_utilisation": ("edgelab.agent.cpu_utilisation", "1"),
        "memory_utilisation": ("edgelab.agent.memory_utilisation", "1"),
        "disk_utilisation": ("edgelab.agent.disk_utilisation", "1"),
        "network_receive_bytes_rate": ("edgelab.agent.network_receive_rate", "By/s"),
        "network_transmit_bytes_rate": ("edgelab.agent.network_transmit_rate", "By/s"),
    }

    def __init__(self, meter: Meter, agent: str) -> None:
        self.agent = agent
        self.last: dict[str, float] = {}
        self.heartbeat = meter.create_gauge("edgelab.agent.heartbeat_timestamp", unit="s",
                                            description="Unix time of the agent's last heartbeat")
        self.prediction = meter.create_gauge("edgelab.agent.prediction",
                                             description="The agent's latest prediction of its target")
        self.instances = meter.create_gauge("edgelab.agent.instances",
                                            description="Consumer instances active on this node")
        for key, (name, unit) in self.GAUGES.items():
            meter.create_observable_gauge(name, callbacks=[self._observe(key)], unit=unit)

    def _observe(self, key: str) -> Any:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            if key in self.last:
                yield Observation(self.last[key], {"agent": self.agent})
        return callback

    def record(self, sample: Sample) -> None:
        self.last = sample.values
