"""Pass 3 — constant propagation: what each pruned channel carries, at every node.

A channel whose BatchNorm scaling factor is zeroed outputs a constant. This pass follows
those constants through the graph (ReLU, pooling, dropout, residual adds …) with the rules'
``propagate`` methods, for every channel at once, each group in a :class:`slimfx.Mode`:

``Mode.COMPENSATE``
    the BatchNorm outputs its ``beta`` (pruned gammas zeroed, betas kept);
``Mode.ZERO``
    the BatchNorm outputs 0 (gammas and betas zeroed — the reference code's masking);
``Mode.CARRIER``
    the BatchNorm outputs 1 (the value of a carrier channel, see :mod:`passes.plan`).

:func:`propagate_constants` returns one table per mode, every group in that mode, as a
:class:`slimfx.ir.constant_tables.ConstantTables`: the plan reads it to decide which groups
can be pruned exactly, the rewrite to fold the constants into each consumer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from slimfx.ir.channel_graph import ChannelGraph
from slimfx.ir.constant_tables import ConstantTables
from slimfx.ir.layout import UNTRACKED, Layout
from slimfx.ir.options import Mode
from slimfx.ir.values import PrunedValues
from slimfx.numerics import float64_array
from slimfx.passes.walk import GraphReader, walk
from slimfx.rules.base import Rule


class PropagateContext(GraphReader):
    """What rules see while pruned values are propagated
    (:class:`slimfx.ir.contexts.PropagationContext`).

    Parameters
    ----------
    cg : ChannelGraph
    modes : mapping
        Group id → :class:`Mode` of every group.
    """

    def __init__(self, cg: ChannelGraph, modes: Mapping[int, Mode]):
        super().__init__(cg.gm, cg.layouts)
        self.modes = modes
        self.table: dict[str, Any] = {}
        # the position of each group's mode in _MODES (-1: none), for lookups by layout
        self._mode_index = np.array(
            [_MODES.index(modes[g]) if g in modes else -1 for g in range(len(cg.groups))],
            dtype=np.int64,
        )

    def values(self, arg: Any) -> PrunedValues | None:
        if not isinstance(arg, fx.Node):
            return None
        val = self.table.get(arg.name)
        return val if isinstance(val, PrunedValues) else None

    def output_values(self, node: fx.Node) -> PrunedValues | tuple | None:
        return self.table.get(node.name)

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
        """What a BatchNorm with zeroed scaling factors outputs, position by position.

        ``beta`` in compensated groups (0 without a shift), 0 in zeroed groups, 1 in carrier
        propagations; unknown at untracked positions.
        """
        mode = np.full(len(layout), -1, dtype=np.int64)
        tracked = layout.group != UNTRACKED
        mode[tracked] = self._mode_index[layout.group[tracked]]
        value = np.full(len(layout), np.nan)
        compensated = mode == _MODES.index(Mode.COMPENSATE)
        value[compensated] = float64_array(beta)[compensated] if beta is not None else 0.0
        value[mode == _MODES.index(Mode.ZERO)] = 0.0
        value[mode == _MODES.index(Mode.CARRIER)] = 1.0
        return PrunedValues.exact(value).normalized()


_MODES = list(Mode)


def propagate(cg: ChannelGraph, modes: Mode | Mapping[int, Mode]) -> dict[str, Any]:
    """Values of pruned channels at every node, each group in its mode.

    Parameters
    ----------
    cg : ChannelGraph
    modes : Mode or mapping
        One :class:`Mode` for every group, or group id → :class:`Mode`.

    Returns
    -------
    dict
        fx node name → :class:`PrunedValues` (or a tuple of them, or ``None``).
    """
    if isinstance(modes, Mode):
        modes = dict.fromkeys(range(len(cg.groups)), modes)
    ctx = PropagateContext(cg, modes)

    def step(node: fx.Node, rule: Rule) -> Any:
        if cg.layouts.get(node.name) is None:
            return None
        return rule.propagate(node, ctx)

    with torch.no_grad():
        return walk(cg.gm, ctx.modules, step, into=ctx.table, layouts=cg.layouts)


def with_modes(
    cg: ChannelGraph, constants: ConstantTables | None, modes: Iterable[Mode]
) -> ConstantTables:
    """``constants`` with a table for each of ``modes``: those it lacks are propagated.

    A new value; ``constants`` itself is not changed (``None``: propagate every mode asked).
    """
    have = dict(constants.tables) if constants is not None else {}
    missing = [Mode(m) for m in modes if Mode(m) not in have]
    if not missing and constants is not None:
        return constants
    return ConstantTables({**have, **{mode: propagate(cg, mode) for mode in missing}})


def propagate_constants(cg: ChannelGraph, modes: Iterable[Mode] = tuple(Mode)) -> ConstantTables:
    """The constant tables the plan and the rewrite read: one per mode, every group in it.

    Parameters
    ----------
    cg : ChannelGraph
    modes : iterable of Mode
        The modes to propagate (all three by default).

    Returns
    -------
    ConstantTables

    Examples
    --------
    >>> import torch, slimfx
    >>> from slimfx.models import VGG
    >>> cg = slimfx.analyze(slimfx.trace(VGG(depth=11), torch.randn(1, 3, 32, 32)))
    >>> tables = propagate_constants(cg)
    >>> float(tables.table(slimfx.Mode.CARRIER)["feature.1"].value[0])
    1.0
    """
    return ConstantTables({Mode(mode): propagate(cg, Mode(mode)) for mode in modes})
