#!/usr/bin/env python3
"""Controller-side steps of playbooks/experiment.yml (role experiment), run with the
controller's Python (the project's .venv, where edgelab-agents is installed):

    edgelab_experiment.py spec FILE
        the spec validated and normalised by edgelab.experiments.spec, as JSON on stdout
    edgelab_experiment.py skip-backlog --bootstrap B --topic T --group G [--if-new] [kafka options]
        commit the partitions' ends for group G on topic T, so that the group's first
        members start with the frames sent from now on. Only a group with no member can
        take this commit: run it before any consumer is told the group's name (a live
        member makes it fail with one line). --if-new leaves a group that has committed
        offsets as it is.
    edgelab_experiment.py dump --bootstrap B --topic T --since EPOCH_S --out FILE [kafka options]
        every record of T whose timestamp is at or after EPOCH_S and before the call, as
        JSON lines (the record's value when it is a JSON object, else {"key", "value"}
        as text) written atomically; the count on stdout

    edgelab_experiment.py mlflow-log --tracking-uri URL --experiment NAME --run-dir DIR
                          --username U --password-file FILE [--ca-file FILE]
        the run in DIR as one MLflow run of experiment NAME (created when missing):
        parameters = the spec from provenance.json, flattened (consumers.max, ...);
        metrics = report/summary.json's numbers; artifacts = report.html, the PNGs,
        summary.json, provenance.json and status.json; tags edgelab.run_id and
        edgelab.git_commit. The same run logged again goes into its earlier MLflow run.
        The password is read from the file. The run's URL etc. as JSON on stdout.

Kafka options: --security-protocol, --sasl-mechanism, --sasl-username,
--sasl-password-file (the password is read from the file), --ssl-cafile.
Bad input or an unreachable broker: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgelab import cli
from edgelab.config import SASL_MECHANISMS, SECURITY_PROTOCOLS, ConfigError
from edgelab.kafka import KafkaSettings

PROG = "edgelab-experiment"


def settings(args: argparse.Namespace) -> KafkaSettings:
    servers = [s.strip() for s in args.bootstrap.split(",") if s.strip()]
    if not servers or any(not s.rpartition(":")[2].isdigit() for s in servers):
        raise cli.InputError(f"--bootstrap must be HOST:PORT[,...], got {args.bootstrap!r}")
    password = None
    if args.security_protocol.startswith("SASL_"):
        if not args.sasl_username or not args.sasl_password_file:
            raise cli.InputError(f"--security-protocol {args.security_protocol} needs --sasl-username and "
                                 "--sasl-password-file")
        try:
            password = Path(args.sasl_password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"--sasl-password-file {args.sasl_password_file}: {exc.strerror}") from None
    return KafkaSettings(bootstrap=servers, security_protocol=args.security_protocol,
                         sasl_mechanism=args.sasl_mechanism if password is not None else None,
                         sasl_username=args.sasl_username if password is not None else None,
                         sasl_password=password, ssl_cafile=args.ssl_cafile or None, client_id=PROG)


def consumer(args: argparse.Namespace, group: str | None) -> Any:
    from kafka import KafkaConsumer  # type: ignore[import-untyped, unused-ignore]
    from kafka.errors import KafkaError  # type: ignore[import-untyped, unused-ignore]

    try:
        return KafkaConsumer(**settings(args).client_config(), group_id=group, enable_auto_commit=False,
                             consumer_timeout_ms=2000, request_timeout_ms=30000)
    except KafkaError as exc:
        raise ConfigError(f"kafka {args.bootstrap}: {' '.join(str(exc).split()) or type(exc).__name__}") from None


def partitions(client: Any, topic: str) -> list[Any]:
    from kafka import TopicPartition  # type: ignore[import-untyped, unused-ignore]

    numbers = client.partitions_for_topic(topic)
    if not numbers:
        raise ConfigError(f"topic {topic} does not exist or has no partitions")
    return [TopicPartition(topic, p) for p in sorted(numbers)]


def skip_backlog(args: argparse.Namespace) -> None:
    from kafka.errors import KafkaError  # type: ignore[import-untyped, unused-ignore]
    from kafka.structs import OffsetAndMetadata  # type: ignore[import-untyped, unused-ignore]

    client = consumer(args, args.group)
    try:
        tps = partitions(client, args.topic)
        if args.if_new:
            # A group with offsets has run before: its members (maybe alive now) own it.
            held = {tp: client.committed(tp) for tp in tps}
            if any(offset is not None for offset in held.values()):
                print(json.dumps({"group": args.group, "topic": args.topic, "committed": None,
                                  "left": "the group has offsets already"}))
                return
        ends = client.end_offsets(tps)
        client.assign(tps)
        try:
            client.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in tps})
        except KafkaError as exc:
            raise ConfigError(f"group {args.group}: the commit failed ({type(exc).__name__}): a member of the group "
                              "is alive; move a group past the backlog before any consumer joins it") from None
    finally:
        client.close()
    print(json.dumps({"group": args.group, "topic": args.topic, "committed": sum(ends.values()),
                      "partitions": len(tps)}))


def record_json(record: Any) -> str:
    try:
        value = json.loads(record.value)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        value = {"key": record.key.decode("utf-8", "replace") if record.key is not None else None,
                 "value": (record.value or b"").decode("utf-8", "replace")}
    return json.dumps(value, separators=(",", ":"))


def dump(args: argparse.Namespace) -> None:
    """The topic's records with a timestamp from --since to the start of the dump, as
    edgelab-report reads the results topic (edgelab.experiments.report.topic_records:
    every partition from its beginning, past the reported ends until the topic is
    quiet), each as record_json; written atomically when all were read."""
    from edgelab.experiments.report import topic_records

    found = topic_records(settings(args), args.topic, since=args.since, timeout_s=args.timeout, option="--topic")
    lines = [record_json(record) for record in found]
    cli.write_atomic(args.out, "".join(line + "\n" for line in lines))
    print(json.dumps({"topic": args.topic, "records": len(lines), "out": args.out}))


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested mapping as MLflow parameters: dotted keys, text values (lists and
    non-text scalars as JSON)."""
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value if isinstance(value, str) else json.dumps(value)}


