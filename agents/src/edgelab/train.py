"""edgelab-train: train a scikit-learn regressor on a dataset and publish it to MLflow.

    edgelab-train --dataset PATH|URL --target COLUMN [--features C1 C2 ...] \\
        --model-name NAME [--tracking-uri URI] [--experiment NAME] [--model hgb|ridge]
    edgelab-train --conf JSON        # {"dataset", "target", "features"?, "model_name"}

The dataset is CSV or Parquet (a file, or an http(s) URL) with a timestamp column
(first by default; epoch seconds or ISO 8601 with a zone), the target column and
numeric feature columns (--features, default all the others). Rows are put in time
order and split by time: the first part trains the regressor, the last
--test-fraction (default 0.2) is held out and gives the metric (NMAE on the held-out
rows, lower is better; MAE and RMSE are logged too).

publish() logs the parameters, the metrics and the model (mlflow.sklearn) to MLflow,
registers a new version of the model and moves the alias `production` to it only when
its metric beats the one of the version the alias points at (a tie does not). The
tracking server's credentials come from MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD, or the password from a file (--password-file, or
EDGELAB_MLFLOW_PASSWORD_FILE): never from the command line.

Bad input (no dataset, an unreadable file, an unknown column, too few rows, a bad
--conf): one line on stderr, exit 2, nothing logged or registered. MLflow refusing or
unreachable: one line, exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import IO, Any

import numpy as np

from . import cli
from .learn.errors import LearnError, require_sklearn
from .learn.forecast import nmae
from .learn.tables import Table, read_table

PROG = "edgelab-train"
ALIAS = "production"
METRIC = "nmae"
MODELS = ("hgb", "ridge")
MIN_TRAIN_ROWS = 20
MIN_TEST_ROWS = 10
MAX_DOWNLOAD_BYTES = 2 << 30
PASSWORD_FILE_ENV = "EDGELAB_MLFLOW_PASSWORD_FILE"
CONF_KEYS = {"dataset", "target", "features", "model_name", "timestamp_column", "model", "test_fraction"}
# A registered model name: what MLflow and a models:/NAME@alias URI both accept.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class PublishError(RuntimeError):
    """MLflow refused or could not be reached while publishing; the message is one line."""


@dataclass(frozen=True)
class PublishResult:
    """What publish() did: the new registered version, its run, whether the alias
    `production` now points at it, and why (or why not)."""

    version: str
    run_id: str
    promoted: bool
    reason: str


@dataclass(frozen=True)
class Trained:
    model: Any
    metrics: dict[str, float]
    params: dict[str, str]
    example: np.ndarray


# ---------------------------------------------------------------- publishing
def _current_metric(client: Any, model_name: str, metric_key: str) -> tuple[str | None, float | None]:
    """The version the alias points at and its run's metric (None, None without alias)."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(model_name, ALIAS)
    except MlflowException as exc:
        # With MLflow's basic-auth app and default_permission NO_PERMISSIONS, a model
        # that does not exist yet answers 403, not 404. A model that exists but is not
        # ours answers 403 too; registering a version of it is then refused as well.
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND",
                              "PERMISSION_DENIED"):
            return None, None
        raise
    value = client.get_run(current.run_id).data.metrics.get(metric_key) if current.run_id else None
    return str(current.version), value


def _decide(metric: float, current_version: str | None, current: float | None, metric_key: str,
            lower_is_better: bool) -> tuple[bool, str]:
    if current_version is None:
        return True, "no version has alias %s yet" % ALIAS
    if current is None or not math.isfinite(current):
        return False, "version %s (alias %s) has no %s to compare with: alias left" % (
            current_version, ALIAS, metric_key)
    better = metric < current if lower_is_better else metric > current
    verb = "beats" if better else "does not beat"
    return better, "%s %.6g %s %.6g of version %s%s" % (
        metric_key, metric, verb, current, current_version, "" if better else ": alias left")


