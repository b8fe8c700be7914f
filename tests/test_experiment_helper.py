"""roles/experiment/files/edgelab_experiment.py, the controller-side steps of
playbooks/experiment.yml, run as the playbook runs it (a process of the controller's
Python): the spec check, moving a group past the backlog, dumping the results topic;
the Kafka steps against a real broker (Tansu, tests/support/tansu.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from support.tansu import running_broker

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "roles" / "experiment" / "files" / "edgelab_experiment.py"


def helper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HELPER), *args], capture_output=True, text=True, timeout=120)


def produce(address: str, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=address)
    try:
        for number, value in enumerate(values):
            producer.send(topic, key=b"k%d" % number, value=value).get(timeout=30)
    finally:
        producer.close()


def test_spec_prints_the_normalised_spec() -> None:
    run = helper("spec", str(ROOT / "experiments" / "lab-smoke.yml"))
    assert run.returncode == 0, run.stderr
    spec = json.loads(run.stdout)
    assert spec["consumers"]["min"] <= spec["consumers"]["start"] <= spec["consumers"]["max"]
    assert spec["model"]["source"]


def test_a_bad_spec_is_one_line_naming_the_field(tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "experiments" / "lab-smoke.yml").read_text())
    spec["consumers"]["max"] = -3
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(spec))
    run = helper("spec", str(bad))
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert "consumers.max" in run.stderr
    missing = helper("spec", str(tmp_path / "nope.yml"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_skip_backlog_then_dump_since(tmp_path: Path) -> None:
    with running_broker("frames", "results") as address:
        # A backlog of frames: a group moved past it sees none of them.
        produce(address, "frames", [b"old-%d" % n for n in range(7)])
        moved = helper("skip-backlog", "--bootstrap", address, "--topic", "frames", "--group", "run-1")
        assert moved.returncode == 0, moved.stderr
        assert json.loads(moved.stdout)["committed"] == 7
        produce(address, "frames", [b"new-%d" % n for n in range(3)])
        from kafka import KafkaConsumer

        group = KafkaConsumer("frames", bootstrap_servers=address, group_id="run-1", auto_offset_reset="earliest",
                              enable_auto_commit=False)
        seen: list[bytes] = []
        try:
            deadline = time.monotonic() + 60  # joining the group takes seconds on Tansu
            while len(seen) < 3 and time.monotonic() < deadline:
                for records in group.poll(timeout_ms=1000).values():
                    seen.extend(record.value for record in records)
            # Nothing older arrives after the new frames either.
            for records in group.poll(timeout_ms=2000).values():
                seen.extend(record.value for record in records)
        finally:
            group.close()
        assert seen == [b"new-%d" % n for n in range(3)]

        # The results topic: JSON objects as they are, anything else as key and text.
        produce(address, "results", [json.dumps({"frame": "f-%d" % n, "n": n}).encode() for n in range(5)]
                + [b"not json"])
        out = tmp_path / "results.jsonl"
        dumped = helper("dump", "--bootstrap", address, "--topic", "results", "--since", "0", "--out", str(out),
                        "--timeout", "60")
        assert dumped.returncode == 0, dumped.stderr
        assert json.loads(dumped.stdout)["records"] == 6
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert lines[:5] == [{"frame": "f-%d" % n, "n": n} for n in range(5)]
        assert lines[5] == {"key": "k5", "value": "not json"}

        # Nothing since a time after the last record: an empty file, not an error.
        later = helper("dump", "--bootstrap", address, "--topic", "results", "--since", str(time.time() + 3600),
                       "--out", str(tmp_path / "none.jsonl"), "--timeout", "30")
        assert later.returncode == 0, later.stderr
        assert (tmp_path / "none.jsonl").read_text() == ""

        # An unknown topic: one line, exit 2, no file.
        unknown = helper("dump", "--bootstrap", address, "--topic", "nosuch", "--since", "0",
                         "--out", str(tmp_path / "x.jsonl"), "--timeout", "10")
        assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x.jsonl").exists()


def test_bad_bootstrap_is_one_line(tmp_path: Path) -> None:
    run = helper("dump", "--bootstrap", "nohostport", "--topic", "t", "--since", "0", "--out", str(tmp_path / "o"))
    assert run.returncode == 2 and "HOST:PORT" in run.stderr and "Traceback" not in run.stderr
