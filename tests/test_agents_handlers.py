"""Role agents' handler "Restart the running edgelab consumers": its
failed_when, read from roles/agents/handlers/main.yml and evaluated by
Ansible on the results systemctl gives. An instance the node agent stops
while the handler restarts it ("Job ... canceled.") is no failure; any other
error is."""

from __future__ import annotations

import json

import pytest
import yaml
from support.labtools import REPO, ansible_playbook

HANDLERS = REPO / "roles/agents/handlers/main.yml"


def failed_when() -> str:
    handlers = yaml.safe_load(HANDLERS.read_text())
    (handler,) = [h for h in handlers if h["name"] == "Restart the running edgelab consumers"]
    return handler["failed_when"]


@pytest.mark.parametrize(
    ("rc", "stderr_lines", "failed"),
    [
        (0, [], False),
        (1, ["Job for edgelab-consumer@3.service canceled."], False),
        (1, ["Job for edgelab-consumer@3.service canceled.", "Job for edgelab-consumer@12.service canceled."], False),
        (1, ["Job for edgelab-consumer@3.service failed because the control process exited with error code."], True),
        (1, ["Job for edgelab-consumer@3.service canceled.",
             "Failed to restart edgelab-consumer@4.service: Access denied"], True),
        (1, [], True),
    ],
    ids=["ok", "one-canceled", "two-canceled", "failed", "canceled-and-denied", "no-message"],
)
def test_only_a_canceled_restart_is_no_failure(tmp_path, rc, stderr_lines, failed):
    result = {"rc": rc, "stderr_lines": stderr_lines}
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Evaluate the handler's failed_when",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {"agents_consumers_restart": result},
        "tasks": [{"name": "Print it",
                   "ansible.builtin.debug": {"msg": "RESULT={{ (" + failed_when() + ") | to_json }}"}}],
    }]))
    run = ansible_playbook("-i", "localhost,", str(play), timeout=300)
    assert run.rc == 0, run.output[-3000:]
    got = [line for line in run.output.splitlines() if "RESULT=" in line]
    assert got, run.output[-3000:]
    assert json.loads(got[0].split("RESULT=", 1)[1].rstrip('"')) is failed