def publish(model: Any, *, model_name: str, metrics: Mapping[str, float], params: Mapping[str, Any],
            metric_key: str, tracking_uri: str, experiment: str, promote: bool = True,
            lower_is_better: bool = True, input_example: Any = None) -> PublishResult:
    """Log params, metrics and the scikit-learn `model` to MLflow in a run of
    `experiment`, register it as a new version of `model_name`, and move the alias
    `production` to that version when `promote` and its `metric_key` beats the current
    production version's (lower is better unless lower_is_better=False).

    ValueError for arguments that cannot be published (nothing is logged then);
    PublishError when MLflow refuses or cannot be reached."""
    if not MODEL_NAME.match(model_name):
        raise ValueError("model name %r: use letters, digits, '.', '_' and '-' (at most 128)" % model_name)
    if metric_key not in metrics:
        raise ValueError("metric %r is not among the metrics (%s)" % (metric_key, ", ".join(sorted(metrics))))
    values = {str(k): float(v) for k, v in metrics.items()}
    if not math.isfinite(values[metric_key]):
        raise ValueError("metric %r is %r, not a finite number" % (metric_key, values[metric_key]))
    import mlflow
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        mlflow.set_tracking_uri(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri)
        # Read before registering, so the comparison is with what was in production.
        current_version, current = _current_metric(client, model_name, metric_key)
        mlflow.set_experiment(experiment)
        with mlflow.start_run() as run:
            mlflow.log_params({str(k): str(v)[:6000] for k, v in params.items()})
            mlflow.log_metrics(values)
            # cloudpickle, not MLflow's default skops: loaders with only mlflow-skinny
            # (the node agent, the node API) have no skops to read it with.
            info = mlflow.sklearn.log_model(model, name="model", registered_model_name=model_name,
                                            input_example=input_example, serialization_format="cloudpickle")
        version = str(info.registered_model_version)
        if not promote:
            return PublishResult(version, run.info.run_id, False, "promotion not requested")
        promoted, reason = _decide(values[metric_key], current_version, current, metric_key, lower_is_better)
        if promoted:
            client.set_registered_model_alias(model_name, ALIAS, version)
        return PublishResult(version, run.info.run_id, promoted, reason)
    except MlflowException as exc:
        raise PublishError("MLflow at %s: %s" % (tracking_uri, " ".join(str(exc.message).split())[:500])) from None
    except OSError as exc:
        raise PublishError("MLflow at %s: %s" % (tracking_uri, " ".join(str(exc).split())[:500])) from None


