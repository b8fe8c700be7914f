"""edgelab-ima select --prometheus and the IMA service (edgelab.ima.service, run by
uvicorn on loopback) against a real Prometheus (the Debian package's
/usr/bin/prometheus) holding synthetic history backfilled with promtool: the range is
longer than 11,000 steps, so the IMA must split it into several range queries, and
the metrics that drive the KPI must be the ones selected."""

from __future__ import annotations

import csv
import http.server
import io
import itertools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
import pytest
from edgelab.ima.cli import main as ima
from edgelab.ima.source import MAX_POINTS, time_pieces
from edgelab.learn import synthetic
from support.prometheus import backfill, needs_prometheus, running_prometheus

SAMPLES = 11_600  # at 1 s: more than one range query's 11,000 points

pytestmark = needs_prometheus


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("ima-prometheus")
    s = synthetic.service(SAMPLES, 12, step=1.0, informative=3, noisy_copies=0, seed=11, extras=False)
    start = float(int(time.time()) - 4 * 3600)  # whole seconds, in the past, inside the retention
    times = start + np.arange(SAMPLES)

    def write(stream: TextIO) -> None:
        # OpenMetrics: one family per metric, all of its samples in time order.
        for j, name in enumerate(s.names):
            metric = "lab_" + name
            stream.write("# TYPE %s gauge\n" % metric)
            stream.writelines('%s{instance="nuc1"} %.6g %d\n' % (metric, s.x[i, j], times[i]) for i in range(SAMPLES))

    with running_prometheus(tmp, data=backfill(tmp, write)) as server:
        y = tmp / "y.csv"
        with y.open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["timestamp", "latency_ms"])
            writer.writerows([[int(t), "%.3f" % v] for t, v in zip(times, s.y, strict=True)])
        yield {"url": server.url, "y": str(y), "informative": ["lab_%s{instance=\"nuc1\"}" % n for n in s.informative],
               "start": start}


def test_time_pieces_respect_the_point_limit() -> None:
    pieces = time_pieces(100.0, 100.0 + 25_000 * 2.0, 2.0, MAX_POINTS)
    counts = [round((b - a) / 2.0) + 1 for a, b in pieces]
    assert counts == [11_000, 11_000, 3_001]
    assert all(later[0] - earlier[1] == 2.0 for earlier, later in itertools.pairwise(pieces))


