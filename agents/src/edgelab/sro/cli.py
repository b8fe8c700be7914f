"""edgelab-sro: how well can a KPI be forecast H seconds ahead from these metrics?
And the SRO service that forecasts it live and acts on the forecast.

    edgelab-sro serve [--config /etc/edgelab/sro.yml]

    edgelab-sro evaluate --dataset data.csv --target latency_ms --horizon 30s \\
        [--features m1 m2 ...] [--k 15] [--window 2m] [--report r.json] [--predictions p.csv]

The dataset is CSV or Parquet (the extractor's output, or `edgelab-ima select
--output`) with a timestamp column (first by default; epoch seconds or ISO 8601 with
a zone), the KPI column and metric columns (--features, default all). The sampling
step is inferred from the timestamps; horizon and window must be whole steps.

The data is split by time into training, validation and test parts with a gap so
that no sample of a later part shares a row with a training sample; every candidate
(persistence, moving average, ridge, gradient-boosted trees) is trained on the
training part, the one with the lowest validation NMAE is chosen (a model only when
it beats the best baseline), and the figures printed are on the test part. With --k
the K metrics are first selected on the training part only.

--predictions writes timestamp (the time the forecast is for, epoch seconds),
actual and forecast for every test sample, so the figures can be recomputed.
Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Sequence

from .. import cli
from ..config import ConfigError
from ..learn.align import MIN_COVERAGE, from_table
from ..learn.duration import parse_duration
from ..learn.errors import LearnError
from ..learn.forecast import MODELS, Evaluation, evaluate
from ..learn.select import DEFAULT_METHOD, METHODS
from ..learn.tables import Table, read_table
from .config import SRO_CONFIG, load_config

PROG = "edgelab-sro"




def load(path: str, timestamp_column: str | None) -> Table:
    try:
        with open(path, "rb") as stream:
            return read_table(stream, timestamp_column, source="dataset %s" % path)
    except OSError as exc:
        raise cli.InputError("dataset %s: %s" % (path, exc.strerror or exc)) from None




def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ev = commands.add_parser("evaluate", help="train and evaluate KPI forecasts on a dataset",
                             description="Train and evaluate KPI forecasts on a dataset.")
    ev.add_argument("--dataset", required=True, metavar="FILE", help="CSV or Parquet with timestamps, KPI, metrics")
    ev.add_argument("--target", required=True, metavar="COLUMN", help="the KPI column")
    ev.add_argument("--features", nargs="+", metavar="COLUMN", help="metric columns to use (default: all others)")
    ev.add_argument("--horizon", required=True, metavar="DURATION", help="how far ahead, e.g. 30s")
    ev.add_argument("--window", metavar="DURATION", help="history each forecast uses (default: 4 x horizon, "
                    "at least 8 steps)")
    ev.add_argument("--k", type=int, metavar="N", help="first select N metrics on the training part")
    ev.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="selection method for --k")
    ev.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                    help="models besides the baselines (default: all)")
    ev.add_argument("--timestamp-column", metavar="NAME", help="timestamp column (default: the first)")
    ev.add_argument("--min-coverage", type=float, default=MIN_COVERAGE, metavar="FRACTION",
                    help="drop metrics with values at fewer of the KPI's points (default %(default)s)")
    ev.add_argument("--metrics-only", action="store_true",
                    help="forecast from the metrics alone, not the KPI's own recent values (as the SRO service "
                         "does with kpi_in_stream: false)")
    ev.add_argument("--report", metavar="FILE", help="write the evaluation as JSON")
    ev.add_argument("--predictions", metavar="FILE", help="write timestamp,actual,forecast for every test sample")
    serve = commands.add_parser("serve", help="run the SRO service (HTTP, see docs/ima-sro.md)",
                                description="Run the SRO service (FastAPI; OpenAPI at /docs).")
    serve.add_argument("--config", default=SRO_CONFIG, metavar="PATH", help="YAML settings (default %(default)s)")


def print_table(result: Evaluation) -> None:
    print("%r forecast %gs ahead from %d feature metric%s, window %gs, step %gs; samples: %s"
          % (result.target, result.horizon * result.step, len(result.features),
             "" if len(result.features) == 1 else "s", result.window * result.step, result.step,
             ", ".join("%s %d" % kv for kv in result.counts.items())))
    print("%-16s %-9s %15s %10s %10s  %s" % ("candidate", "kind", "validation NMAE", "test NMAE", "train s",
                                              "chosen"))
    for c in result.candidates:
        print("%-16s %-9s %15.4f %10.4f %10.3f  %s" % (c.name, c.kind, c.validation_nmae, c.test_nmae,
                                                        c.train_seconds, "*" if c.chosen else ""))
    print(result.note)


def run_evaluate(args: argparse.Namespace) -> None:
    try:
        horizon = parse_duration(args.horizon)
        window = parse_duration(args.window) if args.window else None
        table = load(args.dataset, args.timestamp_column)
        data = from_table(table, args.target, args.features, min_coverage=args.min_coverage)
        result = evaluate(data, horizon, window, k=args.k, method=args.method, models=args.models,
                          kpi_inputs=not args.metrics_only)
    except LearnError as exc:
        raise cli.InputError(str(exc)) from None
    print_table(result)
    if args.report:
        cli.write_atomic(args.report, json.dumps(result.as_dict(), indent=2) + "\n")
    if args.predictions:
        lines = ["timestamp,actual,forecast"]
        lines.extend("%s,%r,%r" % (("%.3f" % t).rstrip("0").rstrip("."), float(a), float(f))
                     for t, a, f in zip(result.timestamps, result.actual, result.forecast, strict=False))
        cli.write_atomic(args.predictions, "\n".join(lines) + "\n")


def run_serve(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    try:
        import uvicorn

        from .service import create_app
    except ImportError as exc:
        raise ConfigError("the SRO service needs the package's sro extra (pip install 'edgelab-agents[sro]'): %s"
                          % exc) from None
    try:
        with socket.create_server((cfg.listen_host, cfg.listen_port)):
            pass  # a busy port is a config error (exit 2), not uvicorn's log line and exit 1
    except OSError as exc:
        raise ConfigError("listen %s:%d: %s" % (cfg.listen_host, cfg.listen_port, exc.strerror or exc)) from None
    try:
        app = create_app(cfg)
    except OSError as exc:
        raise ConfigError(str(exc)) from None
    uvicorn.run(app, host=cfg.listen_host, port=cfg.listen_port, log_level=args.log_level.lower(),
                access_log=args.log_level == "DEBUG")


def start(args: argparse.Namespace) -> None:
    if args.command == "evaluate":
        run_evaluate(args)
    elif args.command == "serve":
        run_serve(args)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, description=__doc__, add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())
