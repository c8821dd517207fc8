"""The graph passes of slimfx, one module each, run in order:

trace → analyze → plan (with constants) → rewrite → verify.

Each pass is a function that takes the previous pass' value and returns a new one; only
``rewrite`` builds modules, and no pass modifies its input.
"""

from slimfx.passes.analyze import analyze
from slimfx.passes.constant_propagation import propagate
from slimfx.passes.plan import GroupPlan, SlimPlan, plan
from slimfx.passes.rewrite import rewrite
from slimfx.passes.trace import TraceNotes, trace
from slimfx.passes.verify import masked_reference, masked_state, verify

__all__ = [
    "GroupPlan",
    "SlimPlan",
    "TraceNotes",
    "analyze",
    "masked_reference",
    "masked_state",
    "plan",
    "propagate",
    "rewrite",
    "trace",
    "verify",
]
