"""edgelab-consumer against a real Tansu broker on loopback: frames from the real feeder
are all processed and their results published, /metrics counts them, a consumer killed
mid-batch loses no frame (at-least-once), a member added or stopped gets every
partition consumed again within 10 s, the topics' metadata is refreshed every
--metadata-max-age seconds, the model comes from a path or the node's model store,
and bad input is one line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edgelab.experiments import consumer, feeder, labmodel
from support.tansu import MISSING, free_port, running_tansu, tansu_binary

CONSUMER = "import sys; from edgelab.experiments.consumer import main; sys.exit(main(sys.argv[1:]))"


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
    # A slower model and about 40 frames in one poll: the kill lands after some
    # results were published and before every frame's offset was committed. The
    # watcher below has joined its group on the results topic before the consumer
    # starts: when it joined afterwards, a loaded CI machine let the consumer finish
    # all 43 frames first (2026-12-03).
    from confluent_kafka.admin import AdminClient, NewTopic
    from edgelab.kafka import GroupConsumer, KafkaSettings

    slow = labmodel.write(tmp_path / "slow.onnx", size=640, classes=4)
    keys = feed(broker, "frames-kill", tmp_path, seconds="5", mbps="4")
    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics([NewTopic("results-kill", 1, 1)]).values():
        future.result(30)
    args = ["--model", str(slow), "--bootstrap", broker, "--topic", "frames-kill", "--results-topic", "results-kill",
            "--group", "g-kill", "--metrics-port", "0", "--max-poll-records", "500"]
    code = "import sys; from edgelab.experiments.consumer import main; sys.exit(main(sys.argv[1:]))"
    seen: list[bytes] = []
    with GroupConsumer(KafkaSettings(bootstrap=[broker]), topic="results-kill", group="watch-kill") as watch:
        deadline = time.monotonic() + 60
        while not watch.assignment() and time.monotonic() < deadline:
            watch.poll_once(lambda r: seen.append(r.key), timeout_ms=100)
        assert watch.assignment(), "the watcher did not join its group within 60 s"
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(seen) < 5 and time.monotonic() < deadline and proc.poll() is None:
            watch.poll_once(lambda r: seen.append(r.key), timeout_ms=100)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    done = committed(broker, "frames-kill", "g-kill")
    assert len(seen) >= 5 and (done or 0) < len(keys), (
        f"the kill did not land mid-run: {len(seen)} results seen, {done} of {len(keys)} frames committed")
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

    keys = feed(broker, "frames-pipe", tmp_path, seconds="2", mbps="2")
    assert len(keys) >= 4
    settings = KafkaSettings(bootstrap=[broker])
    loaded = consumer.load_model(str(model), threads=1)
    detector = consumer.Detector(loaded, "t", consumer.Metrics("t"), conf=0.25, iou=0.45, max_detections=10)
    member = consumer.PublishingConsumer(settings, "frames-pipe", "g-pipe", "results-pipe", max_poll_records=2)
    try:
        handled = 0
        while handled == 0:
            handled = member.poll_batch(detector.handle, detector.stages)
        # The poll's results were sent, not waited for: their offsets wait with them.
        assert handled == 2 and len(member.pending) == 1
        assert committed(broker, "frames-pipe", "g-pipe") is None
        member.producer.flush(30)
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
    assert sorted(r["frame"] for r in results(broker, "results-pipe", len(keys))) == sorted(keys)


def test_a_short_batch_is_not_held_back_in_wait_for_a_full_one(broker: str, model: Path) -> None:
    from edgelab.kafka import FrameProducer, KafkaSettings

    settings = KafkaSettings(bootstrap=[broker])
    frame = b"P6\n40 30\n255\n" + bytes(40 * 30 * 3)
    loaded = consumer.load_model(str(model), threads=1)
    detector = consumer.Detector(loaded, "t", consumer.Metrics("t"), conf=0.25, iou=0.45, max_detections=10)
    with FrameProducer(settings, topic="frames-short") as producer:  # the topic exists before the member joins
        producer.send(b"cam-0", frame)
    member = consumer.PublishingConsumer(settings, "frames-short", "g-short", "results-short", max_poll_records=8)
    try:
        deadline = time.monotonic() + 30
        while member.handled == 0 and time.monotonic() < deadline:  # joined, the first frame handled
            member.poll_batch(detector.handle, detector.stages)
        with FrameProducer(settings, topic="frames-short") as producer:
            producer.send(b"cam-1", frame)
        time.sleep(1)  # fetched by now
        # One frame where a poll takes up to 8: it comes back at once, not after the 5 s.
        started = time.monotonic()
        assert member.poll_batch(detector.handle, detector.stages, timeout_ms=5000) == 1
        assert time.monotonic() - started < 2.0
    finally:
        member.close()


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


class Member:
    """An edgelab-consumer process; the partition sets it logs, with their arrival times."""

    ASSIGNED = re.compile(r": partitions ([0-9,]+|none) of ")

    def __init__(self, instance: int, args: list[str]) -> None:
        self.name = f"edgelab-consumer@{instance}"
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-c", CONSUMER, "--instance", str(instance), *args],
                                     stderr=subprocess.PIPE, text=True)
        self.assignments: list[tuple[float, set[int]]] = []
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = self.ASSIGNED.search(line)
            if match:
                held = set() if match[1] == "none" else {int(p) for p in match[1].split(",")}
                self.assignments.append((time.monotonic(), held))

    def held(self, since: float) -> set[int]:
        newer = [held for at, held in self.assignments if at >= since]
        return newer[-1] if newer else set()


def split_among(members: list[Member], since: float, partitions: int, timeout: float = 30.0) -> float:
    """Seconds from `since` until the members' assignments logged after it share every
    partition, each member holding some."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        held = [m.held(since) for m in members]
        if all(held) and sorted(p for h in held for p in h) == list(range(partitions)):
            return time.monotonic() - since
        time.sleep(0.05)
    raise AssertionError(f"partitions not split in {timeout} s: " + " | ".join(
        f"{m.name} {m.assignments} {''.join(m.lines[-3:])[-300:]}" for m in members))


