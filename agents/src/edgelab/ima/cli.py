"""edgelab-ima: the K infrastructure metrics that best explain a service KPI.

    edgelab-ima select --x X.csv --y Y.csv --k 15
    edgelab-ima select --prometheus http://10.213.0.11:9090 --y Y.csv --k 15 \\
        [--query '{job="node"}'] [--prometheus-username edgelab --prometheus-password-file FILE]

X and Y are CSV or Parquet with a timestamp column (first by default; epoch seconds
or ISO 8601 with a zone). Y's KPI is --y-field (default: Y's first value column, as
NECOS's IMA takes the second column). Both are put on Y's sampling step over their
common time range; constant and near-empty metrics are dropped. With --prometheus,
every series the query returns over Y's range at Y's step is a candidate.

Prints the selected metrics with their scores; --report writes the same as JSON,
--output a CSV (timestamp, KPI, selected metrics on the common grid) that
`edgelab-sro evaluate --dataset` takes. Bad input: one line on stderr, exit 2.

    edgelab-ima serve --config /etc/edgelab/ima.yml [--listen HOST:PORT] [--query PROMQL]

runs the HTTP service (ima/service.py: NECOS's POST /ymetrics/{sliceId}, streaming
to Kafka, POST /elasticity/...); settings in ima/config.py. Bad settings: one line
on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .. import cli
from ..learn.align import MIN_COVERAGE, align, infer_step
from ..learn.errors import LearnError
from ..learn.select import DEFAULT_METHOD, METHODS, select
from ..learn.tables import Table, read_table

if TYPE_CHECKING:
    from .config import ImaConfig

PROG = "edgelab-ima"




def load(path: str, timestamp_column: str | None, what: str) -> Table:
    try:
        with open(path, "rb") as stream:
            return read_table(stream, timestamp_column, source="%s %s" % (what, path))
    except OSError as exc:
        raise cli.InputError("%s %s: %s" % (what, path, exc.strerror or exc)) from None




def _number(value: float) -> str:
    return "" if np.isnan(value) else repr(float(value))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sel = commands.add_parser("select", help="select the K metrics that best explain the KPI",
                              description="Select the K metrics that best explain a KPI.")
    source = sel.add_mutually_exclusive_group(required=True)
    source.add_argument("--x", metavar="FILE", help="candidate metrics (CSV or Parquet, timestamp column first)")
    source.add_argument("--prometheus", metavar="URL", help="take every series of --query from this Prometheus")
    sel.add_argument("--y", required=True, metavar="FILE", help="the KPI (CSV or Parquet, NECOS's Y file)")
    sel.add_argument("--k", required=True, type=int, help="how many metrics to select")
    sel.add_argument("--y-field", metavar="COLUMN", help="KPI column in Y (default: Y's first value column)")
    sel.add_argument("--timestamp-column", metavar="NAME", help="timestamp column in X and Y (default: the first)")
    sel.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                     help="selection method (default %s)" % DEFAULT_METHOD)
    sel.add_argument("--min-coverage", type=float, default=MIN_COVERAGE, metavar="FRACTION",
                     help="drop metrics with values at fewer of the KPI's points (default %(default)s)")
    sel.add_argument("--query", default=None, metavar="PROMQL",
                     help='series to consider with --prometheus (default: all, %s)' % '{__name__=~".+"}')
    sel.add_argument("--prometheus-username", metavar="NAME")
    sel.add_argument("--prometheus-password-file", metavar="FILE")
    sel.add_argument("--prometheus-ca-file", metavar="FILE")
    sel.add_argument("--report", metavar="FILE", help="write the selection as JSON")
    sel.add_argument("--output", metavar="FILE", help="write timestamp, KPI and the selected metrics as CSV")
    serve = commands.add_parser("serve", help="run the IMA HTTP service (ima/service.py)",
                                description="Run the IMA HTTP service. Settings from --config (YAML, see "
                                "edgelab/ima/config.py); PROMETHEUS_URL, PROMETHEUS_USERNAME, "
                                "PROMETHEUS_PASSWORD_FILE and PROMETHEUS_CA_FILE override its prometheus section.")
    serve.add_argument("--config", metavar="PATH", help="YAML settings (e.g. /etc/edgelab/ima.yml; "
                       "default: the environment and the defaults only)")
    serve.add_argument("--listen", default=None, metavar="HOST:PORT",
                       help="address to listen on (default: the config's listen, 0.0.0.0:8010)")
    serve.add_argument("--query", default=None, metavar="PROMQL", help="candidate series (default: all)")
    serve.add_argument("--max-upload-mib", type=float, default=None, metavar="MIB",
                       help="largest YFile accepted (default: the config's max_upload_bytes, 10 MiB)")


def _fetch(args: argparse.Namespace, y: Table) -> Table:
    from ..prometheus import PrometheusClient, PrometheusQueryError
    from .source import ALL_SERIES, fetch

    try:
        client = PrometheusClient(args.prometheus, username=args.prometheus_username,
                                  password_file=args.prometheus_password_file, ca_file=args.prometheus_ca_file)
    except (ValueError, OSError) as exc:
        raise cli.InputError("--prometheus: %s" % exc) from None
    step = infer_step(y.timestamps)
    try:
        return fetch(client, float(y.timestamps[0]), float(y.timestamps[-1]), step, args.query or ALL_SERIES)
    except PrometheusQueryError as exc:  # bad PromQL in --query; other Prometheus errors are not bad input
        raise cli.InputError("--query: %s" % exc) from None


def run_select(args: argparse.Namespace) -> None:
    if args.query and not args.prometheus:
        raise cli.InputError("--query only applies with --prometheus")
    try:
        y = load(args.y, args.timestamp_column, "Y")
        target = args.y_field or y.columns[0]
        y.column(target)
        x = _fetch(args, y) if args.prometheus else load(args.x, args.timestamp_column, "X")
        data = align(x, y, target, min_coverage=args.min_coverage)
        selection = select(data.x, data.y, data.names, args.k, args.method)
    except LearnError as exc:
        raise cli.InputError(str(exc)) from None
    width = max(len(name) for name in selection.names)
    print("%s: %d of %d usable metrics (%d dropped) for %r, %d samples at %gs, %.2fs"
          % (selection.method, selection.k, selection.candidates, len(data.dropped), target, selection.rows,
             data.step, selection.seconds))
    print("%4s  %-*s  %s" % ("rank", width, "metric", "score"))
    for rank, (name, score) in enumerate(zip(selection.names, selection.scores, strict=False), 1):
        print("%4d  %-*s  %.4f" % (rank, width, name, score))
    if args.report:
        report = {"target": target, "step_seconds": data.step,
                  "start": float(data.timestamps[0]), "end": float(data.timestamps[-1]),
                  **selection.as_dict(), "dropped_metrics": data.dropped}
        cli.write_atomic(args.report, json.dumps(report, indent=2) + "\n")
    if args.output:
        lines = [",".join(["timestamp", _quote(target)] + [_quote(n) for n in selection.names])]
        chosen = data.x[:, selection.indices]
        for row, timestamp in enumerate(data.timestamps):
            lines.append(",".join([_number(timestamp), _number(data.y[row])] + [_number(v) for v in chosen[row]]))
        cli.write_atomic(args.output, "\n".join(lines) + "\n")


def _quote(name: str) -> str:
    return '"%s"' % name.replace('"', '""') if any(c in name for c in ',"\n') else name


def serve_config(args: argparse.Namespace) -> ImaConfig:
    """The checked settings of `serve`: the config file, the environment, the options."""
    from ..config import ConfigError
    from .config import load_config

    cfg = load_config(args.config)
    if args.listen is not None:
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError("--listen must be HOST:PORT, got %r" % args.listen)
        cfg.listen = args.listen
    if args.query:
        cfg.prometheus.query = args.query
    if args.max_upload_mib is not None:
        if not args.max_upload_mib > 0:
            raise ConfigError("--max-upload-mib must be > 0")
        cfg.max_upload_bytes = int(args.max_upload_mib * 2**20)
    return cfg


def run_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from ..config import ConfigError
    from ..prometheus import PrometheusClient
    from .service import create_app

    cfg = serve_config(args)
    p = cfg.prometheus
    try:
        client = PrometheusClient(p.url, username=p.username or None, password_file=p.password_file or None,
                                  ca_file=p.ca_file or None)
    except OSError as exc:  # the password file (its name in the error) or the CA file (ssl names none)
        key, path = ("password_file", p.password_file) if p.password_file and exc.filename == p.password_file \
            else ("ca_file", p.ca_file)
        raise ConfigError("cannot read prometheus.%s %s: %s" % (key, path, exc.strerror or exc)) from None
    except UnicodeDecodeError:
        raise ConfigError("prometheus.password_file %s: not UTF-8 text" % p.password_file) from None
    except ValueError as exc:
        raise ConfigError("prometheus: %s" % exc) from None
    try:
        app = create_app(lambda: client, config=cfg)
    except OSError as exc:
        raise ConfigError("state_dir %s: %s" % (cfg.state_dir, exc.strerror or exc)) from None
    host, port = cfg.host_port
    uvicorn.run(app, host=host, port=port, log_level=args.log_level.lower())


def start(args: argparse.Namespace) -> None:
    if args.command == "select":
        run_select(args)
    elif args.command == "serve":
        run_serve(args)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, description=__doc__, add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())
