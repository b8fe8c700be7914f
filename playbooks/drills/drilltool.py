#!/usr/bin/env python3
"""Measurements for playbooks/drills.yml (the fault drills, docs/drills.md).

Run by the playbook with the controller's Python, except watch-partitions, which runs
on the monitoring host with the host's own python3 (standard library only there):

    drilltool.py collect --bootstrap B --topic T --source S --duration D --out FILE
        read the results topic without a consumer group from its current end for at
        least D seconds and until it has been quiet for --idle seconds (at most
        --max-wait more), surviving a broker restart (the partitions are looked up every
        second; when they change, the topic is read again from its beginning, and a
        position past the end resets to the earliest offset); every record whose
        `frame` key starts with S- is written to FILE as one JSON line; a count on stdout
    drilltool.py partitions --bootstrap B --topics T[,T...]
        how many partitions the broker reports for each topic (0: unknown topic), asked
        without creating any topic
    drilltool.py recreate --bootstrap B --topic T --partitions N [--config KEY=VALUE ...]
        delete topic T and create it again at once with N partitions and these configs
        (a memory-store broker restarted under load gets its topics back from its
        clients' metadata requests, with its own default partition count)
    drilltool.py count --results FILE --feeder REPORT [--ready EPOCH_S]
        frames the feeder sent and had acknowledged against the distinct frames that
        have a result: duplicates, missing (lost) frames, and with --ready the missing
        frames sent after EPOCH_S (a frame's send time is bracketed by the frames
        around it that have a result) and the first result published after it
    drilltool.py watch-partitions --targets HOST:PORT[,...] --duration D
        poll each consumer's /metrics every --interval seconds and print, per poll, the
        time, the partitions the reachable consumers hold and how many answered
    drilltool.py recovery --timeline FILE --after EPOCH_S --total N
        from watch-partitions' output: when the partitions held first fell below N
        after EPOCH_S, and when all N were held again
    drilltool.py gap --samples FILE --start EPOCH_S --end EPOCH_S
        from a Prometheus instant query of a range vector (e.g. up[15m]): the longest
        interval without a sample in [start, end], per series, per job and overall

Each prints one JSON object on stdout. Bad input or an unreachable service: one line
on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "edgelab-drill"
PARTITIONS = re.compile(r"^edgelab_consumer_partitions\{[^}]*\} ([0-9.eE+-]+)$", re.MULTILINE)


class BadInputError(Exception):
    """Input the tool cannot use; printed as one line."""


def read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInputError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise BadInputError(f"{path}: not JSON: {exc}") from None


def frame_number(key: str, source: str) -> int | None:
    """The sequence number of a feeder key SOURCE-N, None for another source's key."""
    prefix = source + "-"
    if not key.startswith(prefix) or not key[len(prefix):].isdigit():
        return None
    return int(key[len(prefix):])