# ---------------------------------------------------------------- data
def read_dataset(source: str, timestamp_column: str | None = None, *, timeout: float = 60.0) -> Table:
    """A Table from a CSV or Parquet file path or http(s) URL."""
    label = "dataset %s" % source
    if re.match(r"^https?://", source):
        try:
            with urllib.request.urlopen(source, timeout=timeout) as response:
                body = response.read(MAX_DOWNLOAD_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise cli.InputError("%s: HTTP %d %s" % (label, exc.code, exc.reason)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise cli.InputError("%s: %s" % (label, reason)) from None
        if len(body) > MAX_DOWNLOAD_BYTES:
            raise cli.InputError("%s is larger than %d bytes" % (label, MAX_DOWNLOAD_BYTES))
        stream: IO[bytes] = io.BytesIO(body)
    elif "://" in source:
        raise cli.InputError("%s: only file paths and http(s) URLs are supported" % label)
    else:
        try:
            stream = open(source, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise cli.InputError("%s: %s" % (label, exc.strerror or exc)) from None
    try:
        return read_table(stream, timestamp_column, source=label)
    except LearnError as exc:
        raise cli.InputError(str(exc)) from None
    finally:
        stream.close()


def _regressor(kind: str, threads: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "hgb":
        # Handles missing feature values itself; early stopping would take its
        # validation rows at random, not by time.
        return HistGradientBoostingRegressor(max_iter=200, learning_rate=0.1, max_leaf_nodes=31,
                                             early_stopping=False, random_state=0)
    if kind == "ridge":
        return make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), Ridge(alpha=1.0))
    raise cli.InputError("unknown model %r (choose from %s)" % (kind, ", ".join(MODELS)))


def train(table: Table, target: str, features: Sequence[str] | None = None, *, model: str = "hgb",
          test_fraction: float = 0.2, threads: int = 1) -> Trained:
    """Fit a regressor on the earlier rows and measure it on the later ones."""
    require_sklearn()
    from threadpoolctl import threadpool_limits

    if not 0.0 < test_fraction < 1.0:
        raise cli.InputError("test fraction must be between 0 and 1, got %r" % test_fraction)
    try:
        y_all = table.column(target)
        names = [c for c in table.columns if c != target] if not features else list(features)
        if target in names:
            raise cli.InputError("the target %r cannot also be a feature" % target)
        x_all = table.subset(names).values
    except LearnError as exc:
        raise cli.InputError(str(exc)) from None
    if not names:
        raise cli.InputError("the dataset has no feature column besides the target %r" % target)
    keep = np.isfinite(y_all)
    x, y, times = x_all[keep], y_all[keep], table.timestamps[keep]
    n_test = round(len(y) * test_fraction)
    n_train = len(y) - n_test
    if n_train < MIN_TRAIN_ROWS or n_test < MIN_TEST_ROWS:
        raise cli.InputError("too few rows with a %r value: %d (train %d, held out %d; need at least %d and %d)"
                             % (target, len(y), n_train, n_test, MIN_TRAIN_ROWS, MIN_TEST_ROWS))
    empty = [name for j, name in enumerate(names) if np.isnan(x[:n_train, j]).all()]
    if empty:
        raise cli.InputError("feature%s without a value in the training rows: %s" % (
            "s" if len(empty) > 1 else "", ", ".join(empty)))
    regressor = _regressor(model, threads)
    started = time.perf_counter()
    with threadpool_limits(limits=threads):
        regressor.fit(x[:n_train], y[:n_train])
        predicted = regressor.predict(x[n_train:])
    seconds = time.perf_counter() - started
    actual = y[n_train:]
    try:
        score = nmae(actual, predicted)
    except LearnError as exc:
        raise cli.InputError(str(exc)) from None
    error = predicted - actual
    metrics = {METRIC: score, "mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error ** 2))),
               "train_seconds": seconds}
    params = {"target": target, "features": ",".join(names), "model": model, "test_fraction": str(test_fraction),
              "rows_train": str(n_train), "rows_test": str(n_test),
              "train_until": "%.3f" % times[n_train - 1], "test_from": "%.3f" % times[n_train]}
    return Trained(regressor, metrics, params, x[:1])


# ---------------------------------------------------------------- command line
def _from_conf(text: str) -> dict[str, Any]:
    """The train_model DAG's conf as option values; every mistake is one line."""
    try:
        conf = json.loads(text)
    except json.JSONDecodeError as exc:
        raise cli.InputError("conf is not JSON: %s" % exc) from None
    if not isinstance(conf, dict):
        raise cli.InputError("conf must be a JSON object, got %s" % type(conf).__name__)
    unknown = sorted(set(conf) - CONF_KEYS)
    if unknown:
        raise cli.InputError("conf has unknown key%s %s (known: %s)" % (
            "s" if len(unknown) > 1 else "", ", ".join(unknown), ", ".join(sorted(CONF_KEYS))))
    for key in ("dataset", "target", "model_name"):
        if not isinstance(conf.get(key), str) or not conf[key].strip():
            raise cli.InputError("conf needs %r (a non-empty string)" % key)
    features = conf.get("features")
    if features is not None and (not isinstance(features, list) or not all(isinstance(f, str) for f in features)):
        raise cli.InputError("conf 'features' must be a list of column names")
    for key in ("timestamp_column", "model"):
        if conf.get(key) is not None and not isinstance(conf[key], str):
            raise cli.InputError("conf %r must be a string" % key)
    fraction = conf.get("test_fraction")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))):
        raise cli.InputError("conf 'test_fraction' must be a number")
    return conf


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {"dataset": args.dataset, "target": args.target, "features": args.features,
                                "model_name": args.model_name, "timestamp_column": args.timestamp_column,
                                "model": args.model, "test_fraction": args.test_fraction}
    if args.conf is not None:
        for key, value in _from_conf(args.conf).items():
            settings[key] = value
    missing = [key for key in ("dataset", "target", "model_name") if not settings.get(key)]
    if missing:
        raise cli.InputError("missing %s (give --%s or --conf)" % (
            ", ".join(missing), " --".join(m.replace("_", "-") for m in missing)))
    if not MODEL_NAME.match(settings["model_name"]):
        raise cli.InputError("model name %r: use letters, digits, '.', '_' and '-' (at most 128)"
                             % settings["model_name"])
    if settings["model"] not in MODELS:
        raise cli.InputError("unknown model %r (choose from %s)" % (settings["model"], ", ".join(MODELS)))
    return settings


