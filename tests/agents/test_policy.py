from __future__ import annotations

import pytest
from edgelab.cluster_agent.policy import Decision, TargetInstances, make_policy
from edgelab.config import ConfigError, PolicyConfig


def policy(**kw: object) -> TargetInstances:
    return TargetInstances(PolicyConfig(**kw))  # type: ignore[arg-type]


def test_desired_is_ceil_of_prediction_over_per_instance_within_bounds() -> None:
    p = policy(per_instance=0.25, min_instances=1, max_instances=8)
    assert [p.desired(v) for v in (0.0, 0.1, 0.25, 0.26, 0.5, 0.95, 1.0, 5.0, -3.0)] == [1, 1, 1, 2, 2, 4, 4, 8, 1]
    p0 = policy(per_instance=0.5, min_instances=0, max_instances=3)
    assert [p0.desired(v) for v in (0.0, 0.4, 1.2, 9.0)] == [0, 1, 3, 3]


def test_scale_up_at_once_down_only_after_consecutive_lower() -> None:
    p = policy(per_instance=0.25, min_instances=1, max_instances=8, down_after=3)
    s = p.initial(1)
    d = p.decide(s, 0.95)
    assert (d.action, d.target, s.current) == ("scale_up", 4, 4)
    # Two lower decisions hold; a non-lower one resets the count.
    assert p.decide(s, 0.3).action == "hold"
    assert p.decide(s, 0.3).action == "hold"
    assert p.decide(s, 0.9).action == "hold"
    assert s.lower == []
    # Three in a row: down, to the highest of the three.
    assert [p.decide(s, v).action for v in (0.3, 0.7, 0.2)] == ["hold", "hold", "scale_down"]
    assert s.current == 3
    # Up again interrupts a pending down.
    p.decide(s, 0.1)
    d = p.decide(s, 1.9)
    assert (d.action, d.target) == ("scale_up", 8)
    assert s.lower == []


def test_up_margin_requires_excess_over_capacity() -> None:
    p = policy(per_instance=0.25, up_margin=0.1, down_after=1)
    s = p.initial(2)  # capacity 0.5
    assert p.decide(s, 0.55).action == "hold"  # only 0.05 over capacity
    d = p.decide(s, 0.65)
    assert (d.action, d.target) == ("scale_up", 3)


def test_initial_clamps_reported_instances() -> None:
    p = policy(min_instances=2, max_instances=4)
    assert p.initial(0).current == 2
    assert p.initial(7).current == 4


def test_registry() -> None:
    assert make_policy(PolicyConfig()).name == "target_instances"
    with pytest.raises(ConfigError, match=r"unknown policy\.name 'nope'"):
        make_policy(PolicyConfig(name="nope"))


@pytest.mark.parametrize("huge", [1e308, 1.7976931348623157e308, 1e300])
def test_huge_predictions_ask_for_max_instances(huge: float) -> None:
    p = policy(per_instance=0.25, min_instances=1, max_instances=8)
    assert p.desired(huge) == 8
    state = p.initial(2)
    assert p.decide(state, huge) == Decision("scale_up", 8, 8)


def test_cooldown_holds_after_a_scaling_action_then_decides_again() -> None:
    p = policy(per_instance=0.25, min_instances=1, max_instances=4, down_after=1, cooldown=15.0)
    s = p.initial(1)
    assert p.decide(s, 0.7, now=100.0).action == "scale_up" and s.current == 3
    # The new instances' start looks like load, then like none: both held.
    assert [p.decide(s, v, now=t).action for v, t in ((0.95, 105.0), (0.05, 110.0), (0.05, 114.9))] == [
        "hold", "hold", "hold"]
    assert s.current == 3 and s.lower == []
    d = p.decide(s, 0.05, now=115.0)
    assert (d.action, d.target) == ("scale_down", 1)
    assert p.decide(s, 0.9, now=120.0).action == "hold"  # the down's own cooldown
    assert p.decide(s, 0.9, now=130.0).action == "scale_up"


def test_no_clock_no_cooldown() -> None:
    p = policy(per_instance=0.25, down_after=1, cooldown=15.0)
    s = p.initial(1)
    assert [p.decide(s, v).action for v in (0.7, 0.05, 0.7)] == ["scale_up", "scale_down", "scale_up"]

