"""The search for a plan that measures within the budget: goals, attempts, confirmation.

A latency plan is made for a *goal* of the calibrated prediction and then timed on the
target. :func:`search_budget` repeats this until one measures within ``tolerance`` of the
budget:

1. The first goal is the budget itself.
2. After a miss, the next goal comes from the attempts so far (:func:`next_goal`: the goal
   scaled by the miss after one attempt, a secant in log-log through the attempts that
   bracket the budget after more; never a goal tried already).
3. An attempt that measures within the tolerance is timed once more in a fresh run before
   it is accepted, and its latency is the geometric mean of its runs. On a shared machine a
   single run of the same two models can move by 10 % and more; without a second run the
   search would stop at whichever plan happened to be measured near the budget, and the
   plan it keeps would measure further from it afterwards. A confirmation that misses
   sends the search on, with the pooled measurement.
4. After ``refine`` re-plans the attempt measured closest to the budget is kept.

Everything here is pure but for the two callables it is given: making an attempt for a
goal, and timing a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Attempt:
    """One plan made for one goal, and its measured latencies.

    Attributes
    ----------
    goal_ms : float
        What the calibrated prediction was asked for.
    predicted_ms : float
        The plan's prediction, in the terms of the budget.
    payload : object
        Whatever the caller's ``make`` returned with it (the plan, the module, ...).
    runs_ms : list of float
        The latency measured in each run of the model against the original.
    """

    goal_ms: float
    predicted_ms: float
    payload: Any = None
    runs_ms: list[float] = field(default_factory=list)

    @property
    def measured_ms(self) -> float:
        """Geometric mean of the runs (a speedup's noise is multiplicative)."""
        return math.exp(sum(math.log(ms) for ms in self.runs_ms) / len(self.runs_ms))

    def miss(self, budget_ms: float) -> float:
        """Relative distance of the measured latency from the budget."""
        return abs(self.measured_ms / budget_ms - 1)

    def record(self) -> dict[str, Any]:
        """The attempt as plain data (for ``SlimPlan.latency``)."""
        return {
            "goal_ms": self.goal_ms,
            "predicted_ms": self.predicted_ms,
            "measured_ms": self.measured_ms,
            "runs_ms": list(self.runs_ms),
        }


def search_budget(
    make: Callable[[float], Attempt],
    measure: Callable[[Attempt], float],
    budget_ms: float,
    *,
    refine: int,
    tolerance: float,
    reachable: Callable[[Attempt], bool] = lambda attempt: True,
) -> tuple[Attempt, list[Attempt]]:
    """Plan and measure until an attempt is confirmed within ``tolerance`` of the budget.

    Parameters
    ----------
    make : callable
        Goal (ms) → a new :class:`Attempt` (not yet measured).
    measure : callable
        Attempt → its latency (ms) in one fresh run against the original.
    budget_ms : float
    refine : int
        At most this many attempts after the first.
    tolerance : float
        Relative margin of the budget within which a confirmed attempt is accepted.
    reachable : callable, optional
        Whether an attempt's plan reached its goal in the prediction; a plan that did not
        is as slim as the widths allow, and the search stops there.

    Returns
    -------
    tuple
        ``(kept attempt, all attempts in order)``.

    Examples
    --------
    >>> def make(goal):
    ...     return Attempt(goal, goal)
    >>> best, tried = search_budget(make, lambda a: 1.2 * a.goal_ms, 100.0,
    ...                             refine=3, tolerance=0.05)
    >>> round(best.goal_ms, 2), len(tried), len(best.runs_ms)
    (83.33, 2, 2)
    """
    attempts: list[Attempt] = []
    goal = budget_ms
    while True:
        attempt = make(goal)
        attempt.runs_ms.append(measure(attempt))
        attempts.append(attempt)
        best = min(attempts, key=lambda a: a.miss(budget_ms))
        if not reachable(attempt):
            break
        if best.miss(budget_ms) <= tolerance and len(best.runs_ms) == 1:
            best.runs_ms.append(measure(best))  # confirm in a fresh run
            best = min(attempts, key=lambda a: a.miss(budget_ms))
        if best.miss(budget_ms) <= tolerance or len(attempts) > refine:
            break
        goal = next_goal([(a.goal_ms, a.measured_ms) for a in attempts], budget_ms)
    return best, attempts


#: A goal within this relative distance of one tried already would make the same plan again.
SAME_GOAL = 0.005


def next_goal(tried: list[tuple[float, float]], budget: float) -> float:
    """The goal (ms, in the calibrated prediction's terms) of the next attempt.

    ``tried`` holds ``(goal, measured ms)`` of the attempts so far. The first of these that
    was not tried already (within :data:`SAME_GOAL`) is returned:

    1. The measured latency taken as a power of the goal near the budget: a secant in
       log-log through the two attempts that bracket the budget (else the two nearest it),
       where the two agree in direction.
    2. The nearest goal scaled by budget over its measurement.
    3. The boldest goal on the nearest's side of the budget (the smallest when it measured
       over the budget, the largest when under) scaled the same way: where the table's
       prediction is off, a smaller goal can measure slower, and 2. would ask for a goal
       whose plan was measured already.
    """
    if not tried:
        return budget
    near = sorted(tried, key=lambda t: abs(math.log(t[1] / budget)))
    (g0, m0), others = near[0], near[1:]
    candidates = []
    if others:
        across = [t for t in others if (t[1] - budget) * (m0 - budget) < 0]
        g1, m1 = (across or others)[0]
        if g1 != g0 and m1 != m0:
            slope = math.log(m1 / m0) / math.log(g1 / g0)
            if 0.2 <= slope <= 5:  # else noise or a step in the plans, not a trend
                candidates.append(g0 * math.exp(math.log(budget / m0) / slope))
    candidates.append(g0 * budget / m0)
    over = m0 > budget
    side = [t for t in tried if (t[1] > budget) == over]
    bold_goal, bold_ms = min(side) if over else max(side)
    candidates.append(bold_goal * budget / bold_ms)
    for goal in candidates:
        if all(abs(goal / g - 1) > SAME_GOAL for g, _ in tried):
            return goal
    return candidates[-1]
