"""Role agents rebuilds the hosts' wheelhouse when its keys change: the build key
over the package's sources, the dependencies' key over pyproject.toml. Both come
from `agents_source_files` in roles/agents/tasks/wheelhouse.yml. This evaluates
that expression, taken from the role file as it is, with Ansible on a small
package tree: pyproject.toml and README.md must be in it (a new dependency must
re-download the dependencies), compiled files and build metadata must not (a test
run must not force a rebuild)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def source_files_expression() -> str:
    tasks = yaml.safe_load((REPO / "roles" / "agents" / "tasks" / "wheelhouse.yml").read_text())
    for task in tasks:
        expression = task.get("vars", {}).get("agents_source_files")
        if expression:
            return expression
    raise AssertionError("agents_source_files not found in roles/agents/tasks/wheelhouse.yml")


def test_wheelhouse_keys_cover_pyproject_and_readme_but_not_compiled_files(playbook, tmp_path):
    src = tmp_path / "agents"
    for name in ("pyproject.toml", "README.md", "src/edgelab/__init__.py", "src/edgelab/kafka.py",
                 "src/edgelab/__pycache__/kafka.cpython-311.pyc", "src/edgelab_agents.egg-info/PKG-INFO",
                 "build/lib/edgelab/kafka.py", "notes.txt"):
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    out = tmp_path / "files.json"
    play = tmp_path / "key.yml"
    play.write_text(textwrap.dedent(f"""\
        - name: Evaluate role agents' source list
          hosts: localhost
          connection: local
          gather_facts: false
          tasks:
            - name: Find the sources
              ansible.builtin.find:
                paths: {src}
                recurse: true
                file_type: file
                get_checksum: true
                hidden: false
              register: agents_sources
            - name: Write the list
              ansible.builtin.copy:
                content: "{{{{ agents_source_files | to_json }}}}"
                dest: {out}
                mode: "0644"
              vars:
                agents_source_dir: {src}
        """))
    # The role's expression, verbatim, as a play variable.
    plays = yaml.safe_load(play.read_text())
    plays[0]["tasks"][1]["vars"]["agents_source_files"] = source_files_expression()
    play.write_text(yaml.safe_dump(plays, width=1000))
    run = playbook(str(play), timeout=120)
    assert run.rc == 0, run.output[-3000:]
    names = [name for name, _checksum in json.loads(out.read_text())]
    assert names == ["README.md", "pyproject.toml", "src/edgelab/__init__.py", "src/edgelab/kafka.py"], names
