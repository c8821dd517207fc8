"""The graph passes of slimfx, one module each, run in order:

trace → analyze → propagate_constants → plan → rewrite → verify.

Each pass is a function that takes the previous pass' value and returns a new one; only
``rewrite`` builds modules, and no pass modifies its input. :mod:`passes.walk` is the node
walk they share; :mod:`passes.shapes` records shapes for the trace.
"""

from slimfx.passes.analyze import analyze
from slimfx.passes.constant_propagation import propagate, propagate_constants
from slimfx.passes.plan import cuttable_groups, plan
from slimfx.passes.rewrite import rewrite
from slimfx.passes.trace import TraceNotes, trace
from slimfx.passes.verify import masked_reference, masked_state, verify

__all__ = [
    "TraceNotes",
    "analyze",
    "cuttable_groups",
    "masked_reference",
    "masked_state",
    "plan",
    "propagate",
    "propagate_constants",
    "rewrite",
    "trace",
    "verify",
]
