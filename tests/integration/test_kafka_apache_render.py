"""Role kafka's apache distribution, as far as it can be checked without an Apache
Kafka release (none can be fetched here): its templates rendered by the real
ansible-playbook with the role's defaults and vars for inventories of 1, 3 and 5
brokers, then parsed (server.properties as Java properties), the systemd unit checked
with `systemd-analyze verify`, the storage-format argument file and the environment
file inspected. What only a real machine shows (the broker starting, SCRAM logins,
TLS handshakes, the JMX exporter) is listed in docs/kafka.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "kafka"
BIN = Path(sys.executable).parent

PLAYBOOK = """\
- hosts: kafka_brokers
  connection: local
  gather_facts: false
  vars_files:
    - {role}/defaults/main.yml
    - {role}/vars/main.yml
  tasks:
    - name: Record the address and node id, as the role does
      ansible.builtin.set_fact:
        kafka_advertised_address: "{{{{ kafka_advertised_host | trim }}}}"
        kafka_node_id: "{{{{ kafka_apache_node_id | int }}}}"
    - name: Render
      ansible.builtin.template:
        src: "{role}/templates/{{{{ item.src }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}-{{{{ item.dest }}}}"
        mode: "0600"
      loop:
        - {{src: server.properties.j2, dest: server.properties}}
        - {{src: kafka-apache.service.j2, dest: kafka.service}}
        - {{src: kafka-apache.env.j2, dest: kafka.env}}
        - {{src: storage-format.args.j2, dest: format.args}}
        - {{src: admin-client.properties.j2, dest: admin-client.properties}}
        - {{src: jmx-exporter.yml.j2, dest: jmx-exporter.yml}}
"""


def render(tmp_path: Path, hosts: int, security: str = "sasl_ssl", memory_mb: list[int] | None = None) -> Path:
    out = tmp_path / ("%d-%s" % (hosts, security))
    out.mkdir()
    inventory = out / "hosts.yml"
    lines = ["all:", "  children:", "    kafka_brokers:", "      hosts:"]
    for i in range(1, hosts + 1):
        memory = (memory_mb or [16000] * hosts)[i - 1]
        lines.append("        b%d: {ansible_host: 192.0.2.%d, ansible_memtotal_mb: %d}" % (i, 10 + i, memory))
    inventory.write_text("\n".join(lines) + "\n")
    playbook = out / "render.yml"
    playbook.write_text(PLAYBOOK.format(role=ROLE, out=out))
    # Extra vars: above the role's defaults and vars files, as the inventory is in a real run.
    overrides = out / "overrides.json"
    overrides.write_text(json.dumps({
        "kafka_distribution": "apache", "kafka_listener_security": security,
        "kafka_apache_install_root": str(out / "opt"), "kafka_admin_password": "adminPW0123456789",
        "kafka_scram_passwords": {"edgelab": "userPW0123456789"}, "kafka_keystore_password": "storePW0123456789",
        "kafka_cluster_id": "AbCdEfGhIjKlMnOpQrStUA", "edgelab_credentials_dir": str(out / "credentials")}))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_CACHE_PLUGIN="ansible.builtin.memory")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), "-e", "@" + str(overrides),
                           str(playbook)],
                          env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def properties(path: Path) -> dict[str, str]:
    """Java .properties: key=value lines, # comments (no continuation lines are used)."""
    result = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, "not a key=value line: %r" % line
        assert key not in result, "duplicate key %s" % key
        result[key] = value
    return result


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    return render(tmp_path_factory.mktemp("apache"), 3)