def count(results: Path, feeder: dict[str, Any], ready: float | None = None) -> dict[str, Any]:
    """What the feeder sent against the results that came back (see the module doc)."""
    for field in ("source", "frames_sent", "frames_acked", "errors"):
        if field not in feeder:
            raise BadInputError(f"the feeder report has no {field!r}: not an edgelab-feeder report")
    source, sent = str(feeder["source"]), int(feeder["frames_sent"])
    produced: dict[int, float] = {}
    published: list[float] = []
    records = 0
    try:
        lines = results.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadInputError(f"{results}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            seq = frame_number(str(record["frame"]), source)
        except (ValueError, KeyError, TypeError):
            raise BadInputError(f"{results}:{number}: not a result record") from None
        if seq is None or seq >= sent:
            continue
        records += 1
        stamp, sent_at = record.get("produced"), record.get("published")
        produced.setdefault(seq, float(stamp) if isinstance(stamp, (int, float)) else 0.0)
        if isinstance(sent_at, (int, float)):
            published.append(float(sent_at))
    missing = [seq for seq in range(sent) if seq not in produced]
    out: dict[str, Any] = {
        "source": source, "frames_sent": sent, "frames_acked": int(feeder["frames_acked"]),
        "send_errors": int(feeder["errors"]), "result_records": records, "frames_processed": len(produced),
        "duplicates": records - len(produced), "missing": len(missing),
        "missing_first": missing[0] if missing else None, "missing_last": missing[-1] if missing else None,
    }
    if ready is not None:
        # A missing frame was sent after `ready` when a frame before it with a result
        # was sent after `ready`: sequence numbers follow the send order.
        done = sorted(produced)
        after = 0
        for seq in missing:
            below = bisect.bisect_left(done, seq)
            if below and produced[done[below - 1]] >= ready:
                after += 1
        first_after = next((s for s in done if produced[s] >= ready), None)
        resumed = min((p for p in published if p >= ready), default=None)
        out.update(missing_after_ready=after, first_processed_after_ready=first_after,
                   first_result_after_ready_s=None if resumed is None else round(resumed - ready, 2))
    return out


def recovery(timeline: list[list[float]], after: float, total: int) -> dict[str, Any]:
    """When the held partitions dropped below `total` after `after`, and when all were held again."""
    dip = back = None
    low = total
    for stamp, held, _answered in timeline:
        if stamp < after:
            continue
        if dip is None:
            if held < total:
                dip, low = stamp, int(held)
            continue
        low = min(low, int(held))
        if held >= total:
            back = stamp
            break
    return {"dip_at": dip, "recovered_at": back, "lowest": low if dip is not None else None,
            "dip_after_s": None if dip is None else round(dip - after, 2),
            "recovered_after_s": None if back is None else round(back - after, 2)}


def gap(response: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    """The longest stretch without a sample in [start, end] over the series of a range vector."""
    try:
        series = response["data"]["result"]
        if response.get("status") != "success" or response["data"]["resultType"] != "matrix":
            raise TypeError
    except (KeyError, TypeError):
        raise BadInputError("not a Prometheus range-vector response (status success, resultType matrix)") from None
    if not series:
        raise BadInputError("the response holds no series")
    per: dict[str, float] = {}
    jobs: dict[str, float] = {}
    samples = 0
    for item in series:
        stamps = sorted(float(v[0]) for v in item.get("values", []) if start <= float(v[0]) <= end)
        samples += len(stamps)
        edges = [start, *stamps, end]
        name = ",".join(f"{k}={v}" for k, v in sorted(item.get("metric", {}).items()))
        per[name] = round(max(b - a for a, b in itertools.pairwise(edges)), 3)
        job = str(item.get("metric", {}).get("job", ""))
        jobs[job] = max(jobs.get(job, 0.0), per[name])
    return {"max_gap_s": max(per.values()), "series": len(per), "samples": samples, "per_job": jobs,
            "per_series": per}


def scrape_partitions(target: str, timeout: float) -> float | None:
    try:
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=timeout) as answer:
            text = answer.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError):
        return None
    return sum(float(v) for v in PARTITIONS.findall(text))


def watch_partitions(targets: Sequence[str], duration: float, interval: float) -> list[list[float]]:
    timeline = []
    end = time.time() + duration
    while time.time() < end:
        stamp = time.time()
        held = [scrape_partitions(t, min(interval, 1.0)) for t in targets]
        answered = [h for h in held if h is not None]
        timeline.append([round(stamp, 3), sum(answered), len(answered)])
        time.sleep(max(0.0, interval - (time.time() - stamp)))
    return timeline


def collect(args: argparse.Namespace) -> dict[str, Any]:
    from kafka import KafkaConsumer, TopicPartition  # type: ignore[import-untyped, unused-ignore]
    from kafka.errors import KafkaError  # type: ignore[import-untyped, unused-ignore]

    prefix = args.source + "-"
    out = Path(args.out)
    started = time.time()
    kept = seen = 0
    try:
        client = KafkaConsumer(bootstrap_servers=args.bootstrap.split(","), group_id=None, enable_auto_commit=False,
                               auto_offset_reset="earliest", metadata_max_age_ms=1000, request_timeout_ms=15000,
                               reconnect_backoff_max_ms=1000, client_id=PROG)
    except KafkaError as exc:
        raise BadInputError(f"kafka {args.bootstrap}: {' '.join(str(exc).split()) or type(exc).__name__}") from None
    assigned: set[Any] = set()
    first, changes = True, 0
    last = time.time()
    with out.open("w", encoding="utf-8") as sink:
        try:
            while True:
                now = time.time()
                if now - started >= args.duration and now - last >= args.idle:
                    break
                if now - started >= args.duration + args.max_wait:
                    break
                numbers = client.partitions_for_topic(args.topic) or set()
                wanted = {TopicPartition(args.topic, p) for p in numbers}
                if wanted and wanted != assigned:
                    client.assign(sorted(wanted))
                    if first:  # the first assignment starts at the end: earlier runs are not ours
                        client.seek_to_end()
                        first = False
                    else:  # the topic changed under us (a broker that lost it): read it whole
                        client.seek_to_beginning()
                        changes += 1
                    assigned = wanted
                if not assigned:
                    time.sleep(0.5)
                    continue
                try:
                    batch = client.poll(timeout_ms=1000)
                except KafkaError:
                    time.sleep(0.5)
                    continue
                for records in batch.values():
                    for record in records:
                        seen += 1
                        last = time.time()
                        try:
                            value = json.loads(record.value)
                        except (ValueError, TypeError):
                            continue
                        if isinstance(value, dict) and str(value.get("frame", "")).startswith(prefix):
                            sink.write(json.dumps(value, separators=(",", ":")) + "\n")
                            kept += 1
        finally:
            client.close()
    return {"records_seen": seen, "records_kept": kept, "partitions": len(assigned), "topic_changes": changes,
            "seconds": round(time.time() - started, 1)}


