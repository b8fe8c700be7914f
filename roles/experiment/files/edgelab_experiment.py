#!/usr/bin/env python3
"""Controller-side steps of playbooks/experiment.yml (role experiment), run with the
controller's Python (the project's .venv, where edgelab-agents is installed):

    edgelab_experiment.py spec FILE
        the spec validated and normalised by edgelab.experiments.spec, as JSON on stdout
    edgelab_experiment.py skip-backlog --bootstrap B --topic T --group G [kafka options]
        commit the partitions' ends for group G on topic T, so that the group's next
        members start with the frames sent from now on (run with no member alive)
    edgelab_experiment.py dump --bootstrap B --topic T --since EPOCH_S --out FILE [kafka options]
        every record of T whose timestamp is at or after EPOCH_S, up to the partitions'
        ends at the time of the call, as JSON lines (the record's value when it is a JSON
        object, else {"key", "value"} as text) written atomically; the count on stdout

Kafka options: --security-protocol, --sasl-mechanism, --sasl-username,
--sasl-password-file (the password is read from the file), --ssl-cafile.
Bad input or an unreachable broker: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
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
    from kafka.structs import OffsetAndMetadata  # type: ignore[import-untyped, unused-ignore]

    client = consumer(args, args.group)
    try:
        tps = partitions(client, args.topic)
        ends = client.end_offsets(tps)
        client.assign(tps)
        client.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in tps})
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
    client = consumer(args, None)
    lines: list[str] = []
    try:
        tps = partitions(client, args.topic)
        ends = client.end_offsets(tps)
        since_ms = int(args.since * 1000)
        starts = client.offsets_for_times({tp: since_ms for tp in tps})
        client.assign(tps)
        todo = {}
        for tp in tps:
            found = starts.get(tp)
            if found is None or found.offset >= ends[tp]:
                continue
            client.seek(tp, found.offset)
            todo[tp] = ends[tp]
        deadline = time.monotonic() + args.timeout
        while todo:
            if time.monotonic() > deadline:
                left = sum(end - client.position(tp) for tp, end in todo.items())
                raise ConfigError(f"topic {args.topic}: {left} records not read within {args.timeout:g} s")
            for tp, records in client.poll(timeout_ms=1000, max_records=5000).items():
                for record in records:
                    # The time lookup only positions the read: a broker that ignores it
                    # (Tansu answers with the partition's start) still gets filtered here.
                    if record.offset < todo.get(tp, 0) and record.timestamp >= since_ms:
                        lines.append(record_json(record))
            for tp in list(todo):
                if client.position(tp) >= todo[tp]:
                    del todo[tp]
                    client.pause(tp)
    finally:
        client.close()
    cli.write_atomic(args.out, "".join(line + "\n" for line in lines))
    print(json.dumps({"topic": args.topic, "records": len(lines), "out": args.out}))


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
    two.set_defaults(func=skip_backlog)
    three = sub.add_parser("dump", help="a topic's records since a time, as JSON lines")
    add_kafka(three)
    three.add_argument("--since", type=float, required=True, metavar="EPOCH_S")
    three.add_argument("--out", required=True, metavar="FILE")
    three.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                       help="give up when the records are not read within this long (300)")
    three.set_defaults(func=dump)


def start(args: argparse.Namespace) -> None:
    args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, description=__doc__, add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())
