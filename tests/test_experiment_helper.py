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
from support.mlflow_server import MlflowServer, free_port, unique_name
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


def committed_total(address: str, topic: str, group: str) -> int | None:
    from kafka import KafkaConsumer, TopicPartition

    client = KafkaConsumer(bootstrap_servers=address, group_id=group, enable_auto_commit=False)
    try:
        offsets = [client.committed(TopicPartition(topic, p)) for p in sorted(client.partitions_for_topic(topic))]
    finally:
        client.close()
    return None if all(o is None for o in offsets) else sum(o or 0 for o in offsets)


def test_the_run_group_moves_before_its_first_member_and_only_then(tmp_path: Path) -> None:
    """The playbook moves the run's new group past the backlog before any consumer is
    told its name: the commit cannot meet a member. A group that has offsets (it had
    members; some may be alive) is left as it is with --if-new, and a commit while a
    member is alive fails with one line instead of a traceback."""
    from kafka import KafkaConsumer

    with running_broker("frames") as address:
        produce(address, "frames", [b"old-%d" % n for n in range(5)])
        first = helper("skip-backlog", "--if-new", "--bootstrap", address, "--topic", "frames", "--group", "run-2")
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["committed"] == 5
        assert committed_total(address, "frames", "run-2") == 5

        member = KafkaConsumer("frames", bootstrap_servers=address, group_id="run-2", auto_offset_reset="earliest",
                               enable_auto_commit=False, session_timeout_ms=30000)
        try:
            deadline = time.monotonic() + 60
            while not member.assignment() and time.monotonic() < deadline:
                member.poll(timeout_ms=1000)
            assert member.assignment(), "the member got no partitions within 60 s"
            produce(address, "frames", [b"new-%d" % n for n in range(2)])
            seen: list[bytes] = []
            while len(seen) < 2 and time.monotonic() < deadline + 30:
                for records in member.poll(timeout_ms=1000).values():
                    seen.extend(record.value for record in records)
            assert seen == [b"new-0", b"new-1"]
            member.commit()

            # More frames nobody reads: --if-new keeps the group where its members left it.
            produce(address, "frames", [b"later-%d" % n for n in range(3)])
            again = helper("skip-backlog", "--if-new", "--bootstrap", address, "--topic", "frames", "--group", "run-2")
            assert again.returncode == 0, again.stderr
            assert json.loads(again.stdout)["committed"] is None
            assert committed_total(address, "frames", "run-2") == 7

            # Without --if-new, the commit meets the live member: one line, exit 2.
            forced = helper("skip-backlog", "--bootstrap", address, "--topic", "frames", "--group", "run-2")
            assert forced.returncode == 2, (forced.stdout, forced.stderr)
            assert len(forced.stderr.strip().splitlines()) == 1 and "Traceback" not in forced.stderr
            assert "member" in forced.stderr
            assert committed_total(address, "frames", "run-2") == 7
        finally:
            member.close()


def run_directory(tmp_path: Path, run_id: str) -> Path:
    """A run's directory as the playbook leaves it: provenance, status and the report."""
    spec = json.loads(helper("spec", str(ROOT / "experiments" / "lab-smoke.yml")).stdout)
    run = tmp_path / run_id
    (run / "report").mkdir(parents=True)
    (run / "provenance.json").write_text(json.dumps({"run": run_id, "experiment": "lab-smoke", "spec": spec,
                                                     "git": {"commit": "0123abcd" * 5, "changes": False}}))
    (run / "status.json").write_text(json.dumps({"run": run_id, "ok": True, "failed_step": None}))
    (run / "report" / "summary.json").write_text(json.dumps(
        {"frames_offered": 337, "frames_processed": 337, "end_to_end_latency_p95_s": 0.28, "sla_kpi": "latency",
         "node_power_watts_mean": None, "ok_flag": True, "_results": "results.jsonl"}))
    (run / "report" / "report.html").write_text("<html><body>report</body></html>\n")
    (run / "report" / "throughput.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    (run / "extract").mkdir()
    (run / "extract" / "data.parquet").write_bytes(b"not an artifact")
    return run


def test_mlflow_log_one_run_per_experiment_run(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    from mlflow.tracking import MlflowClient

    name = unique_name("lab-smoke")
    run = run_directory(tmp_path, "lab-smoke-20261201T000000Z")
    password = tmp_path / "edgelab-password"
    password.write_text("not-checked-by-this-server\n")
    argv = ["mlflow-log", "--tracking-uri", mlflow_server.uri, "--experiment", name, "--run-dir", str(run),
            "--username", "edgelab", "--password-file", str(password)]
    logged = helper(*argv)
    assert logged.returncode == 0, logged.stderr + mlflow_server.log_tail()
    out = json.loads(logged.stdout)
    assert out["reused"] is False and out["url"].startswith(mlflow_server.uri + "/#/experiments/")

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    found = client.get_run(out["run_id"])
    assert found.info.experiment_id == client.get_experiment_by_name(name).experiment_id
    assert found.info.status == "FINISHED"
    assert found.data.tags["edgelab.run_id"] == "lab-smoke-20261201T000000Z"
    assert found.data.tags["edgelab.git_commit"] == "0123abcd" * 5
    spec = json.loads((run / "provenance.json").read_text())["spec"]
    assert found.data.params["consumers.max"] == str(spec["consumers"]["max"])
    assert found.data.params["load.max_mbps"] == json.dumps(spec["load"]["max_mbps"])
    assert found.data.params["frames.size"] == spec["frames"]["size"]
    assert found.data.metrics == {"frames_offered": 337.0, "frames_processed": 337.0,
                                  "end_to_end_latency_p95_s": 0.28}
    top = {a.path for a in client.list_artifacts(out["run_id"])}
    assert top == {"provenance.json", "status.json", "report"}
    assert {a.path for a in client.list_artifacts(out["run_id"], "report")} == {
        "report/report.html", "report/summary.json", "report/throughput.png"}

    # The same experiment run again: the same MLflow run, not a second one.
    again = helper(*argv)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["run_id"] == out["run_id"] and json.loads(again.stdout)["reused"] is True
    assert len(client.search_runs([found.info.experiment_id])) == 1


def test_mlflow_log_bad_input_is_one_line(tmp_path: Path) -> None:
    run = run_directory(tmp_path, "r1")
    base = ["mlflow-log", "--experiment", "x", "--run-dir", str(run), "--username", "edgelab"]
    missing = helper(*base, "--tracking-uri", "http://127.0.0.1:9", "--password-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "--password-file" in missing.stderr
    password = tmp_path / "pw"
    password.write_text("x\n")
    started = time.monotonic()
    down = helper(*base, "--tracking-uri", "http://127.0.0.1:%d" % free_port(), "--password-file", str(password))
    assert down.returncode == 2, down.stderr
    assert len(down.stderr.strip().splitlines()) == 1 and "Traceback" not in down.stderr
    assert time.monotonic() - started < 90
    no_run = helper(*base[:4], str(tmp_path / "nothing"), *base[5:], "--tracking-uri", "http://127.0.0.1:9",
                    "--password-file", str(password))
    assert no_run.returncode == 2 and "provenance" in no_run.stderr
