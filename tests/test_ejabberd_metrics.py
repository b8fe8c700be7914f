"""Role ejabberd's counter writer (roles/ejabberd/files/edgelab-ejabberd-metrics), run as a process.

It reads ejabberd's `stats` command from the HTTP API on loopback. ejabberd 23.01
(Debian 12) answers `{"stat": N}`, ejabberd 24.12 (Debian 13) a bare `N`; both
answers below were recorded from the real servers on lab hosts (molecule
`ejabberd`, whose verify runs the writer against both). The stub answers as one of
them; the writer must write the same file for either, and `up 0` with one line
on stderr (no traceback) for an answer it cannot read or a server that is down.
Its optional third argument, the XMPP domain, is sent as the HTTP Host.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

WRITER = Path(__file__).resolve().parents[1] / "roles" / "ejabberd" / "files" / "edgelab-ejabberd-metrics"
COUNTERS = {"onlineusers": 3, "registeredusers": 7, "uptimeseconds": 1234}


def answer_23_01(name: str) -> object:
    return {"stat": COUNTERS[name]}


def answer_24_12(name: str) -> object:
    return COUNTERS[name]


class StatsServer:
    """mod_http_api's /api/stats on 127.0.0.1, answering with `shape(name)`."""

    def __init__(self, shape) -> None:
        self.shape = shape
        self.requests: list[tuple[str, dict]] = []
        self.host_headers: list[str | None] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                state.requests.append((self.path, body))
                state.host_headers.append(self.headers.get("Host"))
                data = json.dumps(state.shape(body.get("name"))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/api" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator:
    servers: list[StatsServer] = []

    def start(shape) -> StatsServer:
        servers.append(StatsServer(shape))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def run_writer(url: str, output: Path, *domain: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WRITER), url, str(output), *domain], capture_output=True, text=True,
                          timeout=60, check=False)


def gauges(output: Path) -> dict[str, float]:
    lines = [line for line in output.read_text().splitlines() if line and not line.startswith("#")]
    return {name: float(value) for name, value in (line.split(" ") for line in lines)}


@pytest.mark.parametrize("shape", [answer_23_01, answer_24_12], ids=["ejabberd-23.01", "ejabberd-24.12"])
def test_counters_are_written_for_either_answer(serve, tmp_path, shape):
    server = serve(shape)
    output = tmp_path / "ejabberd.prom"
    run = run_writer(server.url, output)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    values = gauges(output)
    assert values.pop("edgelab_ejabberd_metrics_timestamp_seconds") > 0
    assert values == {"edgelab_ejabberd_up": 1, "edgelab_ejabberd_online_users": 3,
                      "edgelab_ejabberd_registered_users": 7, "edgelab_ejabberd_uptime_seconds": 1234}
    assert [(path, body) for path, body in server.requests] == [
        ("/api/stats", {"name": name}) for name in ("onlineusers", "registeredusers", "uptimeseconds")]
    assert output.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["ejabberd.prom"]  # no temporary file left


def test_the_xmpp_domain_is_the_http_host(serve, tmp_path):
    # ejabberd 24.12 logs a warning for each API request whose HTTP Host is not one of its
    # virtual hosts; the unit passes the XMPP domain for that (without it: the URL's host).
    server = serve(answer_24_12)
    assert run_writer(server.url, tmp_path / "ejabberd.prom", "xmpp.lab.test").returncode == 0
    assert server.host_headers == ["xmpp.lab.test"] * 3
    assert run_writer(server.url, tmp_path / "ejabberd.prom").returncode == 0
    assert server.host_headers[3:] == [server.url.split("/")[2]] * 3


@pytest.mark.parametrize("answer", [{"status": "error", "code": 1, "message": "x"}, "12", True, None, [1]],
                         ids=["error-object", "string", "bool", "null", "list"])
def test_an_answer_that_is_not_a_number_gives_up_0_and_one_line(serve, tmp_path, answer):
    server = serve(lambda _name: answer)
    output = tmp_path / "ejabberd.prom"
    run = run_writer(server.url, output)
    assert run.returncode == 0
    assert run.stderr.count("\n") == 1 and "stats onlineusers: expected a number" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    values = gauges(output)
    assert values["edgelab_ejabberd_up"] == 0
    assert not any(name in values for name in ("edgelab_ejabberd_online_users", "edgelab_ejabberd_registered_users"))


def test_ejabberd_down_gives_up_0(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    output = tmp_path / "ejabberd.prom"
    run = run_writer(f"http://127.0.0.1:{port}/api", output)
    assert run.returncode == 0 and run.stderr.count("\n") == 1, run.stderr
    assert gauges(output)["edgelab_ejabberd_up"] == 0


def test_bad_arguments_exit_2(tmp_path):
    run = run_writer("http://10.0.0.1:5281/api", tmp_path / "ejabberd.prom")
    assert run.returncode == 2 and run.stderr.startswith("usage:")
    assert not (tmp_path / "ejabberd.prom").exists()


def test_an_answer_cut_short_gives_up_0_and_one_line(tmp_path):
    """A connection closed in the middle of the answer (http.client.IncompleteRead, not an
    OSError): the writer still writes up 0 and says why in one line."""

    class Short(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"st')

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Short)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        output = tmp_path / "ejabberd.prom"
        run = run_writer("http://127.0.0.1:%d/api" % server.server_address[1], output)
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert gauges(output)["edgelab_ejabberd_up"] == 0