def metrics_of(summary: dict[str, Any]) -> dict[str, float]:
    """summary.json's top-level numbers (null means not measured: left out)."""
    return {key: float(value) for key, value in summary.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not key.startswith("_")}


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise cli.InputError(f"{what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise cli.InputError(f"{what} {path}: not JSON ({exc})") from None


MLFLOW_ARTIFACTS = ("provenance.json", "status.json", "report/report.html", "report/summary.json", "report/*.png")


def mlflow_log(args: argparse.Namespace) -> None:
    """One MLflow run per experiment run, in the experiment named --experiment: the
    spec as parameters, summary.json's numbers as metrics, the report's files and the
    provenance as artifacts; tagged with the run's id and the git commit. Logging the
    same run again goes into the MLflow run that carries its id."""
    import os

    run_dir = Path(args.run_dir)
    provenance = read_json(run_dir / "provenance.json", "provenance")
    summary_path = run_dir / "report" / "summary.json"
    summary = read_json(summary_path, "summary") if summary_path.exists() else {}
    status_path = run_dir / "status.json"
    status = read_json(status_path, "status") if status_path.exists() else {}
    try:
        password = Path(args.password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"--password-file {args.password_file}: {exc.strerror}") from None
    if not password:
        raise ConfigError(f"--password-file {args.password_file} is empty")
    # The client reads its credentials from the environment of this process only.
    os.environ["MLFLOW_TRACKING_USERNAME"] = args.username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    if args.ca_file:
        os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"] = args.ca_file
    # A server that is down is said in seconds, not after the client's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    if not args.verbose:  # the client's retry warnings: the failure is said once, at the end
        for name in ("urllib3", "mlflow"):
            logging.getLogger(name).setLevel(logging.ERROR)

    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    run_id_tag = str(provenance.get("run") or run_dir.name)
    commit = str((provenance.get("git") or {}).get("commit") or "")
    params = flatten(provenance.get("spec") or {})
    metrics = metrics_of(summary)
    tags = {"edgelab.run_id": run_id_tag, "edgelab.git_commit": commit, "mlflow.source.git.commit": commit,
            "edgelab.experiment": str(provenance.get("experiment") or ""),
            "edgelab.ok": json.dumps(status.get("ok")), "edgelab.failed_step": str(status.get("failed_step") or ""),
            "mlflow.runName": run_id_tag}
    artifacts = sorted({p for pattern in MLFLOW_ARTIFACTS for p in run_dir.glob(pattern) if p.is_file()})
    client = MlflowClient(tracking_uri=args.tracking_uri)
    try:
        # The client prints a "View run" line of its own: stdout carries only this tool's JSON.
        with contextlib.redirect_stdout(io.StringIO()):
            found = client.get_experiment_by_name(args.experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(args.experiment)
            escaped = run_id_tag.replace("'", "")
            earlier = client.search_runs([experiment_id], f"tags.`edgelab.run_id` = '{escaped}'", max_results=1)
            run = earlier[0] if earlier else client.create_run(experiment_id, run_name=run_id_tag)
            run_id = run.info.run_id
            stamp = int(time.time() * 1000)
            items = list(params.items())
            for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters a batch
                client.log_batch(run_id, params=[Param(k, v) for k, v in items[start:start + 100]])
            client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in metrics.items()],
                             tags=[RunTag(k, v) for k, v in tags.items()])
            for path in artifacts:
                parent = path.parent.relative_to(run_dir).as_posix()
                client.log_artifact(run_id, str(path), None if parent == "." else parent)
            client.set_terminated(run_id, "FINISHED" if status.get("ok", True) else "FAILED")
    except MlflowException as exc:
        raise ConfigError(f"mlflow {args.tracking_uri}: {' '.join(str(exc.message).split())[:400]}") from None
    except OSError as exc:
        raise ConfigError(f"mlflow {args.tracking_uri}: {' '.join(str(exc).split())[:400]}") from None
    print(json.dumps({"experiment": args.experiment, "experiment_id": experiment_id, "run_id": run_id,
                      "url": f"{args.tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}",
                      "params": len(params), "metrics": len(metrics), "artifacts": len(artifacts),
                      "reused": bool(earlier)}))


