"""TELEMETRY_ENDPOINT (the seed's OTLP push): a node agent configured from its file and
that environment variable pushes its metrics over OTLP/gRPC. The receiver is a real
gRPC server on loopback implementing the OTLP MetricsService (opentelemetry-proto's
generated service), which is what an OpenTelemetry Collector's otlp receiver speaks."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from edgelab.config import load_node_config
from edgelab.models import LinearModel
from edgelab.node_agent import NodeAgent
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (the OTLP service's method name)
        with self.lock:
            self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def received(self) -> tuple[set[str], list[dict[str, str]]]:
        names: set[str] = set()
        resources: list[dict[str, str]] = []
        with self.lock:
            for request in self.requests:
                for rm in request.resource_metrics:
                    resources.append({a.key: a.value.string_value for a in rm.resource.attributes})
                    for sm in rm.scope_metrics:
                        names.update(m.name for m in sm.metrics)
        return names, resources


def test_node_agent_pushes_otlp_to_telemetry_endpoint(tmp_path: Path) -> None:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    (tmp_path / "pw").write_text("unused-here\n")
    (tmp_path / "node-agent.yml").write_text(
        f"node_name: node-otlp\npassword_file: {tmp_path / 'pw'}\ncluster_name: cluster-otlp\n"
        "xmpp_domain: edgelab.test\nxmpp_host: 127.0.0.1\nca_file: /etc/ssl/certs/ca-certificates.crt\ninterval: 0.3\n")
    cfg = load_node_config(str(tmp_path / "node-agent.yml"),
                           env={"TELEMETRY_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert cfg.telemetry_endpoint == f"http://127.0.0.1:{port}"
    model = LinearModel("const.json", {"format": "edgelab.linear/1", "features": ["cpu_utilisation"], "window": 1,
                                       "coef": [0.0], "intercept": 0.42})
    try:
        agent = NodeAgent(cfg, model=model, serve_metrics=False)  # not connected: XMPP is not under test

        async def ticks() -> None:
            for _ in range(3):
                await agent.tick()
                await asyncio.sleep(0.1)

        asyncio.run(ticks())
        deadline = time.monotonic() + 15
        wanted = {"edgelab.agent.cpu_utilisation", "edgelab.agent.memory_utilisation", "edgelab.agent.prediction"}
        names: set[str] = set()
        resources: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            names, resources = receiver.received()
            if wanted <= names:
                break
            time.sleep(0.1)
        assert wanted <= names, f"pushed so far: {sorted(names)}"
        expected = {"service.name": "edgelab-node-agent", "service.instance.id": "node-otlp"}
        assert expected.items() <= resources[0].items(), resources[0]
        agent.telemetry.shutdown()
    finally:
        server.stop(grace=None)
