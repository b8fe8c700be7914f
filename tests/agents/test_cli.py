"""edgelab.cli: the shared options, logging and exit codes of every edgelab tool,
run as a real process (a small tool written with cli.run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOOL = """\
import argparse, asyncio, logging, sys
from edgelab import cli
from edgelab.config import ConfigError

def add(parser):
    parser.add_argument("--mode", default="ok")

async def start(args):
    logging.getLogger("edgelab.tool").debug("debug line")
    logging.getLogger("kafka.net.connection").error("kafka reconnect noise")
    logging.getLogger("slixmpp.xmlstream").warning("slixmpp noise")
    logging.getLogger("edgelab.tool").info("config %s", args.config)
    if args.mode == "config":
        raise ConfigError("key x must be > 0, got -1")
    if args.mode == "bug":
        {}["missing"]
    if args.mode == "oserror":
        open("/nonexistent/edgelab-file")
    if args.mode == "sleep":
        print("ready", flush=True)
        await asyncio.sleep(30)

def plain(args):
    print("plain", args.config)

if __name__ == "__main__":
    body = plain if "--plain" in sys.argv else start
    argv = [a for a in sys.argv[1:] if a != "--plain"]
    sys.exit(cli.run("edgelab-tool", body, argv, default_config="/etc/edgelab/tool.yml", add_arguments=add))
"""


@pytest.fixture(scope="module")
def tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "tool.py"
    path.write_text(TOOL)
    return path


def run(tool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True, timeout=60)


def test_ok_runs_the_coroutine_and_logs_at_info(tool: Path) -> None:
    proc = run(tool)
    assert proc.returncode == 0, proc.stderr
    assert "INFO edgelab.tool: config /etc/edgelab/tool.yml" in proc.stderr and "debug line" not in proc.stderr
    assert "noise" not in proc.stderr  # the chatty libraries are quiet below DEBUG


def test_plain_function_and_config_option(tool: Path) -> None:
    proc = run(tool, "--plain", "--config", "/x.yml")
    assert (proc.returncode, proc.stdout) == (0, "plain /x.yml\n")


@pytest.mark.parametrize("flag", [["-v"], ["--verbose"], ["--log-level", "DEBUG"]])
def test_verbose_logs_debug(tool: Path, flag: list[str]) -> None:
    proc = run(tool, *flag)
    assert proc.returncode == 0 and "DEBUG edgelab.tool: debug line" in proc.stderr
    assert "kafka reconnect noise" in proc.stderr and "slixmpp noise" in proc.stderr


def test_config_error_is_one_line_and_exit_2(tool: Path) -> None:
    proc = run(tool, "--mode", "config")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == "edgelab-tool: config error: key x must be > 0, got -1"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("mode", "line"), [
    ("bug", "edgelab-tool: error: KeyError: 'missing'"),
    ("oserror", "edgelab-tool: error: /nonexistent/edgelab-file: No such file or directory"),
])
def test_unexpected_error_is_one_line_and_exit_1(tool: Path, mode: str, line: str) -> None:
    proc = run(tool, "--mode", mode)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == line and "Traceback" not in proc.stderr


def test_unexpected_error_with_verbose_logs_the_traceback(tool: Path) -> None:
    proc = run(tool, "--mode", "bug", "-v")
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert proc.stderr.splitlines()[-1] == "edgelab-tool: error: KeyError: 'missing'"


def test_bad_command_line_is_a_usage_error(tool: Path) -> None:
    proc = run(tool, "--log-level", "LOUD")
    assert proc.returncode == 2 and "invalid choice: 'LOUD'" in proc.stderr and "Traceback" not in proc.stderr


def default_sigint() -> None:
    # A background job of a non-interactive shell (make test's lanes) starts with
    # SIGINT ignored, and children inherit that: give the tool Ctrl-C's default, as
    # a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupt_exits_cleanly(tool: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(tool), "--mode", "sleep"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.splitlines()[-1] == "edgelab-tool: interrupted" and "Traceback" not in err