def spec(args: argparse.Namespace) -> None:
    from edgelab.experiments.spec import SpecError, load_spec

    try:
        print(json.dumps(load_spec(args.file)))
    except SpecError as exc:
        raise cli.InputError(str(exc)) from None


def add_kafka(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", required=True, metavar="HOST:PORT[,...]")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--security-protocol", default="PLAINTEXT", choices=SECURITY_PROTOCOLS)
    parser.add_argument("--sasl-mechanism", default="SCRAM-SHA-512", choices=SASL_MECHANISMS)
    parser.add_argument("--sasl-username")
    parser.add_argument("--sasl-password-file", metavar="FILE")
    parser.add_argument("--ssl-cafile", metavar="FILE")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("spec", help="validate a spec, print it normalised as JSON")
    one.add_argument("file", metavar="FILE")
    one.set_defaults(func=spec)
    two = sub.add_parser("skip-backlog", help="commit the topic's ends for a consumer group")
    add_kafka(two)
    two.add_argument("--group", required=True)
    two.add_argument("--if-new", action="store_true",
                     help="leave a group that has committed offsets as it is (it has had members)")
    two.set_defaults(func=skip_backlog)
    three = sub.add_parser("dump", help="a topic's records since a time, as JSON lines")
    add_kafka(three)
    three.add_argument("--since", type=float, required=True, metavar="EPOCH_S")
    three.add_argument("--out", required=True, metavar="FILE")
    three.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                       help="give up when no record comes for this long while the partitions' reported ends "
                            "are not reached (300)")
    three.set_defaults(func=dump)


    four = sub.add_parser("mlflow-log", help="log a run directory to MLflow")
    four.add_argument("--tracking-uri", required=True, metavar="URL")
    four.add_argument("--experiment", required=True, help="the MLflow experiment (the spec's name)")
    four.add_argument("--run-dir", required=True, metavar="DIR", help="experiments/runs/<id>")
    four.add_argument("--username", required=True)
    four.add_argument("--password-file", required=True, metavar="FILE")
    four.add_argument("--ca-file", metavar="FILE", help="CA bundle for an https tracking server")
    four.set_defaults(func=mlflow_log)


def start(args: argparse.Namespace) -> None:
    args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, description=__doc__, add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())
