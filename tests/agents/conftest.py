"""Fixtures for the agents' tests: a real ejabberd on loopback (tests/integration/
ejabberd_server.py, started once for tests/agents and stopped when they are done, so
that tests/integration can start its own afterwards), accounts on it, and a fake
systemctl that records start/stop into a directory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from agenttools import FakeSystemctl, Xmpp, ejabberd_server


@pytest.fixture(scope="package")
def xmpp() -> Iterator[Xmpp]:
    start = contextlib.contextmanager(ejabberd_server.ejabberd.__wrapped__)
    with start() as server:
        # The fixture's self-signed server certificate is its own CA.
        ca = server.dir / "etc" / "server.crt"
        yield Xmpp(server, str(ca))


@pytest.fixture
def systemctl(tmp_path: Path) -> FakeSystemctl:
    state = tmp_path / "units"
    state.mkdir()
    return FakeSystemctl(state)
