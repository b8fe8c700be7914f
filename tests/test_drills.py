"""playbooks/drills/drilltool.py, the measurements of the fault drills (playbooks/drills.yml),
run as the playbook runs it (a process of the controller's Python): counting frames
against results, the partition timeline and its recovery, the scrape gap, reading the
results topic from a real broker (Tansu, tests/support/tansu.py) and polling real
/metrics endpoints; bad input is one line and exit 2."""

from __future__ import annotations

import http.server
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.tansu import running_broker

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "playbooks" / "drills" / "drilltool.py"


def tool(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=timeout)


def feeder_report(path: Path, source: str, sent: int, errors: int = 0) -> Path:
    path.write_text(json.dumps({"source": source, "frames_sent": sent, "frames_acked": sent - errors,
                                "errors": errors, "per_window": []}))
    return path


def result(source: str, seq: int, produced: float, published: float | None = None) -> str:
    return json.dumps({"frame": f"{source}-{seq}", "produced": produced,
                       "published": produced + 0.5 if published is None else published})


def test_count_finds_lost_and_repeated_frames(tmp_path: Path) -> None:
    lines = [result("run-kafka", s, 1000.0 + s) for s in (0, 1, 2, 2, 5, 6, 6, 6, 9)]
    lines.append(result("other-run", 3, 1003.0))  # another source's frame is not ours
    lines.append(result("run-kafka", 12, 1012.0))  # beyond what the feeder sent
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n\n")
    run = tool("count", "--results", str(tmp_path / "r.jsonl"),
               "--feeder", str(feeder_report(tmp_path / "f.json", "run-kafka", 10, errors=1)))
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["frames_sent"] == 10 and out["frames_acked"] == 9 and out["send_errors"] == 1
    assert out["result_records"] == 9
    assert out["frames_processed"] == 6
    assert out["duplicates"] == 3
    assert out["missing"] == 4 and out["missing_first"] == 3 and out["missing_last"] == 8
    assert "missing_after_ready" not in out


def test_count_after_ready_counts_only_frames_sent_after_it(tmp_path: Path) -> None:
    # Frames 0-3 before the outage, 4-7 lost with the broker, 8-11 after it; 13 lost
    # after the broker came back (its neighbour 12 was sent after `ready`).
    stamps = {0: 100.0, 1: 101.0, 2: 102.0, 3: 103.0, 8: 120.0, 9: 121.0, 10: 122.0, 11: 123.0, 12: 124.0, 14: 126.0}
    # The consumers resume 8 s after `ready` (115): frame 8 is published at 123.
    lines = [result("s", seq, at, published=at + (3.0 if seq >= 8 else 0.4)) for seq, at in stamps.items()]
    (tmp_path / "r.jsonl").write_text("\n".join(lines))
    run = tool("count", "--results", str(tmp_path / "r.jsonl"),
               "--feeder", str(feeder_report(tmp_path / "f.json", "s", 15)), "--ready", "115")
    out = json.loads(run.stdout)
    assert out["missing"] == 5  # 4, 5, 6, 7 and 13
    assert out["missing_after_ready"] == 1  # 13 only
    assert out["first_processed_after_ready"] == 8
    assert out["first_result_after_ready_s"] == 8.0  # frame 8 published at 123, ready at 115


def test_recovery_measures_from_the_dip_to_all_partitions_held(tmp_path: Path) -> None:
    timeline = [[10.0, 12, 3], [10.5, 12, 3], [11.0, 8, 2], [11.5, 8, 2], [12.0, 4, 2], [17.5, 8, 2], [18.0, 12, 3],
                [18.5, 9, 3], [19.0, 12, 3]]
    (tmp_path / "t.json").write_text(json.dumps({"timeline": timeline}))
    timeline_file = str(tmp_path / "t.json")
    out = json.loads(tool("recovery", "--timeline", timeline_file, "--after", "10.2", "--total", "12").stdout)
    assert out == {"dip_at": 11.0, "recovered_at": 18.0, "lowest": 4, "dip_after_s": 0.8, "recovered_after_s": 7.8}
    never = json.loads(tool("recovery", "--timeline", timeline_file, "--after", "19.5", "--total", "12").stdout)
    assert never["dip_at"] is None and never["recovered_at"] is None


def test_gap_is_the_longest_stretch_without_a_sample(tmp_path: Path) -> None:
    response = {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"__name__": "up", "job": "node"}, "values": [[t, "1"] for t in (95, 100, 105, 110, 131, 136, 141)]},
        {"metric": {"__name__": "up", "job": "agents"}, "values": [[t, "1"] for t in (101, 106, 111, 126, 131, 136)]},
    ]}}
    (tmp_path / "up.json").write_text(json.dumps(response))
    out = json.loads(tool("gap", "--samples", str(tmp_path / "up.json"), "--start", "100", "--end", "140").stdout)
    assert out["max_gap_s"] == 21.0
    assert out["per_series"] == {"__name__=up,job=node": 21.0, "__name__=up,job=agents": 15.0}
    assert out["per_job"] == {"node": 21.0, "agents": 15.0}
    assert out["series"] == 2 and out["samples"] == 11


