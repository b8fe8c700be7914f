"""edgelab-extract against a real Prometheus (Debian's /usr/bin/prometheus) holding
synthetic history backfilled with promtool: 12,000 points per series at 1 s (more than
one range query's 11,000), values known exactly, three metric families. Covers the
whole dataset, selectors, CSV, resume after a killed run, and errors naming the query
(the whole dataset and resume with both APIs); and, on irregular history (gaps longer and shorter
than the lookback, sparse scrapes, zeros, NaN, series that start and stop), that remote
read and range queries give the same dataset, and the fallback when a proxy in front
of Prometheus does not pass remote read."""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from edgelab.experiments.extract import main as extract
from edgelab.learn.tables import read_table
from edgelab.prometheus import PrometheusClient
from support.prometheus import backfill, needs_prometheus, running_prometheus

SAMPLES = 12_000
SERIES = [("lab_cpu_seconds", {"cpu": "0", "mode": "idle"}), ("lab_cpu_seconds", {"cpu": "1", "mode": "idle"}),
          ("lab_cpu_busy_ratio", {"cpu": "0"}), ("lab_power_watts", {"zone": "package"}),
          ("lab_power_watts", {"zone": "dram"}), ("lab_power_peak_watts", {"zone": "package"}),
          ("other_latency_seconds", {"quantile": "0.99", "path": 'a"]]}b'})]

pytestmark = needs_prometheus


def column(name: str, labels: dict[str, str]) -> str:
    rest = ",".join('%s="%s"' % (k, v.replace("\\", "\\\\").replace('"', '\\"')) for k, v in sorted(labels.items()))
    return "%s{%s}" % (name, rest)


def value(j: int, i: int) -> float:
    return j * 100_000.0 + i * 0.5


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("extract-prometheus")
    start = int(time.time()) - 5 * 3600
    by_name: dict[str, list[int]] = {}
    for j, (name, _labels) in enumerate(SERIES):
        by_name.setdefault(name, []).append(j)

    def write(stream: TextIO) -> None:
        for name, indexes in by_name.items():
            stream.write("# TYPE %s gauge\n" % name)
            for j in indexes:
                labels = ",".join('%s="%s"' % (k, v.replace("\\", "\\\\").replace('"', '\\"'))
                                  for k, v in sorted(SERIES[j][1].items()))
                stream.writelines("%s{%s} %r %d\n" % (name, labels, value(j, i), start + i) for i in range(SAMPLES))

    with running_prometheus(tmp, data=backfill(tmp, write)) as server:
        yield {"url": server.url, "start": start}


def args(prom: dict[str, object], out: Path, *extra: str) -> list[str]:
    start = int(prom["start"])  # type: ignore[call-overload]
    return ["--prometheus", str(prom["url"]), "--start", str(start), "--end", str(start + SAMPLES - 1),
            "--sampling", "1", "--out", str(out), "--no-progress", *extra]


def check_dataset(path: Path, series: list[int], start: int) -> None:
    with path.open("rb") as stream:
        table = read_table(stream, "timestamp", source=str(path))  # what edgelab-sro evaluate --dataset reads
    assert len(table.timestamps) == SAMPLES
    assert np.array_equal(table.timestamps, start + np.arange(SAMPLES, dtype=float))
    assert sorted(table.columns) == sorted(column(*SERIES[j]) for j in series)
    for j in series:
        assert np.array_equal(table.column(column(*SERIES[j])), value(j, np.arange(SAMPLES))), SERIES[j]


