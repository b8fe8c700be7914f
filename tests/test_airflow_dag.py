"""The train_model DAG (dags/train_model.py) in a real Airflow: the venv of role
airflow's lock for the controller's Python (built once under .cache/airflow-test-venv/,
keyed by the lock's sha256), so the DAG is parsed by the Airflow the hosts run.

- Airflow's DagBag imports dags/ without errors and finds train_model with its task.
- The task's body, run_trainer(), runs the real edgelab-train: a bad conf fails the
  task with AirflowFailException carrying the trainer's one-line reason; a good conf
  against a real `mlflow server` (the run's shared one, fixture mlflow_server) returns
  the trainer's report (a promoted version).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.mlflow_server import MlflowServer, unique_name

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
        # --no-deps: the lock is the whole closure. Resolving it again makes the
        # venv's stock pip (23.x) pick the index's newest uvicorn for
        # fastapi-cli's "uvicorn[standard]" and refuse it as unpinned.
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "-r", str(LOCK)], check=True, timeout=1800)
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


# run_trainer() for each conf of a JSON object {key: conf}, in one Airflow interpreter
# (its start, importing Airflow, is most of a call's time): {key: {"report": ...} or
# {"failed": the AirflowFailException's message}}. Any other exception fails the script.
RUN = ("import json, train_model\n"
       "from airflow.sdk.exceptions import AirflowFailException\n"
       "results = {}\n"
       "for key, conf in json.loads(%r).items():\n"
       "    try:\n"
       "        results[key] = {'report': train_model.run_trainer(conf, trainer=%r)}\n"
       "    except AirflowFailException as exc:\n"
       "        results[key] = {'failed': str(exc)}\n"
       "print(json.dumps(results))\n")


def run_trainer(python: Path, confs: dict[str, dict[str, str]], tmp_path: Path, **env: str) -> dict[str, Any]:
    done = in_airflow(python, RUN % (json.dumps(confs), str(TRAINER)), tmp_path, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(results) == sorted(confs), results
    return results


BAD_CONFS = [
    ({}, "conf needs 'dataset'"),
    ({"dataset": "/nonexistent/data.csv", "target": "y", "model_name": "m"}, "No such file or directory"),
    ({"dataset": "{good}", "target": "nope", "model_name": "m"}, "unknown column 'nope'"),
    ({"dataset": "{short}", "target": "y", "model_name": "m"}, "too few rows"),
]


@pytest.fixture(scope="module")
def bad_conf_results(airflow_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every conf of BAD_CONFS through run_trainer() (key: its index), in one interpreter."""
    tmp_path = tmp_path_factory.mktemp("bad-conf")
    good = tmp_path / "good.csv"
    good.write_text("timestamp,x,y\n" + "".join("%d,%d,%d\n" % (1767225600 + i, i, 2 * i + 5) for i in range(100)))
    short = tmp_path / "short.csv"
    short.write_text("timestamp,x,y\n" + "".join("%d,%d,%d\n" % (1767225600 + i, i, 2 * i) for i in range(12)))
    confs = {str(n): {k: v.format(good=good, short=short) for k, v in conf.items()}
             for n, (conf, _reason) in enumerate(BAD_CONFS)}
    # A tracking URI nobody listens on: bad input must fail before anything talks to MLflow.
    return run_trainer(airflow_python, confs, tmp_path, MLFLOW_TRACKING_URI="http://127.0.0.1:9")


@pytest.mark.parametrize(("case", "reason"), [(str(n), reason) for n, (_conf, reason) in enumerate(BAD_CONFS)])
def test_bad_conf_fails_the_task_with_one_line(bad_conf_results: dict[str, Any], case: str, reason: str) -> None:
    result = bad_conf_results[case]
    assert "failed" in result, result
    assert result["failed"].startswith("edgelab-train: bad input: ") and reason in result["failed"]
    assert "\n" not in result["failed"]


def test_good_conf_returns_the_trainers_report(airflow_python: Path, tmp_path: Path,
                                               mlflow_server: MlflowServer) -> None:
    data = tmp_path / "data.csv"
    data.write_text("timestamp,x,noise,y\n" + "".join(
        "%d,%d,%d,%d\n" % (1767225600 + i, i % 17, (i * 7) % 5, 3 * (i % 17) + 1) for i in range(200)))
    name = unique_name("dag-model")
    conf = {"dataset": str(data), "target": "y", "model_name": name}
    result = run_trainer(airflow_python, {"good": conf}, tmp_path, MLFLOW_TRACKING_URI=mlflow_server.uri)["good"]
    assert "report" in result, result
    assert result["report"]["version"] == "1" and result["report"]["promoted"] is True
    assert result["report"]["model_name"] == name
