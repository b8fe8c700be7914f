"""edgelab-extract against a real Prometheus (Debian's /usr/bin/prometheus) holding
synthetic history backfilled with promtool: 12,000 points per series at 1 s (more than
one range query's 11,000), values known exactly, three metric families. Covers the
whole dataset, selectors, CSV, resume after a killed run, and errors naming the query."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow.parquet as pq
import pytest
from edgelab.experiments.extract import main as extract
from edgelab.learn.tables import read_table
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


def test_every_series_over_the_11000_point_limit(prom: dict[str, object], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "all"
    rc = extract(args(prom, out, "--segment_size", "11000", "--n_threads", "2"))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    check_dataset(out / "dataset.parquet", list(range(len(SERIES))), int(prom["start"]))  # type: ignore[call-overload]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["segments"] == 2 and meta["rows"] == SAMPLES and meta["series"] == len(SERIES)
    # One request per segment for every family together (7 series fit the default budget).
    assert len(meta["queries"]) == 1 and meta["requests"] == 2
    assert meta["queries"][0]["query"].startswith('{__name__=~"')
    labels = {c["name"]: c["labels"] for c in meta["columns"]}
    assert labels[column(*SERIES[6])]["path"] == 'a"]]}b'
    assert pq.read_schema(out / "dataset.parquet").field("timestamp").type.tz == "UTC"


def test_families_packed_under_the_point_budget(prom: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "packed"
    # 2 series x 5,000 points per request: lab_cpu (3 series) splits by name, lab_power (3) too.
    assert extract(args(prom, out, "--segment_size", "5000", "--max-points-per-request", "10000")) == 0
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


def test_resume_after_a_killed_run(prom: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "resume"
    command = [sys.executable, "-m", "edgelab.experiments.extract",
               *args(prom, out, "--segment_size", "500", "--n_threads", "1", "--max-points-per-request", "1500")]
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
    assert meta["segments_reused"] >= 1
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
                    "--out", str(tmp_path / "down"), "--no-progress"]) == 1
    err = errors(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("edgelab-extract: error: ExtractError: listing series:"), err


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
