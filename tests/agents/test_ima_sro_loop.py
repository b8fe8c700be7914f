"""The IMA -> SRO loop end to end, with real components only: a Prometheus (Debian's
binary) holding promtool-backfilled history and scraping a live target this test
serves (so current values move when the test changes them), the IMA and the SRO
apps under uvicorn on loopback, a Tansu broker carrying the IMA's records and the
SRO's forecasts, and, as no Kubernetes runs here, a loopback HTTP server answering
the apps/v1 scale subresource for the IMA's kubernetes actuator.

The SRO profiles the slice (it sends the KPI to the IMA, which selects the driving
metrics), the IMA streams them with the KPI (the slice's kpi_query), the SRO
forecasts from the stream with `kpi_in_stream: true`; when the live driver rises the
forecast crosses the SLA, the SRO decides an upgrade and the IMA scales the
Deployment and records the flavor change."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, TextIO

import numpy as np
import pytest
from support.http_helpers import call, until
from support.prometheus import backfill, needs_prometheus, running_prometheus
from support.tansu import free_port, running_broker

SAMPLES = 1200  # 20 minutes of history at 1 s, ending two minutes ago
METRICS_TOPIC, FORECASTS_TOPIC = "edgelab.metrics.selected", "edgelab.forecasts"
LABELS = 'instance="nuc1",job="live"'
NOISE = ["lab_m2", "lab_m3", "lab_m4", "lab_m5"]
UPPER = 130.0

pytestmark = needs_prometheus


def kpi(m0: float, m1: float) -> float:
    """The service's latency (ms) as a function of its two driving metrics."""
    return 40.0 + 80.0 * m0 + 40.0 * m1



class Live(http.server.BaseHTTPRequestHandler):
    """The scrape target: the current values of the drivers, the noise and the KPI."""

    values: ClassVar[dict[str, float]] = {"lab_m0": 0.2, "lab_m1": 0.5, **{n: 0.5 for n in NOISE}}
    rng = np.random.default_rng(3)

    def do_GET(self) -> None:
        current = {name: value + float(Live.rng.normal(0, 0.01)) for name, value in Live.values.items()}
        lines = ["# TYPE %s gauge\n%s{%s} %.6g\n" % (name, name, LABELS, value) for name, value in current.items()]
        lines.append("# TYPE lab_kpi gauge\nlab_kpi{%s} %.6g\n" % (LABELS, kpi(current["lab_m0"], current["lab_m1"])))
        raw = "".join(lines).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


