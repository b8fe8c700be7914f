"""edgelab.prometheus against a real Prometheus (the Debian package's /usr/bin/prometheus),
started on a free loopback port with basic auth (a bcrypt hash in a web config, as role
prometheus writes it) and scraping itself every second. Plus small local HTTP stubs for
what a healthy Prometheus never does on demand (503s, hanging)."""

from __future__ import annotations

import http.server
import itertools
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import ClassVar

import pytest
from edgelab.prometheus import (
    PrometheusAuthError,
    PrometheusClient,
    PrometheusConnectionError,
    PrometheusQueryError,
    PrometheusServerError,
    PrometheusTimeoutError,
)

PROMETHEUS = "/usr/bin/prometheus"
USERNAME = "edgelab"
PASSWORD = "s3cret-Pr0m-test"  # a throwaway test password

pytestmark = pytest.mark.skipif(not os.access(PROMETHEUS, os.X_OK),
                                reason="no %s (Debian package prometheus) on this machine" % PROMETHEUS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, url: str, password_file: Path) -> None:
        self.url, self.password_file = url, password_file

    def client(self, **kwargs) -> PrometheusClient:
        kwargs.setdefault("username", USERNAME)
        if "password" not in kwargs:
            kwargs.setdefault("password_file", self.password_file)
        return PrometheusClient(self.url, **kwargs)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    with warnings.catch_warnings():  # passlib imports the deprecated crypt module
        warnings.simplefilter("ignore", DeprecationWarning)
        from passlib.hash import bcrypt

    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    password_file = tmp / "password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    (tmp / "web.yml").write_text("basic_auth_users:\n  %s: %s\n" % (
        USERNAME, json.dumps(bcrypt.using(rounds=10, ident="2b").hash(PASSWORD))))
    (tmp / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: prometheus\n"
        "    basic_auth: {username: %s, password_file: %s}\n"
        "    static_configs: [{targets: ['127.0.0.1:%d']}]\n" % (USERNAME, json.dumps(str(password_file)), port))
    check = subprocess.run(["/usr/bin/promtool", "check", "web-config", str(tmp / "web.yml")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [PROMETHEUS, "--config.file=%s" % (tmp / "prometheus.yml"), "--web.config.file=%s" % (tmp / "web.yml"),
         "--web.listen-address=127.0.0.1:%d" % port, "--storage.tsdb.path=%s" % (tmp / "data")],
        stdout=log, stderr=subprocess.STDOUT)
    server = Server("http://127.0.0.1:%d" % port, password_file)
    try:
        client = server.client(retries=0, timeout=2)
        deadline = time.monotonic() + 60
        while not client.ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("Prometheus did not get ready: %s" % (tmp / "prometheus.log").read_text()[-2000:])
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)


def test_query_with_basic_auth(prometheus):
    client = prometheus.client()
    samples = wait_for(lambda: client.query('up{job="prometheus"}'))
    assert len(samples) == 1
    sample = samples[0]
    assert sample.labels["job"] == "prometheus" and sample.name == "up"
    assert sample.value == 1.0
    assert abs(sample.timestamp - time.time()) < 60
    assert sample.time.tzinfo is not None and sample.time.utcoffset() == timedelta(0)
    scalar = client.query("1 + 1")
    assert [(s.labels, s.value) for s in scalar] == [({}, 2.0)]


def test_query_at_a_given_time_is_utc(prometheus):
    client = prometheus.client()
    wait_for(lambda: client.query('up{job="prometheus"}'))
    at = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
    in_other_zone = at.astimezone(timezone(timedelta(hours=5, minutes=30)))
    for when in (at, in_other_zone, at.timestamp()):
        [sample] = client.query("time()", time=when)
        assert sample.timestamp == at.timestamp() and sample.value == at.timestamp()
    with pytest.raises(ValueError, match="naive datetime"):
        client.query("up", time=datetime.now())


@pytest.mark.parametrize("password", [None, "wrong-password"])
def test_missing_or_wrong_credentials_are_a_clear_401(prometheus, password):
    if password is None:
        client = PrometheusClient(prometheus.url, retries=3, backoff=0.01)
    else:
        client = prometheus.client(password=password, password_file=None, retries=3, backoff=0.01)
    with pytest.raises(PrometheusAuthError) as info:
        client.query("up")
    error = info.value
    assert error.status == 401 and error.attempts == 1  # 4xx is never retried
    assert "HTTP 401" in str(error) and "/api/v1/query" in str(error)
    assert "Unauthorized" in error.message
    assert PASSWORD not in str(error) and PASSWORD not in repr(prometheus.client())
    if password:
        assert password not in str(error) and password not in repr(client)


def test_bad_promql_is_a_400_with_prometheus_message(prometheus):
    client = prometheus.client(retries=3, backoff=0.01)
    with pytest.raises(PrometheusQueryError) as info:
        client.query("sum(rate(up[1m])")
    error = info.value
    assert error.status == 400 and error.error_type == "bad_data" and error.attempts == 1
    assert "parse error" in error.message
    assert "HTTP 400 bad_data: " in str(error)