def partitions(bootstrap: str, topics: Sequence[str]) -> dict[str, int]:
    from kafka import KafkaAdminClient  # type: ignore[import-untyped, unused-ignore]
    from kafka.errors import KafkaError  # type: ignore[import-untyped, unused-ignore]

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id=PROG, request_timeout_ms=15000)
    except KafkaError as exc:
        raise BadInputError(f"kafka {bootstrap}: {' '.join(str(exc).split()) or type(exc).__name__}") from None
    try:
        # Listing topics does not create any (a metadata request for a named topic may).
        listed = {str(t.get("name", t.get("topic"))): len(t["partitions"]) for t in admin.describe_topics()}
    finally:
        admin.close()
    return {topic: listed.get(topic, 0) for topic in topics}


def recreate(bootstrap: str, topic: str, count: int, configs: Sequence[str]) -> dict[str, Any]:
    from kafka import KafkaAdminClient  # type: ignore[import-untyped, unused-ignore]
    from kafka.admin import NewTopic  # type: ignore[import-untyped, unused-ignore]
    from kafka.errors import KafkaError  # type: ignore[import-untyped, unused-ignore]

    settings = dict(c.split("=", 1) for c in configs)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id=PROG, request_timeout_ms=15000)
    except KafkaError as exc:
        raise BadInputError(f"kafka {bootstrap}: {' '.join(str(exc).split()) or type(exc).__name__}") from None
    try:
        # Back to back on one connection: the window in which a client's metadata
        # request could create the topic again with the broker's default is short.
        try:
            admin.delete_topics([topic], timeout_ms=15000)
        except KafkaError as exc:
            raise BadInputError(f"delete {topic}: {' '.join(str(exc).split())}") from None
        try:
            admin.create_topics([NewTopic(topic, count, 1, topic_configs=settings)], timeout_ms=15000)
        except KafkaError as exc:
            raise BadInputError(f"create {topic}: {' '.join(str(exc).split())}") from None
        listed = {str(t.get("name", t.get("topic"))): len(t["partitions"]) for t in admin.describe_topics([topic])}
    finally:
        admin.close()
    return {"topic": topic, "partitions": listed.get(topic, 0)}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("collect")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--idle", type=float, default=15.0)
    p.add_argument("--max-wait", type=float, default=180.0)
    p.add_argument("--out", required=True)
    p = sub.add_parser("partitions")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topics", required=True)
    p = sub.add_parser("recreate")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--config", action="append", default=[])
    p = sub.add_parser("count")
    p.add_argument("--results", required=True)
    p.add_argument("--feeder", required=True)
    p.add_argument("--ready", type=float)
    p = sub.add_parser("watch-partitions")
    p.add_argument("--targets", required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--interval", type=float, default=0.5)
    p = sub.add_parser("recovery")
    p.add_argument("--timeline", required=True)
    p.add_argument("--after", type=float, required=True)
    p.add_argument("--total", type=int, required=True)
    p = sub.add_parser("gap")
    p.add_argument("--samples", required=True)
    p.add_argument("--start", type=float, required=True)
    p.add_argument("--end", type=float, required=True)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "collect":
            result = collect(args)
        elif args.command == "partitions":
            result = partitions(args.bootstrap, [t for t in args.topics.split(",") if t])
        elif args.command == "recreate":
            if args.partitions < 1 or any("=" not in c for c in args.config):
                raise BadInputError("--partitions must be >= 1 and every --config KEY=VALUE")
            result = recreate(args.bootstrap, args.topic, args.partitions, args.config)
        elif args.command == "count":
            result = count(Path(args.results), read_json(args.feeder), args.ready)
        elif args.command == "watch-partitions":
            targets = [t.strip() for t in args.targets.split(",") if t.strip()]
            if not targets or args.duration <= 0 or args.interval <= 0:
                raise BadInputError("--targets needs HOST:PORT[,...]; --duration and --interval must be > 0")
            result = {"timeline": watch_partitions(targets, args.duration, args.interval)}
        elif args.command == "recovery":
            timeline = read_json(args.timeline)
            timeline = timeline.get("timeline") if isinstance(timeline, dict) else timeline
            if not isinstance(timeline, list) or not all(isinstance(r, list) and len(r) == 3 for r in timeline):
                raise BadInputError(f"{args.timeline}: not a watch-partitions timeline")
            result = recovery(timeline, args.after, args.total)
        else:
            if args.end <= args.start:
                raise BadInputError("--end must be after --start")
            result = gap(read_json(args.samples), args.start, args.end)
    except BadInputError as exc:
        print(f"{PROG}: bad input: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
