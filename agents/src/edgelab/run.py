"""edgelab-run: run a playbook through ansible-runner, the way CI drives edgelab.

    edgelab-run PLAYBOOK -i INVENTORY [-e K=V | -e '{JSON}' | -e @FILE ...] [--limit PATTERN]
        [--tags TAGS] [--skip-tags TAGS] [--check] [--diff] [--private-data-dir BASE]
        [--keep-artifacts N]

Every run gets a fresh ansible-runner private data directory, a new directory under BASE
(default .cache/runner/ in the project), so nothing one run leaves there (env/cmdline,
env/passwords) reaches the next. The project is the nearest directory holding an
ansible.cfg above the playbook (else above the working directory); ansible-playbook runs
in it with ANSIBLE_CONFIG pointing at that ansible.cfg, so roles, modules and the fact
cache resolve as with ansible-playbook started from the repository root.

ansible-runner copies its process environment into artifacts/<id>/command and hands it
to status handlers, so the run happens from a scrubbed environment: only PATH (with this
Python's bin directory first), HOME, LANG, LC_*, TERM, SSH_AUTH_SOCK, VIRTUAL_ENV and the
ANSIBLE_* settings in ANSIBLE_SETTINGS; other ANSIBLE_* names are dropped with a note on
stderr naming them (never their values). -e values are recorded in the artifacts (they
are on this command's own command line too): pass settings with -e, never secrets.

Output: one line per task result (host, status ok/changed/failed/skipped/unreachable,
duration, task; a failure's message after a dash), the recap, then the artifacts' path.
Exit code: ansible-playbook's (0 ok, 2 a host failed, 4 a host unreachable or a playbook
error, ...), 130 when interrupted, 2 with one line on stderr for bad input (a missing
playbook or inventory, a malformed -e, a private data dir that cannot be created).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import cli

PROG = "edgelab-run"
DEFAULT_KEEP = 10
RUN_PREFIX = "run-"
# The private data dirs this tool creates (and is allowed to prune): run-<UTC time>-<random>.
RUN_DIR = re.compile(r"^run-\d{8}T\d{6}\.\d{6}Z-[A-Za-z0-9_]+$")
# The environment a run starts from: these names, LC_*, and the ANSIBLE_* settings below.
ENV_NAMES = frozenset({"PATH", "HOME", "LANG", "TERM", "SSH_AUTH_SOCK", "VIRTUAL_ENV"})
ENV_PREFIXES = ("LC_",)
# ANSIBLE_* settings the project uses from the environment (the Makefile's, CI's, and the
# ones benchmarks vary); none of them can hold a secret.
ANSIBLE_SETTINGS = frozenset({
    "ANSIBLE_FORCE_COLOR", "ANSIBLE_NOCOLOR", "ANSIBLE_LOCALHOST_WARNING",
    "ANSIBLE_INVENTORY_UNPARSED_WARNING", "ANSIBLE_PIPELINING", "ANSIBLE_SSH_ARGS",
    "ANSIBLE_GATHERING", "ANSIBLE_CALLBACKS_ENABLED", "ANSIBLE_FORKS",
    "ANSIBLE_HOST_KEY_CHECKING", "ANSIBLE_DISPLAY_SKIPPED_HOSTS", "ANSIBLE_VERBOSITY",
})
# An inline -e variable name (what Ansible accepts as a variable).
VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
}
RECAP_COUNTS = (("ok", "ok"), ("changed", "changed"), ("unreachable", "dark"), ("failed", "failures"),
                ("skipped", "skipped"), ("rescued", "rescued"), ("ignored", "ignored"))
MESSAGE_LIMIT = 240
# Colour codes in ansible-playbook's own output (it writes to a terminal under ansible-runner).
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Request:
    """One run, checked: absolute paths, the -e options as ansible-playbook arguments."""

    playbook: Path
    inventory: str
    project: Path | None
    base: Path
    keep: int
    extra_args: list[str] = field(default_factory=list)
    host_list: bool = False
    limit: str | None = None
    tags: str | None = None
    skip_tags: str | None = None


def find_project(playbook: Path, cwd: Path) -> Path | None:
    """The nearest directory holding an ansible.cfg above the playbook, else above cwd."""
    for start in (playbook.parent, cwd):
        for directory in (start, *start.parents):
            if (directory / "ansible.cfg").is_file():
                return directory
    return None


def extra_var_args(values: Sequence[str]) -> list[str]:
    """-e options as ansible-playbook arguments, in their order (a later one wins):
    KEY=VALUE (VALUE is text), a JSON object, or @FILE (absolute in the result)."""
    args: list[str] = []
    for value in values:
        if value.startswith("@"):
            path = Path(value[1:]).expanduser()
            if not path.is_file():
                raise cli.InputError(f"-e {value}: no such file")
            args += ["-e", f"@{path.resolve()}"]
        elif value.lstrip().startswith("{"):
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                raise cli.InputError(f"-e {value!r}: not a JSON object ({exc})") from None
            if not isinstance(parsed, dict):
                raise cli.InputError(f"-e {value!r}: not a JSON object")
            args += ["-e", json.dumps(parsed)]
        else:
            name, sep, text = value.partition("=")
            if not sep or not VAR_NAME.match(name):
                raise cli.InputError(f"-e {value!r}: expected KEY=VALUE, a JSON object or @FILE")
            args += ["-e", json.dumps({name: text})]
    return args


def host_key_checking(config: Path | None) -> str:
    """The host_key_checking of the project's ansible.cfg (Ansible's default: True).
    ansible-runner sets ANSIBLE_HOST_KEY_CHECKING=False unless the environment has it, which
    would override ansible.cfg, so the run's environment carries the project's own value."""
    if config is None:
        return "True"
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    try:
        parser.read(config, encoding="utf-8")
    except configparser.Error as exc:
        raise cli.InputError(f"{config}: {' '.join(str(exc).split())}") from None
    return parser.get("defaults", "host_key_checking", fallback="True").strip() or "True"


def scrubbed_environment(environ: Mapping[str, str], project: Path | None,
                         bindir: str) -> tuple[dict[str, str], list[str]]:
    """The environment a run starts from, and the ANSIBLE_* names left out of it."""
    env = {name: value for name, value in environ.items()
           if name in ENV_NAMES or name.startswith(ENV_PREFIXES) or name in ANSIBLE_SETTINGS}
    dropped = sorted(name for name in environ if name.startswith("ANSIBLE_") and name not in ANSIBLE_SETTINGS)
    path = [entry for entry in env.get("PATH", os.defpath).split(os.pathsep) if entry and entry != bindir]
    env["PATH"] = os.pathsep.join([bindir, *path])
    config = project / "ansible.cfg" if project is not None else None
    if config is not None:
        env["ANSIBLE_CONFIG"] = str(config)
    env.setdefault("ANSIBLE_HOST_KEY_CHECKING", host_key_checking(config))
    return env, dropped


@contextlib.contextmanager
def process_environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ is exactly env inside the block (ansible-runner seeds a run's environment
    from it) and what it was afterwards; SIGINT and SIGTERM handlers, which ansible-runner
    replaces for its cancel callback, are put back too."""
    saved = dict(os.environ)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for number, handler in handlers.items():
            if handler is not None:
                signal.signal(number, handler)


