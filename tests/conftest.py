"""Fixtures for edgelab's project tests (helpers in labtools.py)."""

from __future__ import annotations

import pytest
from labtools import ansible_playbook


@pytest.fixture(scope="session")
def playbook():
    return ansible_playbook
