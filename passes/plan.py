"""Pass 3 — plan: network slimming's global |gamma| ranking, as pure data.

Numbered cases (tests mirror them):

1. Validation: ``percent`` in ``[0, 1)``, ``min_channels >= 1``, ``round_to >= 1``, finite
   gammas (the layer is named), else ``ValueError``; a model with no prunable BatchNorm
   raises :class:`UnsupportedError`.
2. Mode per group. Compensation (``compensate=True``) keeps a pruned channel's constant
   (``beta`` through ReLU, pooling …) by folding it into the consumers; it needs the constant
   to be exact at every consumer, and where a consumer zero-pads or the constant became a
   spatial pattern, a *carrier* channel (see below). When that is not possible the group
   falls back to zeroing (gamma and beta zeroed, the reference code's masking); when even
   that leaves a pruned channel input dependent, the group is frozen. Every fallback is
   reported.
3. Ranking. Each group channel is scored by its BatchNorms' ``|gamma|`` (one BatchNorm: its
   ``|gamma|``; several, after a residual add: ``group_score`` of them, ``"mean"`` by
   default). The ``min_channels`` largest of every group are protected; of the rest, exactly
   ``int(percent * total)`` smallest are pruned (``total`` = channels of prunable groups), in
   one global ranking. Ties break by graph order, then channel index.
4. Rounding. Each group's structural width (kept channels plus a carrier) is rounded *up* to
   a multiple of ``round_to`` by restoring its largest pruned channels, capped at the
   original width. Groups split into blocks by a grouped convolution keep the same number
   of channels in every block (the top ones of each block), rounded up the same way.
5. Carrier. A zero-padded convolution sees a pruned constant channel as ``c`` inside the
   image and ``0`` in the padding, which no bias can reproduce; a layer without a bias has
   nowhere to put the constant without changing its structure. One pruned channel of the
   group stays in the slim model with ``gamma = 0, beta = 1`` — the carrier, 1 inside the
   image and 0 in the padding like every constant channel — and the consumers' weights on it
   hold the sum of the pruned channels' constant contributions. The result is exact at every
   border and for every input size.

The plan refers to groups by name and holds only index lists; it round-trips through JSON.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from slimfx.ir.channel_graph import ChannelGraph, ChannelGroup
from slimfx.errors import PlanError, UnsupportedError
from slimfx.ir.layout import KeepTable
from slimfx.numerics import float64_array
from slimfx.passes.constant_propagation import BETA, CARRIER, ZERO, propagate
from slimfx.ir.values import EXACT, PATTERN, UNKNOWN

logger = logging.getLogger(__name__)

GROUP_SCORES = ("mean", "sum", "max")


@dataclass
class GroupPlan:
    """What one prunable group keeps.

    Attributes
    ----------
    name : str
        The group's name in the channel graph.
    size : int
        Original width.
    kept : list of int
        Original channels that stay, ascending.
    carrier : int or None
        The pruned channel reused as carrier, when one is needed.
    mode : str
        ``"compensate"`` (beta kept and folded) or ``"zero"`` (gamma and beta zeroed).
    """

    name: str
    size: int
    kept: list[int]
    carrier: int | None = None
    mode: str = "compensate"

    @property
    def width(self) -> int:
        """Structural width in the slim model (kept channels plus the carrier)."""
        return len(self.kept) + (self.carrier is not None)


@dataclass
class SlimPlan:
    """Kept channels of every prunable group, with the settings that produced them."""

    groups: dict[str, GroupPlan]
    percent: float
    min_channels: int = 1
    round_to: int = 1
    compensate: bool = True
    group_score: str = "mean"
    total: int = 0
    pruned: int = 0
    threshold: float = float("nan")
    notes: list[str] = field(default_factory=list)
    frozen: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Fraction of prunable channels removed (carriers count as removed)."""
        return self.pruned / self.total if self.total else 0.0

    def to_json(self) -> str:
        data = asdict(self)
        data["threshold"] = None if math.isnan(self.threshold) else self.threshold
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SlimPlan:
        data = json.loads(text)
        data["groups"] = {k: GroupPlan(**v) for k, v in data["groups"].items()}
        data["threshold"] = float("nan") if data["threshold"] is None else data["threshold"]
        return cls(**data)

    def keep_table(self, cg: ChannelGraph, *, carriers: bool = True) -> KeepTable:
        """Kept channels per group id of ``cg`` (with the carriers unless told otherwise)."""
        by_name = {g.name: g for g in cg.groups}
        masks = {}
        for name, gp in self.groups.items():
            if name not in by_name or by_name[name].size != gp.size:
                raise PlanError(f"the plan's group {name!r} is not in this channel graph")
            mask = np.zeros(gp.size, dtype=bool)
            mask[gp.kept] = True
            if carriers and gp.carrier is not None:
                mask[gp.carrier] = True
            masks[by_name[name].id] = mask
        return KeepTable(masks)

    def carrier_table(self, cg: ChannelGraph) -> KeepTable:
        """True at each group's carrier channel only."""
        by_name = {g.name: g for g in cg.groups}
        masks = {}
        for name, gp in self.groups.items():
            mask = np.zeros(gp.size, dtype=bool)
            if gp.carrier is not None:
                mask[gp.carrier] = True
            masks[by_name[name].id] = mask
        return KeepTable(masks, default=False)

    def modes(self, cg: ChannelGraph) -> np.ndarray:
        """Propagation mode per group id (BETA for compensated, ZERO otherwise)."""
        modes = np.full(len(cg.groups), ZERO, dtype=np.int64)
        by_name = {g.name: g.id for g in cg.groups}
        for name, gp in self.groups.items():
            if gp.mode == "compensate":
                modes[by_name[name]] = BETA
        return modes


