"""Small helpers of the tests that talk to edgelab's HTTP services: wait for a
condition, call an endpoint and read its JSON (or text) answer, errors included."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


def until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll cond() until it is true; an AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


def call(method: str, url: str, body: bytes | None = None, content_type: str = "") -> tuple[int, Any]:
    """(status, answer): the JSON answer parsed when the service says it is JSON, else
    the text; an HTTP error's JSON body with its status."""
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            raw = response.read().decode()
            return response.status, json.loads(raw) if "json" in response.headers.get("Content-Type", "") else raw
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read().decode())