def test_a_member_added_or_stopped_gets_every_partition_consumed_again_within_10_s(
        broker: str, model: Path) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics([NewTopic("frames-scale", 4, 1)]).values():
        future.result(30)
    frame = b"P6\n40 30\n255\n" + bytes(40 * 30 * 3)
    producer = Producer({"bootstrap.servers": broker, "linger.ms": 1})
    sent: list[str] = []
    stop = threading.Event()

    def feed() -> None:  # 20 frames a second over the 4 partitions
        while not stop.wait(0.05):
            producer.produce("frames-scale", frame, f"s-{len(sent)}".encode(), partition=len(sent) % 4)
            sent.append(f"s-{len(sent)}")
            producer.poll(0)

    feeder_thread = threading.Thread(target=feed, daemon=True)
    feeder_thread.start()
    args = ["--model", str(model), "--bootstrap", broker, "--topic", "frames-scale", "--results-topic",
            "results-scale", "--group", "g-scale", "--metrics-port", "0", "--log-level", "INFO"]
    first = Member(1, args)
    members = [first]
    try:
        split_among([first], first.started, 4)
        time.sleep(2)
        added = Member(2, args)  # from the start of its process: imports, model, join
        members.append(added)
        assert split_among([first, added], added.started, 4) < 10.0
        time.sleep(2)
        stopped = time.monotonic()
        added.proc.send_signal(signal.SIGTERM)  # as systemd stops an instance
        assert added.proc.wait(timeout=30) == 0
        assert split_among([first], stopped, 4) < 10.0
        time.sleep(1)
    finally:
        stop.set()
        feeder_thread.join()
        producer.flush(30)
        found = results(broker, "results-scale", len(sent), timeout_s=30)
        for member in members:
            if member.proc.poll() is None:
                member.proc.send_signal(signal.SIGTERM)
                member.proc.wait(timeout=30)
    assert {r["frame"] for r in found} == set(sent)  # none lost across both rebalances
    assert {r["consumer"] for r in found} == {"edgelab-consumer@1", "edgelab-consumer@2"}


