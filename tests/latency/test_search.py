"""The search for a latency plan within the budget: next goals, confirmation, the kept attempt."""

import math

import pytest

from slimfx.latency.search import Attempt, next_goal, search_budget


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


def scripted(runs_by_attempt):
    """``make`` and ``measure`` whose n-th attempt measures the n-th list, run by run."""
    made = []

    def make(goal):
        made.append(Attempt(goal, goal))
        return made[-1]

    def measure(attempt):
        runs = runs_by_attempt[made.index(attempt)]
        return runs[len(attempt.runs_ms)]

    return make, measure


def test_an_attempt_within_the_tolerance_is_confirmed_in_a_second_run():
    make, measure = scripted([[103.0, 98.0]])
    best, attempts = search_budget(make, measure, 100.0, refine=3, tolerance=0.05)
    assert attempts == [best] and best.runs_ms == [103.0, 98.0]
    assert best.measured_ms == pytest.approx(math.sqrt(103.0 * 98.0))
    assert best.record()["runs_ms"] == [103.0, 98.0]


def test_a_lucky_run_that_the_confirmation_refutes_sends_the_search_on():
    # the first plan measured 104 ms once (within 5 %), then 125 ms: pooled it misses by
    # 14 %, so a second plan is made for a goal scaled by the pooled miss
    make, measure = scripted([[104.0, 125.0], [99.0, 101.0]])
    best, attempts = search_budget(make, measure, 100.0, refine=3, tolerance=0.05)
    assert len(attempts) == 2 and best is attempts[1]
    pooled = math.sqrt(104.0 * 125.0)
    assert attempts[1].goal_ms == pytest.approx(100.0 * 100.0 / pooled)
    # without the confirmation the first plan would have been kept
    assert attempts[0].miss(100.0) > 0.05 >= abs(104.0 / 100.0 - 1)


def test_after_the_last_re_plan_the_attempt_measured_closest_is_kept():
    make, measure = scripted([[130.0], [80.0], [112.0], [91.0]])
    best, attempts = search_budget(make, measure, 100.0, refine=3, tolerance=0.05)
    assert len(attempts) == 4 and all(len(a.runs_ms) == 1 for a in attempts)
    assert best is attempts[3]  # 9 % below, the nearest


def test_a_plan_that_cannot_reach_its_goal_ends_the_search():
    make, measure = scripted([[150.0]])
    best, attempts = search_budget(
        make, measure, 100.0, refine=3, tolerance=0.05, reachable=lambda a: False
    )
    assert attempts == [best] and best.runs_ms == [150.0]


def test_refine_zero_makes_one_plan_and_still_confirms_it():
    make, measure = scripted([[102.0, 120.0]])
    best, attempts = search_budget(make, measure, 100.0, refine=0, tolerance=0.05)
    assert attempts == [best] and len(best.runs_ms) == 2


def test_a_goal_tried_already_is_not_asked_for_again():
    # the smaller goal measured slower (the table is off there): scaling the nearest
    # attempt would ask for 25.8 again, so the boldest attempt is scaled instead
    budget = 28.25
    nearest = (28.25, 30.93)
    slower = (nearest[0] * budget / nearest[1], 35.57)
    goal = next_goal([nearest, slower], budget)
    assert goal == pytest.approx(slower[0] * budget / slower[1])
    assert goal < slower[0]


def test_a_search_whose_plans_measure_out_of_order_still_makes_new_plans():
    def make(goal):
        return Attempt(goal, goal)

    def measure(attempt):  # slower at 25-27 ms goals than at 28 (a step the table missed)
        return 30.9 if attempt.goal_ms > 27 else 35.6 if attempt.goal_ms > 23 else 27.0

    best, attempts = search_budget(make, measure, 28.25, refine=3, tolerance=0.05)
    goals = [a.goal_ms for a in attempts]
    assert len(set(goals)) == len(goals)  # no plan made twice
    assert best.miss(28.25) <= 0.05 and len(best.runs_ms) == 2
