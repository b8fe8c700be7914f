"""Fixtures for the agents' tests: a real ejabberd on loopback (support/ejabberd_server.py,
started once for tests/agents and stopped when they are done, so that tests/integration
can start its own afterwards), accounts on it, and a fake systemctl that records
start/stop into a directory; a CA certificate file for configs that name one."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.agenttools import FakeSystemctl, Xmpp
from support.ejabberd_server import running_ejabberd


@pytest.fixture(scope="package")
def xmpp() -> Iterator[Xmpp]:
    with running_ejabberd() as server:
        # The fixture's self-signed server certificate is its own CA.
        ca = server.dir / "etc" / "server.crt"
        yield Xmpp(server, str(ca))


@pytest.fixture
def systemctl(tmp_path: Path) -> FakeSystemctl:
    state = tmp_path / "units"
    state.mkdir()
    return FakeSystemctl(state)


@pytest.fixture(scope="session")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A self-signed CA certificate (PEM) that the configs' ca_file can name."""
    where = tmp_path_factory.mktemp("ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(where / "ca.key"), "-out", str(where / "ca.crt"), "-days", "2",
                    "-subj", "/CN=edgelab test CA"], check=True, capture_output=True)
    return str(where / "ca.crt")