def new_private_dir(base: Path) -> Path:
    """A new, empty private data dir (mode 0700) under base."""
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        return Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{stamp}-", dir=base))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise cli.InputError(f"cannot create a private data dir under {base}: {reason}") from None


def prune(base: Path, keep: int, current: Path) -> list[Path]:
    """Remove all but the `keep` newest run directories under base (never `current`, never
    a directory this tool did not name); what was removed."""
    runs = sorted(entry for entry in base.iterdir() if entry.is_dir() and not entry.is_symlink()
                  and RUN_DIR.match(entry.name))
    removed = []
    for entry in runs[:max(0, len(runs) - keep)]:
        if entry != current:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _one_line(text: Any) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MESSAGE_LIMIT else line[:MESSAGE_LIMIT - 3] + "..."


def result_line(event: Mapping[str, Any]) -> str | None:
    """The progress line of a task result event; None for any other event."""
    status = RESULT_EVENTS.get(str(event.get("event")))
    if status is None:
        return None
    data: Mapping[str, Any] = event.get("event_data") or {}
    res = data.get("res")
    result: Mapping[str, Any] = res if isinstance(res, dict) else {}
    if status == "ok" and result.get("changed"):
        status = "changed"
    if status == "failed" and data.get("ignore_errors"):
        status = "failed (ignored)"
    task = str(data.get("task") or data.get("task_action") or "?")
    if data.get("role"):
        task = f"{data['role']} : {task}"
    duration = data.get("duration")
    seconds = f"{float(duration):.2f}s" if isinstance(duration, (int, float)) else "-"
    line = f"{data.get('host', '?')}  {status:<11} {seconds:>8}  {task}"
    if status in ("failed", "failed (ignored)", "unreachable") and result.get("msg"):
        line += f" - {_one_line(result['msg'])}"
    return line


