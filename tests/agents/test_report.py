"""edgelab-report on the stored run of tests/data/report (generate.py there): the
images, the page, and summary.json against figures computed here from the raw files;
the other KPIs, a CSV dataset with power, and every kind of bad input."""

from __future__ import annotations

import copy
import gzip
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from edgelab.experiments import report
from matplotlib import image

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "report"
SPEC = ROOT / "experiments" / "lab-smoke.yml"
T0 = 1767225600.0  # the stored run's first frame (generate.py)
PNG = b"\x89PNG\r\n\x1a\n"
BIN_ERROR = math.sqrt(report.BIN_RATIO) - 1  # a percentile is its bin's geometric middle


def run_report(out: Path, *extra: str, dataset: Path = DATA / "dataset.parquet") -> int:
    return report.main(["--dataset", str(dataset), "--out", str(out), *extra])


FULL = ("--results", str(DATA / "results.jsonl.gz"), "--feeder", str(DATA / "feeder.json"),
        "--decisions", str(DATA / "decisions.jsonl"))


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert run_report(out, *FULL, "--spec", str(SPEC)) == 0
    return out


def results_by_hand() -> tuple[list[dict[str, Any]], int]:
    """The usable records of the stored results, and the number of unusable lines."""
    records, bad = [], 0
    with gzip.open(DATA / "results.jsonl.gz", "rt") as stream:
        for line in stream:
            try:
                record = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if "produced" in record and "published" in record:
                records.append(record)
            else:
                bad += 1
    return records, bad


def nearest_rank(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q * 100, method="inverted_cdf"))


def spec_with(tmp_path: Path, **kpi: Any) -> Path:
    spec = yaml.safe_load(SPEC.read_text())
    spec["kpi"] = {**spec["kpi"], **kpi}
    path = tmp_path / "lab-smoke.yml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ---------------------------------------------------------------- the stored run
def test_images_are_png_and_not_empty(full: Path) -> None:
    for name in report.PLOTS:
        path = full / f"{name}.png"
        assert path.read_bytes()[:8] == PNG, name
        pixels = image.imread(str(path))
        assert pixels.shape[0] >= 250 and pixels.shape[1] >= 800, name
        assert float(pixels[..., :3].std()) > 0.05, f"{name} is blank"


def test_the_page_names_every_plot_and_the_figures(full: Path) -> None:
    page = (full / "report.html").read_text()
    summary = json.loads((full / "summary.json").read_text())
    for name, title in report.PLOTS.items():
        escaped = title.replace("'", "&#x27;")
        assert f'<h2 id="{name}">{escaped}</h2>' in page
        assert f"{name}.png" in page
    assert page.count('src="data:image/png;base64,') == len(report.PLOTS)  # one self-contained file
    table = page[page.index('<table id="summary">'):page.index("</table>")]
    for label, value in (("frames offered", "1180"), ("frames processed", str(summary["frames_processed"])),
                         ("frames lost", str(summary["frames_lost"])), ("SLA violations", "2"),
                         ("scale actions", "3"), ("actuations failed", "1"),
                         ("mean node power", "no power series in the dataset"),
                         ("end-to-end latency p99", "%.3f s" % summary["end_to_end_latency_p99_s"])):
        assert f"<th>{label}</th><td>{value}</td>" in table, label
    assert "<tr class=bad><th>SLA violations</th>" in table
    assert "no power series in the dataset" in page
    assert "end_to_end_latency_p95 &le; 2 s per 30 s window: 2 of 6 windows violate" in page


