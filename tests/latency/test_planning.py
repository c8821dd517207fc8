"""The refinement of latency plans: the next goal from the attempts measured so far."""

import math

import pytest

from slimfx.latency.planning import next_goal


def test_the_first_goal_is_the_budget_and_one_miss_scales_it():
    assert next_goal([], 100.0) == 100.0
    # asked for 100 ms, the plan measured 125 ms: ask for 20 % less
    assert next_goal([(100.0, 125.0)], 100.0) == pytest.approx(80.0)


@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_a_power_law_is_solved_in_one_secant_step(power):
    def measured(goal):  # what the model measured when planned to ``goal``
        return 3.0 * goal**power

    budget = 200.0
    tried = [(g, measured(g)) for g in (40.0, 90.0)]
    goal = next_goal(tried, budget)
    assert measured(goal) == pytest.approx(budget, rel=1e-9)


def test_the_secant_uses_the_attempts_that_bracket_the_budget():
    # nearest the budget: (90, 102), above it; of the others, (80, 90) is below it and is
    # used although (100, 104) is nearer
    tried = [(100.0, 104.0), (90.0, 102.0), (80.0, 90.0)]

    def secant(other):
        slope = math.log(other[1] / 102.0) / math.log(other[0] / 90.0)
        return 90.0 * math.exp(math.log(100.0 / 102.0) / slope)

    assert next_goal(tried, 100.0) == pytest.approx(secant((80.0, 90.0)))
    assert secant((80.0, 90.0)) != pytest.approx(secant((100.0, 104.0)))


def test_attempts_that_disagree_in_direction_fall_back_to_scaling():
    # a larger goal measured faster (noise or a step between plans): no trend to follow
    tried = [(100.0, 110.0), (120.0, 105.0)]
    assert next_goal(tried, 100.0) == pytest.approx(120.0 * 100.0 / 105.0)