def _password_from_file(path: str | None) -> None:
    """Put the password file's first line where MLflow reads it (this process only)."""
    path = path or os.environ.get(PASSWORD_FILE_ENV)
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as stream:
            password = stream.readline().strip()
    except OSError as exc:
        raise cli.InputError("password file %s: %s" % (path, exc.strerror or exc)) from None
    if not password:
        raise cli.InputError("password file %s is empty" % path)
    os.environ["MLFLOW_TRACKING_PASSWORD"] = password


def start(args: argparse.Namespace) -> None:
    settings = _settings(args)
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise cli.InputError("no tracking server: give --tracking-uri or set MLFLOW_TRACKING_URI")
    _password_from_file(args.password_file)
    table = read_dataset(settings["dataset"], settings["timestamp_column"])
    trained = train(table, settings["target"], settings["features"], model=settings["model"],
                    test_fraction=float(settings["test_fraction"]), threads=args.threads)
    params = dict(trained.params, dataset=settings["dataset"])
    try:
        # MLflow prints links to the run on stdout; stdout carries only the report.
        with contextlib.redirect_stdout(sys.stderr):
                result = publish(trained.model, model_name=settings["model_name"], metrics=trained.metrics,
                             params=params, metric_key=METRIC, tracking_uri=tracking_uri,
                             experiment=args.experiment or settings["model_name"], promote=not args.no_promote,
                             input_example=trained.example)
    except ValueError as exc:
        raise cli.InputError(str(exc)) from None
    report = dict(asdict(result), model_name=settings["model_name"], metrics=trained.metrics)
    sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", metavar="PATH|URL", help="CSV or Parquet: a file or an http(s) URL")
    parser.add_argument("--target", metavar="COLUMN", help="the column to predict")
    parser.add_argument("--features", nargs="+", metavar="COLUMN", help="feature columns (default: all others)")
    parser.add_argument("--model-name", metavar="NAME", help="the registered model's name")
    parser.add_argument("--conf", metavar="JSON", help="dataset, target, features, model_name as a JSON object "
                        "(the train_model DAG's conf); its keys override the options")
    parser.add_argument("--timestamp-column", metavar="COLUMN", help="default: the first column")
    parser.add_argument("--model", default="hgb", choices=MODELS, help="regressor (default hgb: gradient-boosted "
                        "trees; ridge: linear)")
    parser.add_argument("--test-fraction", type=float, default=0.2, metavar="F",
                        help="the latest fraction of rows held out for the metric (default 0.2)")
    parser.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking server (default $MLFLOW_TRACKING_URI)")
    parser.add_argument("--experiment", metavar="NAME", help="MLflow experiment (default: the model name)")
    parser.add_argument("--password-file", metavar="PATH",
                        help="file holding the MLflow password (default $%s; else $MLFLOW_TRACKING_PASSWORD)"
                        % PASSWORD_FILE_ENV)
    parser.add_argument("--no-promote", action="store_true", help="register the version, leave the alias")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="threads for fitting (default 1)")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, description=__doc__, add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())
