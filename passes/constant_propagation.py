"""Pass 3a — constants: what each pruned channel carries, at every node.

A channel whose BatchNorm scaling factor is zeroed outputs a constant. This pass follows
those constants through the graph (ReLU, pooling, dropout, residual adds …) with the rules'
``propagate`` methods, for every channel at once, in one of three modes per group:

``BETA``
    the BatchNorm outputs its ``beta`` (pruned gammas zeroed, betas kept — compensation);
``ZERO``
    the BatchNorm outputs 0 (gammas and betas zeroed — the reference code's masking);
``CARRIER``
    the BatchNorm outputs 1 (the value of a carrier channel, see :mod:`passes.plan`).

The result tells the plan which groups can be pruned exactly, and the rewrite what to fold
into each consumer.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.fx as fx

import slimfx.rules  # noqa: F401
from slimfx.ir.channel_graph import ChannelGraph
from slimfx.ir.layout import UNTRACKED, Layout
from slimfx.numerics import float64_array
from slimfx.passes.trace import fetch_attr
from slimfx.rules.graph_io import GetAttr, Output, Placeholder, Unknown
from slimfx.rules.registry import rule_for
from slimfx.ir.values import PrunedValues

BETA = 0
ZERO = 1
CARRIER = 2

MODE_NAMES = {BETA: "compensate", ZERO: "zero", CARRIER: "carrier"}

_shared_tables: contextvars.ContextVar[tuple[ChannelGraph, dict] | None] = contextvars.ContextVar(
    "slimfx_shared_tables", default=None
)


@contextlib.contextmanager
def shared_tables(cg: ChannelGraph) -> Iterator[None]:
    """Within the block, :func:`propagate` on ``cg`` computes each mode assignment once.

    For one plan-and-rewrite sequence in which the model's weights do not change (the
    values depend on BatchNorm betas): the plan and the rewrite ask for the same tables.
    """
    token = _shared_tables.set((cg, {}))
    try:
        yield
    finally:
        _shared_tables.reset(token)


class PropagateContext:
    """What rules see while pruned values are propagated."""

    def __init__(self, cg: ChannelGraph, modes: np.ndarray):
        self.cg = cg
        self.gm = cg.gm
        self.submodules = dict(cg.gm.named_modules())
        self.modes = modes
        self.table: dict[str, Any] = {}

    def module(self, node: fx.Node):
        return self.submodules[str(node.target)]

    def layout(self, node: Any) -> Layout | None:
        return self.cg.layout(node) if isinstance(node, fx.Node) else None

    def layout_any(self, node: fx.Node):
        return self.cg.layouts.get(node.name)

    def values(self, arg: Any) -> PrunedValues | None:
        if not isinstance(arg, fx.Node):
            return None
        val = self.table.get(arg.name)
        return val if isinstance(val, PrunedValues) else None

    def attr(self, node: fx.Node) -> Any:
        """The tensor or value behind a ``get_attr`` node."""
        return fetch_attr(self.gm, str(node.target))

    def new_pattern(self, node: fx.Node, old: np.ndarray) -> np.ndarray:
        """Pattern ids after a spatial op at ``node``.

        An id names the path of ops a constant went through, so the same path gives the same
        id in every propagation mode (a pruned channel and its carrier are compared by it).
        """
        out = np.empty_like(old)
        for pid in np.unique(old):
            digest = hashlib.blake2b(f"{node.name}/{int(pid)}".encode(), digest_size=7).digest()
            out[old == pid] = int.from_bytes(digest, "little") + 1
        return out

    def gate_values(self, layout: Layout, beta: torch.Tensor | None) -> PrunedValues:
        """What a BatchNorm with zeroed scaling factors outputs, position by position."""
        size = len(layout)
        plain = layout.plain_group()
        if plain is not None:  # one group, one mode: no per-position bookkeeping
            return _gate_constant(int(self.modes[plain]), size, beta)
        tracked = layout.group != UNTRACKED
        mode = np.full(size, -1)
        mode[tracked] = self.modes[layout.group[tracked]]
        value = np.full(size, np.nan)
        if beta is not None:
            b = float64_array(beta)
            value[mode == BETA] = b[mode == BETA]
        else:
            value[mode == BETA] = 0.0
        value[mode == ZERO] = 0.0
        value[mode == CARRIER] = 1.0
        return PrunedValues.exact(value).normalized()


def _gate_constant(mode: int, size: int, beta: torch.Tensor | None) -> PrunedValues:
    """:meth:`PropagateContext.gate_values` for a layout whose positions share one mode."""
    if mode == BETA and beta is not None:
        value = float64_array(beta)
    else:
        value = np.full(size, 1.0 if mode == CARRIER else 0.0)
    return PrunedValues.exact(value).normalized()


def propagate(cg: ChannelGraph, modes: np.ndarray | Mapping[int, int] | int) -> dict[str, Any]:
    """Values of pruned channels at every node (see the module docstring).

    Parameters
    ----------
    cg : ChannelGraph
    modes : int, mapping or array
        ``BETA``, ``ZERO`` or ``CARRIER`` for every group (an int), or per group id.

    Returns
    -------
    dict
        fx node name → :class:`PrunedValues` (or a tuple of them, or ``None``).
    """
    if isinstance(modes, int):
        mode_array = np.full(len(cg.groups), modes, dtype=np.int64)
    elif isinstance(modes, Mapping):
        mode_array = np.array([modes[g.id] for g in cg.groups], dtype=np.int64)
    else:
        mode_array = np.asarray(modes, dtype=np.int64)
    shared = _shared_tables.get()
    cache = shared[1] if shared is not None and shared[0] is cg else None
    key = mode_array.tobytes()
    if cache is not None and key in cache:
        return cache[key]
    ctx = PropagateContext(cg, mode_array)
    special = {
        "placeholder": Placeholder(),
        "output": Output(),
        "get_attr": GetAttr(),
    }
    unknown = Unknown()
    with torch.no_grad():
        for node in cg.gm.graph.nodes:
            if node.op in special:
                rule = special[node.op]
            elif "tensor_meta" not in node.meta:
                ctx.table[node.name] = None
                continue
            else:
                rule = rule_for(node, cg.gm, ctx.submodules) or unknown
            layout = cg.layouts.get(node.name)
            if layout is None:
                ctx.table[node.name] = None
                continue
            ctx.table[node.name] = rule.propagate(node, ctx)
    if cache is not None:
        cache[key] = ctx.table
    return ctx.table