class Answers(http.server.BaseHTTPRequestHandler):
    """url_to_answer: keeps the SRO's reports."""

    reports: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        Answers.reports.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class ScaleApi(http.server.BaseHTTPRequestHandler):
    """PATCH apps/v1 namespaces/NS/deployments/NAME/scale: records and echoes spec.replicas."""

    patches: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ScaleApi.patches.append((self.path, body))
        parts = self.path.split("/")
        raw = json.dumps({"kind": "Scale", "apiVersion": "autoscaling/v1",
                          "metadata": {"name": parts[7], "namespace": parts[5]},
                          "spec": {"replicas": body["spec"]["replicas"]}, "status": {"replicas": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, "127.0.0.1:%d" % server.server_port


def serve(app: Any) -> tuple[Any, threading.Thread, str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    until(lambda: server.started or not thread.is_alive(), 30, "uvicorn")
    assert thread.is_alive()
    return server, thread, "http://127.0.0.1:%d" % port



def history(tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """Backfill SAMPLES seconds of the drivers, the noise and the KPI; (times, KPI)."""
    rng = np.random.default_rng(11)
    end = float(int(time.time()) - 120)
    times = end - SAMPLES + 1 + np.arange(SAMPLES)
    m0 = np.clip(0.5 + np.cumsum(rng.normal(0, 0.03, SAMPLES)), 0.0, 1.0)  # a slow random walk
    m1 = 0.5 + 0.3 * np.sin(times / 60.0)
    series = {"lab_m0": m0, "lab_m1": m1, **{n: rng.uniform(0, 1, SAMPLES) for n in NOISE}}
    y = np.array([float("%.6g" % kpi(a, b)) for a, b in zip(m0, m1, strict=True)])

    def write(stream: TextIO) -> None:
        for name, values in {**series, "lab_kpi": y}.items():
            stream.write("# TYPE %s gauge\n" % name)
            stream.writelines("%s{%s} %.6g %d\n" % (name, LABELS, v, t) for v, t in zip(values, times, strict=True))

    backfill(tmp, write)
    return times, y


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[dict[str, Any]]:
    times, y = history(tmp_path)
    live, target = http_server(Live)
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
              "scrape_configs": [{"job_name": "live", "honor_labels": True, "static_configs": [{"targets": [target]}]}]}
    try:
        with running_prometheus(tmp_path, config=config) as server:
            yield {"url": server.url, "times": times, "y": y, "tmp": tmp_path}
    finally:
        live.shutdown()


@pytest.fixture
def broker() -> Iterator[str]:
    with running_broker(METRICS_TOPIC, FORECASTS_TOPIC) as address:
        yield address


def kubeconfig(path: Path, address: str) -> str:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "http://" + address}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
    return str(path)


def forecasts(broker: str) -> list[dict[str, Any]]:
    """Every forecast on the topic up to its end now (more keep arriving)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
    try:
        partition = TopicPartition(FORECASTS_TOPIC, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        end = consumer.end_offsets([partition])[partition]
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while consumer.position(partition) < end:
            assert time.monotonic() < deadline, "the forecasts topic was not read to offset %d" % end
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(json.loads(r.value) for r in records if r.offset < end)
        return out
    finally:
        consumer.close()


def test_live_kpi_rise_is_forecast_and_scales_the_slice(prometheus: dict[str, Any], broker: str) -> None:
    from edgelab.ima.config import build_config
    from edgelab.ima.service import create_app as ima_app
    from edgelab.prometheus import PrometheusClient
    from edgelab.sro.config import parse_config
    from edgelab.sro.service import create_app as sro_app

    started = time.monotonic()
    Live.values["lab_m0"] = 0.2
    ScaleApi.patches.clear()
    Answers.reports.clear()
    tmp = prometheus["tmp"]
    scale, scale_address = http_server(ScaleApi)
    kube = kubeconfig(tmp / "kubeconfig", scale_address)
    ima_cfg = build_config({
        "listen": "127.0.0.1:8010",
        "prometheus": {"url": prometheus["url"], "query": '{job="live",__name__=~"lab_m.+"}'},
        "kafka": {"bootstrap_servers": [broker], "topic": METRICS_TOPIC},
        "state_dir": str(tmp / "ima"),
        "slices": {"s1": {"kpi_query": 'lab_kpi{job="live"}'}},
        "flavors": {"small": {"actuator": "kubernetes", "deployment": "detector", "replicas": 1,
                              "namespace": "edge", "kubeconfig": kube},
                    "large": {"actuator": "kubernetes", "deployment": "detector", "replicas": 3,
                              "namespace": "edge", "kubeconfig": kube}},
    }, env={})
    client = PrometheusClient(prometheus["url"], retries=0, timeout=5)
    servers = []
    try:
        ima, ima_thread, ima_url = serve(ima_app(lambda: client, config=ima_cfg,
                                                 callback=lambda _url, _text: None))
        servers.append((ima, ima_thread))
        sro_cfg = parse_config({
            "listen": "127.0.0.1:8011", "ima_url": ima_url, "prometheus": {"url": prometheus["url"]},
            "kafka": {"bootstrap_servers": [broker], "metrics_topic": METRICS_TOPIC,
                      "forecasts_topic": FORECASTS_TOPIC},
            "state_dir": str(tmp / "sro"), "horizon": "2s", "kpi_in_stream": True,
            "orchestration": {"s1": {"upper": UPPER, "lower": 10.0, "consecutive": 2, "cooldown": "1h",
                                     "flavors": ["small", "large"]}}})
        sro, sro_thread, sro_url = serve(sro_app(sro_cfg))
        servers.append((sro, sro_thread))

        # Profile through the SRO: it sends the KPI to the IMA, which selects the two drivers.
        answers, answers_address = http_server(Answers)
        y_csv = "timestamp,latency_ms\n" + "".join(
            "%d,%.6g\n" % (t, v) for t, v in zip(prometheus["times"], prometheus["y"], strict=True))
        boundary = "edgelab-loop"
        body = (b'--%s\r\nContent-Disposition: form-data; name="file"; filename="y.csv"\r\n'
                b"Content-Type: text/csv\r\n\r\n%s\r\n--%s--\r\n"
                % (boundary.encode(), y_csv.encode(), boundary.encode()))
        status, job = call("POST", sro_url + "/slice/s1/flavor/small/profile?url_to_answer=http://%s/answer"
                           "&sla_metric_name=latency_ms&k=2" % answers_address,
                           body, "multipart/form-data; boundary=%s" % boundary)
        assert status == 202, job
        drivers = ['lab_m0{%s}' % LABELS, 'lab_m1{%s}' % LABELS]
        assert sorted(job["selected"]) == drivers
        until(lambda: call("GET", sro_url + "/slice/s1/flavor/small/profile")[1]["status"] != "running", 90,
              "the SRO's training")
        status, done = call("GET", sro_url + "/slice/s1/flavor/small/profile")
        assert done["status"] == "done", done
        assert done["report"]["kpi_inputs"] is True
        until(lambda: Answers.reports, 10, "the report at url_to_answer")
        assert Answers.reports[0]["status"] == "done"
        answers.shutdown()

        # The IMA streams the selection with the KPI, under the name the SRO's model uses.
        status, stream = call("POST", ima_url + "/slice/s1/stream?sliceFlavor=small")
        assert status == 200 and stream["kpi"] == "latency_ms" and stream["interval_seconds"] == 1.0, stream
        status, forecast = call("POST", sro_url + "/slice/s1/start_sla_forecast")
        assert status == 200 and forecast["running"], forecast
        status, policy = call("POST", sro_url + "/slice/s1/start_orchestration")
        assert status == 200 and policy["flavor"] == "small", policy

        # Quiet load: forecasts near the KPI now (about 76 ms), no decision.
        until(lambda: call("GET", sro_url + "/slice/s1/forecast")[1]["forecasts"] >= 3, 60, "the first forecasts")
        status, state = call("GET", sro_url + "/slice/s1/forecast")
        assert state["problem"] is None and state["error"] is None, state
        quiet = forecasts(broker)
        assert quiet and all(f["slice"] == "s1" and f["flavor"] == "small" for f in quiet)
        assert all(f["for_timestamp"] - f["timestamp"] == pytest.approx(2.0) for f in quiet)
        assert all(60 < f["forecast"] < 95 for f in quiet), [f["forecast"] for f in quiet]
        assert call("GET", sro_url + "/slice/s1/decisions")[1]["decisions"] == []
        assert ScaleApi.patches == []

        # The live driver rises: the KPI goes to about 180 ms; the forecasts follow it
        # past `upper`, and two in a row make the SRO upgrade the slice through the IMA.
        Live.values["lab_m0"] = 1.5
        until(lambda: call("GET", sro_url + "/slice/s1/decisions")[1]["decisions"], 60, "a decision")
        decision = call("GET", sro_url + "/slice/s1/decisions")[1]["decisions"][0]
        assert decision["action"] == "upgrade" and decision["ok"] is True, decision
        assert decision["from_flavor"] == "small" and decision["to_flavor"] == "large"
        assert decision["crossed"] == "upper" and decision["forecast"] > UPPER
        high = [f for f in forecasts(broker) if f["forecast"] > UPPER]
        assert len(high) >= 2

        # The IMA applied the flavor through the Kubernetes scale subresource and recorded it.
        assert ScaleApi.patches == [("/apis/apps/v1/namespaces/edge/deployments/detector/scale",
                                     {"spec": {"replicas": 3}})]
        status, actions = call("GET", ima_url + "/elasticity/slice/s1")
        assert status == 200
        assert [(a["flavor"], a["actuator"], a["status"]) for a in actions["actions"]] == [
            ("large", "kubernetes", "applied")]
        assert call("GET", sro_url + "/slice/s1/forecast")[1]["flavor"] == "large"
        assert time.monotonic() - started < 180
    finally:
        for server, thread in reversed(servers):
            server.should_exit = True
            thread.join(30)
        scale.shutdown()