def test_query_range_returns_points_of_its_own_scrapes(prometheus):
    client = prometheus.client()

    def enough():
        end = time.time()
        series = client.query_range('up{job="prometheus"}', start=end - 30, end=end, step=1)
        return series if series and len(series[0].points) >= 3 else None

    series = wait_for(enough, timeout_s=40)
    assert series, "fewer than 3 points of up after 40 s"
    [one] = series
    assert one.labels["job"] == "prometheus"
    stamps = one.timestamps()
    assert stamps == sorted(stamps) and all(b - a == pytest.approx(1.0) for a, b in itertools.pairwise(stamps))
    assert set(one.values()) == {1.0}
    assert all(t.tzinfo is not None for t in one.times())
    # Fresh scrapes, not one value looked back on: the scrape time behind each point advances.
    end = datetime.now(timezone.utc)
    [scraped] = client.query_range('timestamp(up{job="prometheus"})', start=end - timedelta(seconds=4), end=end,
                                   step=timedelta(seconds=2))
    assert scraped.values() == sorted(scraped.values()) and scraped.values()[-1] > scraped.values()[0]
    assert end.timestamp() - scraped.values()[-1] < 5
    with pytest.raises(ValueError):
        client.query_range("up", start=end, end=end - timedelta(seconds=1), step=1)


def test_targets_lists_itself_up(prometheus):
    client = prometheus.client()
    targets = wait_for(lambda: [t for t in client.targets() if t.up])
    assert [t.scrape_pool for t in targets] == ["prometheus"]
    target = targets[0]
    assert target.labels["job"] == "prometheus" and target.last_error == ""
    assert target.last_scrape is not None and target.last_scrape.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - target.last_scrape).total_seconds()) < 30


def test_from_env_reads_the_password_file(prometheus):
    env = {"PROMETHEUS_URL": prometheus.url, "PROMETHEUS_USERNAME": USERNAME,
           "PROMETHEUS_PASSWORD_FILE": str(prometheus.password_file), "PROMETHEUS_TIMEOUT": "5"}
    client = PrometheusClient.from_env(env)
    assert client.timeout == 5.0 and PASSWORD not in repr(client)
    assert client.query("vector(3)")[0].value == 3.0
    with pytest.raises(ValueError, match="PROMETHEUS_URL"):
        PrometheusClient.from_env({})


def test_connection_refused_is_retried_with_backoff_then_fails_clearly():
    port = free_port()  # nothing listens there
    delays: list[float] = []
    client = PrometheusClient("http://127.0.0.1:%d" % port, retries=3, backoff=0.05, sleep=delays.append)
    with pytest.raises(PrometheusConnectionError) as info:
        client.query("up")
    error = info.value
    assert error.attempts == 4 and error.status is None
    assert delays == [0.05, 0.1, 0.2]  # exponential
    assert "refused" in str(error).lower() and "4 attempts" in str(error)
    # Real sleeping too: the backoff is waited out.
    started = time.monotonic()
    with pytest.raises(PrometheusConnectionError):
        PrometheusClient("http://127.0.0.1:%d" % port, retries=2, backoff=0.2).query("up")
    assert time.monotonic() - started >= 0.6


@pytest.fixture
def silent_server():
    """A TCP listener that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield "http://127.0.0.1:%d" % sock.getsockname()[1]
    sock.close()


def test_timeout_is_honoured(silent_server):
    client = PrometheusClient(silent_server, timeout=0.5, retries=0)
    started = time.monotonic()
    with pytest.raises(PrometheusTimeoutError) as info:
        client.query("up")
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 3, elapsed
    assert info.value.attempts == 1 and "0.5s" in str(info.value)
    client = PrometheusClient(silent_server, timeout=0.3, retries=1, backoff=0.1)
    started = time.monotonic()
    with pytest.raises(PrometheusTimeoutError) as info:
        client.query("up")
    assert info.value.attempts == 2 and 0.6 <= time.monotonic() - started < 4


class Stub(http.server.BaseHTTPRequestHandler):
    """Answers from a script of (status, body) pairs; counts requests."""

    script: ClassVar[list[tuple[int, bytes]]] = []
    requests = 0

    def do_POST(self):
        type(self).requests += 1
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status, body = self.script.pop(0) if self.script else (500, b"script exhausted")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    Stub.script, Stub.requests = [], 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()
    server.server_close()


OK_BODY = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {"__name__": "up"}, "value": [1700000000.5, "1"]}]}}).encode()


def test_5xx_and_429_are_retried_then_succeed(stub):
    Stub.script = [(503, b"Service Unavailable"), (429, b"{}"), (200, OK_BODY)]
    delays: list[float] = []
    [sample] = PrometheusClient(stub, retries=3, backoff=0.01, sleep=delays.append).query("up")
    assert Stub.requests == 3 and delays == [0.01, 0.02]
    assert sample.timestamp == 1700000000.5 and sample.time.isoformat() == "2023-11-14T22:13:20.500000+00:00"


def test_5xx_that_persists_fails_with_status_and_message(stub):
    body = json.dumps({"status": "error", "errorType": "internal", "error": "tsdb is sad"}).encode()
    Stub.script = [(500, body)] * 3
    with pytest.raises(PrometheusServerError) as info:
        PrometheusClient(stub, retries=2, backoff=0.01, sleep=lambda _s: None).query("up")
    assert Stub.requests == 3 and info.value.status == 500 and info.value.message == "tsdb is sad"
    assert info.value.attempts == 3


def test_422_is_not_retried(stub):
    body = json.dumps({"status": "error", "errorType": "execution", "error": "query timed out"}).encode()
    Stub.script = [(422, body), (200, OK_BODY)]
    with pytest.raises(PrometheusQueryError) as info:
        PrometheusClient(stub, retries=3, sleep=lambda _s: None).query("up")
    assert Stub.requests == 1 and info.value.status == 422 and info.value.error_type == "execution"