def test_summary_equals_the_figures_computed_by_hand(full: Path) -> None:
    summary = json.loads((full / "summary.json").read_text())
    feeder = json.loads((DATA / "feeder.json").read_text())
    records, bad = results_by_hand()
    distinct = {r["frame"] for r in records}
    assert summary["frames_offered"] == feeder["frames_acked"] == 1180
    assert summary["frames_processed"] == len(distinct)
    assert summary["frames_lost"] == feeder["frames_acked"] - len(distinct)
    assert summary["result_records"] == len(records)
    assert summary["duplicate_results"] == len(records) - len(distinct) == 5
    assert summary["unusable_records"] == bad == 2
    assert summary["frame_errors"] == sum(1 for r in records if r["error"]) == 2
    assert summary["consumers_seen"] == len({r["consumer"] for r in records}) == 3
    e2e = [r["published"] - r["produced"] for r in records]
    inference = [r["inference_end"] - r["inference_start"] for r in records]
    for q in (50, 95, 99):
        assert summary[f"end_to_end_latency_p{q}_s"] == pytest.approx(nearest_rank(e2e, q / 100), rel=BIN_ERROR)
        assert summary[f"inference_latency_p{q}_s"] == pytest.approx(nearest_rank(inference, q / 100),
                                                                     rel=BIN_ERROR)
    # The SLA: p95 of the end-to-end latency per 30 s window from the first frame.
    windows: dict[int, list[float]] = defaultdict(list)
    for r in records:
        windows[int((r["produced"] - T0) // 30)].append(r["published"] - r["produced"])
    violations = sum(1 for values in windows.values() if nearest_rank(values, 0.95) > 2.0)
    assert summary["sla_violations"] == violations == 2
    assert summary["sla_windows"] == len(windows) == 6
    detail = {round(w["start_s"]): w["value"] for w in summary["sla_windows_detail"] if w["value"] is not None}
    assert detail == pytest.approx({w * 30: nearest_rank(v, 0.95) for w, v in windows.items()}, rel=BIN_ERROR)
    # The cluster agent's decisions (log lines and JSON lines).
    decided = [json.loads(line[line.index("{"):]) for line in (DATA / "decisions.jsonl").read_text().splitlines()
               if "{" in line]
    assert summary["scale_ups"] == sum(1 for d in decided if d.get("action") == "scale_up") == 2
    assert summary["scale_downs"] == 1 and summary["scale_actions"] == 3
    assert summary["actuations_failed"] == sum(1 for d in decided if d["event"] == "actuation" and not d["ok"]) == 1
    # Node CPU: 1 - idle seconds per second per CPU, each node's mean over the run, then their mean.
    table = pq.read_table(DATA / "dataset.parquet")
    times = table.column("timestamp").cast("int64").to_numpy() / 1000.0
    t1 = max(max(r["published"] for r in records), T0 + feeder["duration_s"])
    means = []
    for node in ("lab1", "lab2"):
        idle = sum(table.column(n).to_numpy() for n in table.column_names if 'mode="idle"' in n and f'"{node}"' in n)
        busy = 1 - np.diff(idle) / np.diff(times) / 2
        inside = (times[1:] >= T0) & (times[1:] <= t1)
        means.append(busy[inside].mean())
    assert summary["node_cpu_mean"] == pytest.approx(float(np.mean(means)), abs=1e-6)
    assert summary["node_power_watts_mean"] is None
    assert summary["run_start"] == "2026-01-01T00:00:00Z"


def test_frames_per_step_are_counted_once_by_publish_time() -> None:
    agg = report.read_results(DATA / "results.jsonl.gz", 10.0)
    records, _ = results_by_hand()
    seen: set[str] = set()
    by_hand: dict[int, int] = defaultdict(int)
    for r in records:
        if r["frame"] not in seen:
            seen.add(r["frame"])
            by_hand[int(r["published"] // 10)] += 1
    assert dict(agg.processed) == by_hand
    consumers: dict[int, set[str]] = defaultdict(set)
    for r in records:
        consumers[int(r["published"] // 10)].add(r["consumer"])
    assert dict(agg.consumers) == consumers


def test_the_same_consumer_name_on_two_hosts_counts_twice(tmp_path: Path) -> None:
    records, _ = results_by_hand()
    one = dict(records[0], frame="a", host="nuc2", consumer="edgelab-consumer@1")
    lines = [one, dict(one, frame="b", host="nuc3"), dict(one, frame="c", host="nuc3"),
             dict(one, frame="d", host=None, consumer="edgelab-consumer@2")]  # before hosts were written
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    agg = report.read_results(path, 10.0)
    assert agg.names == {"nuc2/edgelab-consumer@1", "nuc3/edgelab-consumer@1", "edgelab-consumer@2"}


def test_offered_frames_are_spread_over_the_steps(tmp_path: Path) -> None:
    feeder = json.loads((DATA / "feeder.json").read_text())
    dataset = report.read_dataset(DATA)
    run = report.Run(4.0, T0, T0 + 180, dataset, None, feeder, None, None)
    offered = run.offered_per_bucket()
    assert offered is not None
    assert sum(offered.values()) == pytest.approx(1180)
    first = int(T0 // 4)
    # Window 0 holds 20 frames in 10 s: 8 in [0, 4), 8 in [4, 8), 4 in [8, 10) and window 1's 3/s after.
    assert [offered[first + i] for i in range(3)] == pytest.approx([8.0, 8.0, 4.0 + 2 * 3.0])


def test_processed_fraction_and_lag_slas(tmp_path: Path) -> None:
    records, _ = results_by_hand()
    feeder = json.loads((DATA / "feeder.json").read_text())
    out = tmp_path / "fraction"
    assert run_report(out, *FULL, "--spec", str(spec_with(tmp_path, name="processed_fraction", sla=0.98))) == 0
    summary = json.loads((out / "summary.json").read_text())
    seen: set[str] = set()
    got: dict[int, int] = defaultdict(int)
    for r in records:
        if r["frame"] not in seen:
            seen.add(r["frame"])
            got[int((r["produced"] - T0) // 30)] += 1
    offered = [sum(row["frames"] for row in feeder["per_window"][w * 3:w * 3 + 3]) for w in range(6)]
    fractions = [got[w] / offered[w] for w in range(6)]
    assert [w["value"] for w in summary["sla_windows_detail"]][:6] == pytest.approx(fractions)
    assert summary["sla_violations"] == sum(1 for f in fractions if f < 0.98) > 0

    out = tmp_path / "lag"
    assert run_report(out, *FULL, "--spec", str(spec_with(tmp_path, name="consumer_lag", sla=45))) == 0
    summary = json.loads((out / "summary.json").read_text())
    table = pq.read_table(DATA / "dataset.parquet")
    times = table.column("timestamp").cast("int64").to_numpy() / 1000.0
    lag = sum(table.column(n).to_numpy() for n in table.column_names if n.startswith("edgelab_consumer_lag"))
    maxima = [lag[(times >= T0 + 30 * w) & (times < T0 + 30 * w + 30)].max() for w in range(6)]
    assert [w["value"] for w in summary["sla_windows_detail"]][:6] == pytest.approx(maxima)
    assert summary["sla_violations"] == sum(1 for m in maxima if m > 45)


def test_csv_dataset_with_power_and_nothing_else(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["timestamp,node_rapl_package_joules_total{node=\"a\"},node_rapl_package_joules_total{node=\"b\"},"
            "node_rapl_dram_joules_total{node=\"a\"},up{node=\"a\"},node:cpu_utilisation:rate1m{node=\"a\"},"
            "node:cpu_utilisation:rate1m{node=\"b\"}"]
    for i in range(13):  # a: 40 W package + 10 W DRAM; b: 30 W, its counter reset at the 7th sample
        rows.append("%d,%g,%g,%g,1,%s,0.2" % (1000 + 5 * i, 200 * i, 150 * i if i < 7 else 150 * (i - 7), 50 * i,
                                             "" if i % 3 == 0 else "%g" % (0.1 * (i % 4))))
    (tmp_path / "dataset.csv").write_text("\n".join(rows) + "\n")
    assert run_report(tmp_path / "out", dataset=tmp_path) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["node_power_watts_mean"] == pytest.approx((50 + 30) / 2)
    cpu_a = [0.1 * (i % 4) for i in range(13) if i % 3]  # the recording rule's values; blanks left out
    assert summary["node_cpu_mean"] == pytest.approx((sum(cpu_a) / len(cpu_a) + 0.2) / 2)
    assert summary["frames_processed"] is None
    assert summary["sla_violations"] is None
    page = (tmp_path / "out" / "report.html").read_text()
    assert "no power series" not in page
    assert "<th>frames processed</th><td>not measured</td>" in page
    assert "SLA not evaluated: no --spec given" in page
    assert "report.html" in capsys.readouterr().out


# ---------------------------------------------------------------- parts
def test_histogram_percentiles_are_within_a_bin_of_the_exact_ones() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(-1.0, 1.5, 5000)
    hist = np.zeros(report.N_BINS, dtype=np.int64)
    for v in values:
        hist[report.bin_of(float(v))] += 1
    for q in (0.01, 0.5, 0.9, 0.95, 0.99, 1.0):
        assert report.percentile(hist, q) == pytest.approx(nearest_rank(list(values), q), rel=BIN_ERROR)
    assert report.percentile(np.zeros(report.N_BINS, dtype=np.int64), 0.5) is None
    assert report.bin_of(-3.0) == 0 and report.bin_of(math.nan) == 0 and report.bin_of(1e9) == report.N_BINS - 1


def test_frame_keys_are_counted_once() -> None:
    seen = report.SeenFrames()
    keys = ["feeder-0", "feeder-17", "cam-17", "feeder-17", "odd key", "odd key", "x-99999999999", "x-99999999999",
            "feeder-100000"]
    assert [seen.add(k) for k in keys] == [True, True, True, False, True, False, True, False, True]


def test_series_names_are_parsed() -> None:
    assert report.parse_series('node_cpu_seconds_total{cpu="0",mode="idle",node="a\\"b"}') == (
        "node_cpu_seconds_total", {"cpu": "0", "mode": "idle", "node": 'a"b'})
    assert report.parse_series("node:cpu_utilisation:rate1m") == ("node:cpu_utilisation:rate1m", {})


# ---------------------------------------------------------------- bad input
def bad(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert report.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = str(DATA / "dataset.parquet")
    err = bad(tmp_path, capsys, "--dataset", str(tmp_path / "missing"))
    assert err == f"edgelab-report: bad input: --dataset {tmp_path / 'missing'}: no such file or directory"
    assert "no dataset.parquet or dataset.csv" in bad(tmp_path, capsys, "--dataset", str(tmp_path))
    (tmp_path / "x.csv").write_text("when,value\n1,2\n")
    assert "no timestamp column" in bad(tmp_path, capsys, "--dataset", str(tmp_path / "x.csv"))
    (tmp_path / "y.csv").write_text("timestamp,up{node=\"a\"}\n1,2\n")
    assert "no usable column" in bad(tmp_path, capsys, "--dataset", str(tmp_path / "y.csv"))
    (tmp_path / "z.parquet").write_bytes(b"PAR1 not really")
    assert "not a readable Parquet file" in bad(tmp_path, capsys, "--dataset", str(tmp_path / "z.parquet"))
    assert "No such file or directory" in bad(tmp_path, capsys, "--dataset", ds, "--results", str(tmp_path / "r"))
    (tmp_path / "r.jsonl").write_text("hello\n{\"frame\": 3}\n")
    err = bad(tmp_path, capsys, "--dataset", ds, "--results", str(tmp_path / "r.jsonl"))
    assert "no consumer result records (2 unusable, first at line 1:" in err
    (tmp_path / "r.jsonl.gz").write_text("not gzip")
    assert "--results" in bad(tmp_path, capsys, "--dataset", ds, "--results", str(tmp_path / "r.jsonl.gz"))
    (tmp_path / "f.json").write_text('{"per_window": [{"start_s": 0}]}')
    assert "not an edgelab-feeder report" in bad(tmp_path, capsys, "--dataset", ds, "--feeder",
                                                 str(tmp_path / "f.json"))
    (tmp_path / "d.jsonl").write_text("starting\n{\"event\": \"other\"}\n")
    assert "no cluster agent decision records" in bad(tmp_path, capsys, "--dataset", ds, "--decisions",
                                                      str(tmp_path / "d.jsonl"))
    spec = yaml.safe_load(SPEC.read_text())
    broken = copy.deepcopy(spec)
    broken["kpi"]["sla"] = -1
    (tmp_path / "lab-smoke.yml").write_text(yaml.safe_dump(broken))
    err = bad(tmp_path, capsys, "--dataset", ds, "--spec", str(tmp_path / "lab-smoke.yml"))
    assert err.startswith("edgelab-report: bad input: --spec ") and "kpi.sla: must be > 0" in err
    with pytest.raises(SystemExit) as exit_:  # argparse's usage message
        report.main(["--dataset", ds, "--out", str(tmp_path), "--step", "0"])
    assert exit_.value.code == 2
    assert "--step: must be > 0" in capsys.readouterr().err


# ---------------------------------------------------------------- the results topic
def test_the_results_topic_is_copied_from_since_and_reported(tmp_path: Path) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient
    from support.tansu import MISSING, running_tansu, tansu_binary

    binary = tansu_binary()
    if binary is None:
        pytest.skip(MISSING)
    with gzip.open(DATA / "results.jsonl.gz", "rt") as stream:
        lines = [line.rstrip("\n") for line in stream]
    with running_tansu(binary) as address:
        admin = KafkaAdminClient(bootstrap_servers=address, client_id="edgelab-test")
        try:
            admin.create_topics({"edgelab.detections": {"num_partitions": 3}})
            admin.wait_for_topics(["edgelab.detections"], timeout_ms=20000)
        finally:
            admin.close()
        producer = KafkaProducer(bootstrap_servers=address)
        # An earlier run's results, published before --since: neither copied nor counted.
        old = json.loads(lines[0])
        for i in range(20):
            earlier = {**old, "frame": f"old-{i}", "produced": T0 - 3600, "published": T0 - 3599}
            producer.send("edgelab.detections", json.dumps(earlier).encode(), key=b"old-%d" % i,
                          timestamp_ms=int((T0 - 3599) * 1000))
        for i, line in enumerate(lines):
            producer.send("edgelab.detections", line.encode(), key=b"k%d" % i, partition=i % 3,
                          timestamp_ms=int(T0 * 1000) + i)
        producer.flush()
        producer.close()
        out = tmp_path / "out"
        dump = tmp_path / "results.jsonl"
        assert run_report(out, "--bootstrap", address, "--results", str(dump), "--since", "2026-01-01T00:00:00Z",
                          "--feeder", str(DATA / "feeder.json")) == 0
    copied_lines = dump.read_text().splitlines()
    assert len(copied_lines) == len(lines), (len(copied_lines), len(lines), len(set(copied_lines) - set(lines)))
    assert sorted(copied_lines) == sorted(lines)
    copied = json.loads((out / "summary.json").read_text())
    direct = tmp_path / "direct"
    assert run_report(direct, "--results", str(DATA / "results.jsonl.gz"), "--feeder", str(DATA / "feeder.json")) == 0
    from_file = json.loads((direct / "summary.json").read_text())
    assert copied.pop("notes")[0].startswith("2 result lines were not usable")  # at other line numbers
    from_file.pop("notes")
    assert copied == from_file and copied["frames_processed"] == 1145


def test_results_outside_since_until_are_left_out(tmp_path: Path) -> None:
    agg = report.read_results(DATA / "results.jsonl.gz", 10.0, T0 + 60, T0 + 120)
    records, _ = results_by_hand()
    inside = [r for r in records if T0 + 60 <= r["produced"] < T0 + 120]
    assert agg.records == len(inside) and agg.outside == len(records) - len(inside)
    assert agg.distinct == len({r["frame"] for r in inside})


def test_copying_needs_a_results_file_and_a_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = str(DATA / "dataset.parquet")
    assert "--bootstrap needs --results FILE" in bad(tmp_path, capsys, "--dataset", ds, "--bootstrap", "x:1")
    assert report.main(["--dataset", ds, "--out", str(tmp_path), "--bootstrap", "nohost", "--results",
                        str(tmp_path / "r.jsonl")]) == 2
    assert "--bootstrap: 'nohost' is not HOST:PORT" in capsys.readouterr().err


def test_no_broker_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from support.tansu import free_port

    err = bad(tmp_path, capsys, "--dataset", str(DATA), "--bootstrap", f"127.0.0.1:{free_port()}", "--results",
              str(tmp_path / "r.jsonl"), "--kafka-timeout", "5")
    assert err.startswith("edgelab-report: bad input: kafka 127.0.0.1:")


def test_the_run_starts_at_the_feeders_start_when_it_reports_one() -> None:
    feeder = json.loads((DATA / "feeder.json").read_text())
    dataset = report.read_dataset(DATA)
    results = report.read_results(DATA / "results.jsonl.gz", 10.0)
    spec = report.read_spec(SPEC)
    assert report.run_range(dataset, results, feeder, spec, None) == (T0, results.last_published, "results")
    assert report.run_range(dataset, None, feeder, spec, T0 + 1) == (T0 + 1, T0 + 181, "--since")
    assert report.run_range(dataset, None, None, None, None) == (T0 - 30, T0 + 210, "the dataset's start")
    started = {**feeder, "started": T0 - 3}
    t0, t1, origin = report.run_range(dataset, results, started, spec, None)
    assert (t0, origin) == (T0 - 3, "feeder")
    offered = report.Run(10.0, t0, t1, dataset, results, started, None, spec).offered_per_bucket()
    assert offered is not None
    # Window 0 (20 frames, 2/s) covers [T0 - 3, T0 + 7), window 1 (3/s) starts at T0 + 7.
    assert [offered[int(T0 // 10) - 1], offered[int(T0 // 10)]] == pytest.approx([6.0, 14.0 + 9.0])
