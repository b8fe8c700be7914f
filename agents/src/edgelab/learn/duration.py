"""Durations on command lines and in requests: "30s", "5m", "1h", "250ms" or a plain
number of seconds."""

from __future__ import annotations

import math
import re

from .errors import LearnError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d)?\s*")


def parse_duration(text: str) -> float:
    """Seconds (> 0) from "30s", "5m", "1.5h", "250ms" or "30"."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise LearnError("%r is not a duration (examples: 30s, 5m, 1h, 250ms, 30)" % text)
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not seconds > 0 or not math.isfinite(seconds):
        raise LearnError("duration %r must be greater than zero" % text)
    return seconds
