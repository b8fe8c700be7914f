"""edgelab-run (edgelab.run): playbooks run through the real ansible-runner and
ansible-playbook against localhost (connection local) in a throwaway project: progress
lines, exit codes, a fresh private data dir per run, the project's ansible.cfg honoured,
and no secret from the environment anywhere in what a run leaves behind."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from edgelab import run

pytest.importorskip("ansible_runner")

ANSIBLE_CFG = """\
[defaults]
roles_path = roles
library = library
host_key_checking = True
retry_files_enabled = False
gathering = smart
fact_caching = ansible.builtin.jsonfile
fact_caching_connection = .cache/facts
"""

# A module only the project's library/ has, and a role only its roles/ has.
PROBE_MODULE = """\
#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    module.exit_json(changed=False, probe="from the project library")


main()
"""

PLAYBOOK = """\
- name: Exercise edgelab-run
  hosts: all
  gather_facts: false
  tasks:
    - name: Report settings
      ansible.builtin.debug:
        msg: "hkc={{ lookup('ansible.builtin.config', 'HOST_KEY_CHECKING') }}"
    - name: Touch the marker
      ansible.builtin.file:
        path: "{{ marker }}"
        state: touch
        mode: "0600"
    - name: Write the settings file
      ansible.builtin.copy:
        dest: "{{ marker }}.conf"
        content: "setting = 1"
        mode: "0600"
    - name: Never runs
      ansible.builtin.debug:
        msg: skipped
      when: false
    - name: Fails but is ignored
      ansible.builtin.fail:
        msg: ignored failure
      ignore_errors: true
      tags: [ignored_failure]
    - name: Fail when asked
      ansible.builtin.fail:
        msg: "asked to fail"
      when: fail_now == "yes"
