"""The feeder's load profile: a day/night curve of fractions of the maximum rate.

A profile is a list of fractions in [0, 1] spread evenly over one cycle (the default
has 24, one per hour of a day). `breakpoints` evenly spaced points of the cycle take
their fraction by linear interpolation between the profile's points (the last point
wraps to the first, as midnight follows 23h); the rate holds each breakpoint's value
for cycle_seconds / breakpoints, and the cycle repeats n_cycles times.

DEFAULT_FRACTIONS follows what seed 004's feeder does (from its description; no code
of it is used): about 0.03 of max_mbps at night rising to 0.97 at 17h. The values in
between are edgelab's own smooth day curve through those two facts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_FRACTIONS: tuple[float, ...] = (
    0.05, 0.04, 0.03, 0.03, 0.03, 0.05,   # 00h-05h: night
    0.10, 0.20, 0.35, 0.50, 0.60, 0.66,   # 06h-11h: morning ramp
    0.70, 0.72, 0.76, 0.84, 0.92, 0.97,   # 12h-17h: afternoon to the 17h peak
    0.90, 0.75, 0.55, 0.35, 0.18, 0.09,   # 18h-23h: evening fall
)


class ProfileError(ValueError):
    """A profile or its parameters that cannot be used (the message names the field)."""


@dataclass(frozen=True)
class Schedule:
    """Target rates over time: `rates_bps[i]` bytes/s from i * step_s for step_s seconds,
    cycle after cycle."""

    rates_bps: tuple[float, ...]
    step_s: float
    n_cycles: int

    @property
    def cycle_s(self) -> float:
        return self.step_s * len(self.rates_bps)

    @property
    def total_s(self) -> float:
        return self.cycle_s * self.n_cycles

    def rate_at(self, t: float) -> float:
        """Target bytes/s at t seconds after the start (0 outside the run)."""
        if t < 0 or t >= self.total_s:
            return 0.0
        index = int((t % self.cycle_s) // self.step_s)
        return self.rates_bps[min(index, len(self.rates_bps) - 1)]

    def bytes_between(self, a: float, b: float) -> float:
        """Bytes the target asks for between a and b seconds after the start (the
        integral of rate_at, exact for the piecewise-constant schedule)."""
        a, b = max(a, 0.0), min(b, self.total_s)
        if b <= a:
            return 0.0
        total = 0.0
        t = a
        while t < b:
            edge = (math.floor(t / self.step_s + 1e-9) + 1) * self.step_s
            end = min(edge, b)
            total += self.rate_at(t) * (end - t)
            t = end
        return total


def interpolate(fractions: Sequence[float], breakpoints: int) -> list[float]:
    """`breakpoints` evenly spaced samples of the cyclic piecewise-linear curve through
    `fractions` (point k of the curve sits at k / len(fractions) of the cycle)."""
    if breakpoints < 1:
        raise ProfileError("breakpoints must be >= 1, got %d" % breakpoints)
    n = len(fractions)
    out = []
    for i in range(breakpoints):
        position = i * n / breakpoints
        k = math.floor(position + 1e-12) % n
        weight = position - math.floor(position + 1e-12)
        if weight < 1e-12:
            weight = 0.0
        out.append(fractions[k] * (1.0 - weight) + fractions[(k + 1) % n] * weight)
    return out


def check_fractions(values: object, source: str) -> list[float]:
    if not isinstance(values, list) or not values:
        raise ProfileError("%s: a profile is a non-empty list of fractions of max_mbps" % source)
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProfileError("%s: fraction %d is %r, not a number" % (source, i, value))
        if not 0.0 <= value <= 1.0:
            raise ProfileError("%s: fraction %d is %g, outside [0, 1]" % (source, i, value))
        out.append(float(value))
    return out


def load_fractions(path: str) -> list[float]:
    """A profile file: YAML or JSON holding a list of fractions, or a mapping whose
    `fractions` key holds it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError("--profile %s: %s" % (path, exc.strerror or exc)) from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ProfileError("--profile %s: not YAML/JSON: %s" % (path, " ".join(str(exc).split())[:200])) from None
    if isinstance(data, dict):
        unknown = set(data) - {"fractions", "description"}
        if unknown:
            raise ProfileError("--profile %s: unknown keys %s (allowed: fractions, description)"
                               % (path, ", ".join(sorted(map(str, unknown)))))
        data = data.get("fractions")
    return check_fractions(data, "--profile %s" % path)


def schedule(max_mbps: float, duration_s: float, breakpoints: int, n_cycles: int,
             fractions: Sequence[float] = DEFAULT_FRACTIONS) -> Schedule:
    """The target schedule: max_mbps megabits/s (10**6 bits) at fraction 1.0, one cycle
    of duration_s seconds cut into `breakpoints` steps, repeated n_cycles times."""
    if not (math.isfinite(max_mbps) and max_mbps > 0):
        raise ProfileError("max_mbps must be > 0, got %g" % max_mbps)
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ProfileError("duration must be > 0 seconds, got %g" % duration_s)
    if n_cycles < 1:
        raise ProfileError("n_cycles must be >= 1, got %d" % n_cycles)
    points = interpolate(check_fractions(list(fractions), "profile"), breakpoints)
    peak_bps = max_mbps * 1e6 / 8.0
    return Schedule(tuple(peak_bps * f for f in points), duration_s / breakpoints, n_cycles)
