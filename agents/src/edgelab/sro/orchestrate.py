"""Acting on forecasts: a flavor change through the IMA when the forecast KPI crosses
the SLA, with hysteresis.

A slice's policy (config `orchestration.<sliceId>`) has an upper and a lower
threshold, `consecutive` (how many forecasts in a row must be beyond a threshold)
and `cooldown` (seconds after an action during which no other is taken), and its
flavors from the smallest to the largest. Above `upper` for `consecutive` forecasts:
one flavor up; below `lower` as long: one flavor down. NECOS's rule (upgrade when one
forecast of R_99 reaches 180 ms, downgrade at 30 ms) is upper 180, lower 30,
consecutive 1, cooldown 0.

Each time the rule fires a Decision is recorded: the forecast, the threshold crossed,
the action (upgrade, downgrade or none) and its result (the IMA's answer, or why no
call was made: cooldown, already the largest or smallest flavor). The streak starts
again after every decision.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .config import SlicePolicy

log = logging.getLogger(__name__)

Act = Callable[[str, str], tuple[bool, str]]


@dataclass
class Decision:
    time: float  # when it was taken (epoch seconds)
    slice: str
    forecast: float
    for_timestamp: float  # the time the forecast is for
    threshold: float
    crossed: str  # "upper" or "lower"
    from_flavor: str
    to_flavor: str
    action: str  # "upgrade", "downgrade" or "none"
    result: str
    ok: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def ima_elasticity(ima_url: str, timeout: float = 30.0) -> Act:
    """The IMA's flavor change: POST {ima_url}/elasticity/slice/{sliceId}/flavor/{flavorId}.
    Returns (succeeded, what the IMA answered)."""

    def act(slice_id: str, flavor: str) -> tuple[bool, str]:
        url = "%s/elasticity/slice/%s/flavor/%s" % (ima_url, urllib.parse.quote(slice_id, safe=""),
                                                    urllib.parse.quote(flavor, safe=""))
        request = urllib.request.Request(url, data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read(2000).decode("utf-8", "replace")
                return True, "IMA %d %s" % (response.status, " ".join(body.split())[:300])
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read(2000).decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = str(json.loads(detail).get("detail", detail))
            return False, "IMA %d %s" % (exc.code, " ".join(detail.split())[:300])
        except OSError as exc:
            return False, "IMA unreachable: %s" % getattr(exc, "reason", exc)

    return act


class Orchestrator:
    """The hysteresis state of one slice. observe() is called with every forecast."""

    def __init__(self, slice_id: str, policy: SlicePolicy, flavor: str, act: Act,
                 record: Callable[[Decision], None], clock: Callable[[], float] = time.monotonic) -> None:
        if flavor not in policy.flavors:
            raise ValueError("flavor %r is not in the slice's orchestration flavors (%s)"
                             % (flavor, ", ".join(policy.flavors)))
        self.slice_id = slice_id
        self.policy = policy
        self.flavor = flavor
        self._act = act
        self._record = record
        self._clock = clock
        self._above = 0
        self._below = 0
        self._last_action: float | None = None
        self._lock = threading.Lock()

    def observe(self, forecast: float, for_timestamp: float) -> Decision | None:
        with self._lock:
            p = self.policy
            if forecast > p.upper:
                self._above, self._below = self._above + 1, 0
            elif forecast < p.lower:
                self._above, self._below = 0, self._below + 1
            else:
                self._above = self._below = 0
                return None
            if max(self._above, self._below) < p.consecutive:
                return None
            up = self._above >= p.consecutive
            self._above = self._below = 0
            index = p.flavors.index(self.flavor)
            target_index = index + 1 if up else index - 1
            crossed, threshold = ("upper", p.upper) if up else ("lower", p.lower)
            now = self._clock()
            decision = Decision(time.time(), self.slice_id, forecast, for_timestamp, threshold, crossed,
                                self.flavor, self.flavor, "none", "", True)
            if not 0 <= target_index < len(p.flavors):
                decision.result = "already the %s flavor" % ("largest" if up else "smallest")
            elif self._last_action is not None and now - self._last_action < p.cooldown:
                decision.result = "cooldown: %.0fs left" % (p.cooldown - (now - self._last_action))
            else:
                target = p.flavors[target_index]
                decision.action, decision.to_flavor = ("upgrade" if up else "downgrade"), target
                decision.ok, decision.result = self._act(self.slice_id, target)
                self._last_action = now
                if decision.ok:
                    self.flavor = target
            log.info("slice %s: forecast %.4g %s threshold %g: %s %s -> %s: %s", self.slice_id, forecast,
                     "above" if up else "below", threshold, decision.action, decision.from_flavor,
                     decision.to_flavor, decision.result)
            self._record(decision)
            return decision