"""

RESULT_LINE = re.compile(r"^(?P<host>\S+)  (?P<status>ok|changed|failed|skipped|unreachable|failed \(ignored\))"
                         r" +(?P<duration>\d+\.\d\ds)  (?P<task>.+?)(?: - (?P<message>.+))?$")


def make_project(root: Path) -> Path:
    """A project like the repository: ansible.cfg, library/, roles/, playbooks/; an
    inventory with localhost on this Python."""
    (root / "library").mkdir(parents=True)
    (root / "roles" / "probe" / "tasks").mkdir(parents=True)
    (root / "playbooks").mkdir()
    (root / "ansible.cfg").write_text(ANSIBLE_CFG)
    (root / "library" / "edgelab_probe.py").write_text(PROBE_MODULE)
    (root / "roles" / "probe" / "tasks" / "main.yml").write_text(textwrap.dedent("""\
        - name: Call the project module
          edgelab_probe:
          register: probe_result
        - name: Show the probe
          ansible.builtin.debug:
            msg: "{{ probe_result.probe }}"
        """))
    (root / "playbooks" / "exercise.yml").write_text(PLAYBOOK)
    (root / "playbooks" / "quick.yml").write_text(textwrap.dedent("""\
        - name: One task
          hosts: all
          gather_facts: false
          tasks:
            - name: Fail when asked
              ansible.builtin.fail:
                msg: asked to fail
              when: fail_now == "yes"
        """))
    (root / "playbooks" / "probe.yml").write_text(textwrap.dedent("""\
        - name: Use the project's roles and library
          hosts: all
          gather_facts: true
          roles:
            - probe
          tasks:
            - name: Print the environment secrets if ansible can see them
              ansible.builtin.debug:
                msg: "{{ lookup('ansible.builtin.env', 'EDGELAB_TEST_SECRET') }}
                  {{ lookup('ansible.builtin.env', 'AWS_SECRET_ACCESS_KEY') }}
                  {{ lookup('ansible.builtin.env', 'ANSIBLE_EDGELAB_TOKEN') }}"
        """))
    (root / "hosts.ini").write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    return root


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_project(tmp_path / "proj")
    # Started elsewhere: the project is found from the playbook, not the working directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return root


def result_lines(text: str) -> list[dict[str, str]]:
    return [match.groupdict() for line in text.splitlines() if (match := RESULT_LINE.match(line))]


def artifacts_dir(text: str) -> Path:
    match = re.search(r"^edgelab-run: rc=\d+ status=\w+ artifacts: (\S+)$", text, re.M)
    assert match, text
    return Path(match.group(1))


def private_dir_of(artifacts: Path) -> Path:
    return artifacts.parent.parent


def test_progress_lines_and_exit_code_0(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    assert run.main([str(project / "playbooks" / "exercise.yml"), "-i", str(project / "hosts.ini"),
                     "--private-data-dir", str(tmp_path / "runs"), "-e", f"marker={marker}", "-e", "fail_now=no"]) == 0
    out = capsys.readouterr().out
    lines = result_lines(out)
    assert [(line["task"], line["status"]) for line in lines] == [
        ("Report settings", "ok"), ("Touch the marker", "changed"), ("Write the settings file", "changed"),
        ("Never runs", "skipped"),
        ("Fails but is ignored", "failed (ignored)"), ("Fail when asked", "skipped")]
    assert all(line["host"] == "localhost" for line in lines)
    assert lines[4]["message"] == "ignored failure"
    assert re.search(r"^  localhost  ok=4 changed=2 unreachable=0 failed=0 skipped=2 rescued=0 ignored=1$",
                     out, re.M), out
    assert marker.exists()
    # The settings lookup in the play sees the project's host_key_checking, not runner's False.
    events = [json.loads(path.read_text()) for path in (artifacts_dir(out) / "job_events").glob("*.json")]
    messages = [event["event_data"]["res"].get("msg") for event in events
                if event.get("event") == "runner_on_ok" and event["event_data"].get("task") == "Report settings"]
    assert messages == ["hkc=True"]
    assert private_dir_of(artifacts_dir(out)).stat().st_mode & 0o777 == 0o700


def test_failed_host_exit_code_2(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A later -e wins, as with ansible-playbook.
    code = run.main([str(project / "playbooks" / "quick.yml"), "-i", str(project / "hosts.ini"),
                     "--private-data-dir", str(tmp_path / "runs"), "-e", "fail_now=no", "-e", '{"fail_now": "yes"}'])
    out = capsys.readouterr().out
    assert code == 2, out
    assert [(line["task"], line["status"], line["message"]) for line in result_lines(out)] == [
        ("Fail when asked", "failed", "asked to fail")]
    assert re.search(r"^  localhost  ok=0 changed=0 unreachable=0 failed=1 ", out, re.M), out
    assert "edgelab-run: rc=2 status=failed artifacts: " in out


def test_each_run_gets_a_fresh_private_dir(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "runs"
    common = [str(project / "playbooks" / "quick.yml"), "-i", str(project / "hosts.ini"),
              "--private-data-dir", str(base)]
    assert run.main([*common, "-e", "fail_now=first"]) == 0
    first = capsys.readouterr().out
    assert run.main([*common, "-e", "fail_now=second"]) == 0
    second = capsys.readouterr().out
    one, two = private_dir_of(artifacts_dir(first)), private_dir_of(artifacts_dir(second))
    assert one != two and one.parent == two.parent == base
    # Each run's own command line (env/cmdline), nothing of the other's.
    assert "first" in (one / "env" / "cmdline").read_text()
    assert "first" not in (two / "env" / "cmdline").read_text()
    assert "second" in (two / "env" / "cmdline").read_text()
    assert [path.name for path in (two / "artifacts").iterdir()] == [artifacts_dir(second).name]


def test_tags_pass_through(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run.main([str(project / "playbooks" / "quick.yml"), "-i", str(project / "hosts.ini"),
                     "--private-data-dir", str(tmp_path / "runs"), "-e", "fail_now=yes", "--tags", "never-a-tag"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert result_lines(out) == []  # no task carries that tag: the failing one did not run


def test_project_config_roles_and_library_resolve(project: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = run.main([str(project / "playbooks" / "probe.yml"), "-i", str(project / "hosts.ini"),
                     "--private-data-dir", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0, out
    tasks = [(line["task"], line["status"]) for line in result_lines(out)]
    assert ("probe : Call the project module", "ok") in tasks
    command = json.loads((artifacts_dir(out) / "command").read_text())
    assert command["cwd"] == str(project)
    assert command["env"]["ANSIBLE_CONFIG"] == str(project / "ansible.cfg")
    # ansible-runner would set ANSIBLE_HOST_KEY_CHECKING=False; the project's True stands.
    assert command["env"]["ANSIBLE_HOST_KEY_CHECKING"] == "True"
    # The project's fact cache (ansible.cfg, relative to it), not one in the artifacts.
    assert list((project / ".cache" / "facts").glob("*localhost"))
    assert not list(artifacts_dir(out).glob("fact_cache*"))


def test_no_secret_from_the_environment_in_anything_a_run_leaves(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    planted = {name: f"planted-{secrets.token_hex(12)}"
               for name in ("EDGELAB_TEST_SECRET", "AWS_SECRET_ACCESS_KEY", "ANSIBLE_EDGELAB_TOKEN")}
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    allowed = f"allowed-{secrets.token_hex(6)}"
    monkeypatch.setenv("LC_EDGELAB_TEST", allowed)
    before = dict(os.environ)

    code = run.main([str(project / "playbooks" / "probe.yml"), "-i", str(project / "hosts.ini"),
                     "--private-data-dir", str(tmp_path / "runs")])
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert dict(os.environ) == before  # the process environment is back as it was
    assert "ANSIBLE_EDGELAB_TOKEN" in captured.err  # named as dropped; its value never printed

    artifacts = artifacts_dir(captured.out)
    command = json.loads((artifacts / "command").read_text())
    # The run's environment was recorded (so the search below looks at it), scrubbed.
    assert command["env"]["LC_EDGELAB_TEST"] == allowed
    assert not set(planted) & set(command["env"])
    assert {"stdout", "job_events", "command"} <= {path.name for path in artifacts.iterdir()}
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(files) > 10
    for path in files:
        data = path.read_bytes()
        for name, value in planted.items():
            assert value.encode() not in data, f"{name} found in {path}"
    for value in planted.values():
        assert value not in captured.out and value not in captured.err


def test_check_mode_passes_through(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "not-created"
    code = run.main([str(project / "playbooks" / "exercise.yml"), "-i", str(project / "hosts.ini"),
                     "--private-data-dir", str(tmp_path / "runs"), "-e", f"marker={marker}",
                     "-e", "fail_now=no", "--check", "--diff", "--skip-tags", "ignored_failure"])
    out = capsys.readouterr().out
    assert code == 0, out
    tasks = [(line["task"], line["status"]) for line in result_lines(out)]
    assert ("Touch the marker", "changed") in tasks
    assert "Fails but is ignored" not in [task for task, _ in tasks]  # --skip-tags passed through
    # --diff: the file's diff under its task's line.
    lines = out.splitlines()
    written = next(i for i, line in enumerate(lines) if line.endswith("  Write the settings file"))
    assert lines[written + 1:written + 5] == ["    --- before", f"    +++ after: {marker}.conf",
                                              "    @@ -0,0 +1 @@", "    +setting = 1"], out
    assert not Path(f"{marker}.conf").exists()
    assert not marker.exists()
    command = json.loads((artifacts_dir(out) / "command").read_text())["command"]
    assert "--check" in command and "--diff" in command


def test_unreachable_host_exit_code(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # SSH to a closed port on loopback: refused at once.
    inventory = tmp_path / "closed.ini"
    inventory.write_text("closed ansible_host=127.0.0.1 ansible_port=1 ansible_user=nobody\n")
    code = run.main([str(project / "playbooks" / "exercise.yml"), "-i", str(inventory),
                     "--private-data-dir", str(tmp_path / "runs"), "-e", "marker=/nonexistent", "-e", "fail_now=no"])
    out = capsys.readouterr().out
    assert code == 4, out
    lines = result_lines(out)
    # debug runs on the controller; the file task needs the host.
    assert [(line["host"], line["status"]) for line in lines] == [("closed", "ok"), ("closed", "unreachable")]
    assert "Connection refused" in out


def test_keep_artifacts_prunes_only_its_own_older_runs(project: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "runs"
    base.mkdir()
    old = [base / f"run-2020010{day}T000000.000000Z-abc" for day in (1, 2, 3)]
    for directory in old:
        (directory / "artifacts").mkdir(parents=True)
    foreign = base / "keep-me"
    foreign.mkdir()
    code = run.main([str(project / "playbooks" / "quick.yml"), "-i", str(project / "hosts.ini"),
                     "--private-data-dir", str(base), "-e", "fail_now=no", "--keep-artifacts", "2"])
    out = capsys.readouterr().out
    assert code == 0
    current = private_dir_of(artifacts_dir(out))
    assert sorted(path.name for path in base.iterdir()) == sorted([old[2].name, current.name, "keep-me"])


def test_scrubbed_environment_is_an_allowlist(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text("[defaults]\nhost_key_checking = False\n")
    environ = {"PATH": "/usr/bin:/venv/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C", "TERM": "dumb",
               "SSH_AUTH_SOCK": "/tmp/agent", "VIRTUAL_ENV": "/venv", "ANSIBLE_FORCE_COLOR": "0",
               "ANSIBLE_BECOME_PASSWORD": "x", "ANSIBLE_CONFIG": "/elsewhere.cfg", "USER": "root",
               "AWS_SECRET_ACCESS_KEY": "x", "PYTHONPATH": "/x", "LD_PRELOAD": "/x.so", "GITHUB_TOKEN": "x"}
    env, dropped = run.scrubbed_environment(environ, tmp_path, "/venv/bin")
    assert env == {"PATH": "/venv/bin:/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C", "TERM": "dumb",
                   "SSH_AUTH_SOCK": "/tmp/agent", "VIRTUAL_ENV": "/venv", "ANSIBLE_FORCE_COLOR": "0",
                   "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"), "ANSIBLE_HOST_KEY_CHECKING": "False"}
    assert dropped == ["ANSIBLE_BECOME_PASSWORD", "ANSIBLE_CONFIG"]
    env, _ = run.scrubbed_environment({"ANSIBLE_HOST_KEY_CHECKING": "True"}, tmp_path, "/venv/bin")
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True"  # the environment's own setting wins, as in Ansible
    env, _ = run.scrubbed_environment({}, None, "/venv/bin")
    assert "ANSIBLE_CONFIG" not in env and env["ANSIBLE_HOST_KEY_CHECKING"] == "True"


@pytest.mark.parametrize(("args", "message"), [
    (["missing.yml", "-i", "{inv}"], "playbook missing.yml: no such file"),
    (["{play}", "-i", "no-such-inventory"], "inventory no-such-inventory: no such file or directory"),
    (["{play}", "-i", "{inv}", "-e", "novalue"], "-e 'novalue': expected KEY=VALUE, a JSON object or @FILE"),
    (["{play}", "-i", "{inv}", "-e", "1x=2"], "-e '1x=2': expected KEY=VALUE, a JSON object or @FILE"),
    (["{play}", "-i", "{inv}", "-e", "{not json"], "-e '{not json': not a JSON object"),
    (["{play}", "-i", "{inv}", "-e", "[1]"], "-e '[1]': expected KEY=VALUE, a JSON object or @FILE"),
    (["{play}", "-i", "{inv}", "-e", "@/no/such/vars.yml"], "-e @/no/such/vars.yml: no such file"),
    (["{play}", "-i", "{inv}", "--keep-artifacts", "0"], "--keep-artifacts 0: must be at least 1"),
    (["{play}", "-i", "{inv}", "--private-data-dir", "{inv}/runs"],
     "cannot create a private data dir under {inv}/runs: Not a directory"),
])
def test_bad_input_is_one_line_and_exit_2(project: Path, tmp_path: Path, args: list[str], message: str) -> None:
    def fill(text: str) -> str:
        return text.replace("{play}", str(project / "playbooks" / "exercise.yml")).replace(
            "{inv}", str(project / "hosts.ini"))

    tool = Path(sys.executable).parent / "edgelab-run"
    done = subprocess.run([str(tool), *map(fill, args)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgelab-run: bad input: {fill(message)}"), lines
    assert not (project / ".cache" / "runner").exists()
