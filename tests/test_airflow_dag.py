"""The train_model DAG (dags/train_model.py) in a real Airflow: the venv of role
airflow's lock for the controller's Python (built once under .cache/airflow-test-venv/,
keyed by the lock's sha256), so the DAG is parsed by the Airflow the hosts run.

- Airflow's DagBag imports dags/ without errors and finds train_model with its task.
- The task's body, run_trainer(), runs the real edgelab-train: a bad conf fails the
  task with AirflowFailException carrying the trainer's one-line reason; a good conf
  against a real `mlflow server` returns the trainer's report (a promoted version).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYVER = "%d.%d" % sys.version_info[:2]
LOCK = ROOT / "roles" / "airflow" / "files" / f"requirements-py{PYVER}.txt"
TRAINER = Path(sys.executable).parent / "edgelab-train"


@pytest.fixture(scope="module")
def airflow_python() -> Path:
    if not LOCK.is_file():
        pytest.skip(f"role airflow has no lock for Python {PYVER}")
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:12]
    venv = ROOT / ".cache" / "airflow-test-venv" / f"py{PYVER}-{digest}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                        str(LOCK)], check=True, timeout=1800)
        (venv / ".complete").write_text(digest + "\n")
    return python


def in_airflow(python: Path, code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "airflow-home"
    home.mkdir(exist_ok=True)
    environment = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
                       AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"), PYTHONPATH=str(ROOT / "dags"),
                       PYTHONDONTWRITEBYTECODE="1", **env)
    environment.pop("VIRTUAL_ENV", None)
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=600,
                          env=environment, cwd=tmp_path)


def test_dagbag_imports_train_model(airflow_python: Path, tmp_path: Path) -> None:
    code = ("import json; from airflow.dag_processing.dagbag import DagBag\n"
            "bag = DagBag(dag_folder=%r)\n"
            "dag = bag.dags.get('train_model')\n"
            "print(json.dumps({'errors': {k: str(v)[:300] for k, v in bag.import_errors.items()},"
            " 'tasks': dag.task_ids if dag else None, 'schedule': str(dag.schedule) if dag else None}))"
            % str(ROOT / "dags"))
    done = in_airflow(airflow_python, code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"errors": {}, "tasks": ["train"], "schedule": "None"}


RUN = ("import json, train_model\n"
       "from airflow.sdk.exceptions import AirflowFailException\n"
       "try:\n"
       "    print(json.dumps({'report': train_model.run_trainer(json.loads(%r), trainer=%r)}))\n"
       "except AirflowFailException as exc:\n"
       "    print(json.dumps({'failed': str(exc)}))\n")


@pytest.mark.parametrize(("conf", "reason"), [
    ({}, "conf needs 'dataset'"),
    ({"dataset": "/nonexistent/data.csv", "target": "y", "model_name": "m"}, "No such file or directory"),
    ({"dataset": "{good}", "target": "nope", "model_name": "m"}, "unknown column 'nope'"),
    ({"dataset": "{short}", "target": "y", "model_name": "m"}, "too few rows"),
])
def test_bad_conf_fails_the_task_with_one_line(airflow_python: Path, tmp_path: Path, conf: dict[str, str],
                                               reason: str) -> None:
    good = tmp_path / "good.csv"
    good.write_text("timestamp,x,y\n" + "".join("%d,%d,%d\n" % (1767225600 + i, i, 2 * i + 5) for i in range(100)))
    short = tmp_path / "short.csv"
    short.write_text("timestamp,x,y\n" + "".join("%d,%d,%d\n" % (1767225600 + i, i, 2 * i) for i in range(12)))
    conf = {k: v.format(good=good, short=short) for k, v in conf.items()}
    # A tracking URI nobody listens on: bad input must fail before anything talks to MLflow.
    done = in_airflow(airflow_python, RUN % (json.dumps(conf), str(TRAINER)), tmp_path,
                      MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "failed" in result, result
    assert result["failed"].startswith("edgelab-train: bad input: ") and reason in result["failed"]
    assert "\n" not in result["failed"]


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("mlflow", reason="mlflow is not installed (requirements.txt)")
    sys.path.insert(0, str(ROOT / "tests" / "agents"))
    try:
        from test_train import start_server, stop
    finally:
        sys.path.pop(0)
    proc, uri = start_server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield uri
    finally:
        stop(proc)


def test_good_conf_returns_the_trainers_report(airflow_python: Path, tmp_path: Path, tracking_uri: str) -> None:
    data = tmp_path / "data.csv"
    data.write_text("timestamp,x,noise,y\n" + "".join(
        "%d,%d,%d,%d\n" % (1767225600 + i, i % 17, (i * 7) % 5, 3 * (i % 17) + 1) for i in range(200)))
    conf = {"dataset": str(data), "target": "y", "model_name": "dag-model"}
    done = in_airflow(airflow_python, RUN % (json.dumps(conf), str(TRAINER)), tmp_path,
                      MLFLOW_TRACKING_URI=tracking_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "report" in result, result
    assert result["report"]["version"] == "1" and result["report"]["promoted"] is True
    assert result["report"]["model_name"] == "dag-model"
