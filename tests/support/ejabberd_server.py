"""A real ejabberd on the loopback interface for the tests: `running_ejabberd()` (a
context manager, for fixtures of any scope and for benchmarks) and the session
fixture `ejabberd` built on it.

Started with Debian's `ejabberdctl` under a test node name, with its own config,
spool and log directories in a temporary directory, ports picked free on
127.0.0.1, and stopped (and its files removed) afterwards. Skips with a reason
when ejabberd is not installed (`apt-get install ejabberd`) or when the tests
cannot run it (ejabberdctl wants root or the ejabberd user).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

EJABBERDCTL = shutil.which("ejabberdctl") or "/usr/sbin/ejabberdctl"
DOMAIN = "edgelab.test"
ADMIN_PASSWORD = "it-" + os.urandom(12).hex()

CONFIG = """\
hosts: [{domain}]
loglevel: warning
auth_password_format: scram
certfiles: [{dir}/etc/server.crt, {dir}/etc/server.key]
listen:
  - port: {c2s_port}
    ip: 127.0.0.1
    module: ejabberd_c2s
    starttls_required: true
  - port: {api_port}
    ip: 127.0.0.1
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
acl:
  admin:
    user: admin@{domain}
api_permissions:
  "console commands":
    from: [ejabberd_ctl]
    who: all
    what: "*"
  "edgelab account management":
    from: [mod_http_api]
    who:
      access:
        allow:
          - acl: admin
    what: [registered_users, register, unregister, check_password, change_password]
modules:
  mod_http_api: {{}}
  mod_admin_extra: {{}}
  mod_roster: {{}}
"""

PIEFXIS = """<?xml version='1.0' encoding='UTF-8'?>
<server-data xmlns='urn:xmpp:pie:0'>
  <host jid='{domain}'>
    <user name='admin' password='{password}'/>
  </host>
</server-data>
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Ejabberd:
    dir: Path
    node: str
    api_port: int
    c2s_port: int
    domain: str = DOMAIN
    admin_password: str = ADMIN_PASSWORD

    @property
    def api_url(self):
        return "http://127.0.0.1:%d/api" % self.api_port

    def ctl(self, *args, check=True):
        cmd = [EJABBERDCTL, "-n", self.node, "-c", str(self.dir / "etc/ctl.cfg"),
               "-f", str(self.dir / "etc/ejabberd.yml"), "-s", str(self.dir / "spool"),
               "-l", str(self.dir / "log"), *args]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def stop(self):
        if self.ctl("status", check=False).returncode == 0:
            self.ctl("stop", check=False)
            self.ctl("stopped", check=False)


def _wait_port(port, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError("ejabberd did not open port %d in %ds" % (port, timeout))


@contextlib.contextmanager
def running_ejabberd() -> Iterator[Ejabberd]:
    """Start a server, yield its handle, stop it and remove its files."""
    if not os.path.exists(EJABBERDCTL):
        pytest.skip("ejabberd is not installed (apt-get install ejabberd)")
    try:
        user = pwd.getpwnam("ejabberd")
    except KeyError:
        pytest.skip("no ejabberd system user (is the Debian package installed?)")
    if os.geteuid() not in (0, user.pw_uid):
        pytest.skip("ejabberdctl runs only as root or as the ejabberd user")

    base = Path(tempfile.mkdtemp(prefix="edgelab-ejabberd-it-"))
    base.chmod(0o755)
    for sub in ("etc", "spool", "log"):
        (base / sub).mkdir()
    etc = base / "etc"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(etc / "server.key"), "-out", str(etc / "server.crt"), "-days", "2",
         "-subj", "/CN=" + DOMAIN, "-addext", "subjectAltName=DNS:" + DOMAIN],
        check=True, capture_output=True)
    # A node name of its own per start: ejabberdctl refuses to start a name that a
    # server stopped moments ago (tests/agents' own) may still hold in epmd.
    server = Ejabberd(dir=base, node="edgelab-it-%d-%s@localhost" % (os.getpid(), os.urandom(3).hex()),
                      api_port=free_port(), c2s_port=free_port())
    (etc / "ejabberd.yml").write_text(CONFIG.format(domain=DOMAIN, dir=base, c2s_port=server.c2s_port,
                                                   api_port=server.api_port))
    # Erlang distribution and epmd on loopback only.
    (etc / "ctl.cfg").write_text("ERL_EPMD_ADDRESS=127.0.0.1\nINET_DIST_INTERFACE=127.0.0.1\n")
    admin_file = base / "spool" / "admin.xml"
    admin_file.write_text(PIEFXIS.format(domain=DOMAIN, password=ADMIN_PASSWORD))
    admin_file.chmod(0o600)
    for path in [base, *base.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)

    epmd = shutil.which("epmd") or "/usr/bin/epmd"
    epmd_was_running = subprocess.run([epmd, "-names"], capture_output=True).returncode == 0
    try:
        started = server.ctl("start", check=False)
        if started.returncode != 0:
            raise RuntimeError(f"ejabberdctl start failed: {started.stdout} {started.stderr}")
        server.ctl("started")
        _wait_port(server.api_port)
        # The admin account, as the role creates it: from a file, no password on a command line.
        server.ctl("import_piefxis", str(admin_file))
        admin_file.unlink()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        if not epmd_was_running:  # the test started epmd (on loopback): stop it again
            subprocess.run([epmd, "-kill"], capture_output=True, env=dict(os.environ, ERL_EPMD_ADDRESS="127.0.0.1"))


@pytest.fixture(scope="session")
def ejabberd() -> Iterator[Ejabberd]:
    with running_ejabberd() as server:
        yield server
