"""edgelab-train and edgelab.train.publish against a real MLflow tracking server
(`mlflow server` on loopback, SQLite store, served artifacts; the run's shared one,
every model and experiment named uniquely, and a basic-auth server of its own for the
password test): a first model becomes
`production`; a better one takes the alias; a worse one is registered and leaves it;
bad input is one line, exit 2, and nothing is logged or registered; the password
comes from a file, never the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from edgelab import train
from support.mlflow_server import MlflowServer, free_port, running_mlflow, stop, unique_name

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (requirements.txt)")
from mlflow.tracking import MlflowClient  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402

START = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.fixture
def tracking_uri(mlflow_server: MlflowServer) -> str:
    """The run's shared tracking server; every test names its models with unique_name()."""
    return mlflow_server.uri


@pytest.fixture
def client(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return MlflowClient(tracking_uri=tracking_uri)


def dataset(path: Path, rows: int, noise: float, *, seed: int = 1, signal: float = 1.0) -> Path:
    """CSV: timestamp, a, b, c, latency = 10 + signal * (3a - 2b) + noise."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.random(rows), rng.random(rows), rng.random(rows)
    y = 10 + signal * (3 * a - 2 * b) + noise * rng.standard_normal(rows)
    lines = ["timestamp,a,b,c,latency"]
    lines += ["%d,%.6f,%.6f,%.6f,%.6f" % (START + 5 * i, a[i], b[i], c[i], y[i]) for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object] | None, str]:
    code = train.main(args)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def alias_version(client: MlflowClient, name: str) -> str:
    return str(client.get_model_version_by_alias(name, "production").version)


def test_first_better_and_worse_models(tmp_path: Path, tracking_uri: str, client: MlflowClient,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    name = unique_name("latency-cli")
    common = ["--target", "latency", "--model-name", name, "--tracking-uri", tracking_uri]
    code, first, err = run_cli(["--dataset", str(dataset(tmp_path / "1.csv", 400, 0.5)), *common], capsys)
    assert code == 0, err
    assert first is not None and first["version"] == "1" and first["promoted"] is True
    assert alias_version(client, name) == "1"
    run = client.get_run(str(first["run_id"]))
    assert run.data.params["features"] == "a,b,c"
    assert run.data.params["rows_train"] == "320" and run.data.params["rows_test"] == "80"
    assert run.data.metrics["nmae"] == pytest.approx(first["metrics"]["nmae"])  # type: ignore[index]

    code, better, err = run_cli(["--dataset", str(dataset(tmp_path / "2.csv", 400, 0.05)), *common], capsys)
    assert code == 0, err
    assert better is not None and better["version"] == "2" and better["promoted"] is True
    assert "beats" in str(better["reason"])
    assert alias_version(client, name) == "2"

    code, worse, err = run_cli(["--dataset", str(dataset(tmp_path / "3.csv", 400, 2.0)), *common], capsys)
    assert code == 0, err
    assert worse is not None and worse["version"] == "3" and worse["promoted"] is False
    assert "does not beat" in str(worse["reason"]) and "version 2" in str(worse["reason"])
    assert alias_version(client, name) == "2"
    # The registered model loads and predicts from the alias.
    model = mlflow.sklearn.load_model(f"models:/{name}@production")
    assert model.predict(np.array([[1.0, 0.0, 0.5]]))[0] == pytest.approx(13.0, abs=0.5)


def test_features_and_conf(tmp_path: Path, tracking_uri: str, client: MlflowClient,
                           capsys: pytest.CaptureFixture[str]) -> None:
    data = dataset(tmp_path / "d.csv", 300, 0.1)
    name = unique_name("latency-conf")
    conf = {"dataset": str(data), "target": "latency", "features": ["a", "b"], "model_name": name,
            "model": "ridge"}
    code, out, err = run_cli(["--conf", json.dumps(conf), "--tracking-uri", tracking_uri], capsys)
    assert code == 0, err
    assert out is not None
    params = client.get_run(str(out["run_id"])).data.params
    assert params["features"] == "a,b" and params["model"] == "ridge"
    assert client.get_run(str(out["run_id"])).info.experiment_id == \
        client.get_experiment_by_name(name).experiment_id  # type: ignore[union-attr]


def test_dataset_over_http_and_parquet(tmp_path: Path, tracking_uri: str, client: MlflowClient,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pacsv.read_csv(dataset(tmp_path / "d.csv", 200, 0.1))
    pq.write_table(table.cast(pa.schema([(f.name, pa.float64()) for f in table.schema])), tmp_path / "d.parquet")
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port := free_port())],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/d.parquet"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        name = unique_name("latency-url")
        code, out, err = run_cli(["--dataset", url, "--target", "latency", "--model-name", name,
                                  "--tracking-uri", tracking_uri], capsys)
        assert code == 0, err
        assert out is not None and out["promoted"] is True
        code, out, err = run_cli(["--dataset", f"http://127.0.0.1:{port}/missing.csv", "--target", "latency",
                                  "--model-name", name, "--tracking-uri", tracking_uri], capsys)
        assert code == 2 and "HTTP 404" in err and len(err.strip().splitlines()) == 1
    finally:
        stop(server)  # type: ignore[arg-type]


BAD = {
    "missing file": (["--dataset", "{tmp}/nope.csv", "--target", "latency"], "No such file"),
    "unknown target": (["--dataset", "{good}", "--target", "nope"], "unknown column 'nope'"),
    "unknown feature": (["--dataset", "{good}", "--target", "latency", "--features", "a", "zz"],
                        "unknown column 'zz'"),
    "too few rows": (["--dataset", "{short}", "--target", "latency"], "too few rows"),
    "not a table": (["--dataset", "{junk}", "--target", "latency"], "dataset"),
    "conf not json": (["--conf", "{{nope"], "conf is not JSON"),
    "conf without dataset": (["--conf", '{{"target": "latency", "model_name": "{name}"}}'], "conf needs 'dataset'"),
    "conf unknown key": (["--conf", '{{"dataset": "{good}", "target": "latency", "model_name": "{name}", "x": 1}}'],
                         "unknown key x"),
    "conf features not a list": (["--conf", '{{"dataset": "{good}", "target": "latency", "model_name": "{name}", '
                                  '"features": "a"}}'], "'features' must be a list"),
    "bad model name": (["--dataset", "{good}", "--target", "latency", "--model-name", "bad name/x"],
                       "model name 'bad name/x'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_registers_nothing(case: str, tmp_path: Path, tracking_uri: str,
                                                     client: MlflowClient,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    args, expected = BAD[case]
    name = unique_name("bad-" + case.replace(" ", "-"))
    paths = {"name": name, "tmp": str(tmp_path), "good": str(dataset(tmp_path / "good.csv", 200, 0.1)),
             "short": str(dataset(tmp_path / "short.csv", 25, 0.1))}
    (tmp_path / "junk.csv").write_text("just one column\n1\n")
    paths["junk"] = str(tmp_path / "junk.csv")
    argv = [a.format(**paths) for a in args]
    if "--conf" not in argv:
        argv += ["--model-name", name] if "--model-name" not in argv else []
    code, out, err = run_cli([*argv, "--tracking-uri", tracking_uri], capsys)
    assert code == 2, err
    assert out is None
    assert err.startswith("edgelab-train: bad input: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1
    assert client.search_registered_models(filter_string=f"name = '{name}'") == []
    assert client.get_experiment_by_name(name) is None


def fitted(slope: float) -> LinearRegression:
    x = np.arange(30, dtype=float).reshape(-1, 1)
    return LinearRegression().fit(x, slope * x[:, 0])


def test_publish_rules(tracking_uri: str, client: MlflowClient) -> None:
    name = unique_name("publish-rules")
    kwargs = {"model_name": name, "tracking_uri": tracking_uri, "experiment": name, "metric_key": "r2",
              "params": {"slope": 1}, "lower_is_better": False}
    first = train.publish(fitted(1), metrics={"r2": 0.5}, **kwargs)  # type: ignore[arg-type]
    assert (first.version, first.promoted) == ("1", True)
    tie = train.publish(fitted(2), metrics={"r2": 0.5}, **kwargs)  # type: ignore[arg-type]
    assert (tie.version, tie.promoted) == ("2", False)
    higher = train.publish(fitted(3), metrics={"r2": 0.9}, **kwargs)  # type: ignore[arg-type]
    assert (higher.version, higher.promoted) == ("3", True)
    held = train.publish(fitted(4), metrics={"r2": 0.99}, promote=False, **kwargs)  # type: ignore[arg-type]
    assert (held.version, held.promoted, held.reason) == ("4", False, "promotion not requested")
    assert alias_version(client, name) == "3"
    runs_before = len(client.search_runs([client.get_experiment_by_name(name).experiment_id]))  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="metric 'nmae' is not among the metrics"):
        train.publish(fitted(5), metrics={"r2": 1.0}, **dict(kwargs, metric_key="nmae"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a finite number"):
        train.publish(fitted(5), metrics={"r2": float("nan")}, **kwargs)  # type: ignore[arg-type]
    assert len(client.search_runs([client.get_experiment_by_name(name).experiment_id])) == runs_before  # type: ignore[union-attr]
    assert len(client.search_model_versions(f"name = '{name}'")) == 4


def test_unreachable_server_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    code, out, err = run_cli(["--dataset", str(dataset(tmp_path / "d.csv", 100, 0.1)), "--target", "latency",
                              "--model-name", "x", "--tracking-uri", f"http://127.0.0.1:{free_port()}"], capsys)
    assert code == 1 and out is None
    assert err.startswith("edgelab-train: error: PublishError: MLflow at http://127.0.0.1:")
    assert len(err.strip().splitlines()) == 1


needs_auth = pytest.mark.skipif(
    not all(__import__("importlib.util").util.find_spec(m) for m in ("flask_wtf",)),
    reason="MLflow's basic-auth app needs Flask-WTF (mlflow[auth])")


def as_admin(uri: str, path: str, body: dict[str, str]) -> int:
    import base64

    request = urllib.request.Request(uri + path, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(b"admin:test-admin-password-1").decode()})
    with urllib.request.urlopen(request, timeout=180) as response:
        return int(response.status)


@needs_auth
def test_non_admin_user_with_a_password_file(tmp_path: Path) -> None:
    """Against `mlflow server --app-name basic-auth` with default_permission
    NO_PERMISSIONS (how role mlflow runs it): a non-admin user publishes a first model
    (the alias lookup of a model that does not exist yet answers 403 there), the
    entry point reads the password from a file in a fresh process, and a wrong
    password fails with one line and registers nothing."""
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{tmp_path / 'auth' / 'auth.db'}\n"
        "admin_username = admin\nadmin_password = test-admin-password-1\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "auth" / "basic_auth.ini"),
               MLFLOW_FLASK_SERVER_SECRET_KEY="test-secret-key")
    with running_mlflow(tmp_path, "--app-name", "basic-auth", env=env) as server:
        uri = server.uri
        assert as_admin(uri, "/api/2.0/mlflow/users/create", {"username": "edgelab",
                                                              "password": "edgelab-password-1"}) == 200
        password = tmp_path / "password"
        password.write_text("edgelab-password-1\n")
        exe = str(Path(sys.executable).parent / "edgelab-train")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        clean.update(MLFLOW_TRACKING_USERNAME="edgelab", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
        base = [exe, "--target", "latency", "--model-name", "auth-model", "--tracking-uri", uri]
        runs = []
        for name, noise in (("first", 0.5), ("worse", 3.0)):
            done = subprocess.run([*base, "--dataset", str(dataset(tmp_path / f"{name}.csv", 200, noise))],
                                  env=dict(clean, EDGELAB_MLFLOW_PASSWORD_FILE=str(password)),
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
            assert "edgelab-password-1" not in " ".join(base)
            runs.append(json.loads(done.stdout))
        assert [(r["version"], r["promoted"]) for r in runs] == [("1", True), ("2", False)]
        wrong = tmp_path / "wrong"
        wrong.write_text("not-it\n")
        refused = subprocess.run([*base, "--dataset", str(tmp_path / "first.csv"), "--password-file", str(wrong)],
                                 env=clean, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 1
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert refused.stderr.startswith("edgelab-train: error: PublishError: MLflow at ")
        admin = dict(clean, MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="test-admin-password-1")
        count = subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient; "
                                f"print(len(MlflowClient('{uri}').search_model_versions(\"name = 'auth-model'\")))"],
                               env=admin, capture_output=True, text=True, timeout=120)
        assert count.stdout.strip() == "2", count.stderr[-2000:]
