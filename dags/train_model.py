"""train_model: train a scikit-learn regressor on a dataset and publish it to MLflow.

Trigger with a conf (POST /api/v2/dags/train_model/dagRuns, body {"logical_date": null,
"conf": {...}}):

    dataset     CSV or Parquet: a path on the Airflow host, or an http(s) URL   (required)
    target      the column to predict                                           (required)
    model_name  the registered model's name                                     (required)
    features    list of feature columns (default: every other column)
    timestamp_column, model ("hgb" or "ridge"), test_fraction   (optional)

The task runs edgelab's trainer (`edgelab-train --conf JSON`, from edgelab's own venv,
not Airflow's) which splits the rows by time, fits the regressor on the earlier part,
measures NMAE on the later part, logs everything to MLflow as user `edgelab`,
registers a new version and moves the alias `production` to it only when it beats the
production version. The trainer's one-line report becomes the task's return value
(XCom). Runs go one at a time: each compares with the production version and may
move the alias, so two at once could both see the same production version. Bad conf
or data: the task fails at once, without retries, with the trainer's one-line reason;
nothing is registered.

Where things are comes from the environment the Airflow units set
(/etc/edgelab/airflow/environment): EDGELAB_TRAIN_BIN (the trainer),
MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME and EDGELAB_MLFLOW_PASSWORD_FILE.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

DEFAULT_TRAINER = "/opt/edgelab/train/bin/edgelab-train"
DEFAULT_TIMEOUT = 1800

log = logging.getLogger(__name__)


def run_trainer(conf: Any, *, trainer: str | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Run edgelab-train on `conf` and return its report; fail the task with the
    trainer's one-line reason otherwise. The conf goes over as one argument (no
    shell); the trainer validates it."""
    trainer = trainer or os.environ.get("EDGELAB_TRAIN_BIN", DEFAULT_TRAINER)
    timeout = timeout or float(os.environ.get("EDGELAB_TRAIN_TIMEOUT", DEFAULT_TIMEOUT))
    try:
        text = json.dumps(conf if conf is not None else {})
    except (TypeError, ValueError) as exc:
        raise AirflowFailException("conf is not JSON: %s" % exc) from None
    try:
        done = subprocess.run([trainer, "--conf", text], capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise AirflowFailException("trainer %s is not installed" % trainer) from None
    except subprocess.TimeoutExpired:
        raise AirflowFailException("trainer did not finish in %g s" % timeout) from None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    for line in lines:
        log.info("%s", line)
    if done.returncode != 0:
        reason = lines[-1] if lines else "trainer exited with %d" % done.returncode
        raise AirflowFailException(reason)
    try:
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise AirflowFailException("trainer printed no report") from None
    log.info("model %s version %s: %s", report.get("model_name"), report.get("version"), report.get("reason"))
    return report


@dag(dag_id="train_model", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), catchup=False,
     max_active_runs=1, tags=["edgelab", "mlops"], doc_md=__doc__)
def train_model() -> None:
    @task(task_id="train", retries=0)
    def train() -> dict[str, Any]:
        run = get_current_context()["dag_run"]
        return run_trainer(run.conf)

    train()


train_model()
