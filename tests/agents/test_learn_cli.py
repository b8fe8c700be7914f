"""edgelab-ima select and edgelab-sro evaluate as a user runs them: the happy path
from CSV files to a report and predictions that reproduce the printed figures, and
every kind of bad input answered with one line on stderr and exit code 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from edgelab.ima.cli import main as ima
from edgelab.learn import synthetic
from edgelab.learn.forecast import nmae
from edgelab.sro.cli import main as sro

T0 = 1_767_225_600


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> str:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """X (metrics) and Y (KPI) of a synthetic service, 2,000 samples at 5 s."""
    tmp = tmp_path_factory.mktemp("learn-cli")
    s = synthetic.service(2000, 60, step=5.0, seed=7)
    x_rows = [[int(t)] + ["" if np.isnan(v) else "%.6g" % v for v in s.x[i]] for i, t in enumerate(s.timestamps)]
    y_rows = [[int(t), "%.3f" % s.y[i]] for i, t in enumerate(s.timestamps)]
    return {"x": write_csv(tmp / "x.csv", ["timestamp", *s.names], x_rows),
            "y": write_csv(tmp / "y.csv", ["timestamp", "latency_ms"], y_rows),
            "informative": ",".join(s.informative), "dir": str(tmp)}


def one_line_bad_input(capsys: pytest.CaptureFixture[str], prog: str, rc: int, expected: str) -> None:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("%s: bad input: " % prog), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err


def test_ima_select_then_sro_evaluate(files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    report, output = tmp_path / "selection.json", tmp_path / "dataset.csv"
    rc = ima(["select", "--x", files["x"], "--y", files["y"], "--k", "6", "--report", str(report),
              "--output", str(output)])
    out = capsys.readouterr().out
    assert rc == 0
    selection = json.loads(report.read_text())
    names = [item["metric"] for item in selection["selected"]]
    assert set(files["informative"].split(",")) <= set(names)
    assert selection["k"] == 6 and selection["method"] == "f_regression" and selection["step_seconds"] == 5.0
    assert "const_metric_0" in selection["dropped_metrics"]
    assert all(name in out for name in names)
    with output.open() as stream:
        header = next(csv.reader(stream))
    assert header == ["timestamp", "latency_ms", *names]

    evaluation, predictions = tmp_path / "evaluation.json", tmp_path / "predictions.csv"
    rc = sro(["evaluate", "--dataset", str(output), "--target", "latency_ms", "--horizon", "30s",
              "--report", str(evaluation), "--predictions", str(predictions)])
    out = capsys.readouterr().out
    assert rc == 0
    result = json.loads(evaluation.read_text())
    assert result["horizon_seconds"] == 30.0 and result["step_seconds"] == 5.0
    assert [c["name"] for c in result["candidates"]] == ["persistence", "moving_average", "ridge", "hgb"]
    assert sum(c["chosen"] for c in result["candidates"]) == 1
    for c in result["candidates"]:
        assert c["name"] in out and "%.4f" % c["test_nmae"] in out
    with predictions.open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == result["samples"]["test"]
    actual = np.array([float(r["actual"]) for r in rows])
    forecast = np.array([float(r["forecast"]) for r in rows])
    assert nmae(actual, forecast) == pytest.approx(result["test_nmae"], abs=1e-6)  # the figure is reproducible
    # The forecast is for the time on its row: the actual there is the KPI observed then.
    with open(files["y"]) as stream:
        kpi = {int(r["timestamp"]): float(r["latency_ms"]) for r in csv.DictReader(stream)}
    assert all(kpi[int(float(r["timestamp"]))] == float(r["actual"]) for r in rows[:50])

    rc = sro(["evaluate", "--dataset", str(output), "--target", "latency_ms", "--horizon", "30s", "--metrics-only",
              "--report", str(evaluation)])
    out = capsys.readouterr().out
    assert rc == 0
    kinds = {c["name"]: c["kind"] for c in json.loads(evaluation.read_text())["candidates"]}
    assert kinds == {"training_mean": "baseline", "persistence": "reference", "moving_average": "reference",
                     "ridge": "model", "hgb": "model"}
    assert "training_mean" in out


def test_sro_evaluate_parquet_gives_the_csv_result(files: dict[str, str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x = np.genfromtxt(files["x"], delimiter=",", names=True)
    y = np.genfromtxt(files["y"], delimiter=",", names=True)
    names = [name for name in x.dtype.names if name != "timestamp"]
    table = pa.table({"time": pa.array((x["timestamp"] * 1e6).astype(np.int64), type=pa.timestamp("us", tz="UTC")),
                      "latency_ms": y["latency_ms"], **{name: x[name] for name in names}})
    parquet = tmp_path / "data.parquet"
    pq.write_table(table, parquet)
    text = tmp_path / "data.csv"
    write_csv(text, ["time", "latency_ms", *names],
              [[int(t), y["latency_ms"][i], *("" if np.isnan(x[n][i]) else repr(float(x[n][i])) for n in names)]
               for i, t in enumerate(x["timestamp"])])
    reports = []
    for dataset in (parquet, text):
        report = tmp_path / (dataset.name + ".json")
        rc = sro(["evaluate", "--dataset", str(dataset), "--target", "latency_ms", "--horizon", "30s", "--k", "8",
                  "--models", "ridge", "--timestamp-column", "time", "--report", str(report)])
        assert rc == 0, capsys.readouterr().err
        reports.append(json.loads(report.read_text()))
    for report in reports:  # timings differ from run to run
        del report["selection"]["seconds"]
        for candidate in report["candidates"]:
            del candidate["train_seconds"]
    assert reports[0] == reports[1]
    assert reports[0]["selection"]["k"] == 8 and len(reports[0]["features"]) == 8


@pytest.mark.parametrize(("case", "expected"), [
    ("malformed", "line 3 has 3 cells, the header has 2"),
    ("no-timestamp-column", "no timestamp column 'time'"),
    ("unparseable-timestamp", "neither epoch seconds nor ISO 8601"),
    ("naive-timestamp", "no time zone"),
    ("k-zero", "K must be a whole number > 0"),
    ("k-too-big", "K=500 but there are only"),
    ("unknown-y-field", "unknown column 'p99'"),
    ("empty", "is empty"),
    ("header-only", "no data rows"),
    ("missing-file", "No such file or directory"),
    ("no-overlap", "no common time range"),
    ("query-without-prometheus", "--query only applies with --prometheus"),
])
def test_ima_bad_input(case: str, expected: str, files: dict[str, str], tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    y, k, extra = files["y"], "3", []
    if case == "malformed":
        y = write_csv(tmp_path / "y.csv", ["timestamp", "kpi"], [[T0, 1], [T0 + 5, 2, 3]])
    elif case == "no-timestamp-column":
        extra = ["--timestamp-column", "time"]
    elif case == "unparseable-timestamp":
        y = write_csv(tmp_path / "y.csv", ["timestamp", "kpi"], [[T0, 1], ["tomorrow", 2]])
    elif case == "naive-timestamp":
        y = write_csv(tmp_path / "y.csv", ["timestamp", "kpi"], [["2026-01-01T00:00:00", 1]])
    elif case == "k-zero":
        k = "0"
    elif case == "k-too-big":
        k = "500"
    elif case == "unknown-y-field":
        extra = ["--y-field", "p99"]
    elif case == "empty":
        (tmp_path / "y.csv").write_text("")
        y = str(tmp_path / "y.csv")
    elif case == "header-only":
        y = write_csv(tmp_path / "y.csv", ["timestamp", "kpi"], [])
    elif case == "missing-file":
        y = str(tmp_path / "absent.csv")
    elif case == "no-overlap":
        y = write_csv(tmp_path / "y.csv", ["timestamp", "kpi"], [[T0 - 86400 + 5 * i, i] for i in range(50)])
    elif case == "query-without-prometheus":
        extra = ["--query", "up"]
    rc = ima(["select", "--x", files["x"], "--y", y, "--k", k, *extra])
    one_line_bad_input(capsys, "edgelab-ima", rc, expected)


@pytest.mark.parametrize(("args", "expected"), [
    (["--target", "nope", "--horizon", "30s"], "unknown column 'nope'"),
    (["--target", "latency_ms", "--features", "ghost", "--horizon", "30s"], "unknown column 'ghost'"),
    (["--target", "latency_ms", "--horizon", "soon"], "'soon' is not a duration"),
    (["--target", "latency_ms", "--horizon", "32s"], "not a whole number of sampling steps (5s)"),
    (["--target", "latency_ms", "--horizon", "3h"], "fewer than one window"),
    (["--target", "latency_ms", "--horizon", "30s", "--k", "0"], "K must be a whole number > 0"),
])
def test_sro_bad_input(args: list[str], expected: str, files: dict[str, str], tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    dataset = tmp_path / "data.csv"
    rc = ima(["select", "--x", files["x"], "--y", files["y"], "--k", "3", "--output", str(dataset)])
    assert rc == 0
    capsys.readouterr()
    rc = sro(["evaluate", "--dataset", str(dataset), *args])
    one_line_bad_input(capsys, "edgelab-sro", rc, expected)


def test_sro_bad_input_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = write_csv(tmp_path / "d.csv", ["timestamp", "kpi", "m"], [[T0 + 5 * i, i % 7, i % 3] for i in range(40)])
    report = tmp_path / "report.json"
    rc = sro(["evaluate", "--dataset", dataset, "--target", "kpi", "--horizon", "10s", "--report", str(report)])
    one_line_bad_input(capsys, "edgelab-sro", rc, "too few samples")
    assert list(tmp_path.iterdir()) == [tmp_path / "d.csv"]


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["serve"], {}, "PROMETHEUS_URL"),
    (["serve", "--listen", "nowhere"], {"PROMETHEUS_URL": "http://127.0.0.1:9"}, "--listen must be HOST:PORT"),
    (["serve"], {"PROMETHEUS_URL": "http://127.0.0.1:9", "PROMETHEUS_USERNAME": "edgelab",
                 "PROMETHEUS_PASSWORD_FILE": "/nonexistent/password"}, "prometheus"),
])
def test_ima_serve_refuses_bad_settings(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str], expected: str) -> None:
    for name in ("PROMETHEUS_URL", "PROMETHEUS_USERNAME", "PROMETHEUS_PASSWORD_FILE", "PROMETHEUS_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    rc = ima(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("edgelab-ima: config error:") and expected in err[0], err
