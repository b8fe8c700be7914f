"""The IMA service (edgelab.ima.service run by uvicorn on loopback) against real
components: a Prometheus (Debian's binary) holding synthetic history up to a minute
ago, a Kafka wire-protocol broker (Tansu) whose topic is read back, an ejabberd on
which test clients play the cluster agent and the node agents, and, as no Kubernetes
runs here, a loopback HTTP server that answers the apps/v1 scale subresource for the
real kubernetes client.

Covered: currentTimestamp profiling (KPI from Prometheus, its own series never a
candidate), selections persisted and reloaded by a restarted service, streaming of the
selected series' live values to Kafka (start, stop, restart after a restart), each
actuator with its record, the upload limit while reading, and every bad input."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, TextIO

import numpy as np
import pytest
import slixmpp
from edgelab import messages
from edgelab.cli import write_atomic
from edgelab.ima.config import build_config
from edgelab.learn import synthetic
from edgelab.xmpp import tls_context
from support.agenttools import Xmpp
from support.http_helpers import call as request
from support.http_helpers import until
from support.prometheus import backfill, needs_prometheus, running_prometheus
from support.tansu import running_broker

SAMPLES = 3000  # at 1 s, ending ~1 minute ago
TOPIC = "edgelab.metrics.selected"

pytestmark = needs_prometheus


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])



# ---------------------------------------------------------------- Prometheus
@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("ima-service-prometheus")
    s = synthetic.service(SAMPLES, 10, step=1.0, informative=3, noisy_copies=0, seed=5, extras=False)
    end = float(int(time.time()) - 60)
    times = end - SAMPLES + 1 + np.arange(SAMPLES)

    def write(stream: TextIO) -> None:
        for j, name in enumerate(s.names):
            metric = "lab_" + name
            stream.write("# TYPE %s gauge\n" % metric)
            stream.writelines('%s{instance="nuc1"} %.6g %d\n' % (metric, s.x[i, j], times[i]) for i in range(SAMPLES))
        stream.write("# TYPE lab_kpi gauge\n")
        stream.writelines('lab_kpi{slice="s1"} %.6g %d\n' % (s.y[i], times[i]) for i in range(SAMPLES))

    with running_prometheus(tmp, data=backfill(tmp, write)) as server:
        last = {'lab_%s{instance="nuc1"}' % n: float("%.6g" % s.x[-1, j]) for j, n in enumerate(s.names)}
        yield {"url": server.url, "end": end, "last": last, "times": times, "y": s.y,
               "informative": sorted('lab_%s{instance="nuc1"}' % n for n in s.informative)}


# ---------------------------------------------------------------- Kafka
@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with running_broker(TOPIC) as address:
        yield address


def read_topic(address: str, count: int, timeout_ms: int = 20000) -> list[tuple[bytes, dict[str, Any]]]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(TOPIC, bootstrap_servers=address, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=timeout_ms)
    try:
        out = []
        for record in consumer:
            out.append((record.key, json.loads(record.value)))
            if len(out) == count:
                break
        return out
    finally:
        consumer.close()


# ---------------------------------------------------------------- XMPP peers
class Peer:
    """A test XMPP client in a thread of its own: records every chat body it gets and,
    for a Command, answers a Result (ok with the command's instances) when `answer`."""

    def __init__(self, xmpp: Xmpp, name: str, *, answer: bool) -> None:
        self.jid = "%s@%s" % (name, xmpp.domain)
        self.password = xmpp.register(name)
        self.xmpp = xmpp
        self.answer = answer
        self.bodies: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "peer %s did not log in" % self.jid

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        client = slixmpp.ClientXMPP(self.jid + "/test", self.password, ssl_context=tls_context(self.xmpp.ca_file))
        client.enable_direct_tls = False

        def started(_event: Any) -> None:
            client.send_presence()
            self.ready.set()

        client.add_event_handler("session_start", started)
        client.add_event_handler("message", lambda msg: self._message(client, msg))
        client.connect("127.0.0.1", self.xmpp.port)
        self.client = client
        self.loop.run_forever()

    def _message(self, client: slixmpp.ClientXMPP, msg: Any) -> None:
        body = str(msg["body"])
        self.bodies.append(body)
        if not self.answer:
            return
        with contextlib.suppress(messages.DecodeError):
            cmd = messages.decode(body)
            if isinstance(cmd, messages.Command):
                result = messages.Result(agent=self.jid.partition("@")[0], ts=time.time(), seq=1, id=cmd.id, ok=True,
                                         instances=cmd.instances, error="")
                client.send_message(mto=msg["from"].bare, mbody=messages.encode(result), mtype="chat")

    async def _shutdown(self) -> None:
        self.client.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# ---------------------------------------------------------------- Kubernetes API stand-in
class ScaleApi(http.server.BaseHTTPRequestHandler):
    """apps/v1 .../deployments/NAME/scale: PATCH sets spec.replicas of a known
    deployment (404 Status for another)."""

    patches: ClassVar[list[tuple[str, str, dict[str, Any]]]] = []

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ScaleApi.patches.append((self.path, self.headers["Content-Type"], body))
        parts = self.path.split("/")  # /apis/apps/v1/namespaces/NS/deployments/NAME/scale
        namespace, name = parts[5], parts[7]
        if name != "detector":
            answer = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                      "message": 'deployments.apps "%s" not found' % name}
            self._send(404, answer)
            return
        self._send(200, {"kind": "Scale", "apiVersion": "autoscaling/v1",
                         "metadata": {"name": name, "namespace": namespace},
                         "spec": {"replicas": body["spec"]["replicas"]}, "status": {"replicas": 1}})

    def _send(self, code: int, answer: dict[str, Any]) -> None:
        raw = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