def test_three_brokers_form_a_quorum_with_sasl_ssl(three):
    for i in (1, 2, 3):
        p = properties(three / ("b%d-server.properties" % i))
        assert p["process.roles"] == "broker,controller"
        assert p["node.id"] == str(i)
        assert p["controller.quorum.voters"] == "1@192.0.2.11:9093,2@192.0.2.12:9093,3@192.0.2.13:9093"
        assert p["listeners"] == "CLIENT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093"
        assert p["advertised.listeners"] == "CLIENT://192.0.2.1%d:9092" % i
        assert p["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SSL"
        assert p["inter.broker.listener.name"] == "CLIENT"
        assert p["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
        assert p["listener.name.client.scram-sha-512.sasl.jaas.config"] == (
            'org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" '
            'password="adminPW0123456789";')
        assert p["ssl.keystore.type"] == "PKCS12" and p["ssl.truststore.type"] == "PEM"
        assert p["listener.name.controller.ssl.client.auth"] == "required"
        assert p["default.replication.factor"] == "3" and p["min.insync.replicas"] == "2"
        assert p["offsets.topic.replication.factor"] == "3"
        assert p["auto.create.topics.enable"] == "false"
        assert "zookeeper.connect" not in p


def test_one_broker_is_its_own_controller(tmp_path):
    out = render(tmp_path, 1)
    p = properties(out / "b1-server.properties")
    assert p["process.roles"] == "broker,controller"
    assert p["controller.quorum.voters"] == "1@192.0.2.11:9093"
    assert p["default.replication.factor"] == "1" and p["min.insync.replicas"] == "1"


def test_five_brokers_keep_three_controllers(tmp_path):
    out = render(tmp_path, 5, security="plaintext")
    for i in (4, 5):
        p = properties(out / ("b%d-server.properties" % i))
        assert p["process.roles"] == "broker"
        assert p["listeners"] == "CLIENT://0.0.0.0:9092"
        assert p["controller.quorum.voters"] == "1@192.0.2.11:9093,2@192.0.2.12:9093,3@192.0.2.13:9093"
        assert p["listener.security.protocol.map"] == "CLIENT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        assert not any(k.startswith(("sasl.", "ssl.", "listener.name.")) for k in p)


def test_format_arguments_create_the_scram_users_and_the_cluster_id(three):
    args = (three / "b1-format.args").read_text().splitlines()
    assert args[:7] == ["kafka.tools.StorageTool", "format", "--cluster-id", "AbCdEfGhIjKlMnOpQrStUA", "--config",
                        "/etc/kafka/server.properties", "--ignore-formatted"]
    assert args[7:] == ["--add-scram", "SCRAM-SHA-512=[name=admin,password=adminPW0123456789]",
                        "--add-scram", "SCRAM-SHA-512=[name=edgelab,password=userPW0123456789]"]


def test_heap_follows_memory_within_bounds(tmp_path):
    out = render(tmp_path, 3, memory_mb=[16000, 64000, 1024])
    for host, heap in (("b1", 4000), ("b2", 6144), ("b3", 512)):
        env = (out / ("%s-kafka.env" % host)).read_text()
        assert "KAFKA_HEAP_OPTS=-Xms%dm -Xmx%dm" % (heap, heap) in env
        assert "-javaagent:" in env and "=9404:/etc/kafka/jmx-exporter.yml" in env


def test_admin_client_properties(three):
    p = properties(three / "b1-admin-client.properties")
    assert p["security.protocol"] == "SASL_SSL" and p["sasl.mechanism"] == "SCRAM-SHA-512"
    assert p["ssl.truststore.location"] == "/etc/kafka/tls/edgelab-ca.crt"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(three):
    start = three / "opt" / "kafka" / "bin" / "kafka-server-start.sh"
    start.parent.mkdir(parents=True)
    start.write_text("#!/bin/sh\nexit 0\n")
    start.chmod(0o755)
    unit_dir = three / "units"
    unit_dir.mkdir()
    unit = unit_dir / "kafka.service"
    shutil.copy(three / "b1-kafka.service", unit)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = unit.read_text()
    for directive in ("User=kafka", "Restart=on-failure", "NoNewPrivileges=true", "ProtectSystem=strict",
                      "ReadWritePaths=/var/lib/kafka/data /var/log/kafka", "SuccessExitStatus=143"):
        assert directive in text
    assert "password" not in text.lower()


def test_the_role_refuses_tansu_with_sasl_and_plaintext_open_to_any(tmp_path):
    """The role's cross-variable checks, run for real (the role stops at its asserts)."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(textwrap.dedent("""\
        all:
          children:
            nucs: {hosts: {b1: {ansible_host: 192.0.2.11}}}
            kafka_brokers: {hosts: {b1: {}}}
        """))
    playbook = tmp_path / "play.yml"
    playbook.write_text(textwrap.dedent("""\
        - hosts: kafka_brokers
          connection: local
          gather_facts: true
          vars:
            edgelab_credentials_dir: /nonexistent
          roles: [kafka]
        """))
    # Facts of these made-up hosts stay in memory, out of the repository's fact cache.
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
               ANSIBLE_LIBRARY=str(ROOT / "library"), ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               ANSIBLE_CACHE_PLUGIN="ansible.builtin.memory")
    for extra, expected in ((["-e", "kafka_distribution=tansu", "-e", "kafka_listener_security=sasl_ssl"],
                             "supports kafka_listener_security=plaintext only"),
                            (["-e", "kafka_distribution=apache", "-e", "kafka_listener_security=plaintext",
                              "-e", "kafka_firewall_sources=any"], "must not be open to")):
        # This controller runs no systemd: claim it, the role stops at its asserts before using it.
        proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook),
                               "-e", "ansible_service_mgr=systemd", *extra], env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode != 0
        assert expected in " ".join((proc.stdout + proc.stderr).split()), proc.stdout
