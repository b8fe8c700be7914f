"""The command-line skeleton every edgelab tool shares: options, logging, exit codes.

A tool's entry point is one call:

    def main(argv: Sequence[str] | None = None) -> int:
        return cli.run("edgelab-node-agent", start, argv, default_config=NODE_CONFIG, description=__doc__)

    async def start(args: argparse.Namespace) -> None:   # or a plain function
        cfg = load_node_config(args.config)
        ...

run() parses the command line, sets up logging, calls start(args) (running it with
asyncio.run when it returns a coroutine) and turns what happens into an exit code
and at most one line on stderr, never a traceback:

    0    start returned
    2    ConfigError (bad settings, a missing file, a busy port)  "PROG: config error: MSG"
         InputError (a data file or argument the tool cannot use)  "PROG: bad input: MSG"
         or a bad command line (argparse's usage message)
    1    any other exception                                       "PROG: error: MSG"
    130  KeyboardInterrupt (Ctrl-C before the tool set its own handlers)  "PROG: interrupted"

Options every tool gets:
    --config PATH          only when default_config is given; YAML settings
    --log-level LEVEL      DEBUG, INFO (default), WARNING, ERROR
    -v, --verbose          same as --log-level DEBUG; also logs the traceback of an
                           unexpected error (still one line on stderr without it)
add_arguments(parser) adds a tool's own options.

Logging goes to stderr as "TIME LEVEL LOGGER: MESSAGE" (journald keeps it). Unless
the level is DEBUG, slixmpp logs only errors and kafka-python nothing below CRITICAL
(it logs every failed reconnect as an error; its callers report failures themselves,
rate-limited).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
QUIET_LIBRARIES = {"slixmpp": logging.ERROR, "kafka": logging.CRITICAL}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"



class InputError(Exception):
    """Input a tool cannot use (a malformed dataset, an unknown column, K out of
    range): reported as one line, exit code 2."""


Start = Callable[[argparse.Namespace], Any]

log = logging.getLogger(__name__)


def build_parser(prog: str, *, default_config: str | None = None, description: str | None = None,
                 add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.ArgumentParser:
    """The shared options (--config, --log-level, -v) plus the tool's own."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if default_config is not None:
        parser.add_argument("--config", default=default_config, metavar="PATH",
                            help=f"YAML settings (default {default_config})")
    parser.add_argument("--log-level", default="INFO", choices=LEVELS, help="log level (default INFO)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    if add_arguments is not None:
        add_arguments(parser)
    return parser


def setup_logging(level: str) -> None:
    """Log lines to stderr at `level`; the chatty libraries quieter unless DEBUG."""
    logging.basicConfig(level=level, stream=sys.stderr, format=FORMAT, force=True)
    for name, quiet in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(logging.NOTSET if level == "DEBUG" else quiet)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return text or type(exc).__name__


def run(prog: str, start: Start, argv: Sequence[str] | None = None, *, default_config: str | None = None,
        description: str | None = None,
        add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Parse argv, set up logging, call start(args); the exit code (see the module doc)."""
    parser = build_parser(prog, default_config=default_config, description=description,
                          add_arguments=add_arguments)
    args = parser.parse_args(argv)  # a bad command line: usage on stderr, SystemExit(2)
    if args.verbose:
        args.log_level = "DEBUG"
    setup_logging(args.log_level)
    try:
        result = start(args)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    except ConfigError as exc:
        print(f"{prog}: config error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"{prog}: bad input: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        detail = _one_line(exc)
        name = type(exc).__name__
        print(f"{prog}: error: {detail}" if isinstance(exc, OSError) else f"{prog}: error: {name}: {detail}",
              file=sys.stderr)
        return 1
    return 0


def write_atomic(path: str, text: str) -> None:
    """Write text to path through a temporary file in the same directory, so a reader
    never sees half a file (a tool's report, predictions, selections)."""
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=".%s." % target.name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
