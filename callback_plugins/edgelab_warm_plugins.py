"""Load Ansible's Jinja filter and test plugins once, in the controller's
main process, before the first task.

Ansible runs each task of each host in a worker process forked from the
main one. ansible-core loads all of its own (ansible.builtin) filter and
test plugins the first time a template needs one, and keeps them in the
process that loaded them. The main process seldom templates with a
filter, so without this every worker loaded them all again: on the lab's
no-op re-run of site.yml that was about 16 s of CPU (py-spy, 2026-12-03;
docs/benchmarks.md, "Fewer tasks and plugins loaded once"). Loaded here,
every worker inherits them through fork.

Not a user-facing callback: it prints nothing (one line at -vvvv), and it
loads without being enabled (CALLBACK_NEEDS_ENABLED = False) whenever ansible.cfg's
callback_plugins holds this directory, so a run that replaces
callbacks_enabled (ANSIBLE_CALLBACKS_ENABLED=...) keeps it.
"""

from __future__ import annotations

from typing import Any

from ansible.plugins.callback import CallbackBase
from ansible.plugins.loader import filter_loader, test_loader

DOCUMENTATION = """
name: edgelab_warm_plugins
type: aggregate
short_description: load the Jinja filter and test plugins once before the workers fork
description:
  - Loads every filter and test plugin in the controller's main process at the start of each
    play, so that the worker processes forked for each task and host inherit them instead of
    loading them again.
  - Prints nothing (a line at -vvvv) and has no options.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "edgelab_warm_plugins"
    CALLBACK_NEEDS_ENABLED = False

    def _warm(self) -> None:
        # all() fills each loader's cache of wrappers (the one a template's
        # lookup of a filter or test fills on first use); later calls return
        # from that cache.
        counts = [sum(1 for _ in loader.all()) for loader in (filter_loader, test_loader)]
        self._display.vvvv("edgelab_warm_plugins: %d filter and %d test plugins loaded" % tuple(counts))

    # At each play: a role loaded by the play may add plugin directories,
    # which empties the loaders' caches.
    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._warm()
