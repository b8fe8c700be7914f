"""Every role's settings are declared twice, by convention: the value in
defaults/main.yml (what Ansible uses) and the typed entry in
meta/argument_specs.yml (what ansible-doc, the role's input check and the
validation play read). These tests keep the two in step:

- every variable in defaults/main.yml has an option in some entry point of
  the spec, and every option of the spec's `main` entry point is in
  defaults/main.yml (options of other entry points, the parameters a caller
  passes to `tasks_from`, may have no default when the spec gives none);
- where the spec gives a default, it equals the one in defaults/main.yml,
  types included (`true` is not `1`);
- a default that is a plain value (no Jinja template) is in the spec too; a
  templated one may be left out;
- a templated spec default belongs only to a text option (str, path, raw):
  the validation play (playbooks/validate.yml) type-checks the spec's default
  as written when the inventory leaves the variable unset, and "{{ x }}" is
  no int or bool.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

ROLES = Path(__file__).resolve().parent.parent / "roles"
ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if (p / "defaults" / "main.yml").exists()
                    or (p / "meta" / "argument_specs.yml").exists())


TEXT_TYPES = ("str", "path", "raw")


def load(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def templated(value: Any) -> bool:
    return "{{" in json.dumps(value) or "{%" in json.dumps(value)


def problems(role: Path) -> list[str]:
    defaults = load(role / "defaults" / "main.yml")
    entry_points = load(role / "meta" / "argument_specs.yml").get("argument_specs", {})
    options: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for entry, spec in entry_points.items():
        for name, option in ((spec or {}).get("options") or {}).items():
            options.setdefault(name, []).append((entry, option or {}))
    found = []
    for name, value in defaults.items():
        if name not in options:
            found.append(f"{name}: in defaults/main.yml, not in meta/argument_specs.yml")
            continue
        for entry, option in options[name]:
            kind = option.get("type", "str")
            if "default" in option and templated(option["default"]) and kind not in TEXT_TYPES:
                found.append(f"{name} ({entry}): spec default {option['default']!r} is a template, the type {kind};"
                             " drop it from the spec")
            elif "default" in option:
                if not same(option["default"], value):
                    found.append(f"{name} ({entry}): spec default {option['default']!r} != defaults/main.yml {value!r}")
            elif not templated(value):
                found.append(f"{name} ({entry}): no default in the spec; defaults/main.yml has {value!r}")
    for name, entries in options.items():
        if name in defaults:
            continue
        for entry, option in entries:
            if entry == "main":
                found.append(f"{name}: in meta/argument_specs.yml (main), not in defaults/main.yml")
            elif "default" in option:
                found.append(f"{name} ({entry}): spec default {option['default']!r}, not in defaults/main.yml")
    return found


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_spec_and_defaults_agree(role):
    found = problems(ROLES / role)
    assert not found, f"role {role}:\n" + "\n".join(found)


def write_role(root: Path, defaults: str, spec: str) -> Path:
    role = root / "r"
    (role / "defaults").mkdir(parents=True)
    (role / "meta").mkdir()
    (role / "defaults" / "main.yml").write_text(defaults)
    (role / "meta" / "argument_specs.yml").write_text(spec)
    return role


SPEC = """
argument_specs:
  main:
    options:
      r_port: {type: int, default: 5222}
      r_flag: {type: bool, default: true}
      r_dir: {type: str}
  helper:
    options:
      r_name: {type: str, required: true}
"""


def test_a_role_that_agrees_has_no_problems(tmp_path):
    role = write_role(tmp_path, "r_port: 5222\nr_flag: true\nr_dir: '{{ x }}/d'\n", SPEC)
    assert problems(role) == []


@pytest.mark.parametrize(
    ("defaults", "expected"),
    [
        ("r_port: 5223\nr_flag: true\nr_dir: '{{ x }}'\n",
         "r_port (main): spec default 5222 != defaults/main.yml 5223"),
        ("r_port: 5222\nr_flag: 1\nr_dir: '{{ x }}'\n", "r_flag (main): spec default True != defaults/main.yml 1"),
        ("r_port: 5222\nr_flag: true\nr_dir: /srv\n", "r_dir (main): no default in the spec"),
        ("r_port: 5222\nr_flag: true\n", "r_dir: in meta/argument_specs.yml (main), not in defaults/main.yml"),
        ("r_port: 5222\nr_flag: true\nr_dir: '{{ x }}'\nr_extra: 1\n", "r_extra: in defaults/main.yml, not in"),
    ],
    ids=["value", "type", "untemplated-without-spec-default", "spec-only", "defaults-only"],
)
def test_each_disagreement_is_named(tmp_path, defaults, expected):
    found = problems(write_role(tmp_path, defaults, SPEC))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_a_templated_spec_default_is_named(tmp_path):
    spec = SPEC.replace("default: 5222", "default: '{{ x }}'")
    spec = spec.replace("r_dir: {type: str}", "r_dir: {type: str, default: '{{ x }}/d'}")  # text: allowed
    found = problems(write_role(tmp_path, "r_port: '{{ x }}'\nr_flag: true\nr_dir: '{{ x }}/d'\n", spec))
    assert found == ["r_port (main): spec default '{{ x }}' is a template, the type int; drop it from the spec"], found
