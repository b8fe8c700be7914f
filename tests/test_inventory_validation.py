"""The validation play stops a run on a bad inventory before any host is
contacted, with a message that names the group or variable at fault."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

GOOD = """
all:
  children:
    nucs:
      hosts:
        n1: {ansible_host: 192.0.2.10}
        n2: {ansible_host: 192.0.2.11}
    control_plane: {hosts: {n1: }}
    workers: {hosts: {n2: }}
    xmpp_server: {hosts: {n1: }}
    kafka_brokers: {hosts: {n1: }}
    monitoring: {hosts: {n1: }}
    mlops: {hosts: {n1: }}
"""


def write_inventory(tmp_path: Path, text: str) -> str:
    inv = tmp_path / "hosts.yml"
    inv.write_text(textwrap.dedent(text))
    return str(inv)


def run_site(playbook, inventory: str, *extra: str):
    # site.yml, not just validate.yml: the point is that nothing after the
    # validation play starts (no fact gathering on the unreachable hosts).
    return playbook("-i", inventory, "playbooks/site.yml", *extra, timeout=300)


def test_good_inventory_passes_validation(tmp_path, playbook):
    run = playbook("-i", write_inventory(tmp_path, GOOD), "playbooks/validate.yml")
    assert run.rc == 0, run.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("    control_plane: {hosts: {n1: }}\n", ""), "control_plane"),
        (GOOD.replace("    monitoring: {hosts: {n1: }}\n", "    monitoring: {hosts: {}}\n"),
         "Service group `monitoring` has no host"),
        (GOOD.replace("192.0.2.11", "192.0.2.10"), "192.0.2.10 is used by n1 and n2"),
        (GOOD.replace("    mlops: {hosts: {n1: }}\n", "    mlops: {hosts: {stray: }}\n"),
         "Group `mlops` has hosts that are not in `nucs`: stray"),
    ],
    ids=["no-control-plane", "empty-service-group", "duplicate-address", "host-outside-nucs"],
)
def test_bad_groups_fail_in_the_validation_play(tmp_path, playbook, text, expected):
    run = run_site(playbook, write_inventory(tmp_path, text))
    assert run.rc != 0
    assert expected in run.output
    assert "Gathering Facts" not in run.output, "the run went past the validation play"


@pytest.mark.parametrize(
    ("var", "value"),
    [("base_swap_disable", "'perhaps'"), ("base_firewall_ssh_port", "'twenty-two'"),
     ("base_admin_authorized_keys", "{key: value}")],
)
def test_bad_variable_type_names_the_variable(tmp_path, playbook, var, value):
    text = GOOD.replace("all:\n", f"all:\n  vars:\n    {var}: {value}\n", 1)
    run = run_site(playbook, write_inventory(tmp_path, text))
    assert run.rc != 0
    assert var in run.output
    assert "Gathering Facts" not in run.output, "the run went past the validation play"


def test_credentials_are_never_read_as_inventory(tmp_path):
    """Generated secrets live in <inventory>/credentials/; Ansible must not
    parse them as inventory sources (a password file would become a host
    name, printed in every play recap)."""
    import subprocess
    import sys
    from pathlib import Path

    inv = tmp_path / "inv"
    (inv / "credentials" / "xmpp").mkdir(parents=True)
    (inv / "hosts.yml").write_text(textwrap.dedent(GOOD))
    (inv / "credentials" / "xmpp" / "node-n1").write_text("s3cretPassw0rdValue\n")
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(inv), "--list"],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, check=True,
    ).stdout
    assert "n1" in out
    assert "s3cretPassw0rdValue" not in out


# Settings given on the command line: `-e key=value` gives strings.
@pytest.mark.parametrize(
    "extra",
    ["base_firewall_ssh_port=2222", '{"base_swap_disable": false}', '{"edgelab_service_groups": ["monitoring"]}'],
    ids=["int-as-text", "bool-as-json", "list-as-json"],
)
def test_settings_given_with_e_pass_validation(tmp_path, playbook, extra):
    run = playbook("-i", write_inventory(tmp_path, GOOD), "playbooks/validate.yml", "-e", extra)
    assert run.rc == 0, run.output[-3000:]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("base_swap_disable=false", "base_swap_disable (role base) must be true or false, not text (got \"false\")"),
        ("ejabberd_federation=no", "ejabberd_federation (role ejabberd) must be true or false, not text (got \"no\")"),
        ("edgelab_service_groups=monitoring",
         "edgelab_service_groups must be a list of group or role names (got \"monitoring\")"),
    ],
    ids=["bool-as-text", "another-bool-as-text", "list-as-text"],
)
def test_settings_given_with_e_as_text_fail_in_the_validation_play(tmp_path, playbook, extra, expected):
    run = run_site(playbook, write_inventory(tmp_path, GOOD), "-e", extra)
    assert run.rc != 0
    assert expected in run.output, run.output[-3000:]
    assert "Gathering Facts" not in run.output, "the run went past the validation play"


def test_a_yes_no_setting_quoted_in_the_inventory_fails_too(tmp_path, playbook):
    text = GOOD.replace("all:\n", "all:\n  vars:\n    base_swap_disable: 'false'\n", 1)
    run = run_site(playbook, write_inventory(tmp_path, text))
    assert run.rc != 0
    assert "base_swap_disable (role base) must be true or false, not text" in run.output
