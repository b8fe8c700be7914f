"""Role kafka's topic declarations (tasks_from: topics), run by the real
ansible-playbook: the task is no_log (it carries the SASL password) and a
failure still stops the play with kafka_topic's message for each topic."""

from __future__ import annotations

import json
import socket

from support.labtools import BIN, ansible_playbook

INVENTORY = """
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: {python}
  children:
    kafka_brokers:
      hosts:
        k1: {{ansible_host: 127.0.0.1}}
"""

PLAYBOOK = """
- name: Declare topics with role kafka's task file
  hosts: kafka_brokers
  gather_facts: false
  tasks:
    - name: The topics
      ansible.builtin.include_role:
        name: kafka
        tasks_from: topics
"""


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_failed_declaration_stops_the_play_with_the_message_and_no_password(tmp_path):
    (tmp_path / "hosts.yml").write_text(INVENTORY.format(python=BIN / "python"))
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    password = "Sasl" + "q7" * 14
    (tmp_path / "vars.json").write_text(json.dumps({
        "kafka_topics": [{"name": "edgelab.unreachable", "partitions": 1}],
        "kafka_bootstrap_servers": [f"127.0.0.1:{closed_port()}"],  # nothing listens there
        "kafka_listener_security": "sasl_plaintext", "kafka_admin_password": password,
        "kafka_topic_timeout": 3, "kafka_topic_replication_factor": 1}))
    run = ansible_playbook("-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml"),
                           "-e", "@" + str(tmp_path / "vars.json"), timeout=300)
    assert run.rc != 0, run.output[-3000:]
    assert "Declaring the topics failed: edgelab.unreachable: " in run.output
    assert "the output has been hidden" in run.output  # the declaration itself is no_log
    assert password not in run.output