def test_select_from_prometheus_over_more_than_one_query(history: dict[str, object], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "selection.json"
    rc = ima(["select", "--prometheus", str(history["url"]), "--y", str(history["y"]), "--k", "3",
              "--report", str(report)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(report.read_text())
    assert result["rows"] == SAMPLES and result["step_seconds"] == 1.0
    assert result["candidates"] == 12  # every backfilled series, none lost between the queries
    assert sorted(item["metric"] for item in result["selected"]) == sorted(history["informative"])  # type: ignore[arg-type]


def test_prometheus_bad_query_and_empty_range(history: dict[str, object], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc = ima(["select", "--prometheus", str(history["url"]), "--y", str(history["y"]), "--k", "3",
              "--query", "rate(("])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("edgelab-ima: bad input: --query:"), err
    old = tmp_path / "old.csv"
    old.write_text("timestamp,kpi\n" + "".join("%d,%d\n" % (1_600_000_000 + i, i % 5) for i in range(100)))
    rc = ima(["select", "--prometheus", str(history["url"]), "--y", str(old), "--k", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Prometheus has no data" in err[0], err


# ---------------------------------------------------------------- the IMA service
def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = "edgelab-test-boundary"
    parts = [b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
             % (boundary.encode(), name.encode(), value.encode()) for name, value in fields.items()]
    parts += [b'--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s.csv"\r\n'
              b"Content-Type: text/csv\r\n\r\n%s\r\n" % (boundary.encode(), name.encode(), name.encode(), data)
              for name, data in files.items()]
    return b"".join(parts) + b"--%s--\r\n" % boundary.encode(), "multipart/form-data; boundary=%s" % boundary


def request(url: str, body: bytes | None = None, content_type: str = "") -> tuple[int, str, str]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


@pytest.fixture(scope="module")
def service(history: dict[str, object]) -> Iterator[dict[str, object]]:
    import uvicorn
    from edgelab.ima.service import create_app
    from edgelab.prometheus import PrometheusClient

    received: list[tuple[str, bytes]] = []

    class Callback(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["Content-Type"], body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    callback = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Callback)
    threading.Thread(target=callback.serve_forever, daemon=True).start()
    client = PrometheusClient(str(history["url"]))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: client, max_upload=1_000_000), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.1)
    try:
        yield {"url": "http://127.0.0.1:%d" % port, "callback": "http://127.0.0.1:%d/answer" % callback.server_port,
               "received": received}
    finally:
        server.should_exit = True
        thread.join(30)
        callback.shutdown()


def test_service_selects_answers_calls_back_and_keeps(history: dict[str, object], service: dict[str, object]
                                                      ) -> None:
    y = Path(str(history["y"])).read_bytes()
    body, kind = multipart({"K": "3", "sliceFlavor": "small", "callbackURL": str(service["callback"])}, {"YFile": y})
    status, content_type, text = request("%s/ymetrics/slice-1" % service["url"], body, kind)
    assert status == 201, text
    assert content_type.startswith("text/csv")
    header = next(csv.reader(io.StringIO(text)))
    assert header[:2] == ["timestamp", "latency_ms"]
    assert sorted(header[2:]) == sorted(history["informative"])  # type: ignore[arg-type]
    assert len(text.splitlines()) == SAMPLES + 1
    received: list[tuple[str, bytes]] = service["received"]  # type: ignore[assignment]
    deadline = time.monotonic() + 30
    while not received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert received and received[0][0].startswith("multipart/form-data")
    assert text.encode() in received[0][1]
    status, _kind, kept = request("%s/ymetrics/slice-1?sliceFlavor=small" % service["url"])
    assert status == 200 and sorted(json.loads(kept)["metrics"]) == sorted(history["informative"])  # type: ignore[arg-type]
    status, _kind, missing = request("%s/ymetrics/slice-1?sliceFlavor=large" % service["url"])
    assert status == 404 and "has no flavor 'large'" in json.loads(missing)["detail"]
    status, _kind, openapi = request("%s/openapi.json" % service["url"])
    assert status == 200 and "/ymetrics/{sliceId}" in json.loads(openapi)["paths"]


@pytest.mark.parametrize(("case", "status", "expected"), [
    ("k-zero", 400, "K must be a whole number > 0"),
    ("k-too-big", 400, "K=50 but there are only 12 usable metrics"),
    ("unknown-y-field", 400, "unknown column 'p99'"),
    ("malformed", 400, "line 3 has 3 cells"),
    ("no-yfile", 400, "send the KPI as YFile"),
    ("too-big", 413, "larger than 1000000 bytes"),
    ("no-data", 422, "Prometheus has no data"),
    ("bad-callback", 400, "callbackURL must be an http(s) URL"),
])
def test_service_bad_input(case: str, status: int, expected: str, history: dict[str, object],
                           service: dict[str, object]) -> None:
    fields = {"K": "3", "sliceFlavor": "f-" + case, "callbackURL": str(service["callback"])}
    files = {"YFile": Path(str(history["y"])).read_bytes()}
    if case == "k-zero":
        fields["K"] = "0"
    elif case == "k-too-big":
        fields["K"] = "50"
    elif case == "unknown-y-field":
        fields["YField"] = "p99"
    elif case == "malformed":
        files["YFile"] = b"timestamp,kpi\n1,2\n3,4,5\n"
    elif case == "no-yfile":
        files = {}
    elif case == "too-big":
        files["YFile"] = b"timestamp,kpi\n" + b"1767225600,1\n" * 80_000
    elif case == "no-data":
        files["YFile"] = b"timestamp,kpi\n" + b"".join(b"%d,%d\n" % (1_600_000_000 + i, i % 5) for i in range(100))
    elif case == "bad-callback":
        fields["callbackURL"] = "ftp://example"
    body, kind = multipart(fields, files)
    code, _kind, text = request("%s/ymetrics/slice-bad" % service["url"], body, kind)
    assert code == status, text
    assert expected in json.loads(text)["detail"]
    code, _kind, _text = request("%s/ymetrics/slice-bad?sliceFlavor=f-%s" % (service["url"], case))
    assert code == 404  # nothing kept from a failed request