@pytest.mark.parametrize("api", ["query_range", "remote_read"])
def test_every_series_over_the_11000_point_limit(prom: dict[str, object], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str], api: str) -> None:
    out = tmp_path / "all"
    rc = extract(args(prom, out, "--segment_size", "11000", "--n_threads", "2", "--api", api))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    check_dataset(out / "dataset.parquet", list(range(len(SERIES))), int(prom["start"]))  # type: ignore[call-overload]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["segments"] == 2 and meta["rows"] == SAMPLES and meta["series"] == len(SERIES)
    # One request per segment for every family together (7 series fit the default budget).
    assert len(meta["queries"]) == 1 and meta["requests"] == 2 and meta["apis"] == [api]
    assert meta["queries"][0]["query"].startswith('{__name__=~"')
    labels = {c["name"]: c["labels"] for c in meta["columns"]}
    assert labels[column(*SERIES[6])]["path"] == 'a"]]}b'
    assert pq.read_schema(out / "dataset.parquet").field("timestamp").type.tz == "UTC"


def test_families_packed_under_the_point_budget(prom: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "packed"
    # 2 series x 5,000 points per request: lab_cpu (3 series) splits by name, lab_power (3) too.
    assert extract(args(prom, out, "--segment_size", "5000", "--max-points-per-request", "10000",
                        "--api", "query_range")) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert all(q["series"] <= 2 for q in meta["queries"]), meta["queries"]
    assert meta["segments"] == 3 and meta["requests"] == 3 * len(meta["queries"])
    check_dataset(out / "dataset.parquet", list(range(len(SERIES))), int(prom["start"]))  # type: ignore[call-overload]


def test_selectors_and_csv(prom: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "csv"
    assert extract(args(prom, out, "--selector", "lab_power_watts", "--selector", '{__name__="lab_cpu_busy_ratio"}',
                        "--format", "csv", "--segment_size", "4000")) == 0
    check_dataset(out / "dataset.csv", [2, 3, 4], int(prom["start"]))  # type: ignore[call-overload]
    header = (out / "dataset.csv").read_text().split("\n", 2)[1]
    assert float(header.split(",")[0]) == prom["start"]  # epoch seconds


def test_zoned_times_select_the_same_range(prom: dict[str, object], tmp_path: Path) -> None:
    from datetime import datetime, timedelta, timezone

    start = int(prom["start"])  # type: ignore[call-overload]
    zone = timezone(timedelta(hours=2))
    begin = datetime.fromtimestamp(start, zone).isoformat()  # "+02:00"
    naive_utc = datetime.fromtimestamp(start + 99, timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
    out = tmp_path / "zoned"
    assert extract(["--prometheus", str(prom["url"]), "--start", begin, "--end", naive_utc, "--sampling", "1",
                    "--selector", "lab_power_peak_watts", "--out", str(out), "--no-progress"]) == 0
    table = pq.read_table(out / "dataset.parquet")
    seconds = table.column("timestamp").cast("int64").to_numpy() / 1000
    assert seconds[0] == start and seconds[-1] == start + 99 and table.num_rows == 100


@pytest.mark.parametrize("api", ["remote_read", "query_range"])
def test_resume_after_a_killed_run(prom: dict[str, object], tmp_path: Path, api: str) -> None:
    out = tmp_path / "resume"
    command = [sys.executable, "-m", "edgelab.experiments.extract",
               *args(prom, out, "--segment_size", "500", "--n_threads", "1", "--max-points-per-request", "1500",
                     "--api", api)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list((out / "parts").glob("s*.arrow")) if (out / "parts").is_dir() else []) < 8:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    total = manifest["segments"] * len(manifest["queries"])
    parts_before = len(list((out / "parts").glob("s*.arrow")))
    assert not (out / "dataset.parquet").exists() and 0 < parts_before < total
    assert extract(command[3:]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["requests"] == total - parts_before  # only what was missing
    assert meta["segments_reused"] >= 1 and meta["apis"] == [api]
    check_dataset(out / "dataset.parquet", list(range(len(SERIES))), int(prom["start"]))  # type: ignore[call-overload]
    # A third run of the same command fetches nothing.
    assert extract(command[3:]) == 0
    assert json.loads((out / "metadata.json").read_text())["requests"] == 0


def errors(text: str) -> list[str]:
    """What the tool says on stderr, without the INFO log lines."""
    return [line for line in text.strip().splitlines() if line.startswith("edgelab-extract:")]


def test_errors_are_one_line_naming_the_query(prom: dict[str, object], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc = extract(args(prom, tmp_path / "bad", "--selector", "rate(("))
    err = errors(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("edgelab-extract: bad input: query rate(( from ") and "parse error" in err[0], err
    # Another extraction's directory is refused, not mixed.
    out = tmp_path / "mixed"
    assert extract(args(prom, out, "--selector", "lab_power_watts")) == 0
    capsys.readouterr()
    assert extract(args(prom, out, "--selector", "lab_cpu_seconds")) == 2
    err = errors(capsys.readouterr().err)
    assert len(err) == 1 and "holds another extraction (selectors=" in err[0], err
    assert extract(["--prometheus", str(prom["url"]), "--start", "now-1m", "--end", str(time.time() + 3600),
                    "--out", str(tmp_path / "future")]) == 2
    assert "is in the future" in capsys.readouterr().err
    assert extract(["--prometheus", "http://127.0.0.1:1", "--start", "now-1h", "--end", "now", "--retries", "1",
                    "--api", "query_range", "--out", str(tmp_path / "down"), "--no-progress"]) == 1
    err = errors(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("edgelab-extract: error: ExtractError: listing series:"), err
    for api in ("auto", "remote_read"):
        assert extract(["--prometheus", "http://127.0.0.1:1", "--start", "now-1h", "--end", "now", "--retries", "0",
                        "--api", api, "--out", str(tmp_path / ("down-" + api)), "--no-progress"]) == 1
        err = errors(capsys.readouterr().err)
        assert len(err) == 1 and err[0].startswith("edgelab-extract: error: ExtractError: remote read: "), err
        assert "Connection refused" in err[0] and "/api/v1/read" in err[0], err
    # Remote read takes series selectors; --api auto leaves an expression to range queries.
    assert extract(args(prom, tmp_path / "expr", "--selector", "lab_power_watts * 2", "--api", "remote_read")) == 2
    err = errors(capsys.readouterr().err)
    assert len(err) == 1 and "remote read takes series selectors" in err[0] and "lab_power_watts * 2" in err[0], err
    assert extract(args(prom, tmp_path / "expr", "--selector", "lab_power_watts * 2",
                        "--selector", "lab_power_watts", "--api", "auto")) == 0
    meta = json.loads((tmp_path / "expr" / "metadata.json").read_text())
    assert [q["api"] for q in meta["queries"]] == ["query_range", "remote_read"]


def test_edgelab_sro_evaluates_the_dataset(prom: dict[str, object], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from edgelab.sro.cli import main as sro

    out = tmp_path / "sro"
    start = int(prom["start"])  # type: ignore[call-overload]
    assert extract(["--prometheus", str(prom["url"]), "--start", str(start), "--end", str(start + 1999),
                    "--sampling", "1", "--selector", "lab_power_watts", "--out", str(out), "--no-progress"]) == 0
    report = tmp_path / "evaluation.json"
    rc = sro(["evaluate", "--dataset", str(out / "dataset.parquet"), "--target", column(*SERIES[4]),
              "--horizon", "5s", "--models", "ridge", "--report", str(report)])
    assert rc == 0, capsys.readouterr().err
    assert report.stat().st_size > 0


# ---------------------------------------------------------------- remote read = range queries
IRREGULAR_SECONDS = 3000


def irregular_history(stream: TextIO, start: int) -> None:
    """Series whose range-query values depend on the lookback and the grid: samples every
    1 s with zeros and NaN, every 15 s, every 7 s with a 10-minute gap (longer than the
    5-minute lookback) and a 2-minute one, one that starts late, one that stops early,
    one alternating 0 and 1, and two names in another family."""
    def family(name: str, rows: list[tuple[dict[str, str], list[tuple[int, str]]]]) -> None:
        stream.write("# TYPE %s gauge\n" % name)
        for labels, points in rows:
            text = ",".join('%s="%s"' % item for item in sorted(labels.items()))
            stream.writelines("%s{%s} %s %d\n" % (name, text, value, start + t) for t, value in points)

    seconds = range(IRREGULAR_SECONDS)
    family("irr_dense_value", [
        ({"k": "zeros"}, [(t, "0" if t % 10 < 3 else repr(t * 0.25)) for t in seconds]),
        ({"k": "nan"}, [(t, "NaN" if t % 50 == 0 else repr(-t / 3)) for t in seconds]),
        ({"k": "flip"}, [(t, str(t % 2)) for t in seconds])])
    family("irr_sparse_value", [
        ({"k": "15s"}, [(t, repr(t * 1.5)) for t in seconds if t % 15 == 4]),
        ({"k": "gaps"}, [(t, repr(t + 0.5)) for t in seconds if t % 7 == 0 and not 600 <= t < 1200
                         and not 2000 <= t < 2120])])
    family("irr_edges_value", [
        ({"k": "late"}, [(t, repr(t * 2.0)) for t in seconds if t >= 1700]),
        ({"k": "early"}, [(t, repr(t * 3.0)) for t in seconds if t < 900 and t % 5 == 0])])
    family("other_thing_total", [({"k": "c"}, [(t, repr(float(t // 30))) for t in seconds])])


@pytest.fixture(scope="module")
def irregular(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("extract-irregular")
    start = int(time.time()) - 4 * 3600
    with running_prometheus(tmp, data=backfill(tmp, lambda stream: irregular_history(stream, start))) as server:
        yield {"url": server.url, "start": start}


def same_table(left: pa.Table, right: pa.Table) -> bool:
    """Same schema (names, types, metadata), same nulls, same values with NaN equal to NaN."""
    assert left.schema.equals(right.schema, check_metadata=True), (left.schema, right.schema)
    assert left.num_rows == right.num_rows
    for name in left.column_names:
        a, b = left.column(name), right.column(name)
        assert a.null_count == b.null_count and a.is_null().equals(b.is_null()), name
        if name == "timestamp":
            assert a.equals(b)
        else:
            assert np.array_equal(a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False),
                                  equal_nan=True), name
    return True


def extract_both(url: str, start: int, tmp: Path, *extra: str) -> tuple[pa.Table, pa.Table, list[dict[str, Any]]]:
    tables, metas = [], []
    for api in ("remote_read", "query_range"):
        out = tmp / api
        assert extract(["--prometheus", url, "--start", str(start + 200), "--end", str(start + IRREGULAR_SECONDS + 400),
                        "--out", str(out), "--no-progress", "--api", api, *extra]) == 0
        metas.append(json.loads((out / "metadata.json").read_text()))
        tables.append(pq.read_table(out / "dataset.parquet"))
    assert metas[0]["apis"] == ["remote_read"] and metas[1]["apis"] == ["query_range"]
    return tables[0], tables[1], metas


@pytest.mark.parametrize(("sampling", "segment"), [("1", "700"), ("7", "11000"), ("60", "13")])
def test_remote_read_gives_the_range_queries_dataset(irregular: dict[str, object], tmp_path: Path,
                                                     sampling: str, segment: str) -> None:
    remote, ranged, metas = extract_both(str(irregular["url"]), int(irregular["start"]), tmp_path,  # type: ignore[call-overload]
                                         "--sampling", sampling, "--segment_size", segment)
    assert same_table(remote, ranged)
    assert metas[0]["points_fetched"] == metas[1]["points_fetched"] > 0
    assert metas[0]["raw_samples_fetched"] > 0
    # The data exercise the rules: the lookback bridges the 2-minute gap, not the 10-minute one;
    # NaN samples and series that stop or start late leave empty places.
    gaps = remote.column('irr_sparse_value{k="gaps"}').to_numpy()
    assert np.isnan(gaps).any() and not np.isnan(gaps).all()
    assert np.isnan(remote.column('irr_dense_value{k="nan"}').to_numpy()).any()
    assert remote.num_columns == 9


def test_remote_read_dataset_equals_with_selectors_and_csv(irregular: dict[str, object], tmp_path: Path) -> None:
    outputs = []
    for api in ("remote_read", "query_range"):
        out = tmp_path / api
        assert extract(["--prometheus", str(irregular["url"]), "--start", str(irregular["start"]),
                        "--end", str(int(irregular["start"]) + 1999),  # type: ignore[call-overload]
                        "--sampling", "3", "--out", str(out), "--no-progress", "--api", api, "--format", "csv",
                        "--selector", '{__name__=~"irr_.*",k!~"zeros|flip"}', "--selector", "other_thing_total"]) == 0
        outputs.append((out / "dataset.csv").read_bytes())
    start = int(irregular["start"])  # type: ignore[call-overload]
    rows = len([t for t in range(start, start + 2000) if t % 3 == 0])
    assert outputs[0] == outputs[1] and outputs[0].count(b"\n") == rows + 1


class NoRemoteRead(http.server.BaseHTTPRequestHandler):
    """A proxy in front of Prometheus that answers 404 for /api/v1/read, or with samples
    the `samples` way (as a server that does not stream chunks would)."""

    upstream = ""
    samples = False

    def forward(self) -> None:
        if self.path.startswith("/api/v1/read") and self.samples:
            from edgelab.experiments.remote_read import compress

            payload = compress(b"\x0a\x00")  # a ReadResponse with one empty QueryResult
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Encoding", "snappy")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if self.path.startswith("/api/v1/read"):
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"404 page not found\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        request = urllib.request.Request(self.upstream + self.path, data=body, method=self.command,
                                         headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, payload, kind = response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, payload, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self.forward()

    def do_POST(self) -> None:
        self.forward()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def proxy(irregular: dict[str, object]) -> Iterator[str]:
    handler = type("Handler", (NoRemoteRead,), {"upstream": str(irregular["url"])})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_without_remote_read_auto_falls_back(irregular: dict[str, object], proxy: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    start = int(irregular["start"])  # type: ignore[call-overload]
    common = ["--start", str(start), "--end", str(start + 999), "--sampling", "1", "--no-progress"]
    assert extract(["--prometheus", proxy, *common, "--api", "auto", "--out", str(tmp_path / "auto")]) == 0
    meta = json.loads((tmp_path / "auto" / "metadata.json").read_text())
    assert meta["apis"] == ["query_range"]
    assert "does not serve remote read (HTTP 404" in capsys.readouterr().err
    assert extract(["--prometheus", str(irregular["url"]), *common, "--out", str(tmp_path / "direct")]) == 0  # auto
    direct = json.loads((tmp_path / "direct" / "metadata.json").read_text())
    assert direct["apis"] == ["remote_read"]
    assert same_table(pq.read_table(tmp_path / "auto" / "dataset.parquet"),
                      pq.read_table(tmp_path / "direct" / "dataset.parquet"))
    capsys.readouterr()
    assert extract(["--prometheus", proxy, *common, "--api", "remote_read", "--out", str(tmp_path / "forced")]) == 2
    err = errors(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("edgelab-extract: bad input: %s does not serve remote read (HTTP 404"
                                               % proxy) and "use --api query_range or auto" in err[0], err


class Flapping(http.server.BaseHTTPRequestHandler):
    """/metrics with flap_value while `present` is set, steady_value always."""

    present = threading.Event()

    def do_GET(self) -> None:
        text = "steady_value 1\n" + ("flap_value{k=\"a\"} %d\n" % int(time.time()) if self.present.is_set() else "")
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_staleness_markers_end_a_series_like_in_range_queries(tmp_path: Path) -> None:
    """A series that disappears from a scrape gets a staleness marker: range queries show
    no value from there, although the lookback would still reach its last sample."""
    present = threading.Event()
    handler = type("Handler", (Flapping,), {"present": present})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
              "scrape_configs": [{"job_name": "flap",
                                  "static_configs": [{"targets": ["127.0.0.1:%d" % server.server_address[1]]}]}]}
    try:
        with running_prometheus(tmp_path / "prometheus", config=config) as prom:
            client = PrometheusClient(prom.url)

            def scraped(present: bool) -> None:
                deadline = time.monotonic() + 60
                while bool(client.query("flap_value")) != present:
                    assert time.monotonic() < deadline, "flap_value never became %s" % present
                    time.sleep(0.2)

            present.set()
            scraped(True)
            began = time.time()
            time.sleep(3)
            present.clear()
            scraped(False)  # the staleness marker is in
            time.sleep(4)
            present.set()
            scraped(True)
            time.sleep(3)
            ended = time.time() - 1
            outputs = []
            for api in ("remote_read", "query_range"):
                out = tmp_path / api
                assert extract(["--prometheus", prom.url, "--start", str(began), "--end", str(ended), "--sampling",
                                "1", "--segment_size", "3", "--out", str(out), "--no-progress", "--api", api]) == 0
                outputs.append(pq.read_table(out / "dataset.parquet"))
                assert json.loads((out / "metadata.json").read_text())["apis"] == [api]
    finally:
        server.shutdown()
        server.server_close()
    remote, ranged = outputs
    assert same_table(remote, ranged)
    flap = remote.column('flap_value{instance="127.0.0.1:%d",job="flap",k="a"}'
                         % server.server_address[1]).to_numpy(zero_copy_only=False)
    seen = np.flatnonzero(~np.isnan(flap))
    assert len(seen) >= 4 and np.isnan(flap[seen[0]:seen[-1]]).sum() >= 3, flap  # the marker's gap, not filled


def test_no_pandas_import(prom: dict[str, object], tmp_path: Path) -> None:
    """pyarrow's pa.array() from numpy and to_numpy() import pandas when it is installed
    (half a CPU second per run); the extractor builds and reads Arrow arrays through
    buffers instead."""
    pytest.importorskip("pandas")
    runs = [args(prom, tmp_path / (api + fmt), "--api", api, "--format", fmt, "--selector", "lab_power_watts",
                 "--log-level", "WARNING")
            for api in ("query_range", "remote_read") for fmt in ("parquet", "csv")]
    code = ("import sys, json\nfrom edgelab.experiments.extract import main\n"
            "for argv in json.loads(sys.argv[1]):\n    assert main(argv) == 0\n"
            "print('pandas' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(runs)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_a_server_answering_samples_to_a_chunks_request_gets_range_queries(
        irregular: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    handler = type("Handler", (NoRemoteRead,), {"upstream": str(irregular["url"]), "samples": True})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d" % server.server_address[1]
    start = int(irregular["start"])  # type: ignore[call-overload]
    common = ["--start", str(start), "--end", str(start + 299), "--sampling", "1", "--no-progress"]
    try:
        assert extract(["--prometheus", url, *common, "--out", str(tmp_path / "auto")]) == 0
        assert json.loads((tmp_path / "auto" / "metadata.json").read_text())["apis"] == ["query_range"]
        assert "does not serve remote read (a frame runs past the response" in capsys.readouterr().err
        assert extract(["--prometheus", url, *common, "--api", "remote_read", "--out", str(tmp_path / "rr")]) == 2
        err = errors(capsys.readouterr().err)
        assert len(err) == 1 and "does not serve remote read" in err[0] and "a proxy in between?" in err[0], err
    finally:
        server.shutdown()
        server.server_close()
