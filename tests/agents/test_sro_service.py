"""The SRO service (edgelab.sro.service, run by uvicorn on loopback) against a real
Prometheus holding synthetic history (backfilled with promtool), the real IMA app
(edgelab.ima.service, also on loopback), a real Tansu broker for the forecast stream
and real HTTP receivers for url_to_answer and the flavor change."""

from __future__ import annotations

import csv
import http.server
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pytest
from edgelab.learn import synthetic
from edgelab.sro.config import SlicePolicy, parse_config
from edgelab.sro.orchestrate import ima_elasticity
from support.http_helpers import call as http_call
from support.mlflow_server import MlflowServer, unique_name
from support.prometheus import backfill, needs_prometheus, running_prometheus
from support.tansu import MISSING, free_port, running_broker, tansu_binary

SAMPLES, STEP = 1600, 5.0  # 2 h 13 min at 5 s: horizon 30 s = 6 steps, window 24 steps
METRICS_TOPIC, FORECASTS_TOPIC = "edgelab.metrics.selected", "edgelab.forecasts"

pytestmark = needs_prometheus


class Receiver:
    """An HTTP server on loopback that records every POST (path, body) and answers
    `status` (settable)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, bytes]] = []
        self.status = 200
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.posts.append((self.path, body))
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"detail": "recorded"}')

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self.server.server_port

    def wait(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count:
            assert time.monotonic() < deadline, "only %d of %d POSTs arrived" % (len(self.posts), count)
            time.sleep(0.1)


def serve(app: Any) -> tuple[Any, threading.Thread, str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    return server, thread, "http://127.0.0.1:%d" % port


def call(url: str, body: bytes | None = None, content_type: str = "", method: str | None = None
         ) -> tuple[int, Any]:
    """GET, or POST when there is a body, unless method says otherwise."""
    return http_call(method or ("POST" if body is not None else "GET"), url, body, content_type)


def upload(data: bytes) -> tuple[bytes, str]:
    boundary = "edgelab-sro-test"
    body = (b'--%s\r\nContent-Disposition: form-data; name="file"; filename="y.csv"\r\n'
            b"Content-Type: text/csv\r\n\r\n%s\r\n--%s--\r\n" % (boundary.encode(), data, boundary.encode()))
    return body, "multipart/form-data; boundary=%s" % boundary


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Prometheus with history, the IMA, Tansu with both topics, receivers, and the
    SRO's settings (without the SRO itself)."""
    if tansu_binary() is None:
        pytest.skip(MISSING)
    import uvicorn  # noqa: F401 - the service extra must be there
    from edgelab.ima.service import create_app as ima_app
    from edgelab.prometheus import PrometheusClient

    tmp = tmp_path_factory.mktemp("sro")
    s = synthetic.service(SAMPLES, 10, step=STEP, informative=3, noisy_copies=0, seed=22, extras=False)
    start = float(int(time.time() // STEP * STEP) - 3 * 3600)
    times = start + np.arange(SAMPLES) * STEP

    def write(stream: TextIO) -> None:
        for j, name in enumerate(s.names):
            stream.write("# TYPE lab_%s gauge\n" % name)
            stream.writelines('lab_%s{instance="nuc1"} %.6g %d\n' % (name, s.x[i, j], times[i]) for i in range(SAMPLES))

    servers: list[tuple[Any, threading.Thread]] = []
    with running_prometheus(tmp, data=backfill(tmp, write)) as prom:
        prometheus = prom.url
        try:
            client = PrometheusClient(prometheus)
            ima, ima_thread, ima_url = serve(ima_app(lambda: client, max_upload=2_000_000))
            servers.append((ima, ima_thread))
            y = io.StringIO()
            writer = csv.writer(y, lineterminator="\n")
            writer.writerow(["time", "latency_ms"])
            writer.writerows([[int(t), "%.3f" % v] for t, v in zip(times, s.y, strict=True)])
            with running_broker(METRICS_TOPIC, FORECASTS_TOPIC) as broker:
                yield {"prometheus": prometheus, "ima": ima_url, "broker": broker, "y": y.getvalue().encode(),
                       "service": s, "times": times, "tmp": tmp, "answers": Receiver(), "elasticity": Receiver(),
                       "informative": ['lab_%s{instance="nuc1"}' % n for n in s.informative]}
        finally:
            for server, thread in servers:
                server.should_exit = True
                thread.join(30)


def settings(world: dict[str, Any], state: Path, **extra: Any) -> dict[str, Any]:
    return dict({"listen": "127.0.0.1:8011", "ima_url": world["ima"], "prometheus": {"url": world["prometheus"]},
                 "kafka": {"bootstrap_servers": [world["broker"]]}, "state_dir": str(state), "horizon": "30s",
                 "kpi_in_stream": True,
                 "max_upload_bytes": 1_000_000,
                 "orchestration": {"s1": {"upper": 80.0, "lower": 70.0, "consecutive": 3, "cooldown": "1h",
                                          "flavors": ["small", "medium", "large"]}}}, **extra)


@pytest.fixture(scope="module")
def sro(world: dict[str, Any]) -> Iterator[dict[str, Any]]:
    from edgelab.sro.service import create_app

    state = world["tmp"] / "state"
    cfg = parse_config(settings(world, state))
    app = create_app(cfg, act=ima_elasticity(world["elasticity"].url))
    server, thread, url = serve(app)
    try:
        yield {"url": url, "app": app, "state": state, "cfg": cfg}
    finally:
        server.should_exit = True
        thread.join(30)


def profile_query(world: dict[str, Any], **changes: str) -> str:
    query = {"url_to_answer": world["answers"].url + "/answer", "sla_metric_name": "latency_ms",
             "timestamp_label": "time", "k": "3"}
    query.update(changes)
    return "&".join("%s=%s" % (k, urllib.request.quote(v, safe="")) for k, v in query.items())


def wait_done(url: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, job = call(url)
        assert status == 200, job
        if job["status"] != "running":
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.3)


@pytest.fixture(scope="module")
def profiled(world: dict[str, Any], sro: dict[str, Any]) -> dict[str, Any]:
    body, kind = upload(world["y"])
    path = "/slice/s1/flavor/small/profile"
    status, answer = call("%s%s?%s" % (sro["url"], path, profile_query(world)), body, kind)
    assert status == 202, answer
    assert answer["poll"] == path and sorted(answer["selected"]) == sorted(world["informative"])
    job = wait_done(sro["url"] + path)
    assert job["status"] == "done", job
    return job


def test_profile_trains_keeps_answers_and_reloads(world: dict[str, Any], sro: dict[str, Any],
                                                  profiled: dict[str, Any]) -> None:
    from edgelab.sro.service import Store

    report = profiled["report"]
    assert report["slice"] == "s1" and report["flavor"] == "small" and report["horizon_seconds"] == 30.0
    assert sorted(report["features"]) == sorted(world["informative"])  # the series Prometheus gave
    chosen = next(c for c in report["candidates"] if c["chosen"])
    persistence = next(c for c in report["candidates"] if c["name"] == "persistence")
    assert chosen["kind"] == "model" and chosen["test_nmae"] < persistence["test_nmae"]
    world["answers"].wait(1)
    path, body = world["answers"].posts[0]
    assert path == "/answer" and json.loads(body)["report"]["chosen"] == chosen["name"]
    assert profiled["answer"] == "HTTP 200"
    again = Store(str(sro["state"]))  # what a restarted service loads
    model = again.models[("s1", "small")]
    assert model.kind == chosen["name"] and sorted(model.names) == sorted(world["informative"])
    assert again.jobs[("s1", "small")].report == report
    status, openapi = call(sro["url"] + "/openapi.json")
    assert status == 200 and "/slice/{sliceId}/flavor/{flavorId}/profile" in openapi["paths"]


@pytest.mark.parametrize(("case", "status", "expected"), [
    ("malformed", 400, "line 3 has 3 cells"),
    ("no-timestamp-column", 400, "has no timestamp column 'when'"),
    ("naive-time", 400, "has no time zone"),
    ("unknown-kpi", 400, "unknown column 'p99'"),
    ("k-zero", 400, "k must be a whole number > 0"),
    ("k-too-big", 400, "IMA: K=40 but there are only 10 usable metrics"),
    ("too-big", 413, "larger than 1000000 bytes"),
    ("no-data", 422, "Prometheus has no data"),
    ("too-short", 400, "too few samples for an honest evaluation"),
    ("bad-answer-url", 400, "url_to_answer must be an http(s) URL"),
    ("bad-slice", 400, "sliceId 'a b'"),
])
def test_profile_bad_input(case: str, status: int, expected: str, world: dict[str, Any],
                           sro: dict[str, Any]) -> None:
    y, query, slice_id = world["y"], profile_query(world), "bad-%s" % case
    if case == "malformed":
        y = b"time,latency_ms\n1,2\n3,4,5\n"
    elif case == "no-timestamp-column":
        query = profile_query(world, timestamp_label="when")
    elif case == "naive-time":
        y = b"time,latency_ms\n2026-01-01T00:00:00,3\n2026-01-01T00:00:05,4\n"
    elif case == "unknown-kpi":
        query = profile_query(world, sla_metric_name="p99")
    elif case == "k-zero":
        query = profile_query(world, k="0")
    elif case == "k-too-big":
        query = profile_query(world, k="40")
    elif case == "too-big":
        y = b"time,latency_ms\n" + b"1767225600,1\n" * 80_000
    elif case == "no-data":
        y = b"time,latency_ms\n" + b"".join(b"%d,%d\n" % (1_600_000_000 + 5 * i, i % 7) for i in range(200))
    elif case == "too-short":
        y = b"\n".join(world["y"].splitlines()[:121]) + b"\n"  # 120 rows: 10 minutes
    elif case == "bad-answer-url":
        query = profile_query(world, url_to_answer="ftp://example")
    elif case == "bad-slice":
        slice_id = "a%20b"
    body, kind = upload(y)
    code, answer = call("%s/slice/%s/flavor/f/profile?%s" % (sro["url"], slice_id, query), body, kind)
    assert code == status, answer
    assert expected in answer["detail"], answer
    code, answer = call("%s/slice/%s/flavor/f/profile" % (sro["url"], slice_id))
    assert code == 404  # a refused request keeps nothing
    assert not (sro["state"] / "models" / slice_id).exists()


def test_unknown_slice_flavor_and_policy(sro: dict[str, Any], profiled: dict[str, Any]) -> None:
    code, answer = call(sro["url"] + "/slice/s1/flavor/huge/profile")
    assert code == 404 and "has no flavor 'huge' (it has: small)" in answer["detail"]
    code, answer = call(sro["url"] + "/slice/nobody/start_sla_forecast", b"")
    assert code == 404 and "unknown slice 'nobody': profile it first" in answer["detail"]
    code, answer = call(sro["url"] + "/slice/s1/start_sla_forecast?flavorId=huge", b"")
    assert code == 404 and "no model for flavor 'huge'" in answer["detail"]
    code, answer = call(sro["url"] + "/slice/nobody/start_orchestration", b"")
    assert code == 404 and "add orchestration.nobody" in answer["detail"]
    code, answer = call(sro["url"] + "/slice/s1/start_orchestration?flavorId=tiny", b"")
    assert code == 400 and "flavor 'tiny' is not in orchestration.s1.flavors" in answer["detail"]
    code, answer = call(sro["url"] + "/slice/s1/stop_orchestration", b"")
    assert code == 404 and "no running orchestration" in answer["detail"]


def read_forecasts(broker: str, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(FORECASTS_TOPIC, bootstrap_servers=broker, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=2000)
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            for record in consumer:
                assert record.key == b"s1"
                out.append(json.loads(record.value))
                if len(out) >= count:
                    break
    finally:
        consumer.close()
    return out


def test_forecast_stream_and_orchestration(world: dict[str, Any], sro: dict[str, Any],
                                           profiled: dict[str, Any]) -> None:
    from kafka import KafkaProducer

    model = sro["app"].state.store.models[("s1", "small")]
    s, times = world["service"], world["times"]
    names = list(model.names)
    column = {'lab_%s{instance="nuc1"}' % n: j for j, n in enumerate(s.names)}
    code, answer = call(sro["url"] + "/slice/s1/start_orchestration", b"")
    assert code == 409 and "start its forecast first" in answer["detail"]
    code, status = call(sro["url"] + "/slice/s1/start_sla_forecast", b"")
    assert code == 200 and status["running"] and status["flavor"] == "small", status
    code, policy = call(sro["url"] + "/slice/s1/start_orchestration", b"")
    assert code == 200 and policy["flavor"] == "small"
    # Replay the last 60 rows as live records (with a record of another slice and a
    # malformed one in between, which must be skipped).
    rows = range(SAMPLES - 60, SAMPLES)
    producer = KafkaProducer(bootstrap_servers=world["broker"], linger_ms=0)
    for i in rows:
        metrics = {name: float(s.x[i, column[name]]) for name in names}
        metrics["latency_ms"] = float(s.y[i])
        producer.send(METRICS_TOPIC, key=b"s1", value=json.dumps(
            {"slice": "s1", "flavor": "small", "timestamp": float(times[i]), "metrics": metrics}).encode())
        if i == SAMPLES - 30:
            producer.send(METRICS_TOPIC, key=b"s2", value=b'{"slice": "s2"}')
            producer.send(METRICS_TOPIC, key=b"s1", value=b"not json")
    producer.flush()
    producer.close()
    expected_count = len(rows) - model.window + 1
    forecasts = read_forecasts(world["broker"], expected_count)
    assert len(forecasts) == expected_count
    # Each forecast is the model's on the window of rows it had, for H seconds later.
    x = np.column_stack([s.x[:, column[name]] for name in names])
    for message, anchor in zip(forecasts, range(SAMPLES - 60 + model.window - 1, SAMPLES), strict=True):
        assert message["timestamp"] == float(times[anchor]) and message["for_timestamp"] == times[anchor] + 30.0
        window = slice(anchor - model.window + 1, anchor + 1)
        assert message["forecast"] == pytest.approx(model.forecast_next(s.y[window], x[window]), rel=1e-6)
        assert message["model"] == model.kind and message["flavor"] in ("small", "medium")
    code, status = call(sro["url"] + "/slice/s1/forecast")
    assert code == 200 and status["records"] == len(rows) and status["skipped"] == 1
    code, text = call(sro["url"] + "/metrics/")
    last = forecasts[-1]["forecast"]
    gauge = [line for line in text.splitlines() if line.startswith('edgelab_sro_forecast{slice="s1"}')]
    assert gauge and float(gauge[0].split()[-1]) == pytest.approx(last)
    # Orchestration: above 80 for 3 forecasts in a row -> one upgrade, then the hour's
    # cool-down holds every later crossing (recorded, no call); the replayed KPI rises
    # above 90 and falls to the 60s, so both happen.
    values = [m["forecast"] for m in forecasts]
    above = [v > 80.0 for v in values]
    code, recorded = call(sro["url"] + "/slice/s1/decisions")
    assert code == 200
    decisions = recorded["decisions"]
    streak, expected_decisions = 0, 0
    for flag in above:
        streak = streak + 1 if flag else 0
        if streak == 3:
            expected_decisions, streak = expected_decisions + 1, 0
    below = [v < 70.0 for v in values]
    streak = 0
    for flag in below:
        streak = streak + 1 if flag else 0
        if streak == 3:
            expected_decisions, streak = expected_decisions + 1, 0
    assert len(decisions) == expected_decisions, (values, decisions)
    calls = world["elasticity"].posts
    acted = [d for d in decisions if d["action"] != "none"]
    assert len(calls) == len(acted) == 1
    assert any(d["result"].startswith("cooldown") for d in decisions)
    for decision in acted:
        assert decision["ok"] and decision["from_flavor"] == "small"
        assert calls[0][0] == "/elasticity/slice/s1/flavor/%s" % decision["to_flavor"]
    assert all(d["result"].startswith(("IMA 200", "cooldown", "already")) for d in decisions)
    code, _ = call(sro["url"] + "/slice/s1/stop_orchestration", b"")
    assert code == 200
    code, status = call(sro["url"] + "/slice/s1/stop_sla_forecast", b"")
    assert code == 200 and not status["running"]
    code, answer = call(sro["url"] + "/slice/s1/forecast")
    assert code == 404


def test_orchestrator_hysteresis_cooldown_and_ends(world: dict[str, Any]) -> None:
    from edgelab.sro.orchestrate import Decision, Orchestrator

    receiver = world["elasticity"]
    before = len(receiver.posts)
    now = [1000.0]
    recorded: list[Decision] = []
    policy = SlicePolicy(upper=180.0, lower=30.0, consecutive=2, cooldown=60.0, flavors=["small", "medium", "large"])
    o = Orchestrator("s9", policy, "small", ima_elasticity(receiver.url), recorded.append, clock=lambda: now[0])
    assert o.observe(200.0, 1.0) is None  # one forecast above: not yet
    assert o.observe(100.0, 2.0) is None  # the streak is broken
    assert o.observe(200.0, 3.0) is None
    first = o.observe(190.0, 4.0)
    assert first is not None and first.action == "upgrade" and first.to_flavor == "medium" and first.ok
    assert receiver.posts[before][0] == "/elasticity/slice/s9/flavor/medium" and o.flavor == "medium"
    now[0] += 10
    o.observe(250.0, 5.0)
    held = o.observe(250.0, 6.0)
    assert held is not None and held.action == "none" and held.result.startswith("cooldown: 50s left")
    now[0] += 60
    o.observe(250.0, 7.0)
    second = o.observe(250.0, 8.0)
    assert second is not None and second.to_flavor == "large" and o.flavor == "large"
    now[0] += 100
    o.observe(250.0, 9.0)
    top = o.observe(250.0, 10.0)
    assert top is not None and top.action == "none" and top.result == "already the largest flavor"
    receiver.status = 500  # the IMA refuses: recorded as failed, the flavor stays
    try:
        o.observe(10.0, 11.0)
        failed = o.observe(10.0, 12.0)
    finally:
        receiver.status = 200
    assert failed is not None and failed.action == "downgrade" and not failed.ok and "IMA 500" in failed.result
    assert o.flavor == "large"
    assert len(recorded) == 5 and len(receiver.posts) == before + 3


@pytest.mark.parametrize(("change", "expected"), [
    ({"ima_url": None}, "missing required key ima_url"),
    ({"listen": "8011"}, "listen: expected HOST:PORT"),
    ({"horizon": "soon"}, "horizon: 'soon' is not a duration"),
    ({"colour": 1}, "unknown key colour"),
    ({"kafka": {"bootstrap_servers": ["b:9092"], "security_protocol": "SASL_SSL"}},
     "kafka: SASL_SSL needs sasl_username and sasl_password_file"),
    ({"orchestration": {"s": {"upper": 30, "lower": 180, "flavors": ["a", "b"]}}},
     "orchestration.s: lower (180) must be below upper (30)"),
    ({"orchestration": {"s": {"upper": 180, "lower": 30, "flavors": ["a"]}}},
     "orchestration.s.flavors must list at least two distinct flavor names"),
])
def test_serve_refuses_bad_config(change: dict[str, Any], expected: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    import yaml
    from edgelab.sro.cli import main

    data: dict[str, Any] = {"ima_url": "http://127.0.0.1:8010", "state_dir": str(tmp_path / "state")}
    data.update(change)
    path = tmp_path / "sro.yml"
    path.write_text(yaml.safe_dump(data))
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgelab-sro: config error: ") and expected in err[0], err


def test_serve_refuses_a_busy_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from edgelab.sro.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "sro.yml"
        path.write_text('listen: "127.0.0.1:%d"\nima_url: http://127.0.0.1:8010\nstate_dir: %s\n'
                        % (port, tmp_path / "state"))
        assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgelab-sro: config error: listen 127.0.0.1:%d" % port), err


def test_profile_publishes_to_mlflow(world: dict[str, Any], tmp_path: Path, mlflow_server: MlflowServer) -> None:
    """With mlflow.tracking_uri set, the trained model is logged, registered and gets
    the alias production (edgelab.train.publish against a real `mlflow server`, the
    run's shared one)."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (requirements.txt)")
    import mlflow.sklearn
    from edgelab.sro.service import create_app
    from mlflow.tracking import MlflowClient

    tracking_uri = mlflow_server.uri
    slice_id = unique_name("s2")  # the model is edgelab-sro-SLICE-FLAVOR: a name of its own
    # The IMA's records without the KPI (kpi_in_stream false): a metrics-only model.
    cfg = parse_config(settings(world, tmp_path / "state", kpi_in_stream=False,
                                mlflow={"tracking_uri": tracking_uri, "experiment": unique_name("sro-test")}))
    server, thread, url = serve(create_app(cfg, act=ima_elasticity(world["elasticity"].url)))
    try:
        body, kind = upload(world["y"])
        path = "/slice/%s/flavor/medium/profile" % slice_id
        status, answer = call("%s%s?%s" % (url, path, profile_query(world)), body, kind)
        assert status == 202, answer
        job = wait_done(url + path, timeout=300)
    finally:
        server.should_exit = True
        thread.join(30)
    assert job["status"] == "done", job
    report = job["report"]
    assert report["kpi_inputs"] is False
    kinds = {c["name"]: c["kind"] for c in report["candidates"]}
    assert kinds["training_mean"] == "baseline" and kinds["persistence"] == "reference"
    assert job["mlflow"]["version"] == "1" and job["mlflow"]["promoted"], job["mlflow"]
    client = MlflowClient(tracking_uri=tracking_uri)
    version = client.get_model_version_by_alias("edgelab-sro-%s-medium" % slice_id, "production")
    assert version.version == "1"
    run = client.get_run(version.run_id)
    assert run.data.metrics["test_nmae"] == pytest.approx(job["report"]["test_nmae"], rel=1e-5)
    loaded = mlflow.sklearn.load_model("models:/edgelab-sro-%s-medium@production" % slice_id)
    assert loaded.kind == report["chosen"] and loaded.target == "latency_ms" and not loaded.kpi_inputs