class CountingProxy:
    """A TCP relay in front of a broker that counts the Metadata requests (Kafka API key
    3) each client id sends through it."""

    def __init__(self, port: int, upstream: int) -> None:
        self.upstream = upstream
        self.metadata: dict[str, int] = {}
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            broker = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(client, broker, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(broker, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, requests: bool) -> None:
        pending = b""
        try:
            while data := source.recv(65536):
                target.sendall(data)
                if not requests:
                    continue
                pending += data
                while len(pending) >= 4 and len(pending) >= 4 + int.from_bytes(pending[:4], "big"):
                    size = int.from_bytes(pending[:4], "big")
                    request, pending = pending[4:4 + size], pending[4 + size:]
                    api_key = int.from_bytes(request[0:2], "big")
                    length = int.from_bytes(request[8:10], "big", signed=True)
                    client_id = request[10:10 + length].decode("utf-8", "replace") if length > 0 else ""
                    if api_key == 3:
                        with self.lock:
                            self.metadata[client_id] = self.metadata.get(client_id, 0) + 1
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def count(self, client_id: str) -> int:
        with self.lock:
            return self.metadata.get(client_id, 0)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_topics_metadata_is_refreshed_every_metadata_max_age(model: Path, tmp_path: Path) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    binary = tansu_binary()
    if binary is None:
        pytest.skip(MISSING)
    listen, advertised = free_port(), free_port()
    # Tansu tells clients to connect to the proxy, so every request of theirs passes it.
    env = dict(os.environ, LISTENER_URL=f"tcp://127.0.0.1:{listen}",
               ADVERTISED_LISTENER_URL=f"tcp://127.0.0.1:{advertised}", CLUSTER_ID="edgelab-test",
               STORAGE_ENGINE="memory://tansu/", RUST_LOG="warn")
    tansu = subprocess.Popen([binary, "broker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = CountingProxy(advertised, listen)
    try:
        deadline = time.monotonic() + 20
        while not listening(listen):
            assert time.monotonic() < deadline and tansu.poll() is None, "Tansu did not start"
            time.sleep(0.1)
        address = f"127.0.0.1:{advertised}"
        admin = AdminClient({"bootstrap.servers": address, "client.id": "setup"})
        for future in admin.create_topics([NewTopic("frames-meta", 2, 1)]).values():
            future.result(30)
        requests = {}
        for instance, max_age in ((1, "1"), (2, "30")):
            # Each run: join (about 3 s), then 8 s holding both partitions with no frame.
            assert consumer.main(["--instance", str(instance), "--model", str(model), "--bootstrap", address,
                                  "--topic", "frames-meta", "--results-topic", "results-meta", "--group",
                                  f"g-meta-{instance}", "--metrics-port", "0", "--idle-exit", "8",
                                  "--metadata-max-age", max_age]) == 0
            requests[max_age] = proxy.count(f"edgelab-consumer@{instance}")
        # Two clients (frames and results) each refreshing every second for about 11 s,
        # against the requests a join and a start-up make anyway.
        assert requests["1"] >= requests["30"] + 12, requests
    finally:
        proxy.server.close()
        tansu.terminate()
        tansu.wait(timeout=10)


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_tls_and_sasl_settings_reach_the_kafka_clients(broker: str, model: Path, ca_file: str, tmp_path: Path,
                                                       protocol: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A TLS client (with the CA, and for SASL_SSL a SCRAM user whose password comes
    from its file) cannot talk to the PLAINTEXT test broker: one line, exit 2."""
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    sasl = ["--sasl-username", "edgelab", "--sasl-password-file", str(password)] if protocol == "SASL_SSL" else []
    started = time.monotonic()
    assert consumer.main(["--model", str(model), "--bootstrap", broker, "--topic", "frames-tls", "--metrics-port",
                          "0", "--security-protocol", protocol, "--ssl-cafile", ca_file, *sasl]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edgelab-consumer: config error: kafka {broker}: ") and err.count("\n") == 1, err
    assert "s3cret" not in err
    assert time.monotonic() - started < 30


def test_kafka_settings_in_librdkafka_names() -> None:
    from confluent_kafka import Producer
    from edgelab.kafka import KafkaSettings

    settings = KafkaSettings(bootstrap=["a:9092", "b:9093"], security_protocol="SASL_SSL",
                             sasl_username="edgelab", sasl_password="pw", ssl_cafile="/ca.pem", client_id="c@1")
    assert settings.librdkafka_config() == {
        "bootstrap.servers": "a:9092,b:9093", "security.protocol": "sasl_ssl", "client.id": "c@1",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "edgelab", "sasl.password": "pw",
        "ssl.ca.location": "/ca.pem"}
    plain = KafkaSettings(bootstrap=["a:9092"]).librdkafka_config()
    assert plain == {"bootstrap.servers": "a:9092", "security.protocol": "plaintext", "client.id": "edgelab"}
    Producer(plain)  # librdkafka knows every property and value


@pytest.mark.parametrize(("argv", "message"), [
    (["--bootstrap", "x:1"], "bad input: give either --model FILE or --model-store DIR with --exp-id"),
    (["--bootstrap", "x:1", "--model-store", "/nonexistent"], "bad input: --model-store and --exp-id go together"),
    (["--bootstrap", "x:1", "--model", "m.onnx", "--iou", "2"], "bad input: --iou must be from 0 to 1, got 2.0"),
    (["--bootstrap", "x:1", "--model", "m.onnx", "--metadata-max-age", "0"],
     "bad input: --metadata-max-age must be from 1 to 3600, got 0.0"),
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


def test_a_member_stopped_in_a_rebalance_does_not_wedge_the_group(
        broker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in the lab (the smoke experiment's consumers never joined) and reproduced
    here. On Tansu 0.6 a group whose leader leaves while the group is forming is wedged:
    no member, old or new, is given a partition again. The sequence: old2 joins first
    (it stays the group's leader), old1 joins, they share the partitions; old1 leaves
    (the group is forming again) and old2 stops half a second later, before its next
    heartbeat has told it so. The consumer settles (polls through two heartbeats, then
    until the rebalance ends, up to SETTLE_S) before it leaves; EDGELAB_TEST_SETTLE_S=0
    turns that off and makes this fail (docs/experiments.md).

    Each member's state is read on its own thread: librdkafka's assignment() called
    from another thread while the member polls can block for minutes."""
    from edgelab.kafka import KafkaSettings
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=broker, client_id="edgelab-test")
    try:
        admin.create_topics([NewTopic("frames-wedge", 12, 1)])
    finally:
        admin.close()
    if "EDGELAB_TEST_SETTLE_S" in os.environ:
        monkeypatch.setattr(consumer, "SETTLE_S", float(os.environ["EDGELAB_TEST_SETTLE_S"]))
    settings = KafkaSettings(bootstrap=[broker])
    stops = {name: threading.Event() for name in ("old1", "old2", "new")}
    held: dict[str, int] = {}  # partitions a member holds outside a rebalance, set by its thread

    def member(name: str) -> None:
        one = consumer.PublishingConsumer(settings, "frames-wedge", "g-wedge", "results-wedge",
                                          max_poll_records=10)
        try:
            while not stops[name].is_set():
                one.poll_batch(lambda *_a: b"", consumer.Stages(), timeout_ms=200)
                held[name] = -1 if one.rebalancing or not one.rebalances else len(one.assignment())
        finally:
            held[name] = -1
            one.close()

    def holds(name: str, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if held.get(name) == count:
                return True
            time.sleep(0.1)
        return False

    threads = {name: threading.Thread(target=member, args=(name,), daemon=True) for name in stops}
    threads["old2"].start()
    assert holds("old2", 12, 60), "the first member got no partitions in 60 s"
    threads["old1"].start()
    assert holds("old1", 6, 60) and holds("old2", 6, 60), "the first two members did not share the partitions"
    stops["old1"].set()
    threads["old1"].join(30)
    time.sleep(0.5)  # the group is forming again; old2, its leader, has not heard of it yet
    stops["old2"].set()
    threads["old2"].join(30)
    threads["new"].start()
    try:
        assert holds("new", 12, 40), "the group is wedged: a new member got no partition in 40 s"
    finally:
        stops["new"].set()
        threads["new"].join(30)
