"""Helpers for the agents' tests: a handle on the test ejabberd and a fake
systemctl that records start/stop into a directory."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from support import ejabberd_server

FAKE_SYSTEMCTL = """#!/bin/sh
# Fake systemctl for the tests: an instance is "active" when its file exists.
state={state}
cmd=$1; shift
echo "$cmd $*" >> "$state/calls.log"
case "$cmd" in
  start) for u in "$@"; do touch "$state/$u"; done ;;
  stop) for u in "$@"; do rm -f "$state/$u"; done ;;
  is-active) rc=3
    for u in "$@"; do if [ -e "$state/$u" ]; then echo active; rc=0; else echo inactive; fi; done
    exit $rc ;;
  *) echo "unknown command $cmd" >&2; exit 1 ;;
esac
"""


@dataclass
class Xmpp:
    server: ejabberd_server.Ejabberd
    ca_file: str

    @property
    def domain(self) -> str:
        return self.server.domain

    @property
    def port(self) -> int:
        return self.server.c2s_port

    def register(self, user: str) -> str:
        password = "pw-" + os.urandom(8).hex()
        self.server.ctl("unregister", user, self.domain, check=False)
        self.server.ctl("register", user, self.domain, password)
        return password


class FakeSystemctl:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.path = state / "systemctl"
        self.path.write_text(FAKE_SYSTEMCTL.format(state=state))
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)

    def active(self) -> list[str]:
        return sorted(p.name for p in self.state.glob("*.service"))

    def calls(self) -> list[str]:
        log = self.state / "calls.log"
        return log.read_text().splitlines() if log.exists() else []
