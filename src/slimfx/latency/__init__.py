"""Latency-targeted slimming: per-layer latency tables measured on the target, and a planner
that keeps the most |gamma| mass within a latency budget.

See :mod:`slimfx.latency.table` (what is measured and how it predicts),
:mod:`slimfx.passes.latency_plan` (the choice of widths) and
:mod:`slimfx.latency.planning` (measure, plan, check on the target).
"""

from slimfx.latency.layers import LayerShape, TimedLayer, timed_layers
from slimfx.latency.planning import plan_for_latency, target_of
from slimfx.latency.probes import default_step
from slimfx.latency.table import LatencyTable, LayerTable, ProbeCache, Target, measure_table

__all__ = [
    "LatencyTable",
    "LayerShape",
    "LayerTable",
    "ProbeCache",
    "Target",
    "TimedLayer",
    "default_step",
    "measure_table",
    "plan_for_latency",
    "target_of",
    "timed_layers",
]
