"""The lookup edgelab_credentials (lookup_plugins/), run by the real
ansible-playbook on the controller: the one way every role keeps its secrets."""

from __future__ import annotations

import json
import stat

import pytest
from support.labtools import BIN, ansible_playbook

INVENTORY = """
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: {python}
  hosts:
    h1:
    h2:
"""

PLAYBOOK = """
- name: Use the lookup edgelab_credentials
  hosts: all
  gather_facts: false
  tasks:
    - name: Default length and characters, and another length and character set
      ansible.builtin.set_fact:
        first: >-
          {{{{ lookup('edgelab_credentials', 'admin', 'node-nuc1', 'scram-admin.password',
                      dir='{tmp}/creds/nested/dir') }}}}
        second: "{{{{ lookup('edgelab_credentials', 'salt', dir='{tmp}/creds/other', length=22, chars=['digits']) }}}}"
      no_log: true

    - name: Write what each host received
      ansible.builtin.copy:
        content: "{{{{ {{'first': first, 'second': second}} | to_json }}}}"
        dest: "{tmp}/out-{{{{ inventory_hostname }}}}.json"
        mode: "0600"
"""

BAD_PLAYBOOK = """
- name: Give the lookup a bad value
  hosts: h1
  gather_facts: false
  tasks:
    - name: Bad value
      ansible.builtin.set_fact:
        x: "{{{{ lookup('edgelab_credentials', {args}) }}}}"
      no_log: true
"""


def setup(tmp_path, playbook=PLAYBOOK, **fields):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(INVENTORY.format(python=BIN / "python"))
    play = tmp_path / "play.yml"
    play.write_text(playbook.format(tmp=tmp_path, **fields))
    return str(inventory), str(play)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_generates_private_files_and_gives_every_host_the_values(tmp_path):
    inventory, play = setup(tmp_path)
    creds = tmp_path / "creds/nested/dir"
    run = ansible_playbook("-i", inventory, play, timeout=300)
    assert run.rc == 0, run.output[-3000:]
    assert mode(creds) == 0o700 and mode(creds.parent) == 0o700
    files = {p.name: p.read_text().strip() for p in creds.iterdir()}
    assert set(files) == {"admin", "node-nuc1", "scram-admin.password"}
    for name, value in files.items():
        assert mode(creds / name) == 0o600
        assert len(value) == 32 and value.isalnum() and value.isascii(), name
    assert len(set(files.values())) == 3
    salt = (tmp_path / "creds/other/salt").read_text().strip()
    assert len(salt) == 22 and salt.isdigit()
    for host in ("h1", "h2"):
        got = json.loads((tmp_path / f"out-{host}.json").read_text())
        assert got == {"first": files, "second": {"salt": salt}}
    for value in [*files.values(), salt]:
        assert value not in run.output


def test_reads_existing_files_and_makes_them_private(tmp_path):
    inventory, play = setup(tmp_path)
    creds = tmp_path / "creds/nested/dir"
    creds.mkdir(parents=True)
    (creds / "admin").write_text("kept-as-it-is\n")
    (creds / "admin").chmod(0o644)
    first = ansible_playbook("-i", inventory, play, timeout=300)
    assert first.rc == 0, first.output[-3000:]
    assert mode(creds / "admin") == 0o600
    got = json.loads((tmp_path / "out-h1.json").read_text())
    assert got["first"]["admin"] == "kept-as-it-is"
    # A second run reads the same values and changes nothing.
    second = ansible_playbook("-i", inventory, play, timeout=300)
    assert second.rc == 0, second.output[-3000:]
    assert {host: counts["changed"] for host, counts in second.recap().items()} == {"h1": 0, "h2": 0}
    assert json.loads((tmp_path / "out-h2.json").read_text()) == got


NAMES = "each term is a file name of letters, digits and '_.@+-', not starting with '.' or '-'"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("'x', dir='relative/creds'", "dir must be an absolute path on the controller, got 'relative/creds'"),
        ("dir='{tmp}/creds'", NAMES + " (got no terms)"),
        ("'ok', '.hidden', 'a/b', dir='{tmp}/creds'", NAMES + " (got ['.hidden', 'a/b'])"),
        ("'x', 'x', dir='{tmp}/creds'", "the file names must be distinct, got ['x', 'x']"),
        ("'x', dir='{tmp}/creds', length=0", "length must be 1 or more, got 0"),
        ("'x', dir='{tmp}/creds', chars=[]", "chars must be a non-empty list of non-empty character sets, got []"),
    ],
    ids=["relative-dir", "no-terms", "bad-names", "duplicates", "length-0", "no-chars"],
)
def test_bad_input_is_refused_with_a_message_and_writes_nothing(tmp_path, args, message):
    inventory, play = setup(tmp_path, BAD_PLAYBOOK, args=args.format(tmp=tmp_path))
    run = ansible_playbook("-i", inventory, play, timeout=300)
    assert run.rc == 2, run.output[-3000:]
    assert "edgelab_credentials: " + message in run.output
    assert not (tmp_path / "creds").exists() and not (tmp_path / "relative").exists()


def test_check_mode_generates_too_as_the_password_lookup_does(tmp_path):
    inventory, play = setup(tmp_path)
    run = ansible_playbook("-i", inventory, play, "--check", timeout=300)
    assert run.rc == 0, run.output[-3000:]
    creds = tmp_path / "creds/nested/dir"
    assert sorted(p.name for p in creds.iterdir()) == ["admin", "node-nuc1", "scram-admin.password"]
    assert mode(creds) == 0o700 and all(mode(p) == 0o600 for p in creds.iterdir())


KAFKA_PLAYBOOK = """
- name: Role kafka's credentials through the lookup
  hosts: all
  gather_facts: false
  tasks:
    - name: Generate or read Kafka's secrets
      ansible.builtin.include_role:
        name: kafka
        tasks_from: credentials
        public: true

    - name: Write what each broker received
      ansible.builtin.copy:
        content: "{{{{ {{'admin': kafka_admin_password, 'users': kafka_scram_passwords,
                      'keystore': kafka_keystore_password, 'cluster_id': kafka_cluster_id}} | to_json }}}}"
        dest: "{tmp}/out-{{{{ inventory_hostname }}}}.json"
        mode: "0600"
"""


def test_role_kafka_keeps_its_secrets_through_the_lookup(tmp_path):
    inventory, play = setup(tmp_path, KAFKA_PLAYBOOK)
    creds = tmp_path / "creds/kafka"
    run = ansible_playbook("-i", inventory, play, "-e", f"edgelab_credentials_dir={tmp_path}/creds", timeout=300)
    assert run.rc == 0, run.output[-3000:]
    files = {p.name: p.read_text().strip() for p in creds.iterdir()}
    assert set(files) == {"scram-admin.password", "scram-edgelab.password", "keystore.password", "cluster-id"}
    assert all(mode(creds / name) == 0o600 for name in files) and mode(creds) == 0o700
    for host in ("h1", "h2"):
        got = json.loads((tmp_path / f"out-{host}.json").read_text())
        assert got["admin"] == files["scram-admin.password"] and len(got["admin"]) == 32
        assert got["users"] == {"edgelab": files["scram-edgelab.password"]}
        assert got["keystore"] == files["keystore.password"]
        # A KRaft cluster id: 21 random characters and "A" (22, base64url).
        assert got["cluster_id"] == files["cluster-id"] + "A" and len(got["cluster_id"]) == 22
