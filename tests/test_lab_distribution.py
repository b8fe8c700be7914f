"""The lab's distributions (lab_distribution, lab_host_distributions): the
settings' checks, one cached image per distribution, and each host's
distribution in the plan and the inventory. Fast: no lab is created (the
checks run with tag lab_validate, the rest renders the role's own
variables and template)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml
from support.labtools import render_lab_role

REPO = Path(__file__).resolve().parent.parent
ROLE = REPO / "roles" / "lab"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the lab play runs as root (become) on the controller")


BAD_MAP = "lab_host_distributions must be a mapping of host numbers"


def check(playbook, *extra: str):
    """The lab play up to its settings check, for a lab no one uses."""
    return playbook("playbooks/lab.yml", "-e", "lab_name=tdistro", *extra, "--tags", "lab_validate", timeout=120)


@needs_root
@pytest.mark.parametrize(
    "args",
    [["-e", "lab_distribution=debian13"],
     ["-e", '{"lab_host_distributions": {"3": "debian13"}}'],
     ["-e", "lab_hosts=2", "-e", '{"lab_host_distributions": {"1": "debian13", "2": "debian12"}}'],
     ["-e", "lab_hosts=4", "-e", "lab_host_distributions=3=debian13,4=debian13"]],
    ids=["all-13", "host-3", "mixed", "as-text"],
)
def test_distribution_settings_pass_the_checks(playbook, args):
    run = check(playbook, *args)
    assert run.rc == 0, run.output[-3000:]


@needs_root
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "lab_distribution=debian14"],
         "value of lab_distribution must be one of: debian12, debian13, got: debian14"),
        (["-e", '{"lab_host_distributions": {"4": "debian13"}}'],
         "lab_host_distributions must be a mapping of host numbers (1 to lab_hosts) to one of debian12, debian13"),
        (["-e", '{"lab_host_distributions": {"0": "debian13"}}'], BAD_MAP),
        (["-e", '{"lab_host_distributions": {"nuc2": "debian13"}}'], BAD_MAP),
        (["-e", '{"lab_host_distributions": {"2": "ubuntu24"}}'], "(got {'2': 'ubuntu24'})"),
        (["-e", "lab_host_distributions=debian13"], "argument 'lab_host_distributions' is of type str"),
        (["-e", "lab_host_distributions=3=debian13,3=debian12"], "(got 3=debian13,3=debian12)"),
        (["-e", "lab_debian_suite=trixie"],
         "lab_debian_suite must be unset (lab_distribution and lab_host_distributions choose the suites) (got trixie)"),
    ],
    ids=["unknown", "host-out-of-range", "host-0", "host-by-name", "unknown-per-host", "not-a-mapping",
         "text-twice", "old-suite"],
)
def test_bad_distribution_settings_fail_naming_the_setting(playbook, args, message):
    run = check(playbook, *args)
    assert run.rc != 0
    assert message in run.output, run.output[-3000:]


def render(playbook, tmp_path: Path, *extra: str) -> tuple[dict, dict]:
    """The role's image names and host plan, and its inventory, with the given -e settings."""
    return render_lab_role(playbook, tmp_path, *extra)


@pytest.fixture(scope="module")
def default_render(playbook, tmp_path_factory) -> tuple[dict, dict]:
    return render(playbook, tmp_path_factory.mktemp("default"), "-e", "lab_cache_dir=/srv/c")


@pytest.fixture(scope="module")
def mixed_render(playbook, tmp_path_factory) -> tuple[dict, dict]:
    """Four hosts, debian13 for the lab, debian12 for hosts 2 and 4."""
    return render(playbook, tmp_path_factory.mktemp("mixed"), "-e", "lab_cache_dir=/srv/c",
                  "-e", "lab_hosts=4", "-e", "lab_distribution=debian13",
                  "-e", '{"lab_host_distributions": {"2": "debian12", "4": "debian12"}}')


def test_each_distribution_has_its_own_image_beside_the_others(default_render):
    ids, dirs = default_render[0]["ids"], default_render[0]["dirs"]
    assert sorted(ids) == ["debian12", "debian13"]
    assert ids["debian12"].startswith("bookworm-") and ids["debian13"].startswith("trixie-")
    assert dirs == {d: f"/srv/c/images/{ids[d]}" for d in ids}
    assert dirs["debian12"] != dirs["debian13"]


def test_debian12_image_keeps_its_name(default_render):
    """The debian12 image is named as before Debian 13 existed, so caches
    built earlier stay valid: suite, then the sha1 of the recipe number, the
    mirrors and the sorted package list."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    recipe = " ".join(["1", defaults["lab_debian_mirror"], defaults["lab_debian_security_mirror"],
                       *sorted(defaults["lab_image_packages"])])
    assert default_render[0]["ids"]["debian12"] == "bookworm-" + hashlib.sha1(recipe.encode()).hexdigest()[:12]


def test_choosing_distributions_renames_no_image(default_render, mixed_render):
    assert default_render[0]["ids"] == mixed_render[0]["ids"]


def test_a_new_package_list_renames_every_image(playbook, tmp_path, default_render):
    more, _ = render(playbook, tmp_path, "-e", "lab_cache_dir=/srv/c",
                     "-e", '{"lab_image_packages": ["systemd", "python3", "curl"]}')
    assert all(default_render[0]["ids"][d] != more["ids"][d] for d in more["ids"])


def test_hosts_get_the_lab_distribution_unless_named(mixed_render):
    got, inventory = mixed_render
    assert [(h["name"], h["distribution"]) for h in got["hosts"]] == [
        ("nuc1", "debian13"), ("nuc2", "debian12"), ("nuc3", "debian13"), ("nuc4", "debian12")]
    hosts = inventory["all"]["children"]["nucs"]["hosts"]
    assert {h: v["edgelab_lab_distribution"] for h, v in hosts.items()} == {
        "nuc1": "debian13", "nuc2": "debian12", "nuc3": "debian13", "nuc4": "debian12"}


def test_numbers_as_yaml_keys_work_like_text_keys(playbook, tmp_path):
    """A vars file writes {3: debian13} (an int key), -e JSON writes
    {"3": "debian13"}: both name host 3."""
    extra = tmp_path / "extra.yml"
    extra.write_text("lab_host_distributions:\n  3: debian13\n")
    got, _ = render(playbook, tmp_path, "-e", f"@{extra}")
    assert [h["distribution"] for h in got["hosts"]] == ["debian12", "debian12", "debian13"]


def test_the_text_form_names_hosts_too(playbook, tmp_path):
    """make lab LAB_ARGS="-e lab_host_distributions=2=debian13" (no JSON to quote)."""
    got, _ = render(playbook, tmp_path, "-e", "lab_host_distributions=2=debian13")
    assert [h["distribution"] for h in got["hosts"]] == ["debian12", "debian13", "debian12"]
