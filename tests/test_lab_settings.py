"""The lab's settings given on the command line, as the README shows
(`make lab LAB_ARGS="-e lab_hosts=6"`): `-e key=value` hands the role
strings, which must work wherever the role compares or counts them. These
run only the lab role's checks (tag lab_validate: no host is created) and
render its inventory template; tests/test_lab_lifecycle.py boots a lab
whose size is given the same way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.labtools import render_lab_role

REPO = Path(__file__).resolve().parent.parent
ROLE = REPO / "roles" / "lab"


def check(playbook, *extra: str):
    """The lab play up to its settings check, for a lab no one uses."""
    return playbook("playbooks/lab.yml", "-e", "lab_name=tcheck", *extra, "--tags", "lab_validate", timeout=120)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the lab play runs as root (become) on the controller")


@needs_root
@pytest.mark.parametrize(
    "args",
    [["-e", "lab_hosts=6"], ["-e", "lab_hosts=1"],
     ["-e", "lab_proxy_port=3143", "-e", "lab_boot_timeout=30", "-e", "lab_stop_timeout=5"],
     ["-e", "lab_purge_caches=true", "-e", "lab_state=absent"]],
    ids=["hosts-6", "hosts-1", "numbers", "state-and-flag"],
)
def test_settings_given_with_e_pass_the_checks(playbook, args):
    run = check(playbook, *args)
    assert run.rc == 0, run.output[-3000:]
    assert run.recap()["localhost"]["failed"] == 0


@needs_root
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "lab_hosts=0"], "lab_hosts must be a whole number from 1 to 20 (got 0)"),
        (["-e", "lab_hosts=21"], "lab_hosts must be a whole number from 1 to 20 (got 21)"),
        (["-e", "lab_hosts=x"], "argument 'lab_hosts' is of type str and we were unable to convert to int"),
        (["-e", "lab_proxy_port=70000"], "lab_proxy_port must be a port number from 1 to 65535 (got 70000)"),
        (["-e", "lab_boot_timeout=0"], "lab_boot_timeout must be a whole number of seconds, at least 1 (got 0)"),
        (["-e", "lab_subnet=10.213.0.0/8"], "lab_subnet must be an IPv4 network from /16 to /24 (got 10.213.0.0/8)"),
        (["-e", "lab_name=Lab-1"],
         "lab_name must be 1-8 lowercase letters or digits, starting with a letter (got Lab-1)"),
    ],
    ids=["hosts-0", "hosts-21", "hosts-x", "port", "timeout", "subnet", "name"],
)
def test_bad_settings_given_with_e_fail_naming_the_setting(playbook, args, message):
    run = check(playbook, *args)
    assert run.rc != 0
    assert message in run.output, run.output[-3000:]


def render_inventory(playbook, tmp_path: Path, hosts: str) -> dict:
    """The role's inventory template with the role's own variables and
    lab_hosts given as the string -e makes of it."""
    return render_lab_role(playbook, tmp_path, "-e", f"lab_hosts={hosts}")[1]["all"]["children"]


def test_inventory_from_a_string_host_count(playbook, tmp_path):
    groups = render_inventory(playbook, tmp_path, "6")
    assert list(groups["nucs"]["hosts"]) == [f"nuc{i}" for i in range(1, 7)]
    assert list(groups["workers"]["hosts"]) == [f"nuc{i}" for i in range(2, 7)]
    assert list(groups["control_plane"]["hosts"]) == ["nuc1"]


def test_one_host_lab_is_its_own_worker_when_the_count_is_a_string(playbook, tmp_path):
    groups = render_inventory(playbook, tmp_path, "1")
    assert list(groups["nucs"]["hosts"]) == ["nuc1"]
    assert list(groups["workers"]["hosts"]) == ["nuc1"]