# ---------------------------------------------------------------- the service

def multipart(fields: dict[str, str], files: dict[str, bytes] | None = None) -> tuple[bytes, str]:
    boundary = "edgelab-ima-test"
    parts = [b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
             % (boundary.encode(), name.encode(), value.encode()) for name, value in fields.items()]
    parts += [b'--%s\r\nContent-Disposition: form-data; name="%s"; filename="y.csv"\r\n'
              b"Content-Type: text/csv\r\n\r\n%s\r\n" % (boundary.encode(), name.encode(), data)
              for name, data in (files or {}).items()]
    return b"".join(parts) + b"--%s--\r\n" % boundary.encode(), "multipart/form-data; boundary=%s" % boundary


@contextlib.contextmanager
def running(settings: dict[str, Any], **stream_options: Any) -> Iterator[str]:
    import uvicorn
    from edgelab.ima.service import create_app
    from edgelab.prometheus import PrometheusClient

    cfg = build_config(settings, env={})
    client = PrometheusClient(cfg.prometheus.url, retries=0, timeout=2)
    options = {"producer_options": {"request_timeout_ms": 3000, "max_block_ms": 5000}, **stream_options}
    app = create_app(lambda: client, config=cfg, callback=lambda _url, _text: None, stream_options=options)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    until(lambda: server.started or not thread.is_alive(), 30, "uvicorn")
    assert thread.is_alive()
    try:
        yield "http://127.0.0.1:%d" % port
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ScaleApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = tmp_path_factory.mktemp("kube") / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "http://127.0.0.1:%d" % server.server_port}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
    try:
        yield str(path)
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def settings(history: dict[str, Any], broker: str, xmpp: Xmpp, kube: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("ima-service")
    password = xmpp.register("ima-test")
    (tmp / "xmpp-password").write_text(password + "\n")
    cluster = Peer(xmpp, "cluster-ima", answer=True)
    nodes = [Peer(xmpp, "node-ima-%d" % i, answer=False) for i in range(2)]
    cfg = {
        "listen": "127.0.0.1:8010",
        "prometheus": {"url": history["url"], "query": '{__name__=~"lab_.+"}'},
        "kafka": {"bootstrap_servers": [broker], "topic": TOPIC},
        "xmpp": {"jid": "ima-test@%s" % xmpp.domain, "password_file": str(tmp / "xmpp-password"),
                 "server": "127.0.0.1", "port": xmpp.port, "ca_file": xmpp.ca_file,
                 "cluster_agent_jid": cluster.jid},
        "state_dir": str(tmp / "state"),
        "max_upload_bytes": 200_000,
        "profile_window": "40m",
        "profile_step": "2s",
        "slices": {"s1": {"kpi_query": 'lab_kpi{slice="s1"}', "hosts": ["node-ima-0", "node-ima-1"]}},
        "flavors": {
            "small": {"actuator": "consumers", "instances": 1, "timeout": 10},
            "large": {"actuator": "consumers", "instances": 4, "timeout": 10},
            "slow-link": {"actuator": "bandwidth", "rate_mbit": 10, "timeout": 1},
            "k8s": {"actuator": "kubernetes", "deployment": "detector", "replicas": 3, "namespace": "edge",
                    "kubeconfig": kube},
            "k8s-missing": {"actuator": "kubernetes", "deployment": "absent", "replicas": 1, "kubeconfig": kube},
        },
    }
    try:
        yield {"cfg": cfg, "cluster": cluster, "nodes": nodes, "state": tmp / "state"}
    finally:
        for peer in (cluster, *nodes):
            peer.close()


def test_profile_at_current_timestamp_stream_and_restart(history: dict[str, Any], broker: str,
                                                         settings: dict[str, Any]) -> None:
    form = {"K": "3", "sliceFlavor": "small", "callbackURL": "http://127.0.0.1:9/answer",
            "currentTimestamp": "%d" % history["end"]}
    with running(settings["cfg"]) as url:
        status, text = request("POST", url + "/ymetrics/s1", *multipart(form))
        assert status == 201, text
        header = text.splitlines()[0].split(",")
        # The KPI came from lab_kpi; the selection holds the 3 driving series and never the KPI itself.
        assert header[0] == "timestamp" and header[1] == '"lab_kpi{slice=""s1""}"'
        status, kept = request("GET", url + "/ymetrics/s1?sliceFlavor=small")
        assert status == 200 and sorted(kept["metrics"]) == history["informative"], kept
        assert kept["step_seconds"] == 2.0 and kept["end"] - kept["start"] >= 40 * 60 - 2
        assert kept["source"] == "prometheus"
        # A new selection streams at once: records of its live values, keyed by the slice.
        status, streaming = request("GET", url + "/slice/s1/stream")
        assert status == 200 and streaming["streaming"] and streaming["interval_seconds"] == 2.0
        assert streaming["kpi"] == 'lab_kpi{slice="s1"}'
        records = read_topic(broker, 2)
        assert [key for key, _ in records] == [b"s1", b"s1"]
        first = records[0][1]
        assert first["slice"] == "s1" and first["flavor"] == "small"
        # The KPI is a Prometheus series here: records carry it under its name (the PromQL expression).
        assert first["kpi"] == 'lab_kpi{slice="s1"}'
        assert first["metrics"] == {**{m: history["last"][m] for m in kept["metrics"]},
                                    'lab_kpi{slice="s1"}': float("%.6g" % history["y"][-1])}
        assert abs(first["timestamp"] - time.time()) < 30
        assert records[1][1]["timestamp"] - first["timestamp"] == pytest.approx(2.0, abs=0.5)
        status, metrics_text = request("GET", url + "/metrics")
        assert 'edgelab_ima_stream_records_total{outcome="sent"}' in metrics_text
        sent = float(metrics_text.split('edgelab_ima_stream_records_total{outcome="sent"} ')[1].split()[0])
        assert sent >= 2
        status, answer = request("DELETE", url + "/slice/s1/stream")
        assert status == 200 and answer["streaming"] is False
        status, answer = request("DELETE", url + "/slice/s1/stream")
        assert status == 404 and "not streaming" in answer["detail"]
        status, answer = request("POST", url + "/slice/s1/stream?sliceFlavor=small")
        assert status == 200 and answer["sliceFlavor"] == "small"
    stored = json.loads((settings["state"] / "selections" / "s1" / "small.json").read_text())
    assert sorted(stored["metrics"]) == history["informative"]
    # A restarted service has the selection and streams the slice again.
    before = len(read_topic(broker, 10_000, timeout_ms=3000))
    with running(settings["cfg"]) as url:
        status, kept_again = request("GET", url + "/ymetrics/s1")
        assert status == 200 and kept_again["flavors"]["small"] == kept
        status, streaming = request("GET", url + "/slice/s1/stream")
        assert streaming["streaming"] and streaming["sliceFlavor"] == "small"
        until(lambda: len(read_topic(broker, before + 1, timeout_ms=3000)) > before, 30, "a record after restart")
        request("DELETE", url + "/slice/s1/stream")
    assert json.loads((settings["state"] / "streams.json").read_text()) == {}


def test_elasticity_actuators_are_applied_and_recorded(history: dict[str, Any], settings: dict[str, Any]) -> None:
    cluster: Peer = settings["cluster"]
    nodes: list[Peer] = settings["nodes"]
    with running(settings["cfg"]) as url:
        # Selections for two flavors of slice s2; it streams the one of "small".
        for flavor, k in (("large", 2), ("small", 3)):
            form = {"K": str(k), "sliceFlavor": flavor, "callbackURL": "http://127.0.0.1:9/answer",
                    "currentTimestamp": "%d" % history["end"], "YField": 'lab_kpi{slice="s1"}'}
            assert request("POST", url + "/ymetrics/s2", *multipart(form))[0] == 201
        assert request("GET", url + "/slice/s2/stream")[1]["sliceFlavor"] == "small"
        # consumers: the cluster agent gets the scale command from the IMA's account and answers.
        until(lambda: request("POST", url + "/elasticity/slice/s1/flavor/large")[1].get("status") == "applied",
              30, "an applied consumers flavor")
        commands = [messages.decode(b) for b in cluster.bodies]
        assert commands and all(isinstance(c, messages.Command) for c in commands)
        last = commands[-1]
        assert isinstance(last, messages.Command)
        assert (last.action, last.unit, last.instances, last.agent) == ("scale", "edgelab-consumer@", 4, "ima-test")
        # A change to a flavor with a selection of its own switches the slice's stream to it.
        status, record = request("POST", url + "/elasticity/slice/s2/flavor/large")
        assert status == 200 and record["status"] == "applied", record
        streaming = request("GET", url + "/slice/s2/stream")[1]
        assert streaming["sliceFlavor"] == "large" and len(streaming["metrics"]) == 2
        request("DELETE", url + "/slice/s2/stream")
        # bandwidth: one message per host of the slice; nobody answers yet, so "sent".
        status, record = request("POST", url + "/elasticity/slice/s1/flavor/slow-link")
        assert status == 200 and record["status"] == "sent" and record["actuator"] == "bandwidth", record
        until(lambda: all(n.bodies for n in nodes), 10, "bandwidth messages at both hosts")
        sent = [json.loads(n.bodies[-1]) for n in nodes]
        assert {(m["type"], m["slice"], m["flavor"], m["rate_mbit"]) for m in sent} == {
            ("bandwidth", "s1", "slow-link", 10.0)}
        assert sent[0]["schema"] == messages.SCHEMA and sent[0]["id"] == sent[1]["id"]
        # kubernetes: the Deployment's scale subresource is patched.
        ScaleApi.patches.clear()
        status, record = request("POST", url + "/elasticity/slice/s1/flavor/k8s")
        assert status == 200 and record["status"] == "applied", record
        assert ScaleApi.patches[0][0] == "/apis/apps/v1/namespaces/edge/deployments/detector/scale"
        assert ScaleApi.patches[0][2] == {"spec": {"replicas": 3}}
        status, record = request("POST", url + "/elasticity/slice/s1/flavor/k8s-missing")
        assert status == 502 and record["status"] == "failed" and "Not Found" in record["result"], record
        # Every action is recorded, in order, and kept across a restart.
        status, recorded = request("GET", url + "/elasticity/slice/s1")
        assert status == 200
        assert [a["flavor"] for a in recorded["actions"]][-3:] == ["slow-link", "k8s", "k8s-missing"]
        assert set(recorded["actions"][-1]) == {"time", "slice", "flavor", "actuator", "status", "result",
                                                "targets", "seconds"}
    with running(settings["cfg"]) as url:
        status, again = request("GET", url + "/elasticity/slice/s1")
        assert status == 200 and again == recorded


@pytest.mark.parametrize(("method", "path", "form", "status", "expected"), [
    ("POST", "/elasticity/slice/s1/flavor/huge", None, 404, "unknown flavor 'huge' (configured: k8s"),
    ("POST", "/elasticity/slice/s2/flavor/slow-link", None, 409, "configure slices.s2.hosts"),
    ("POST", "/elasticity/slice/s%201/flavor/small", None, 400, "sliceId 's 1' must be"),
    ("GET", "/elasticity/slice/never", None, 404, "no flavor change recorded for slice 'never'"),
    ("GET", "/ymetrics/never", None, 404, "unknown slice 'never'"),
    ("POST", "/slice/never/stream", None, 404, "unknown slice 'never'"),
    ("DELETE", "/slice/never/stream", None, 404, "not streaming"),
    ("POST", "/ymetrics/s1", {"currentTimestamp": "yesterday"}, 400, "currentTimestamp: timestamp 'yesterday'"),
    ("POST", "/ymetrics/s1", {"currentTimestamp": "2026-01-01T00:00:00"}, 400, "has no time zone"),
    ("POST", "/ymetrics/s9", {"currentTimestamp": "NOW"}, 400, "configure slices.s9.kpi_query"),
    ("POST", "/ymetrics/s1", {"currentTimestamp": "NOW", "YField": "rate(("}, 400, "KPI query 'rate(('"),
    ("POST", "/ymetrics/s1", {"currentTimestamp": "NOW", "YField": '{__name__=~"lab_.+"}'}, 400,
     "returns 11 series"),
    ("POST", "/ymetrics/s1", {"currentTimestamp": "1600000000"}, 422, "KPI: Prometheus has no data"),
    ("POST", "/ymetrics/s1", {"currentTimestamp": "NOW", "YFile": "timestamp,kpi\n1,2\n"}, 400,
     "either YFile or currentTimestamp"),
    ("POST", "/ymetrics/s1", {"K": "0", "currentTimestamp": "NOW"}, 400, "K must be a whole number > 0"),
    ("POST", "/ymetrics/s1", {"sliceFlavor": "../x", "currentTimestamp": "NOW"}, 400, "sliceFlavor '../x' must"),
    ("POST", "/ymetrics/s1", {"YFile": "timestamp,kpi\n" + "1767225600,1\n" * 16_000}, 413,
     "YFile is larger than 200000 bytes"),
    ("POST", "/ymetrics/s1", {"YFile": "timestamp,kpi\n" + "1767225600,1\n" * 30_000}, 413,
     "the request is larger than"),
])
def test_bad_requests(method: str, path: str, form: dict[str, str] | None, status: int, expected: str,
                      history: dict[str, Any], settings: dict[str, Any]) -> None:
    with running(settings["cfg"]) as url:
        body, kind = None, ""
        if form is not None:
            fields = {"K": "3", "sliceFlavor": "bad", "callbackURL": "http://127.0.0.1:9/answer", **form}
            files = {"YFile": fields.pop("YFile").encode()} if "YFile" in fields else None
            if fields.get("currentTimestamp") == "NOW":
                fields["currentTimestamp"] = "%d" % history["end"]
            body, kind = multipart(fields, files)
        code, answer = request(method, url + path, body, kind)
        assert code == status, answer
        assert expected in answer["detail"], answer
        assert request("GET", url + "/ymetrics/s1?sliceFlavor=bad")[0] == 404  # nothing kept
    assert not (settings["state"] / "selections" / "s1" / "bad.json").exists()


def test_openapi_lists_every_endpoint(settings: dict[str, Any]) -> None:
    with running(settings["cfg"]) as url:
        status, spec = request("GET", url + "/openapi.json")
        assert status == 200
        assert {"/ymetrics/{sliceId}", "/slice/{sliceId}/stream", "/elasticity/slice/{sliceId}/flavor/{flavorId}",
                "/elasticity/slice/{sliceId}"} <= set(spec["paths"])
        status, page = request("GET", url + "/docs")
        assert status == 200 and "swagger" in page.lower()


def metric(url: str, name: str, label: str) -> float:
    status, text = request("GET", url + "/metrics")
    assert status == 200
    line = [x for x in text.splitlines() if x.startswith("%s{%s}" % (name, label))]
    return float(line[0].split()[-1]) if line else 0.0


def test_stream_counts_failures_bounds_its_queue_and_reconnects(history: dict[str, Any],
                                                                settings: dict[str, Any],
                                                                tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "selections" / "s7").mkdir(parents=True)
    metrics = history["informative"]
    write_atomic(str(state / "selections" / "s7" / "fast.json"), json.dumps({
        "sliceId": "s7", "sliceFlavor": "fast", "metrics": metrics, "step_seconds": 0.2, "created": 1.0}))
    write_atomic(str(state / "streams.json"), json.dumps({"s7": "fast"}))
    port = free_port()  # no broker there yet
    cfg = {**settings["cfg"], "state_dir": str(state), "kafka": {"bootstrap_servers": ["127.0.0.1:%d" % port],
                                                                  "topic": TOPIC}}
    # kafka-python 3's bootstrap of a new producer waits 30 s by default before it fails.
    fast = {"request_timeout_ms": 3000, "max_block_ms": 5000, "bootstrap_timeout_ms": 2000,
            "reconnect_backoff_max_ms": 500}
    with running(cfg, queue_size=5, backoff_cap=1.0, producer_options=fast) as url:
        until(lambda: metric(url, "edgelab_ima_stream_failures_total", 'stage="connect"') >= 2, 60,
              "failed Kafka connections counted")
        until(lambda: metric(url, "edgelab_ima_stream_records_total", 'outcome="dropped"') >= 3, 30,
              "records dropped from the full queue")
        assert metric(url, "edgelab_ima_stream_records_total", 'outcome="sent"') == 0
        with running_broker(TOPIC, port=port) as address:
            until(lambda: metric(url, "edgelab_ima_stream_records_total", 'outcome="sent"') >= 5, 60,
                  "records sent once the broker is there")
            records = read_topic(address, 5)
            assert {key for key, _ in records} == {b"s7"}
            assert all(set(value["metrics"]) == set(metrics) for _, value in records)
    # A Prometheus that does not answer: each failed query counted, the service still up.
    dead = {**cfg, "prometheus": {"url": "http://127.0.0.1:%d" % free_port()}}
    with running(dead, backoff_cap=1.0) as url:
        until(lambda: metric(url, "edgelab_ima_stream_failures_total", 'stage="prometheus"') >= 3, 30,
              "failed Prometheus queries counted")
        assert request("GET", url + "/slice/s7/stream")[1]["streaming"] is True


@pytest.mark.parametrize("key", ["password_file", "ca_file"])
def test_serve_names_an_unreadable_prometheus_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   key: str) -> None:
    from edgelab.ima.cli import main

    missing = tmp_path / ("absent-" + key)
    prometheus = {"url": "https://127.0.0.1:9", key: str(missing)}
    if key == "password_file":
        prometheus["username"] = "edgelab"
    config = tmp_path / "ima.yml"
    config.write_text(json.dumps({"prometheus": prometheus, "state_dir": str(tmp_path / "state")}))
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["edgelab-ima: config error: cannot read prometheus.%s %s: No such file or directory"
                   % (key, missing)]


