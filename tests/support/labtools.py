"""Helpers for edgelab's project tests: they run the real ansible-playbook
from the repository's virtualenv against real inventories and lab hosts."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclass
class Run:
    rc: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        """Per-host counters of the last PLAY RECAP in the output."""
        tail = self.output.rsplit("PLAY RECAP", 1)[-1]
        return {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in RECAP.finditer(tail)
        }

    def failures(self, tail: int = 2000) -> str:
        """Each failed task of the run (its TASK line and its failure, up to the
        next blank line) and then the output's last `tail` characters: the
        message of an assertion on rc. The tail alone is the profile's list of
        slow tasks, which hides what failed."""
        blocks, task, lines = [], "", self.output.splitlines()
        for i, line in enumerate(lines):
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                task = line
            elif line.lstrip().startswith(("fatal: [", "failed: [")) or line.startswith("ERROR!"):
                end = next((j for j in range(i + 1, len(lines)) if not lines[j].strip()), len(lines))
                blocks.append("\n".join([task, *lines[i:min(end, i + 40)]]))
        return "\n\n".join([*blocks, "... " + self.output[-tail:]])


def lab_strategy_env() -> dict[str, str]:
    """The environment `make lab`, `make site` and `make drills` run the lab's
    plays with: the Makefile's LAB_STRATEGY default and, for Mitogen's
    strategies, the directory of its strategy plugins in this venv."""
    found = re.search(r"^LAB_STRATEGY \?= (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert found, "the Makefile sets no LAB_STRATEGY default"
    env = {"ANSIBLE_STRATEGY": found[1]}
    if found[1].startswith("mitogen"):
        spec = importlib.util.find_spec("ansible_mitogen")
        assert spec and spec.submodule_search_locations, "mitogen is not installed (requirements.txt)"
        env["ANSIBLE_STRATEGY_PLUGINS"] = str(Path(spec.submodule_search_locations[0]) / "plugins" / "strategy")
    return env


def ansible_playbook(*args: str, timeout: int = 1800, env: dict[str, str] | None = None) -> Run:
    """ansible-playbook from the repository root; `env` adds to (or overrides)
    this process's environment."""
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_NOCOLOR="1", PATH=f"{BIN}:{os.environ['PATH']}", **(env or {}))
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    return Run(proc.returncode, proc.stdout + proc.stderr)


def render_lab_role(playbook, tmp_path: Path, *extra: str) -> tuple[dict, dict]:
    """What role lab computes, without creating a lab: its image names and
    directories per distribution and its host plan (as JSON), and its inventory
    template rendered, from the role's defaults and vars with the given -e
    settings. `playbook` is the tests' fixture of that name."""
    role = REPO / "roles" / "lab"
    out = tmp_path / "out.json"
    inv = tmp_path / "hosts.yml"
    play = tmp_path / "render.yml"
    play.write_text(textwrap.dedent(f"""\
        - name: Render what role lab computes
          hosts: localhost
          connection: local
          gather_facts: false
          vars_files: [{role}/defaults/main.yml, {role}/vars/main.yml]
          tasks:
            - name: Hosts as the role computes them
              ansible.builtin.set_fact:
                lab_host_list: "{{{{ lab_host_plan }}}}"
            - name: Write the image names and the plan
              ansible.builtin.copy:
                content: "{{{{ {{'ids': lab_image_ids, 'dirs': lab_image_dirs, 'hosts': lab_host_list}} | to_json }}}}"
                dest: {out}
                mode: "0644"
            - name: Write the inventory
              ansible.builtin.template:
                src: {role}/templates/hosts.yml.j2
                dest: {inv}
                mode: "0644"
              vars:
                lab_pubkey: ssh-ed25519 AAAA test
        """))
    run = playbook(str(play), *extra, timeout=120)
    assert run.rc == 0, run.output[-3000:]
    return json.loads(out.read_text()), yaml.safe_load(inv.read_text())
