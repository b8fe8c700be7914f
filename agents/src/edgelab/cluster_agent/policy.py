"""Scaling policies: a prediction for a worker -> the number of consumer instances it
should run. Pluggable: implement Policy and register it by name in POLICIES.

target_instances (default): desired = clamp(ceil(prediction / per_instance)) within
[min_instances, max_instances]. Up at once (when the prediction exceeds the current
capacity by more than up_margin), down only after `down_after` consecutive decisions
that all wanted fewer (then to the highest of those). For `cooldown` seconds after it
scaled a worker it holds: the samples of those seconds show the instances starting or
stopping (a consumer loading its model is a burst of CPU), not the load, and acting on
them would scale again at once (the flapping seen on the lab before this existed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from ..config import ConfigError, PolicyConfig


@dataclass
class PolicyState:
    """Per-worker state a policy keeps between decisions."""

    current: int
    lower: list[int] = field(default_factory=list)
    # When this policy last scaled the worker (the caller's clock), None: never.
    changed_at: float | None = None


@dataclass
class Decision:
    action: str  # "scale_up" | "scale_down" | "hold"
    target: int
    desired: int


class Policy(Protocol):
    name: str

    def initial(self, reported_instances: int) -> PolicyState: ...

    def decide(self, state: PolicyState, prediction: float, now: float | None = None) -> Decision: ...


class TargetInstances:
    name = "target_instances"

    def __init__(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg

    def clamp(self, n: int) -> int:
        return max(self.cfg.min_instances, min(self.cfg.max_instances, n))

    def desired(self, prediction: float) -> int:
        raw = max(0.0, prediction) / self.cfg.per_instance
        if not raw < self.cfg.max_instances:  # also inf (1e308 / 0.25) and nan: no ceil of those
            return self.clamp(self.cfg.max_instances)
        return self.clamp(math.ceil(raw - 1e-9))

    def initial(self, reported_instances: int) -> PolicyState:
        return PolicyState(current=self.clamp(reported_instances))

    def decide(self, state: PolicyState, prediction: float, now: float | None = None) -> Decision:
        """The decision for one prediction; `now` (seconds, any monotonic clock) enables
        the cooldown after a scaling action (without it there is none)."""
        want = self.desired(prediction)
        if now is not None and state.changed_at is not None and now - state.changed_at < self.cfg.cooldown:
            state.lower.clear()
            return Decision("hold", state.current, want)
        decision = self._decide(state, want, prediction)
        if decision.action != "hold":
            state.changed_at = now
        return decision

    def _decide(self, state: PolicyState, want: int, prediction: float) -> Decision:
        if want > state.current:
            state.lower.clear()
            if prediction - state.current * self.cfg.per_instance > self.cfg.up_margin:
                state.current = want
                return Decision("scale_up", want, want)
            return Decision("hold", state.current, want)
        if want < state.current:
            state.lower.append(want)
            if len(state.lower) >= self.cfg.down_after:
                state.current = max(state.lower)
                state.lower.clear()
                return Decision("scale_down", state.current, want)
            return Decision("hold", state.current, want)
        state.lower.clear()
        return Decision("hold", state.current, want)


POLICIES: dict[str, type[TargetInstances]] = {"target_instances": TargetInstances}


def make_policy(cfg: PolicyConfig) -> Policy:
    cls = POLICIES.get(cfg.name)
    if cls is None:
        raise ConfigError(f"unknown policy.name {cfg.name!r} (known: {', '.join(sorted(POLICIES))})")
    return cls(cfg)
