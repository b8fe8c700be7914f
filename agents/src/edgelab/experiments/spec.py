"""Experiment specs: experiments/<name>.yml, validated with messages that name the field.

    python -m edgelab.experiments.spec experiments/lab-smoke.yml [...]

prints one line per valid file and exits 0; on the first invalid file it prints one
line listing every problem of that file (`FILE: consumers.min: must be <= consumers.max
(4 > 3); kpi.sla: must be > 0`) and exits 2. docs/experiments.md, "Experiment specs",
describes every field; load_spec() returns the normalised spec (defaults filled in,
durations in seconds) that playbooks/experiment.yml and the tools take their flags from.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .. import cli
from .feeder import parse_duration
from .profile import DEFAULT_FRACTIONS

PROG = "edgelab-spec"
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
FRAME_SIZE = re.compile(r"^(\d+)x(\d+)$")
POLICIES = ("target_instances",)
KPIS = {  # name: (unit, whether the SLA is an upper bound)
    "end_to_end_latency_p95": ("s", True),
    "end_to_end_latency_p99": ("s", True),
    "inference_latency_p95": ("s", True),
    "processed_fraction": ("ratio", False),
    "consumer_lag": ("records", True),
}
TOP_LEVEL = ("name", "description", "duration", "cycles", "load", "frames", "consumers", "cluster_agent", "model",
             "kpi", "extract")


class SpecError(ValueError):
    """An invalid spec; the message lists every problem, each naming its field."""


class _Checker:
    """Collects problems; every getter returns a usable value (a default) even after one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, field: str, message: str) -> None:
        self.problems.append(f"{field}: {message}")

    def section(self, spec: dict[str, Any], key: str, known: Sequence[str], required: bool = True) -> dict[str, Any]:
        value = spec.get(key)
        if value is None:
            if required:
                self.fail(key, "is missing")
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping, got {type(value).__name__}")
            return {}
        for extra in sorted(set(value) - set(known)):
            self.fail(f"{key}.{extra}", f"is not a known field (known: {', '.join(known)})")
        return value

    def number(self, section: dict[str, Any], field: str, default: float | None, *, integer: bool = False,
               low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
        value = section.get(field.rsplit(".", 1)[-1], default)
        if value is None:
            self.fail(field, "is missing")
            return 0.0
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
            self.fail(field, f"must be {'a whole number' if integer else 'a number'}, got {value!r}")
            return 0.0
        if not math.isfinite(value):
            self.fail(field, f"must be finite, got {value}")
            return 0.0
        if low is not None and (value <= low if low_open else value < low):
            self.fail(field, f"must be {'>' if low_open else '>='} {low:g}, got {value}")
        if high is not None and value > high:
            self.fail(field, f"must be <= {high:g}, got {value}")
        return value

    def duration(self, section: dict[str, Any], field: str, default: str | None = None) -> float:
        value = section.get(field.rsplit(".", 1)[-1], default)
        if value is None:
            self.fail(field, "is missing")
            return 0.0
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(field, f"must be a duration (seconds, or a number with s, m, h or d), got {value!r}")
            return 0.0
        try:
            return parse_duration(str(value))
        except argparse.ArgumentTypeError as exc:
            self.fail(field, str(exc))
            return 0.0

    def choice(self, section: dict[str, Any], field: str, choices: Sequence[str], default: str | None) -> str:
        value = section.get(field.rsplit(".", 1)[-1], default)
        if value is None:
            self.fail(field, f"is missing (one of {', '.join(choices)})")
            return choices[0]
        if value not in choices:
            self.fail(field, f"must be one of {', '.join(choices)}, got {value!r}")
            return choices[0]
        return str(value)

    def text(self, section: dict[str, Any], field: str, default: str | None = None,
             check: Callable[[str], object] | None = None, rule: str = "") -> str:
        value = section.get(field.rsplit(".", 1)[-1], default)
        if not isinstance(value, str) or not value:
            self.fail(field, "is missing" if value is None else f"must be a non-empty string, got {value!r}")
            return ""
        if check and not check(value):
            self.fail(field, f"{rule}, got {value!r}")
        return value


def validate(spec: object, *, file_name: str | None = None) -> dict[str, Any]:
    """The normalised spec, or SpecError listing every problem."""
    c = _Checker()
    if not isinstance(spec, dict):
        raise SpecError(f"the spec must be a mapping of {', '.join(TOP_LEVEL)}")
    for extra in sorted(set(spec) - set(TOP_LEVEL)):
        c.fail(extra, f"is not a known field (known: {', '.join(TOP_LEVEL)})")
    out: dict[str, Any] = {}
    out["name"] = c.text(spec, "name", check=NAME.match, rule="must be lower-case letters, digits and '-'")
    if file_name and out["name"] and Path(file_name).stem != out["name"]:
        c.fail("name", f"must match the file name ({Path(file_name).stem}), got {out['name']!r}")
    out["description"] = spec.get("description", "")
    if not isinstance(out["description"], str):
        c.fail("description", "must be a string")
    out["duration_s"] = c.duration(spec, "duration")
    out["cycles"] = int(c.number(spec, "cycles", 1, integer=True, low=1))

    load = c.section(spec, "load", ("max_mbps", "breakpoints", "profile"))
    profile = load.get("profile", "default")
    if profile == "default":
        fractions = list(DEFAULT_FRACTIONS)
    elif isinstance(profile, list) and profile and all(
            isinstance(f, int | float) and not isinstance(f, bool) and 0 <= f <= 1 for f in profile):
        fractions = [float(f) for f in profile]
    else:
        c.fail("load.profile", "must be 'default' or a non-empty list of fractions from 0 to 1")
        fractions = list(DEFAULT_FRACTIONS)
    out["load"] = {"max_mbps": c.number(load, "load.max_mbps", None, low=0, low_open=True),
                   "breakpoints": int(c.number(load, "load.breakpoints", 24, integer=True, low=1)),
                   "profile": "default" if profile == "default" else fractions}
    if out["duration_s"] and out["load"]["breakpoints"] and out["duration_s"] / out["load"]["breakpoints"] < 1:
        c.fail("load.breakpoints", f"makes steps shorter than 1 s ({out['duration_s']:g} s / "
                                   f"{out['load']['breakpoints']})")

    frames = c.section(spec, "frames", ("source", "size", "images", "seed", "directory"))
    source = c.choice(frames, "frames.source", ("synthetic", "directory"), "synthetic")
    out["frames"] = {"source": source}
    if source == "synthetic":
        size = c.text(frames, "frames.size", "640x480", check=FRAME_SIZE.match, rule="must be WIDTHxHEIGHT")
        match = FRAME_SIZE.match(size)
        if match and not all(1 <= int(v) <= 8192 for v in match.groups()):
            c.fail("frames.size", f"sides must be from 1 to 8192, got {size!r}")
        out["frames"].update(size=size, images=int(c.number(frames, "frames.images", 8, integer=True, low=1)),
                             seed=int(c.number(frames, "frames.seed", 4, integer=True)))
        if "directory" in frames:
            c.fail("frames.directory", "is only for source: directory")
    else:
        out["frames"]["directory"] = c.text(frames, "frames.directory", check=lambda v: v.startswith("/"),
                                            rule="must be an absolute path on the control host")

    consumers = c.section(spec, "consumers", ("min", "max", "start", "threads"))
    before = len(c.problems)
    low = int(c.number(consumers, "consumers.min", 1, integer=True, low=0))
    high = int(c.number(consumers, "consumers.max", None, integer=True, low=1, high=12))
    first = int(c.number(consumers, "consumers.start", low or 1, integer=True, low=0))
    if len(c.problems) > before:  # the relations between them mean nothing then
        pass
    elif low > high:
        c.fail("consumers.min", f"must be <= consumers.max ({low} > {high})")
    elif not low <= first <= high:
        c.fail("consumers.start", f"must be from consumers.min to consumers.max ({low}..{high}), got {first}")
    out["consumers"] = {"min": low, "max": high, "start": first,
                        "threads": int(c.number(consumers, "consumers.threads", 1, integer=True, low=1))}

    agent = c.section(spec, "cluster_agent", ("policy", "per_instance", "down_after", "up_margin", "cooldown"))
    out["cluster_agent"] = {
        "policy": c.choice(agent, "cluster_agent.policy", POLICIES, "target_instances"),
        "per_instance": c.number(agent, "cluster_agent.per_instance", 0.25, low=0, low_open=True, high=1),
        "down_after": int(c.number(agent, "cluster_agent.down_after", 3, integer=True, low=1)),
        "up_margin": c.number(agent, "cluster_agent.up_margin", 0.0, low=0, high=1),
        "cooldown": c.number(agent, "cluster_agent.cooldown", 15, low=0, high=3600),
    }

    model = c.section(spec, "model", ("source", "path", "exp_id", "imgsz", "conf", "iou"))
    model_source = c.choice(model, "model.source", ("lab", "path", "store"), "lab")
    out["model"] = {"source": model_source,
                    "imgsz": int(c.number(model, "model.imgsz", 640, integer=True, low=32, high=2048)),
                    "conf": c.number(model, "model.conf", 0.25, low=0, high=1),
                    "iou": c.number(model, "model.iou", 0.45, low=0, high=1)}
    if out["model"]["imgsz"] % 32:
        c.fail("model.imgsz", f"must be a multiple of 32, got {out['model']['imgsz']}")
    if model_source == "path":
        out["model"]["path"] = c.text(model, "model.path", check=lambda v: v.endswith(".onnx") and v.startswith("/"),
                                      rule="must be an absolute path to an .onnx file on the nodes")
    elif model_source == "store":
        out["model"]["exp_id"] = c.text(model, "model.exp_id",
                                        check=re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$").match,
                                        rule="must be 1-64 letters, digits, '_', '.', '-'")
    for key in ("path", "exp_id"):
        if key in model and key not in out["model"]:
            c.fail(f"model.{key}", f"does not go with source: {model_source}")

    kpi = c.section(spec, "kpi", ("name", "sla", "percentile_window"))
    kpi_name = c.choice(kpi, "kpi.name", tuple(KPIS), None)
    unit, upper = KPIS[kpi_name]
    sla = c.number(kpi, "kpi.sla", None, low=0, low_open=True, high=1 if unit == "ratio" else None)
    out["kpi"] = {"name": kpi_name, "sla": sla, "unit": unit, "bound": "upper" if upper else "lower",
                  "window_s": c.duration(kpi, "kpi.percentile_window", "60s")}

    extract = c.section(spec, "extract", ("sampling", "segment_size", "selectors", "format", "n_threads"), False)
    selectors = extract.get("selectors", [])
    if not isinstance(selectors, list) or not all(isinstance(s, str) and s.strip() for s in selectors):
        c.fail("extract.selectors", "must be a list of PromQL series selectors (empty: every series)")
        selectors = []
    out["extract"] = {
        "sampling": c.number(extract, "extract.sampling", 5, low=0, low_open=True),
        "segment_size": int(c.number(extract, "extract.segment_size", 2000, integer=True, low=1, high=11000)),
        "n_threads": int(c.number(extract, "extract.n_threads", 4, integer=True, low=1, high=64)),
        "format": c.choice(extract, "extract.format", ("parquet", "csv"), "parquet"),
        "selectors": selectors,
    }
    if c.problems:
        raise SpecError("; ".join(c.problems))
    return out


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read and validate one spec file; SpecError names the file and every bad field."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not YAML: {' '.join(str(exc).split())[:200]}") from None
    try:
        return validate(data, file_name=str(path))
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="experiment specs to check")


def start(args: argparse.Namespace) -> None:
    for path in args.files:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            raise cli.InputError(str(exc)) from None
        total = spec["duration_s"] * spec["cycles"]
        print(f"{path}: ok ({spec['name']}: {total:g} s, up to {spec['load']['max_mbps']:g} Mbit/s, "
              f"{spec['consumers']['min']}-{spec['consumers']['max']} consumers, model {spec['model']['source']}, "
              f"{spec['kpi']['name']} {'<=' if spec['kpi']['bound'] == 'upper' else '>='} {spec['kpi']['sla']:g})")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, description=__doc__, add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())
