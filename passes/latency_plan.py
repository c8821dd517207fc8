"""Latency planning: per-group widths that keep the most |gamma| mass within a latency budget.

The objective of :func:`choose_widths` is the paper's ranking turned into a budgeted
choice (a knapsack over channel steps, as in latency-aware pruning):

1. Every group may take the widths ``unit, 2*unit, ...`` and its full width, never below
   ``min_channels`` (``unit``: the latency table's step, or a multiple of the group's blocks).
   A width ``w`` keeps the group's ``w`` best channels by |gamma| score
   (:func:`slimfx.passes.plan.block_order`), so a group's kept mass is a running sum.
2. Starting from full width, one group at a time steps down one width: the step that loses
   the least |gamma| mass per millisecond of predicted latency saved (layers whose input or
   output the group reaches are re-predicted). Channels with zero |gamma| cost nothing and
   go first; steps that save no time are never taken.
3. It stops when the predicted latency is within the budget, or when no step saves time
   (the budget is out of reach: the result says so).

The prediction is :class:`slimfx.latency.LatencyTable`'s: each layer's table at its widths,
plus its share of the rest of the model. Everything here is pure: data in, widths out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from slimfx.ir.channel_graph import ChannelGraph, ChannelGroup
from slimfx.ir.layout import UNTRACKED, Layout
from slimfx.passes.plan import block_order

if TYPE_CHECKING:  # the measured values this pass reads; it imports no measuring code
    from slimfx.latency.layers import TimedLayer
    from slimfx.latency.table import LatencyTable


@dataclass
class WidthChoice:
    """What :func:`choose_widths` chose.

    Attributes
    ----------
    widths : dict
        Group name → structural width.
    predicted_ms : float
        Predicted latency of the whole model at those widths.
    budget_ms : float
    kept_mass, total_mass : float
        |gamma| score kept, and of all channels of the planned groups.
    reached : bool
        Whether the predicted latency is within the budget.
    layer_ms : dict
        Layer node → predicted latency (with its share of the rest).
    """

    widths: dict[str, int]
    predicted_ms: float
    budget_ms: float
    kept_mass: float
    total_mass: float
    reached: bool
    layer_ms: dict[str, float] = field(default_factory=dict)


class _Axis:
    """Kept count of one layer axis as a function of the group widths."""

    def __init__(self, layout: Layout | None, full: int, ranks: dict[int, np.ndarray]):
        self.fixed = full
        self.parts: list[tuple[int, np.ndarray]] = []
        if layout is None:
            return
        self.fixed = int(np.count_nonzero(layout.group == UNTRACKED))
        for gid in layout.group_ids():
            index = layout.index[layout.group == gid]
            if gid in ranks:
                self.parts.append((gid, np.sort(ranks[gid][index])))
            else:
                self.fixed += len(index)

    def count(self, width: dict[int, int]) -> int:
        return self.fixed + sum(int(np.searchsorted(r, width[g])) for g, r in self.parts)


def choose_widths(
    cg: ChannelGraph,
    groups: list[ChannelGroup],
    scores: dict[int, np.ndarray],
    layers: list[TimedLayer],
    table: LatencyTable,
    budget_ms: float,
    *,
    unit: int,
    min_channels: int = 1,
) -> WidthChoice:
    """The widths of ``groups`` that keep the most |gamma| mass within ``budget_ms``.

    Parameters
    ----------
    cg : ChannelGraph
    groups : list of ChannelGroup
        The groups that may shrink (:func:`slimfx.passes.plan.cuttable_groups`).
    scores : dict
        Group id → channel scores (:func:`slimfx.passes.plan.group_scores`).
    layers : list of TimedLayer
        The model's layers (:func:`slimfx.latency.layers.timed_layers`).
    table : LatencyTable
        Measured on the target.
    budget_ms : float
    unit : int
        Width step.
    min_channels : int

    Returns
    -------
    WidthChoice
    """
    if not budget_ms > 0:
        raise ValueError(f"the latency budget must be positive, got {budget_ms!r}")
    ranks, masses, steps = {}, {}, {}
    for g in groups:
        order = block_order(g, scores[g.id])
        rank = np.empty(g.size, dtype=np.int64)
        rank[order] = np.arange(g.size)
        ranks[g.id] = rank
        masses[g.id] = np.concatenate([[0.0], np.cumsum(scores[g.id][order])])
        steps[g.id] = _allowed_widths(g, unit, min_channels)
    tabled = [layer for layer in layers if layer.node in table.layers]
    axes = {
        layer.node: (
            _Axis(layer.in_layout, layer.shape.in_channels, ranks),
            _Axis(layer.out_layout, layer.shape.out_channels, ranks),
        )
        for layer in tabled
    }
    touching: dict[int, list[TimedLayer]] = {g.id: [] for g in groups}
    for layer in tabled:
        reached = {gid for axis in axes[layer.node] for gid, _ in axis.parts}
        for gid in reached:
            touching[gid].append(layer)
    width = {g.id: g.size for g in groups}
    position = {g.id: len(steps[g.id]) - 1 for g in groups}

    def layer_ms(layer: TimedLayer, widths: dict[int, int]) -> float:
        cin_axis, cout_axis = axes[layer.node]
        fitted = layer.shape.fit(cin_axis.count(widths), cout_axis.count(widths))
        return table.layer_prediction(layer.node, *fitted)

    current = {layer.node: layer_ms(layer, width) for layer in tabled}
    total = sum(current.values()) + table.rest_fixed_ms
    best_step: dict[int, tuple[float, float, dict[str, float]] | None] = {}

    def evaluate(gid: int):
        if position[gid] == 0:
            return None
        trial = {**width, gid: steps[gid][position[gid] - 1]}
        new = {layer.node: layer_ms(layer, trial) for layer in touching[gid]}
        saved = sum(current[n] - ms for n, ms in new.items())
        if saved <= 1e-9:
            return None
        lost = masses[gid][width[gid]] - masses[gid][trial[gid]]
        return lost / saved, saved, new

    for g in groups:
        best_step[g.id] = evaluate(g.id)
    by_id = {g.id: g for g in groups}
    while total > budget_ms:
        options = [(v[0], gid) for gid, v in best_step.items() if v is not None]
        if not options:
            break
        _, gid = min(options)
        _, saved, new = best_step[gid]
        position[gid] -= 1
        width[gid] = steps[gid][position[gid]]
        current.update(new)
        total -= saved
        stale = {gid} | {
            other for layer in touching[gid] for axis in axes[layer.node] for other, _ in axis.parts
        }
        for other in stale:
            best_step[other] = evaluate(other)
    total_mass = float(sum(m[-1] for m in masses.values()))
    kept = float(sum(masses[gid][w] for gid, w in width.items()))
    return WidthChoice(
        widths={by_id[gid].name: int(w) for gid, w in width.items()},
        predicted_ms=float(total),
        budget_ms=float(budget_ms),
        kept_mass=kept,
        total_mass=total_mass,
        reached=bool(total <= budget_ms),
        layer_ms=current,
    )


def _allowed_widths(g: ChannelGroup, unit: int, min_channels: int) -> list[int]:
    """Widths group ``g`` may take, ascending (the last is its full width)."""
    unit = math.lcm(unit, g.blocks)
    lowest = min(g.size, max(unit, -(-min(min_channels, g.size) // unit) * unit))
    widths = list(range(lowest, g.size, unit))
    return [w for w in widths if w % g.blocks == 0] + [g.size]
