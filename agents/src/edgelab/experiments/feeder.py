"""edgelab-feeder: produce image frames to Kafka at a rate that follows a load profile.

The target rate is a fraction of --max_mbps (megabits/s, 10**6 bits) that follows the
profile (default: seed 004's day/night curve of 24 hourly fractions) interpolated over
--breakpoints steps per cycle; one cycle lasts --duration, and --n_cycles cycles run.

Frames are deterministic synthetic RGB images (binary PPM, --frame-size WxH, --images
distinct ones, --seed) or the files of --frames DIR sent as they are; nothing is
downloaded. Each record's key is "SOURCE-SEQUENCE" (spreads frames over partitions and
names the frame); its Kafka timestamp is the send time.

Rate control paces the bytes handed to Kafka against the integral of the target, so the
acknowledged rate stays within one frame of the target in every 10 s window up to the
broker's limit; past it the shortfall shows in the summary. A progress bar runs on a
terminal; the closing summary lists target and achieved rate per 10 s window, frames,
bytes and errors (--report FILE writes it as JSON).

Kafka settings are the cluster agent's: --bootstrap HOST:PORT[,...], --security-protocol,
--sasl-mechanism, --sasl-username, --sasl-password-file (the password is read from that
file, never taken on the command line), --ssl-cafile.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import cli
from ..config import SASL_MECHANISMS, SECURITY_PROTOCOLS, ConfigError
from .profile import DEFAULT_FRACTIONS, ProfileError, Schedule, load_fractions, schedule

log = logging.getLogger(__name__)

PROG = "edgelab-feeder"
WINDOW_S = 10.0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp", ".npy")
MAX_FRAMES_BYTES = 2 * 1024**3  # --frames DIR is held in memory
MAX_RECORD = 8 * 1024 * 1024  # the frames topic's max.message.bytes (docs/kafka.md)
MAX_IN_FLIGHT = 16 * 1024 * 1024  # unacknowledged bytes (kafka-python buffers 32 MiB)


# ---------------------------------------------------------------- frames
def synthetic_frame(width: int, height: int, index: int, seed: int) -> bytes:
    """A deterministic RGB image as binary PPM (P6): a colour gradient with a few
    rectangles, different for every (index, seed)."""
    rng = np.random.default_rng([seed, index])
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    phase = rng.uniform(0, 1, 3)
    image = np.empty((height, width, 3), dtype=np.uint8)
    for c in range(3):
        image[:, :, c] = ((x * phase[c] + y * (1 - phase[c])) % 256).astype(np.uint8)
    for _ in range(6):
        w, h = int(rng.integers(1, max(2, width // 3))), int(rng.integers(1, max(2, height // 3)))
        x0, y0 = int(rng.integers(0, max(1, width - w))), int(rng.integers(0, max(1, height - h)))
        image[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3, dtype=np.uint8)
    return b"P6\n%d %d\n255\n" % (width, height) + image.tobytes()


def synthetic_frames(width: int, height: int, count: int, seed: int) -> list[bytes]:
    return [synthetic_frame(width, height, i, seed) for i in range(count)]


def directory_frames(path: str) -> list[bytes]:
    """The image files of a directory (sorted by name), as their bytes."""
    root = Path(path)
    if not root.is_dir():
        raise cli.InputError("--frames %s is not a directory" % path)
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise cli.InputError("--frames %s holds no image files (%s)" % (path, " ".join(IMAGE_SUFFIXES)))
    total = sum(p.stat().st_size for p in files)
    if total > MAX_FRAMES_BYTES:
        raise cli.InputError("--frames %s holds %d bytes of images; at most %d are kept in memory"
                             % (path, total, MAX_FRAMES_BYTES))
    frames = []
    for p in files:
        data = p.read_bytes()
        if not data:
            raise cli.InputError("--frames %s: %s is empty" % (path, p.name))
        if len(data) > MAX_RECORD:
            raise cli.InputError("--frames %s: %s has %d bytes, more than a frames record may (%d)"
                                 % (path, p.name, len(data), MAX_RECORD))
        frames.append(data)
    return frames


# ---------------------------------------------------------------- pacing and accounting
class Cumulative:
    """Bytes the schedule asks for from the start to t, in O(1) per call."""

    def __init__(self, plan: Schedule) -> None:
        self.plan = plan
        edges = [0.0]
        for rate in plan.rates_bps:
            edges.append(edges[-1] + rate * plan.step_s)
        self.edges = edges
        self.cycle_bytes = edges[-1]

    def at(self, t: float) -> float:
        plan = self.plan
        t = min(max(t, 0.0), plan.total_s)
        cycles = min(int(t // plan.cycle_s), plan.n_cycles)
        inner = t - cycles * plan.cycle_s
        if cycles == plan.n_cycles:
            return cycles * self.cycle_bytes
        index = min(int(inner // plan.step_s), len(plan.rates_bps) - 1)
        return cycles * self.cycle_bytes + self.edges[index] + plan.rates_bps[index] * (inner - index * plan.step_s)


@dataclass
class Tally:
    """Acknowledged bytes and frames per 10 s window (kafka-python's I/O thread adds);
    acknowledgements after the run's end (while the last frames are flushed) count as
    late, never in a window."""

    start: float
    windows: int
    total_s: float
    acked_bytes: list[int] = field(default_factory=list)
    acked_frames: list[int] = field(default_factory=list)
    late_bytes: int = 0
    late_frames: int = 0
    settled_bytes: int = 0  # acknowledged or failed: no longer in flight
    errors: int = 0
    first_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.acked_bytes = [0] * self.windows
        self.acked_frames = [0] * self.windows

    def ack(self, size: int) -> None:
        elapsed = time.monotonic() - self.start
        with self.lock:
            self.settled_bytes += size
            if elapsed >= self.total_s:
                self.late_bytes += size
                self.late_frames += 1
                return
            index = min(max(int(elapsed // WINDOW_S), 0), self.windows - 1)
            self.acked_bytes[index] += size
            self.acked_frames[index] += 1

    def fail(self, size: int, exc: BaseException) -> None:
        with self.lock:
            self.settled_bytes += size
            self.errors += 1
            if not self.first_error:
                self.first_error = " ".join(str(exc).split())[:300] or type(exc).__name__


def window_report(plan: Schedule, tally: Tally) -> list[dict[str, Any]]:
    rows = []
    for i in range(tally.windows):
        a, b = i * WINDOW_S, min((i + 1) * WINDOW_S, plan.total_s)
        target = plan.bytes_between(a, b)
        achieved = tally.acked_bytes[i]
        seconds = b - a
        rows.append({
            "start_s": a, "seconds": seconds,
            "target_mbps": target * 8 / 1e6 / seconds, "achieved_mbps": achieved * 8 / 1e6 / seconds,
            "frames": tally.acked_frames[i],
            "error_pct": (achieved - target) / target * 100 if target > 0 else None,
        })
    return rows


def feed(plan: Schedule, frames: Sequence[bytes], producer: Any, *, source: str, progress: bool,
         flush_timeout_s: float = 60.0) -> dict[str, Any]:
    """Send frames (cycling through `frames`) at the schedule's rate; the summary."""
    from tqdm import tqdm

    budget = Cumulative(plan)
    windows = max(1, math.ceil(plan.total_s / WINDOW_S - 1e-9))
    started = time.time()  # wall clock of the schedule's zero, for the report's time axis
    start = time.monotonic()
    tally = Tally(start, windows, plan.total_s)
    credit = 0.0  # bytes handed to Kafka, for pacing
    sent_frames = sent_bytes = capped = 0
    seq = 0
    bar = tqdm(total=round(plan.total_s), unit="s", desc=PROG, disable=None if progress else True,
               file=sys.stderr, leave=False)
    shown = 0
    try:
        while True:
            now = time.monotonic() - start
            if now >= plan.total_s:
                break
            if int(now) > shown:
                bar.update(int(now) - shown)
                shown = int(now)
                bar.set_postfix_str("target %.1f Mbit/s" % (plan.rate_at(now) * 8 / 1e6), refresh=False)
            due = budget.at(now)
            rate = plan.rate_at(now)
            # Never owe more than one second of the current rate (a stalled broker must
            # not cause a burst afterwards) nor less than one frame.
            floor = due - max(rate, len(frames[seq % len(frames)]))
            if credit < floor:
                capped += 1
                credit = floor
            frame = frames[seq % len(frames)]
            # Back-pressure: at most one second of the current rate, at most
            # MAX_IN_FLIGHT bytes (at least two frames) unacknowledged, so a broker
            # past its limit slows the feeder instead of kafka-python's buffer
            # hiding it until the final flush.
            if sent_bytes - tally.settled_bytes > max(min(rate, MAX_IN_FLIGHT), 2 * len(frame)):
                time.sleep(0.001)
                continue
            if credit + len(frame) / 2 <= due:  # the frame's middle is due: half a frame early or late at most
                future = producer.send(b"%s-%d" % (source.encode(), seq), frame)
                size = len(frame)
                future.add_callback(lambda _meta, size=size: tally.ack(size))
                future.add_errback(lambda exc, size=size: tally.fail(size, exc))
                credit += size
                sent_frames += 1
                sent_bytes += size
                seq += 1
                continue
            # At a zero rate, wait for the next step.
            wait = (credit + len(frame) / 2 - due) / rate if rate > 0 else plan.step_s - now % plan.step_s
            time.sleep(min(max(wait, 0.0), 0.2, plan.total_s - now))
        producer.flush(timeout_s=flush_timeout_s)
    finally:
        bar.update(max(0, round(plan.total_s) - shown))
        bar.close()
    elapsed = time.monotonic() - start
    rows = window_report(plan, tally)
    errors = [abs(r["error_pct"]) for r in rows if r["error_pct"] is not None]
    in_time = sum(tally.acked_bytes)
    return {
        "source": source, "started": round(started, 3), "duration_s": plan.total_s, "elapsed_s": round(elapsed, 3),
        "frames_sent": sent_frames, "bytes_sent": sent_bytes,
        "frames_acked": sum(tally.acked_frames) + tally.late_frames, "bytes_acked": in_time + tally.late_bytes,
        "frames_acked_late": tally.late_frames, "bytes_acked_late": tally.late_bytes,
        "errors": tally.errors, "first_error": tally.first_error, "pacing_resets": capped,
        "target_mbps_mean": plan.bytes_between(0, plan.total_s) * 8 / 1e6 / plan.total_s,
        "achieved_mbps_mean": in_time * 8 / 1e6 / plan.total_s,
        "max_window_error_pct": max(errors) if errors else None,
        "windows_within_5pct": sum(1 for e in errors if e <= 5.0), "windows": len(rows),
        "window_s": WINDOW_S, "per_window": rows,
    }


def render_summary(summary: dict[str, Any]) -> str:
    lines = ["%-8s %8s %12s %14s %8s %8s" % ("window", "seconds", "target Mb/s", "achieved Mb/s", "error %",
                                              "frames")]
    for row in summary["per_window"]:
        error = "-" if row["error_pct"] is None else "%+.2f" % row["error_pct"]
        lines.append("%-8s %8.1f %12.2f %14.2f %8s %8d" % ("%ds" % row["start_s"], row["seconds"],
                                                           row["target_mbps"], row["achieved_mbps"], error,
                                                           row["frames"]))
    worst = summary["max_window_error_pct"]
    first = " (first: %s)" % summary["first_error"] if summary["first_error"] else ""
    lines.append("frames %d sent, %d acknowledged (%d after the end); bytes %d sent, %d acknowledged; errors %d%s" % (
        summary["frames_sent"], summary["frames_acked"], summary["frames_acked_late"], summary["bytes_sent"],
        summary["bytes_acked"], summary["errors"], first))
    lines.append("mean rate: target %.2f Mbit/s, achieved %.2f Mbit/s; %d of %d windows within 5 %%%s" % (
        summary["target_mbps_mean"], summary["achieved_mbps_mean"], summary["windows_within_5pct"],
        summary["windows"], "" if worst is None else " (worst %.2f %%)" % worst))
    return "\n".join(lines)


# ---------------------------------------------------------------- command line
DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(s|m|h|d)?\s*$")


def parse_duration(text: str) -> float:
    match = DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError("%r is not a duration (seconds, or a number with s, m, h or d)" % text)
    seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
    if seconds <= 0:
        raise argparse.ArgumentTypeError("duration must be > 0")
    return seconds


def parse_size(text: str) -> tuple[int, int]:
    match = re.match(r"^(\d+)x(\d+)$", text.strip())
    if not match or not (1 <= int(match.group(1)) <= 8192 and 1 <= int(match.group(2)) <= 8192):
        raise argparse.ArgumentTypeError("%r is not WIDTHxHEIGHT with sides from 1 to 8192" % text)
    return int(match.group(1)), int(match.group(2))


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text) from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError("must be > 0, got %s" % text)
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a whole number" % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1, got %s" % text)
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    load = parser.add_argument_group("load")
    load.add_argument("--max_mbps", type=positive_float, required=True,
                      help="rate at profile fraction 1.0, megabits/s (10**6 bits)")
    load.add_argument("--duration", type=parse_duration, required=True,
                      help="length of one cycle: seconds, or 90s, 3m, 2h")
    load.add_argument("--breakpoints", type=positive_int, default=24,
                      help="rate steps per cycle, interpolated from the profile (default 24)")
    load.add_argument("--n_cycles", type=positive_int, default=1, help="cycles to run (default 1)")
    load.add_argument("--profile", metavar="FILE",
                      help="YAML/JSON list of fractions of max_mbps over one cycle (default: seed 004's "
                           "24 hourly fractions)")
    frames = parser.add_argument_group("frames")
    frames.add_argument("--frames", metavar="DIR", help="send these image files instead of generated frames")
    frames.add_argument("--frame-size", type=parse_size, default=(640, 480), metavar="WxH",
                        help="generated frame size (default 640x480: 921,615 bytes as PPM)")
    frames.add_argument("--images", type=positive_int, default=8, help="distinct generated images (default 8)")
    frames.add_argument("--seed", type=int, default=4, help="seed of the generated images (default 4)")
    frames.add_argument("--source", default="feeder", help="source name in every record key (default feeder)")
    kafka = parser.add_argument_group("kafka")
    kafka.add_argument("--bootstrap", required=True, metavar="HOST:PORT[,...]", help="Kafka bootstrap servers")
    kafka.add_argument("--topic", default="edgelab.frames", help="topic (default edgelab.frames)")
    kafka.add_argument("--security-protocol", default="PLAINTEXT", choices=SECURITY_PROTOCOLS)
    kafka.add_argument("--sasl-mechanism", default="SCRAM-SHA-512", choices=SASL_MECHANISMS)
    kafka.add_argument("--sasl-username")
    kafka.add_argument("--sasl-password-file", metavar="FILE", help="file holding the SASL password")
    kafka.add_argument("--ssl-cafile", metavar="FILE", help="CA bundle for SSL and SASL_SSL")
    out = parser.add_argument_group("output")
    out.add_argument("--report", metavar="FILE", help="write the summary as JSON")
    out.add_argument("--no-progress", action="store_true", help="no progress bar (none off a terminal anyway)")