def recap_lines(stats: Mapping[str, Any]) -> list[str]:
    """The play recap, one line per host, from a playbook_on_stats event's data."""
    hosts = sorted({host for key in ("processed", *(counter for _, counter in RECAP_COUNTS))
                    for host in (stats.get(key) or {})})
    lines = []
    for host in hosts:
        counts = " ".join(f"{label}={(stats.get(counter) or {}).get(host, 0)}" for label, counter in RECAP_COUNTS)
        lines.append(f"{host}  {counts}")
    return lines


def _plain(text: Any) -> str:
    return ANSI_ESCAPE.sub("", str(text or "")).replace("\r\n", "\n").strip()


class Progress:
    """ansible-runner's event handler: prints progress as the events come (a file's diff,
    with --diff, under its task's line); keeps the recap."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.stats: dict[str, Any] | None = None
        self.diffs: dict[tuple[str, str], list[str]] = {}

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event")
        data = event.get("event_data") or {}
        key = (str(data.get("host")), str(data.get("task_uuid")))
        line = result_line(event)
        if line is not None:
            print(line, file=self.out, flush=True)
            for diff in self.diffs.pop(key, []):
                print(textwrap.indent(diff, "    "), file=self.out, flush=True)
        elif kind == "runner_on_file_diff":
            # Ansible reports a file's diff before the task's result.
            text = _plain(event.get("stdout"))
            if text:
                self.diffs.setdefault(key, []).append(text)
        elif kind == "playbook_on_play_start":
            print(f"play: {data.get('name') or '?'}", file=self.out, flush=True)
        elif kind == "playbook_on_stats":
            self.stats = dict(data)
        elif kind in ("verbose", "error", "warning", "system_warning"):
            # What ansible-playbook says outside task results: errors (a playbook that does
            # not parse, a missing role) and warnings go to stderr so a CI log shows them.
            text = _plain(event.get("stdout"))
            if text and (kind != "verbose" or "ERROR" in text):
                print(text, file=self.err, flush=True)
        return True


def build_request(args: argparse.Namespace, cwd: Path) -> Request:
    playbook = Path(args.playbook).expanduser()
    if not playbook.is_file():
        raise cli.InputError(f"playbook {args.playbook}: no such file")
    playbook = playbook.resolve()
    inventory = args.inventory
    host_list = False
    if Path(inventory).expanduser().exists():
        inventory = str(Path(inventory).expanduser().resolve())
    elif "," in inventory:
        host_list = True
    else:
        raise cli.InputError(f"inventory {args.inventory}: no such file or directory")
    if args.keep_artifacts < 1:
        raise cli.InputError(f"--keep-artifacts {args.keep_artifacts}: must be at least 1")
    project = find_project(playbook, cwd)
    if args.private_data_dir:
        base = Path(args.private_data_dir).expanduser().absolute()
    else:
        base = (project or cwd) / ".cache" / "runner"
    return Request(playbook=playbook, inventory=inventory, host_list=host_list, project=project, base=base,
                   keep=args.keep_artifacts,
                   extra_args=extra_var_args(args.extra_vars or [])
                   + (["--check"] if args.check else []) + (["--diff"] if args.diff else []),
                   limit=args.limit, tags=args.tags, skip_tags=args.skip_tags)


def execute(request: Request, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the request through ansible-runner; ansible-playbook's exit code. Progress goes
    to out, notes and ansible-playbook's errors to err (default stdout and stderr)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        import ansible_runner
    except ImportError:
        raise cli.InputError("ansible-runner is not installed (pip install 'edgelab-agents[runner]')") from None
    bindir = os.path.dirname(sys.executable)
    env, dropped = scrubbed_environment(os.environ, request.project, bindir)
    if dropped:
        print(f"{PROG}: not passed to ansible-playbook (not on the allowlist): {', '.join(dropped)}",
              file=err, flush=True)
    if shutil.which("ansible-playbook", path=env["PATH"]) is None:
        raise cli.InputError("ansible-playbook not found on PATH")
    private = new_private_dir(request.base)
    progress = Progress(out, err)
    # ansible-runner would write a host list given as its inventory into a file as one host
    # name; on the command line ansible-playbook reads it as the list it is.
    cmdline = (["-i", request.inventory] if request.host_list else []) + request.extra_args
    with process_environment(env):
        runner = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(request.project or Path.cwd()),
            playbook=str(request.playbook),
            inventory=None if request.host_list else request.inventory,
            limit=request.limit,
            tags=request.tags,
            skip_tags=request.skip_tags,
            cmdline=" ".join(shlex.quote(arg) for arg in cmdline) or None,
            # The project's ansible.cfg keeps its own fact cache; runner's would put every
            # host's facts into the artifacts and start each run with none.
            fact_cache_type="project",
            quiet=True,
            event_handler=progress,
        )
    if progress.stats is not None:
        print("recap:", file=out)
        for line in recap_lines(progress.stats):
            print(f"  {line}", file=out)
    rc = runner.rc if isinstance(runner.rc, int) else 1
    if runner.status == "canceled":
        rc = 130
    print(f"{PROG}: rc={rc} status={runner.status} artifacts: {runner.config.artifact_dir}", file=out, flush=True)
    try:
        prune(request.base, request.keep, private)
    except OSError as exc:
        print(f"{PROG}: could not prune {request.base}: {exc.strerror or exc}", file=err)
    return rc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("playbook", metavar="PLAYBOOK", help="the playbook to run")
    parser.add_argument("-i", "--inventory", required=True, metavar="INVENTORY",
                        help="inventory file or directory (or a comma-separated host list)")
    parser.add_argument("-e", "--extra-vars", action="append", metavar="K=V|JSON|@FILE",
                        help="extra variables; repeatable, a later one wins; never secrets")
    parser.add_argument("--limit", metavar="PATTERN", help="limit to these hosts")
    parser.add_argument("--tags", metavar="TAGS", help="only tasks with these tags (comma-separated)")
    parser.add_argument("--skip-tags", metavar="TAGS", help="skip tasks with these tags (comma-separated)")
    parser.add_argument("--check", action="store_true", help="check mode: change nothing")
    parser.add_argument("--diff", action="store_true", help="show the differences of changed files")
    parser.add_argument("--private-data-dir", metavar="BASE",
                        help="where each run's private data dir is created (default .cache/runner in the project)")
    parser.add_argument("--keep-artifacts", type=int, default=DEFAULT_KEEP, metavar="N",
                        help=f"keep the N newest run directories under BASE (default {DEFAULT_KEEP})")


def main(argv: Sequence[str] | None = None) -> int:
    outcome: list[int] = []

    def start(args: argparse.Namespace) -> None:
        outcome.append(execute(build_request(args, Path.cwd())))

    code = cli.run(PROG, start, argv, description=__doc__, add_arguments=add_arguments)
    return outcome[0] if code == 0 and outcome else code


if __name__ == "__main__":
    sys.exit(main())
