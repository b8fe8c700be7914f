"""Scaling policies: a prediction for a worker -> the number of consumer instances it
should run. Pluggable: implement Policy and register it by name in POLICIES.

target_instances (default): desired = clamp(ceil(prediction / per_instance)) within
[min_instances, max_instances]. Up at once (when the prediction exceeds the current
capacity by more than up_margin), down only after `down_after` consecutive decisions
that all wanted fewer (then to the highest of those).
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


@dataclass
class Decision:
    action: str  # "scale_up" | "scale_down" | "hold"
    target: int
    desired: int


class Policy(Protocol):
    name: str

    def initial(self, reported_instances: int) -> PolicyState: ...

    def decide(self, state: PolicyState, prediction: float) -> Decision: ...


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

    def decide(self, state: PolicyState, prediction: float) -> Decision:
        want = self.desired(prediction)
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
