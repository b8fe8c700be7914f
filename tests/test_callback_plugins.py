"""callback_plugins/edgelab_warm_plugins.py: it loads every filter and test
plugin in the controller's main process when a play starts (what the worker
processes forked for each task and host then inherit), and ansible-playbook
loads it from the project's ansible.cfg even when callbacks_enabled is replaced.
Its effect on a run's time is measured in docs/benchmarks.md ("Fewer tasks and
plugins loaded once")."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap

from support.labtools import BIN, REPO, ansible_playbook

# ansible-core's loaders keep the plugins a template looked up in
# _cached_non_collection_wrappers (ansible-core 2.19, requirements.txt). If a
# new ansible-core renames it, this fails and the plugin must be looked at.
PROBE = textwrap.dedent("""\
    import json, sys
    from ansible.plugins.loader import callback_loader, filter_loader, init_plugin_loader, test_loader
    init_plugin_loader()
    callback_loader.add_directory(sys.argv[1])
    def cached():
        return {"filters": sorted(filter_loader._cached_non_collection_wrappers),
                "tests": sorted(test_loader._cached_non_collection_wrappers)}
    before = cached()
    plugin = callback_loader.get("edgelab_warm_plugins")
    plugin.v2_playbook_on_play_start(None)
    print(json.dumps({"before": before, "after": cached()}))
""")


def test_a_play_start_loads_every_filter_and_test_plugin():
    out = subprocess.run(
        [str(BIN / "python"), "-c", PROBE, str(REPO / "callback_plugins")],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    got = json.loads(out)
    assert got["before"] == {"filters": [], "tests": []}
    for name in ("to_json", "ansible.builtin.to_json", "regex_replace", "b64decode", "combine"):
        assert name in got["after"]["filters"], name
    for name in ("match", "ansible.builtin.match", "search", "version"):
        assert name in got["after"]["tests"], name


def test_ansible_playbook_uses_it_when_callbacks_enabled_is_replaced(tmp_path, monkeypatch):
    play = tmp_path / "play.yml"
    play.write_text(textwrap.dedent("""\
        - name: One task
          hosts: localhost
          connection: local
          gather_facts: false
          tasks:
            - name: Use a filter
              ansible.builtin.debug:
                msg: "{{ {'a': 1} | ansible.builtin.to_json }}"
        """))
    monkeypatch.setenv("ANSIBLE_CALLBACKS_ENABLED", "ansible.posix.profile_tasks")
    run = ansible_playbook("-i", "localhost,", str(play), "-vvvv", timeout=300)
    assert run.rc == 0, run.output[-3000:]
    loaded = re.search(r"edgelab_warm_plugins: (\d+) filter and (\d+) test plugins loaded", run.output)
    assert loaded, run.output[-3000:]
    assert int(loaded[1]) > 50 and int(loaded[2]) > 20, loaded[0]
    assert '{\\"a\\": 1}' in run.output or '{"a": 1}' in run.output
