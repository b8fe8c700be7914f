"""Role ejabberd's account tasks, run by the real ansible-playbook.

The agents' accounts (tasks_from: agent_accounts) against a real ejabberd on
loopback (tests/support/ejabberd_server.py): when ejabberd refuses one account
part-way (HTTP 500) the play fails with xmpp_user's message and names what was
done before. The input checks of the role's main entry point run on the
controller alone (they fail before anything is installed).
"""

from __future__ import annotations

import base64
import json
import urllib.request

from support.ejabberd_server import ejabberd  # noqa: F401  (the real-server fixture)
from support.labtools import BIN, REPO, ansible_playbook

INVENTORY = """
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: {python}
    edgelab_credentials_dir: {tmp}/credentials
  children:
    nucs:
      hosts:
        xmpp1: {{ansible_host: 127.0.0.1}}
    control_plane:
      hosts:
        xmpp1:
    xmpp_server:
      hosts:
        xmpp1:
"""

ACCOUNTS_PLAY = """
- name: Register agent accounts with role ejabberd's task file
  hosts: xmpp_server
  gather_facts: false
  tasks:
    - name: The agents' accounts
      ansible.builtin.include_role:
        name: ejabberd
        tasks_from: agent_accounts
"""

MAIN_PLAY = """
- name: Run role ejabberd's input checks
  hosts: xmpp_server
  gather_facts: false
  roles:
    - role: ejabberd
"""


def write(tmp_path, play, variables):
    (tmp_path / "hosts.yml").write_text(INVENTORY.format(python=BIN / "python", tmp=tmp_path))
    # The project's wiring the role reads (the textfile directory and group).
    group_vars = tmp_path / "group_vars" / "all"
    if not group_vars.exists():
        group_vars.mkdir(parents=True)
        (group_vars / "monitoring.yml").symlink_to(REPO / "group_vars" / "all" / "monitoring.yml")
    (tmp_path / "play.yml").write_text(play)
    # JSON keeps a control character in a password intact.
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    return ["-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml"), "-e", "@" + str(tmp_path / "vars.json")]


def account_vars(server, accounts):
    return {
        "ejabberd_domain": server.domain,
        "ejabberd_api_bind_address": "127.0.0.1",
        "ejabberd_api_port": server.api_port,
        "ejabberd_admin_user": "admin",
        "ejabberd_admin_password": server.admin_password,
        "ejabberd_update_password": "always",
        "ejabberd_agent_accounts": [{"name": n, "password": p} for n, p in accounts],
    }


def registered(server):
    token = base64.b64encode(f"admin@{server.domain}:{server.admin_password}".encode()).decode()
    request = urllib.request.Request(
        server.api_url + "/registered_users", data=json.dumps({"host": server.domain}).encode(),
        headers={"Authorization": "Basic " + token, "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return set(json.load(response))


def test_a_part_way_failure_fails_the_play_with_the_modules_message(ejabberd, tmp_path):
    good = [("acc-ok-1", "Aa1" + "x" * 29), ("acc-ok-2", "Bb2" + "y" * 29)]
    # ejabberd answers HTTP 500 to a password with a control character
    # ("The password contains unacceptable characters").
    bad = ("acc-refused", "bad\x01password")
    run = ansible_playbook(*write(tmp_path, ACCOUNTS_PLAY, account_vars(ejabberd, [*good, bad])), timeout=300)
    assert run.rc != 0, run.output[-3000:]
    assert "The agents' accounts on edgelab.test were not all made" in run.output
    assert "ejabberd API command register failed: HTTP 500" in run.output
    assert "unacceptable characters" in run.output
    assert "Accounts created before the failure: ['acc-ok-" in run.output
    assert run.recap()["xmpp1"]["failed"] == 1
    for _name, password in [*good, bad]:
        assert password not in run.output
    users = registered(ejabberd)
    assert {"acc-ok-1", "acc-ok-2"} & users and "acc-refused" not in users

    # Without the refused account the same tasks succeed and report it.
    run = ansible_playbook(*write(tmp_path, ACCOUNTS_PLAY, account_vars(ejabberd, good)), timeout=300)
    assert run.rc == 0, run.output[-3000:]
    assert "unchanged; created:" in run.output
    assert {"acc-ok-1", "acc-ok-2"} <= registered(ejabberd)


def test_rotating_an_agent_with_on_create_is_refused(tmp_path):
    variables = {"ejabberd_update_password": "on_create", "ejabberd_rotate_passwords": ["node-xmpp1"]}
    run = ansible_playbook(*write(tmp_path, MAIN_PLAY, variables), timeout=300)
    assert run.rc != 0
    assert "ejabberd_rotate_passwords asks for new passwords for ['node-xmpp1']" in run.output
    assert "Run the rotation with ejabberd_update_password: always" in run.output
    assert not (tmp_path / "credentials").exists()