class Metrics(http.server.BaseHTTPRequestHandler):
    partitions = "3"

    def do_GET(self) -> None:
        body = ("# TYPE edgelab_consumer_partitions gauge\n"
                f'edgelab_consumer_partitions{{consumer="edgelab-consumer@1"}} {self.partitions}\n').encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def metrics_server(partitions: str) -> Iterator[str]:
    handler = type("M", (Metrics,), {"partitions": partitions})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_watch_partitions_sums_what_the_reachable_consumers_hold() -> None:
    with metrics_server("5") as one, metrics_server("7") as two:
        run = tool("watch-partitions", "--targets", f"{one},{two},127.0.0.1:1", "--duration", "1.2",
                   "--interval", "0.3")
    assert run.returncode == 0, run.stderr
    timeline = json.loads(run.stdout)["timeline"]
    assert len(timeline) >= 3
    assert all(held == 12 and answered == 2 for _, held, answered in timeline)
    assert all(b[0] > a[0] for a, b in itertools.pairwise(timeline))


def test_collect_reads_only_new_records_of_its_source(tmp_path: Path) -> None:
    from kafka import KafkaProducer

    with running_broker("results") as address:
        producer = KafkaProducer(bootstrap_servers=address)
        try:
            producer.send("results", b'{"frame": "drill-0"}').get(timeout=30)  # before the reader: not read
            reader = subprocess.Popen([sys.executable, str(TOOL), "collect", "--bootstrap", address,
                                       "--topic", "results", "--source", "drill", "--duration", "4", "--idle", "2",
                                       "--out", str(tmp_path / "out.jsonl")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(2.5)
            for value in (b'{"frame": "drill-1", "produced": 1.0}', b'{"frame": "other-1"}', b"not json",
                          b'{"frame": "drill-2", "produced": 2.0}', b'{"frame": "drill-1", "produced": 1.0}'):
                producer.send("results", value).get(timeout=30)
            out, err = reader.communicate(timeout=120)
        finally:
            producer.close()
    assert reader.returncode == 0, err
    summary = json.loads(out)
    assert summary["records_seen"] == 5 and summary["records_kept"] == 3
    assert summary["partitions"] == 1 and summary["topic_changes"] == 0
    frames = [json.loads(line)["frame"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert frames == ["drill-1", "drill-2", "drill-1"]


def test_partitions_and_recreate_against_a_broker() -> None:
    from kafka import KafkaProducer

    with running_broker("results") as address:
        producer = KafkaProducer(bootstrap_servers=address)
        try:
            producer.send("frames", b"x").get(timeout=30)  # created by the broker with its default
        finally:
            producer.close()
        before = json.loads(tool("partitions", "--bootstrap", address, "--topics", "results,frames,none").stdout)
        assert before["results"] == 1 and before["none"] == 0
        assert before["frames"] not in (0, 6)
        run = tool("recreate", "--bootstrap", address, "--topic", "frames", "--partitions", "6",
                   "--config", "retention.ms=3600000")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout) == {"topic": "frames", "partitions": 6}
        after = json.loads(tool("partitions", "--bootstrap", address, "--topics", "results,frames,none").stdout)
        assert after == {"results": 1, "frames": 6, "none": 0}  # asking did not create "none"


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_text('{"frames_sent": 3}')
    (tmp_path / "r.jsonl").write_text("")
    cases = [
        ("count", "--results", str(tmp_path / "r.jsonl"), "--feeder", str(tmp_path / "f.json")),
        ("count", "--results", str(tmp_path / "missing.jsonl"), "--feeder", str(tmp_path / "f.json")),
        ("gap", "--samples", str(tmp_path / "f.json"), "--start", "1", "--end", "2"),
        ("recovery", "--timeline", str(tmp_path / "f.json"), "--after", "1", "--total", "12"),
        ("watch-partitions", "--targets", "", "--duration", "1"),
        ("recreate", "--bootstrap", "127.0.0.1:1", "--topic", "t", "--partitions", "0"),
        ("partitions", "--bootstrap", "127.0.0.1:1", "--topics", "t"),
        ("collect", "--bootstrap", "127.0.0.1:1", "--topic", "t", "--source", "s", "--duration", "1", "--out",
         str(tmp_path / "o.jsonl")),
    ]
    for case in cases:
        run = tool(*case)
        assert run.returncode == 2, (case, run.stdout, run.stderr)
        assert run.stderr.startswith("edgelab-drill: bad input: "), run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
