"""A real Prometheus (the Debian package's /usr/bin/prometheus) on loopback for the tests,
holding synthetic history that promtool backfills as TSDB blocks before the start.

    data = backfill(tmp, write)         # write(stream) writes OpenMetrics gauge families
    with running_prometheus(tmp, data=data) as prom:
        prom.url                        # http://127.0.0.1:PORT, answering /-/ready
        prom.log_tail()                 # the end of its log, for failure messages

`needs_prometheus` is the skip mark for modules that use it (the skip policy in
tests/conftest.py turns the skip into a failure in CI).

One server per module, not per run: the modules' histories share metric names (lab_*)
and overlap in time, and what they test (the IMA's default selector, candidate counts,
extracted columns) depends on the TSDB holding that module's series alone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pytest

PROMETHEUS, PROMTOOL = "/usr/bin/prometheus", "/usr/bin/promtool"
MISSING = "no %s/%s (Debian package prometheus) on this machine" % (PROMETHEUS, PROMTOOL)
# No scrape jobs: the history is all the data (a test that scrapes passes its own config).
QUIET = {"global": {"scrape_interval": "1m"}}

needs_prometheus = pytest.mark.skipif(not (os.access(PROMETHEUS, os.X_OK) and os.access(PROMTOOL, os.X_OK)),
                                      reason=MISSING)


@dataclass
class Prometheus:
    url: str
    dir: Path

    def log_tail(self, size: int = 2000) -> str:
        path = self.dir / "prometheus.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def backfill(directory: Path, write: Callable[[TextIO], None]) -> Path:
    """OpenMetrics from `write` (gauge families, each series' samples in time order;
    the closing `# EOF` is added here) turned into TSDB blocks by promtool in
    directory/data, which is returned for running_prometheus(data=...)."""
    directory.mkdir(parents=True, exist_ok=True)
    source, data = directory / "history.om", directory / "data"
    with source.open("w") as stream:
        write(stream)
        stream.write("# EOF\n")
    done = subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", "-q", str(source), str(data)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, "promtool could not backfill %s: %s" % (source, (done.stdout + done.stderr)[-2000:])
    return data


@contextmanager
def running_prometheus(directory: Path, *, data: Path | None = None, config: dict[str, Any] | None = None,
                       timeout: float = 60.0) -> Iterator[Prometheus]:
    """Prometheus with its TSDB in `data` (default directory/data), 30 days' retention so
    that backfilled history stays, and `config` (default: no scrape jobs); stopped when
    the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prometheus.yml").write_text(json.dumps(config if config is not None else QUIET))
    port = free_port()
    server = Prometheus("http://127.0.0.1:%d" % port, directory)
    with (directory / "prometheus.log").open("w") as log:
        proc = subprocess.Popen([PROMETHEUS, "--config.file", str(directory / "prometheus.yml"),
                                 "--storage.tsdb.path", str(data or directory / "data"),
                                 "--storage.tsdb.retention.time", "30d", "--web.listen-address", "127.0.0.1:%d" % port],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(server.url + "/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError("prometheus exited %s: %s" % (proc.returncode, server.log_tail()))
            if time.monotonic() > deadline:
                raise RuntimeError("prometheus was not ready in %g s: %s" % (timeout, server.log_tail()))
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
