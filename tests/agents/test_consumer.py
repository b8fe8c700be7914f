"""edgelab-consumer against a real Tansu broker on loopback: frames from the real feeder
are all processed and their results published, /metrics counts them, a consumer killed
mid-batch loses no frame (at-least-once), the model comes from a path or the node's
model store, and bad input is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edgelab.experiments import consumer, feeder, labmodel
from support.tansu import MISSING, free_port, running_tansu, tansu_binary


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    binary = tansu_binary()
    if binary is None:
        pytest.skip(MISSING)
    with running_tansu(binary) as address:
        yield address


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labmodel.write(tmp_path_factory.mktemp("model") / "lab.onnx", size=96, classes=4)


def feed(broker: str, topic: str, tmp_path: Path, seconds: str = "3", mbps: str = "2") -> list[str]:
    """Frames the real feeder sent to topic (160x120 PPM), their keys."""
    report = tmp_path / f"{topic}.json"
    assert feeder.main(["--max_mbps", mbps, "--duration", seconds, "--breakpoints", "1", "--profile",
                        str(flat(tmp_path)), "--frame-size", "160x120", "--bootstrap", broker, "--topic", topic,
                        "--report", str(report), "--no-progress"]) == 0
    sent = json.loads(report.read_text())
    assert sent["errors"] == 0 and sent["frames_acked"] == sent["frames_sent"] > 0
    return [f"feeder-{i}" for i in range(sent["frames_sent"])]


def flat(tmp_path: Path) -> Path:
    path = tmp_path / "flat.yml"
    path.write_text("[1.0]\n")
    return path


def results(broker: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    from edgelab.kafka import GroupConsumer, KafkaSettings

    found: list[dict[str, Any]] = []
    with GroupConsumer(KafkaSettings(bootstrap=[broker]), topic=topic, group=f"read-{topic}-{time.time()}") as c:
        c.run(lambda r: found.append(json.loads(r.value)), max_records=expected, timeout_s=timeout_s)
    return found


def test_every_fed_frame_is_processed_and_published(broker: str, model: Path, tmp_path: Path) -> None:
    keys = feed(broker, "frames-all", tmp_path)
    port = free_port()
    report = tmp_path / "consumer.json"
    assert consumer.main(["--model", str(model), "--bootstrap", broker, "--topic", "frames-all", "--results-topic",
                          "results-all", "--group", "g-all", "--instance", "3", "--metrics-address", "127.0.0.1",
                          "--metrics-port", str(port), "--idle-exit", "4", "--report", str(report)]) == 0
    summary = json.loads(report.read_text())
    assert summary["frames"] == len(keys) and summary["errors"] == 0
    assert summary["consumer"] == "edgelab-consumer@3"
    found = results(broker, "results-all", len(keys))
    assert sorted(r["frame"] for r in found) == sorted(keys)
    for r in found:
        assert r["model"] == {"name": labmodel.MODEL_NAME, "version": labmodel.MODEL_VERSION}
        assert (r["width"], r["height"], r["frame_bytes"], r["error"]) == (160, 120, 57615, None)
        assert r["produced"] - 1 <= r["received"] <= r["inference_start"] <= r["inference_end"] <= r["published"]
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= 160 and 0 <= y1 <= y2 <= 120 and d["score"] >= 0.25 and 0 <= d["class"] < 4
    # /metrics keeps being served by the process: frames, latency histograms, lag.
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    who = 'consumer="edgelab-consumer@3"'
    assert metrics[f"edgelab_consumer_frames_total{{{who}}}"] == len(keys)
    assert metrics[f"edgelab_consumer_inference_seconds_count{{{who}}}"] == len(keys)
    assert metrics[f"edgelab_consumer_end_to_end_seconds_count{{{who}}}"] == len(keys)
    assert metrics[f"edgelab_consumer_lag_records{{{who}}}"] == 0
    assert metrics[f'edgelab_consumer_stage_seconds_total{{{who},stage="inference"}}'] > 0


def test_killed_mid_batch_then_restarted_loses_no_frame(broker: str, tmp_path: Path) -> None:
    # A slower model and one batch holding every frame: the kill lands after some
    # results were published and before the batch's offsets were committed.
    slow = labmodel.write(tmp_path / "slow.onnx", size=640, classes=4)
    keys = feed(broker, "frames-kill", tmp_path, seconds="2", mbps="4")
    args = ["--model", str(slow), "--bootstrap", broker, "--topic", "frames-kill", "--results-topic", "results-kill",
            "--group", "g-kill", "--metrics-port", "0", "--max-poll-records", "500"]
    code = "import sys; from edgelab.experiments.consumer import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.PIPE)
    from edgelab.kafka import GroupConsumer, KafkaSettings

    seen: list[bytes] = []
    with GroupConsumer(KafkaSettings(bootstrap=[broker]), topic="results-kill", group="watch-kill") as watch:
        deadline = time.monotonic() + 120
        while len(seen) < 5 and time.monotonic() < deadline and proc.poll() is None:
            watch.poll_once(lambda r: seen.append(r.key), timeout_ms=100)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert 5 <= len(seen) < len(keys), "the kill did not land mid-batch"
    # A new member of the group takes over the partitions once the dead one's session ends.
    assert consumer.main([*args[:-2], "--idle-exit", "5"]) == 0
    found = results(broker, "results-kill", len(keys) + len(seen))
    assert {r["frame"] for r in found} == set(keys)  # nothing lost
    assert len(found) > len(keys)  # what the killed consumer published is processed again: at-least-once


def test_model_from_the_node_model_store(broker: str, tmp_path: Path) -> None:
    version = tmp_path / "store" / "exp1" / "versions" / "7"
    version.mkdir(parents=True)
    labmodel.write(version / "model.onnx", size=64, classes=2)
    (version / "MLmodel").write_text("flavors:\n  python_function: {loader_module: mlflow.onnx}\n")
    (version / "edgelab-model.json").write_text(json.dumps({
        "exp_id": "exp1", "name": "detector", "version": "7", "run_id": "r", "source": "s", "size": 1,
        "path": str(version), "pulled_at": 0.0, "selected_by": "alias"}))
    (tmp_path / "store" / "exp1" / "current").symlink_to("versions/7")
    keys = feed(broker, "frames-store", tmp_path, seconds="1", mbps="1")
    assert consumer.main(["--model-store", str(tmp_path / "store"), "--exp-id", "exp1", "--bootstrap", broker,
                          "--topic", "frames-store", "--results-topic", "results-store", "--group", "g-store",
                          "--metrics-port", "0", "--max-frames", str(len(keys))]) == 0
    found = results(broker, "results-store", len(keys))
    assert {(r["model"]["name"], r["model"]["version"]) for r in found} == {("detector", "7")}
    assert sorted(r["frame"] for r in found) == sorted(keys)


def test_undecodable_frames_are_reported_not_fatal(broker: str, model: Path) -> None:
    from edgelab.kafka import FrameProducer, KafkaSettings

    with FrameProducer(KafkaSettings(bootstrap=[broker]), topic="frames-bad") as producer:
        producer.send(b"cam-0", b"not an image")
        producer.send(b"cam-1", b"P6\n2 2\n255\n" + bytes(3))
    assert consumer.main(["--model", str(model), "--bootstrap", broker, "--topic", "frames-bad", "--results-topic",
                          "results-bad", "--group", "g-bad", "--metrics-port", "0", "--max-frames", "2"]) == 0
    found = {r["frame"]: r for r in results(broker, "results-bad", 2)}
    assert found["cam-0"]["error"].startswith("frame is not an image")
    assert found["cam-1"]["error"] == "PPM 2x2 needs 12 pixel bytes, has 3"
    assert found["cam-0"]["detections"] == [] and found["cam-0"]["inference_start"] is None


def committed(broker: str, topic: str, group: str) -> int | None:
    """The group's committed offsets of topic summed over its partitions, as the broker
    has them (records committed, as the feeder's topics start at offset 0); None before
    any commit."""
    from kafka import KafkaConsumer, TopicPartition

    reader = KafkaConsumer(bootstrap_servers=broker, group_id=group, enable_auto_commit=False)
    try:
        found = [reader.committed(TopicPartition(topic, p)) for p in sorted(reader.partitions_for_topic(topic))]
    finally:
        reader.close()
    offsets = [o for o in found if o is not None]
    return sum(offsets) if offsets else None


def test_results_are_not_flushed_per_poll_and_offsets_follow_their_acknowledgements(
        broker: str, model: Path, tmp_path: Path) -> None:
    from edgelab.kafka import KafkaSettings
    from kafka import KafkaProducer

    keys = feed(broker, "frames-pipe", tmp_path, seconds="2", mbps="2")
    assert len(keys) >= 4
    settings = KafkaSettings(bootstrap=[broker])
    producer = KafkaProducer(**settings.client_config(), acks=1, linger_ms=5)
    loaded = consumer.load_model(str(model), threads=1)
    detector = consumer.Detector(loaded, "t", consumer.Metrics("t"), conf=0.25, iou=0.45, max_detections=10)
    member = consumer.PublishingConsumer(settings, "frames-pipe", "g-pipe", producer, "results-pipe",
                                         max_poll_records=2)
    try:
        handled = 0
        while handled == 0:
            handled = member.poll_batch(detector.handle, detector.stages)
        # The poll's results were sent, not waited for: their offsets wait with them.
        assert handled == 2 and len(member.pending) == 1
        assert committed(broker, "frames-pipe", "g-pipe") is None
        producer.flush(timeout=30)
        member.poll_batch(detector.handle, detector.stages)  # commits the acknowledged batch asynchronously
        deadline = time.monotonic() + 20
        while committed(broker, "frames-pipe", "g-pipe") is None and time.monotonic() < deadline:
            member.poll_batch(detector.handle, detector.stages, timeout_ms=50)
        assert (committed(broker, "frames-pipe", "g-pipe") or 0) >= 2
        # More than max_pending batches in flight: the producer is flushed and all of it committed.
        member.max_pending = 0
        while member.handled < len(keys):
            member.poll_batch(detector.handle, detector.stages)
        assert not member.pending
        assert committed(broker, "frames-pipe", "g-pipe") == len(keys)
        assert member.commit_errors == 0
    finally:
        member.close()
        producer.close(timeout=10)
    assert sorted(r["frame"] for r in results(broker, "results-pipe", len(keys))) == sorted(keys)


def test_on_exit_every_published_frame_is_committed(broker: str, model: Path, tmp_path: Path) -> None:
    keys = feed(broker, "frames-exit", tmp_path, seconds="1", mbps="1")
    args = ["--model", str(model), "--bootstrap", broker, "--topic", "frames-exit", "--results-topic",
            "results-exit", "--group", "g-exit", "--metrics-port", "0"]
    assert consumer.main([*args, "--max-frames", str(len(keys))]) == 0
    assert committed(broker, "frames-exit", "g-exit") == len(keys)
    # So a member that joins the group later finds nothing left to process.
    report = tmp_path / "again.json"
    assert consumer.main([*args, "--idle-exit", "2", "--report", str(report)]) == 0
    assert json.loads(report.read_text())["frames"] == 0
    assert len(results(broker, "results-exit", len(keys) + 1, timeout_s=5)) == len(keys)


@pytest.mark.parametrize(("argv", "message"), [
    (["--bootstrap", "x:1"], "bad input: give either --model FILE or --model-store DIR with --exp-id"),
    (["--bootstrap", "x:1", "--model-store", "/nonexistent"], "bad input: --model-store and --exp-id go together"),
    (["--bootstrap", "x:1", "--model", "m.onnx", "--iou", "2"], "bad input: --iou must be from 0 to 1, got 2.0"),
    (["--bootstrap", "x:1", "--model", "/nonexistent.onnx"], "config error: model /nonexistent.onnx: no such file"),
    (["--bootstrap", "x:1", "--model-store", "/nonexistent", "--exp-id", "e1"],
     "config error: model store /nonexistent has no current model for e1 (pull one through the node API first)"),
])
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert consumer.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"edgelab-consumer: {message}"


def test_a_model_that_is_not_yolo_shaped_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    assert consumer.main(["--bootstrap", "x:1", "--model", str(tmp_path / "junk.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edgelab-consumer: config error: model {tmp_path}/junk.onnx: ") and err.count("\n") == 1