def kafka_settings(args: argparse.Namespace) -> Any:
    from ..kafka import KafkaSettings

    servers = [s.strip() for s in args.bootstrap.split(",") if s.strip()]
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("--bootstrap: %r is not HOST:PORT" % server[:80])
    if not servers:
        raise ConfigError("--bootstrap names no server")
    password = None
    if args.security_protocol.startswith("SASL_"):
        if not args.sasl_username or not args.sasl_password_file:
            raise ConfigError("--security-protocol %s needs --sasl-username and --sasl-password-file"
                              % args.security_protocol)
        try:
            password = Path(args.sasl_password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError("--sasl-password-file %s: %s" % (args.sasl_password_file, exc.strerror)) from None
    if args.ssl_cafile and not Path(args.ssl_cafile).is_file():
        raise ConfigError("--ssl-cafile %s: no such file" % args.ssl_cafile)
    return KafkaSettings(bootstrap=servers, security_protocol=args.security_protocol,
                         sasl_mechanism=args.sasl_mechanism if password is not None else None,
                         sasl_username=args.sasl_username if password is not None else None,
                         sasl_password=password, ssl_cafile=args.ssl_cafile, client_id=PROG)


def start(args: argparse.Namespace) -> None:
    try:
        fractions = load_fractions(args.profile) if args.profile else list(DEFAULT_FRACTIONS)
        plan = schedule(args.max_mbps, args.duration, args.breakpoints, args.n_cycles, fractions)
    except ProfileError as exc:
        raise cli.InputError(str(exc)) from None
    if args.frames:
        frames = directory_frames(args.frames)
    else:
        width, height = args.frame_size
        if width * height * 3 + 32 > MAX_RECORD:
            raise cli.InputError("--frame-size %dx%d makes frames larger than a frames record may (%d bytes)"
                                 % (width, height, MAX_RECORD))
        frames = synthetic_frames(width, height, args.images, args.seed)
    settings = kafka_settings(args)
    from kafka import KafkaProducer  # type: ignore[import-untyped, unused-ignore]
    from kafka.errors import KafkaError  # type: ignore[import-untyped, unused-ignore]

    from ..kafka import FrameProducer

    overrides: dict[str, Any] = {"max_block_ms": 10_000}
    if "bootstrap_timeout_ms" in KafkaProducer.DEFAULT_CONFIG:  # kafka-python 3: else 30 s to say "no broker"
        overrides["bootstrap_timeout_ms"] = 10_000
    try:
        producer = FrameProducer(settings, args.topic, acks=1, **overrides)
    except KafkaError as exc:
        raise ConfigError("kafka %s: %s" % (args.bootstrap, " ".join(str(exc).split()) or type(exc).__name__)
                          ) from None
    log.info("feeding %s: %d frames in rotation, %.0f s (%d cycle%s of %.0f s), peak %.2f Mbit/s",
             args.topic, len(frames), plan.total_s, plan.n_cycles, "" if plan.n_cycles == 1 else "s",
             plan.cycle_s, max(plan.rates_bps) * 8 / 1e6)
    try:
        summary = feed(plan, frames, producer, source=args.source, progress=not args.no_progress)
    finally:
        producer.close(timeout_s=10)
    summary.update(topic=args.topic, max_mbps=args.max_mbps, breakpoints=args.breakpoints,
                   n_cycles=args.n_cycles, profile=args.profile or "seed-004-default",
                   frame_source=args.frames or "synthetic %dx%d x%d seed %d" % (
                       args.frame_size[0], args.frame_size[1], args.images, args.seed))
    print(render_summary(summary))
    if args.report:
        cli.write_atomic(args.report, json.dumps(summary, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, description=__doc__, add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())