def test_stream_record_carries_the_kpi_or_null(history: dict[str, Any]) -> None:
    from edgelab.ima.stream import Kpi, Streamer
    from edgelab.prometheus import PrometheusClient
    from prometheus_client import CollectorRegistry

    client = PrometheusClient(history["url"], retries=0, timeout=5)
    registry = CollectorRegistry()
    streamer = Streamer(lambda: client, None, TOPIC, registry, candidates='{__name__=~"lab_.+"}')

    def failures() -> float | None:
        return registry.get_sample_value("edgelab_ima_stream_failures_total", {"stage": "prometheus"})

    metrics = history["informative"]
    plain = streamer.sample_once("s1", "small", metrics)
    assert "kpi" not in plain and set(plain["metrics"]) == set(metrics)
    record = streamer.sample_once("s1", "small", metrics, Kpi("latency", 'lab_kpi{slice="s1"}'))
    assert record["kpi"] == "latency"
    assert record["metrics"] == {**{m: history["last"][m] for m in metrics},
                                 "latency": float("%.6g" % history["y"][-1])}
    # More than one series, or a query Prometheus refuses: the KPI is null, the metrics still there.
    several = streamer.sample_once("s1", "small", metrics, Kpi("latency", '{__name__=~"lab_.+"}'))
    assert several["metrics"]["latency"] is None and several["metrics"][metrics[0]] == history["last"][metrics[0]]
    assert failures() == 0
    bad = streamer.sample_once("s1", "small", metrics, Kpi("latency", "lab_kpi{"))
    assert bad["metrics"]["latency"] is None and bad["kpi"] == "latency"
    assert failures() == 1