def _validate(percent, min_channels, round_to, group_score) -> None:
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise ValueError(f"percent must be a number in [0, 1), got {percent!r}")
    if math.isnan(percent) or not 0 <= percent < 1:
        raise ValueError(f"percent must be in [0, 1), got {percent!r}")
    for name, value in (("min_channels", min_channels), ("round_to", round_to)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if group_score not in GROUP_SCORES:
        raise ValueError(f"group_score must be one of {GROUP_SCORES}, got {group_score!r}")


def gammas(cg: ChannelGraph, module_name: str) -> np.ndarray:
    """|gamma| of a BatchNorm, as float64, checked finite."""
    weight = np.abs(float64_array(cg.gm.get_submodule(module_name).weight))
    if not np.all(np.isfinite(weight)):
        bad = int(np.count_nonzero(~np.isfinite(weight)))
        raise ValueError(f"BatchNorm {module_name} has {bad} NaN or infinite scaling factors")
    return weight


def group_scores(
    cg: ChannelGraph, group: ChannelGroup, how: str = "mean", cache: dict | None = None
) -> np.ndarray:
    """Score of every channel of ``group``: its BatchNorms' |gamma| aggregated by ``how``.

    ``cache`` (BatchNorm name → |gamma|) saves reading a BatchNorm shared by several groups
    more than once.
    """
    cache = {} if cache is None else cache
    for scorer in group.scorers:
        if scorer.module not in cache:
            cache[scorer.module] = gammas(cg, scorer.module)
    if len(group.scorers) == 1:
        scorer = group.scorers[0]  # one BatchNorm scores every channel: no aggregation
        out = np.zeros(group.size)
        out[scorer.group_index] = cache[scorer.module][scorer.bn_channel]
        return out
    stacked = np.full((len(group.scorers), group.size), np.nan)
    for row, scorer in enumerate(group.scorers):
        stacked[row, scorer.group_index] = cache[scorer.module][scorer.bn_channel]
    with np.errstate(all="ignore"):
        agg = {"mean": np.nanmean, "sum": np.nansum, "max": np.nanmax}[how](stacked, axis=0)
    return np.nan_to_num(agg, nan=0.0)


class _Tables(dict):
    """Propagation tables by mode, each computed on first use."""

    def __init__(self, cg: ChannelGraph):
        super().__init__()
        self.cg = cg

    def __missing__(self, mode: int) -> dict[str, Any]:
        self[mode] = propagate(self.cg, mode)
        return self[mode]


class _SinkView:
    """Per group: its positions at every sink, with their values in each mode."""

    def __init__(self, cg: ChannelGraph, tables: _Tables):
        self.tables = tables
        self.entries: dict[int, list[tuple]] = {}
        for sink in cg.sinks:
            layout = cg.layout(sink.input)
            if layout is None:
                continue
            for gid in layout.group_ids():
                pos = np.flatnonzero(layout.group == gid)
                vals = _ModeValues(tables, sink.input)
                self.entries.setdefault(gid, []).append((sink, layout.index[pos], pos, vals))

    def exact(self, gid: int, mode: int) -> str | None:
        """None when every pruned value of the group is exact in ``mode``, else the sink."""
        for sink, _, pos, vals in self.entries.get(gid, []):
            if np.any(vals[mode].kind[pos] == UNKNOWN):
                return sink.node
        return None

    def needs_carrier(self, gid: int, mode: int, pruned: np.ndarray) -> bool:
        """Whether some pruned channel's nonzero value reaches a padded conv or as a pattern."""
        for sink, index, pos, vals in self.entries.get(gid, []):
            hit = pruned[index]
            v = vals[mode]
            nonzero = hit & (v.value[pos] != 0)
            if not nonzero.any():
                continue
            if sink.padded or not sink.has_bias or np.any(v.kind[pos][nonzero] == PATTERN):
                return True
        return False

    def carrier_feasible(self, gid: int, mode: int) -> str | None:
        """None when a carrier reproduces every channel's value at every sink, else why."""
        for sink, _, pos, vals in self.entries.get(gid, []):
            if sink.groups > 1:
                return f"{sink.node} (a grouped convolution: one carrier cannot serve its groups)"
            v, c = vals[mode], vals[CARRIER]
            bad = (c.kind[pos] == UNKNOWN) | (c.value[pos] == 0)
            bad |= (v.kind[pos] == PATTERN) & (v.pattern[pos] != c.pattern[pos])
            bad |= (v.kind[pos] == EXACT) & (v.value[pos] != 0) & (c.kind[pos] != EXACT)
            if bad.any():
                return sink.node
        return None


class _ModeValues:
    """The values at one node, looked up per mode (``vals[BETA]``)."""

    def __init__(self, tables: _Tables, node: str):
        self.tables, self.node = tables, node

    def __getitem__(self, mode: int):
        return self.tables[mode][self.node]


def plan(
    cg: ChannelGraph,
    percent: float = 0.5,
    *,
    min_channels: int = 1,
    round_to: int = 1,
    compensate: bool = True,
    group_score: str = "mean",
) -> SlimPlan:
    """Choose the channels to keep (see the module docstring for the numbered cases).

    Parameters
    ----------
    cg : ChannelGraph
        From :func:`slimfx.passes.analyze`.
    percent : float
        Fraction of prunable channels to remove, in ``[0, 1)``.
    min_channels : int
        No group keeps fewer channels (or all it has, if fewer).
    round_to : int
        Structural widths are rounded up to a multiple of this.
    compensate : bool
        Keep pruned channels' constants (``beta``) by folding them into consumers; ``False``
        zeroes them like the reference code.
    group_score : {"mean", "sum", "max"}
        How the |gamma| of several BatchNorms governing one channel are combined.

    Returns
    -------
    SlimPlan
    """
    _validate(percent, min_channels, round_to, group_score)
    scored = [g for g in cg.groups if g.scorers]
    if not scored:
        raise UnsupportedError(
            "network slimming needs BatchNorm layers: the model has no BatchNorm whose "
            "scaling factors govern prunable channels"
        )
    notes: list[str] = []
    frozen: dict[str, str] = {}
    sinks = _SinkView(cg, _Tables(cg))
    candidates = _cuttable(cg, sinks, compensate, notes, frozen)
    if not candidates:
        reasons = sorted({r for g in scored for r in g.frozen} | set(frozen.values()))
        raise UnsupportedError(
            "network slimming needs BatchNorm layers whose channels can be removed; every "
            "BatchNorm-governed group is frozen: " + "; ".join(reasons[:5])
        )
    read: dict[str, np.ndarray] = {}
    scores = {g.id: group_scores(cg, g, group_score, read) for g, _ in candidates}
    total = sum(g.size for g, _ in candidates)
    prune = _rank(candidates, scores, percent, min_channels, total, notes)
    groups: dict[str, GroupPlan] = {}
    pruned_count = 0
    for g, mode in candidates:
        pruned = prune[g.id]
        if g.blocks > 1:
            pruned, carrier = _balance_blocks(g, pruned, scores[g.id], round_to, min_channels), None
        else:
            pruned, carrier = _round_and_carry(g, mode, pruned, scores[g.id], round_to, sinks)
        kept = np.flatnonzero(~pruned)
        pruned_count += int(pruned.sum())
        groups[g.name] = GroupPlan(
            g.name,
            g.size,
            kept.tolist(),
            carrier,
            "compensate" if mode == BETA else "zero",
        )
    pruned_scores = [scores[g.id][prune[g.id]] for g, _ in candidates]
    flat = np.concatenate(pruned_scores) if pruned_scores else np.zeros(0)
    threshold = float(flat.max()) if flat.size else float("nan")
    return SlimPlan(
        groups,
        float(percent),
        int(min_channels),
        int(round_to),
        bool(compensate),
        group_score,
        total,
        pruned_count,
        threshold,
        notes,
        frozen,
    )


def cuttable_groups(cg: ChannelGraph, *, compensate: bool = True) -> list[ChannelGroup]:
    """The groups :func:`plan` can prune exactly (with compensation or by zeroing).

    These are the groups whose BatchNorms sparsity training should penalise.
    """
    return [g for g, _ in _cuttable(cg, _SinkView(cg, _Tables(cg)), compensate, [], {})]


def _cuttable(cg, sinks, compensate, notes, frozen) -> list[tuple[ChannelGroup, int]]:
    """(group, mode) for every group that can be pruned; ``frozen`` gets the others' why."""
    out = []
    for g in cg.groups:
        if not g.prunable:
            continue
        mode, why = _choose_mode(g, sinks, compensate)
        if mode is None:
            frozen[g.name] = f"cannot be pruned exactly: {why}"
            notes.append(f"group {g.name} frozen: {why}")
            continue
        if mode == ZERO and compensate:
            notes.append(f"group {g.name}: compensation not exact ({why}); zeroing instead")
        out.append((g, mode))
    return out


def _choose_mode(g: ChannelGroup, sinks: _SinkView, compensate: bool):
    """(mode, why the modes before it failed), or (None, why) when no mode is exact."""
    tried = [BETA, ZERO] if compensate else [ZERO]
    why = ""
    for mode in tried:
        leak = sinks.exact(g.id, mode)
        if leak is not None:
            why = f"a pruned channel would still depend on the input at {leak}"
            continue
        if sinks.needs_carrier(g.id, mode, np.ones(g.size, dtype=bool)):
            blocked = sinks.carrier_feasible(g.id, mode)
            if blocked is None and g.blocks > 1:
                blocked = "a grouped convolution (a carrier would unbalance its groups)"
            if blocked is not None:
                why = f"no exact carrier channel reaches {blocked}"
                continue
        return mode, why
    return None, why


def _rank(candidates, scores, percent, min_channels, total, notes) -> dict[int, np.ndarray]:
    """Pruned channels of every candidate group, from one global ranking (case 3).

    Channels are laid out group after group, each in index order, so the ranking's tie
    break (graph order, then channel index) is the flat order: the ``n`` smallest scores are
    every score below the ``n``-th smallest plus the first of those equal to it.
    """
    n_prune = int(percent * total)
    sizes = np.array([g.size for g, _ in candidates], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    score = np.concatenate([scores[g.id] for g, _ in candidates])
    free_positions = np.flatnonzero(~_protected(score, sizes, offsets, min_channels))
    if n_prune > len(free_positions):
        notes.append(
            f"only {len(free_positions)} of {total} channels can go without emptying a layer "
            f"below min_channels; pruned those instead of {n_prune}"
        )
        n_prune = len(free_positions)
    free_score = score[free_positions]
    chosen = np.zeros(len(free_score), dtype=bool)
    if 0 < n_prune < len(free_score):
        nth = np.partition(free_score, n_prune - 1)[n_prune - 1]
        chosen = free_score < nth
        ties = np.flatnonzero(free_score == nth)
        chosen[ties[: n_prune - int(chosen.sum())]] = True
    elif n_prune:
        chosen[:] = True
    flat = np.zeros(len(score), dtype=bool)
    flat[free_positions[chosen]] = True
    return {g.id: flat[offsets[k] : offsets[k + 1]] for k, (g, _) in enumerate(candidates)}


def _protected(score, sizes, offsets, min_channels) -> np.ndarray:
    """The ``min_channels`` largest scores of every group (ties: the lower index)."""
    protected = np.zeros(len(score), dtype=bool)
    if min_channels == 1 and np.all(sizes > 0):  # the default: each group's first maximum
        group = np.repeat(np.arange(len(sizes)), sizes)
        at_max = np.flatnonzero(score == np.maximum.reduceat(score, offsets[:-1])[group])
        _, first = np.unique(group[at_max], return_index=True)
        protected[at_max[first]] = True
        return protected
    for k, size in enumerate(sizes):
        block = score[offsets[k] : offsets[k + 1]]
        top = np.argsort(-block, kind="stable")[: min(min_channels, int(size))]
        protected[offsets[k] + top] = True
    return protected


def _balance_blocks(g, pruned, score, round_to, min_channels) -> np.ndarray:
    """Keep the same count in every block: the top ``k`` by score, ``k`` rounded up."""
    size = g.size // g.blocks
    kept = int((~pruned).sum())
    k = max(-(-kept // g.blocks), -(-min(min_channels, g.size) // g.blocks), 1)
    while (g.blocks * k) % round_to and k < size:
        k += 1
    out = np.ones(g.size, dtype=bool)
    for b in range(g.blocks):
        block = score[b * size : (b + 1) * size]
        top = np.argsort(-block, kind="stable")[:k]
        out[b * size + top] = False
    return out


def _round_and_carry(g, mode, pruned, score, round_to, sinks) -> tuple[np.ndarray, int | None]:
    pruned = pruned.copy()
    restore_order = None  # pruned channels, largest score first (sorted only if needed)
    restored = 0

    def restore(count: int) -> None:
        nonlocal restored, restore_order
        if restore_order is None:
            by_score = np.argsort(-score, kind="stable")
            restore_order = by_score[pruned[by_score]]
        pruned[restore_order[restored : restored + count]] = False
        restored = min(len(restore_order), restored + count)

    for _ in range(4):
        carrier = bool(pruned.any()) and sinks.needs_carrier(g.id, mode, pruned)
        kept = int((~pruned).sum())
        width = kept + carrier
        target = min(g.size, -(-width // round_to) * round_to)
        if target == g.size and (width < g.size or carrier):
            pruned[:] = False  # rounding reaches the full width: keep the real channels
            carrier = False
            break
        if target == width:
            break
        restore(target - width)
    carrier_index = int(np.flatnonzero(pruned)[0]) if carrier else None
    return pruned, carrier_index
