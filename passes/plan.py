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
6. Pieces the model's forward sizes (``keep_forward``). Where the slim layers are to
   replace the model's own, the groups a ``chunk`` divides keep equal widths: each is
   widened to the widest by restoring its largest pruned channels (a piece frozen at full
   width widens them all); a chunk whose pieces are not one whole group each, and every
   ``split`` at sizes the forward gives, keeps its pieces whole.
7. Given widths (``widths``, from a latency planner such as
   :func:`slimfx.passes.latency_plan.choose_widths`): instead of cases 3 and 4, each group
   named keeps the top-scored channels up to its given structural width (a carrier counts
   inside it; a group split into blocks keeps its share of the top ones of every block);
   groups not named keep every channel.

The plan refers to groups by name and holds only index lists; it round-trips through JSON.

The file runs to about 430 lines: it is the seven cases above, which share one view of the
sinks and read best in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from slimfx.errors import UnsupportedError
from slimfx.ir.channel_graph import ChannelGraph, ChannelGroup
from slimfx.ir.constant_tables import ConstantTables
from slimfx.ir.options import Mode, SlimOptions
from slimfx.ir.plan import GroupPlan, SlimPlan
from slimfx.ir.values import EXACT, PATTERN, UNKNOWN
from slimfx.numerics import float64_array
from slimfx.passes.constant_propagation import with_modes
from slimfx.passes.trace import trace_notes

logger = logging.getLogger(__name__)


def gammas(cg: ChannelGraph, module_name: str) -> np.ndarray:
    """|gamma| of a BatchNorm, as float64, checked finite."""
    weight = np.abs(float64_array(cg.gm.get_submodule(module_name).weight))
    if not np.all(np.isfinite(weight)):
        bad = int(np.count_nonzero(~np.isfinite(weight)))
        raise ValueError(f"BatchNorm {module_name} has {bad} NaN or infinite scaling factors")
    return weight


def group_scores(cg: ChannelGraph, group: ChannelGroup, how: str = "mean") -> np.ndarray:
    """Score of every channel of ``group``: its BatchNorms' |gamma| aggregated by ``how``."""
    stacked = np.full((len(group.scorers), group.size), np.nan)
    for row, scorer in enumerate(group.scorers):
        stacked[row, scorer.group_index] = gammas(cg, scorer.module)[scorer.bn_channel]
    with np.errstate(all="ignore"):
        agg = {"mean": np.nanmean, "sum": np.nansum, "max": np.nanmax}[how](stacked, axis=0)
    return np.nan_to_num(agg, nan=0.0)


class _SinkView:
    """Per group: its positions at every sink, with their values in each mode."""

    def __init__(self, cg: ChannelGraph, constants: ConstantTables | None):
        self.cg = cg
        self.constants = constants
        self.entries: dict[int, list[tuple]] = {}
        for sink in cg.sinks:
            layout = cg.layout(sink.input)
            if layout is None:
                continue
            for gid in layout.group_ids():
                pos = np.flatnonzero(layout.group == gid)
                self.entries.setdefault(gid, []).append((sink, layout.index[pos], pos))

    def values(self, sink, mode: Mode):
        if self.constants is None or mode not in self.constants.modes:
            self.constants = with_modes(self.cg, self.constants, [mode])  # first use
        return self.constants.table(mode)[sink.input]

    def first_inexact_sink(self, gid: int, mode: Mode) -> str | None:
        """The first sink where a pruned value of the group is input dependent in ``mode``."""
        for sink, _, pos in self.entries.get(gid, []):
            if np.any(self.values(sink, mode).kind[pos] == UNKNOWN):
                return sink.node
        return None

    def needs_carrier(self, gid: int, mode: Mode, pruned: np.ndarray) -> bool:
        """Whether some pruned channel's nonzero value reaches a padded conv or as a pattern."""
        for sink, index, pos in self.entries.get(gid, []):
            v = self.values(sink, mode)
            nonzero = pruned[index] & (v.value[pos] != 0)
            if not nonzero.any():
                continue
            if sink.padded or not sink.has_bias or np.any(v.kind[pos][nonzero] == PATTERN):
                return True
        return False

    def carrier_blocker(self, gid: int, mode: Mode) -> str | None:
        """Why no carrier reproduces every channel's value at every sink; ``None`` if one does."""
        for sink, _, pos in self.entries.get(gid, []):
            if sink.groups > 1:
                return f"{sink.node} (a grouped convolution: one carrier cannot serve its groups)"
            v, c = self.values(sink, mode), self.values(sink, Mode.CARRIER)
            bad = (c.kind[pos] == UNKNOWN) | (c.value[pos] == 0)
            bad |= (v.kind[pos] == PATTERN) & (v.pattern[pos] != c.pattern[pos])
            bad |= (v.kind[pos] == EXACT) & (v.value[pos] != 0) & (c.kind[pos] != EXACT)
            if bad.any():
                return sink.node
        return None


def plan(
    cg: ChannelGraph,
    options: SlimOptions | float = 0.5,
    *,
    constants: ConstantTables | None = None,
    widths: Mapping[str, int] | None = None,
    **settings: Any,
) -> SlimPlan:
    """Choose the channels to keep (see the module docstring for the numbered cases).

    Parameters
    ----------
    cg : ChannelGraph
        From :func:`slimfx.passes.analyze`.
    options : SlimOptions or float
        The settings, or a bare ``percent`` (the other settings then take their defaults).
    constants : ConstantTables, optional
        From :func:`slimfx.passes.propagate_constants` on ``cg``; the modes it lacks (all,
        when it is not given) are propagated here as the plan needs them. Pass the same
        value to :func:`slimfx.passes.rewrite`.
    widths : mapping, optional
        Group name → structural width to keep (case 7), instead of the ``percent`` ranking.
    **settings
        Single settings of :class:`SlimOptions` by name, overriding ``options``.

    Returns
    -------
    SlimPlan
    """
    if isinstance(options, SlimOptions):
        options = SlimOptions.of(options, **settings)
    else:
        options = SlimOptions.of(None, percent=options, **settings)
    scored = [g for g in cg.groups if g.scorers]
    if not scored:
        frozen_norms = trace_notes(cg.gm).frozen_batchnorms
        hint = (
            f"; its {len(frozen_norms)} norms ({frozen_norms[0]} …) are torchvision's "
            "FrozenBatchNorm2d, with fixed scales that training does not change: build it "
            "with norm_layer=torch.nn.BatchNorm2d (for a detection backbone, e.g. "
            "resnet_fpn_backbone(..., norm_layer=torch.nn.BatchNorm2d)), sparsity-train it, "
            "then slim it"
            if frozen_norms
            else ""
        )
        raise UnsupportedError(
            "network slimming needs BatchNorm layers: the model has no BatchNorm whose "
            f"scaling factors govern prunable channels{hint}"
        )
    notes: list[str] = []
    frozen: dict[str, str] = {}
    sinks = _SinkView(cg, constants)
    candidates = _cuttable(cg, sinks, options.compensate, notes, frozen)
    if not candidates:
        reasons = sorted({r for g in scored for r in g.frozen} | set(frozen.values()))
        raise UnsupportedError(
            "network slimming needs BatchNorm layers whose channels can be removed; every "
            "BatchNorm-governed group is frozen: " + "; ".join(reasons[:5])
        )
    scores = {g.id: group_scores(cg, g, options.group_score) for g, _ in candidates}
    total = sum(g.size for g, _ in candidates)
    tied = tied_gammas(list(scores.values()))
    if tied:
        logger.warning("%s", tied)
        notes.append(tied)
    decided: dict[int, tuple[np.ndarray, int | None]] = {}
    if widths is not None:
        decided = _given_widths(candidates, scores, widths, sinks)
        prune = {gid: pruned for gid, (pruned, _) in decided.items()}
    else:
        prune = _rank(candidates, scores, options.percent, options.min_channels, total, notes)
    for g, mode in candidates if widths is None else ():
        pruned, carrier = prune[g.id], None
        if g.blocks > 1:
            pruned = _balance_blocks(g, pruned, scores[g.id], options)
        else:
            pruned, carrier = _round_and_carry(g, mode, pruned, scores[g.id], options, sinks)
        decided[g.id] = pruned, carrier
    if options.keep_forward:
        modes = {g.id: mode for g, mode in candidates}
        decided = _equal_pieces(cg, decided, modes, scores, sinks, notes)
    groups: dict[str, GroupPlan] = {}
    pruned_count = 0
    for g, mode in candidates:
        pruned, carrier = decided[g.id]
        pruned_count += int(pruned.sum())
        groups[g.name] = GroupPlan(g.name, g.size, np.flatnonzero(~pruned).tolist(), carrier, mode)
    pruned_scores = [scores[g.id][prune[g.id]] for g, _ in candidates]
    flat = np.concatenate(pruned_scores) if pruned_scores else np.zeros(0)
    return SlimPlan(
        groups=groups,
        options=options,
        total=total,
        pruned=pruned_count,
        threshold=float(flat.max()) if flat.size else float("nan"),
        notes=notes,
        frozen=frozen,
    )


def tied_gammas(scores: list[np.ndarray]) -> str | None:
    """A warning when the channel scores are mostly tied, as in an untrained model (every
    gamma 1.0 from PyTorch's initialisation, 0.5 from the paper's): the ranking among tied
    channels is arbitrary, and network slimming needs sparsity-trained gammas."""
    flat = np.concatenate(scores) if scores else np.zeros(0)
    if flat.size < 2:
        return None
    values, counts = np.unique(flat, return_counts=True)
    value = float(values[np.argmax(counts)])
    if counts.max() < TIED_FRACTION * flat.size or value == 0:  # zeros: equally useless
        return None
    return (
        f"the BatchNorm scaling factors are tied: {int(counts.max())} of {flat.size} channels "
        f"have |gamma| = {value:.4g}, so which of them are pruned is arbitrary (the gammas look "
        "untrained). Network slimming ranks channels by gammas trained with an L1 penalty: "
        "sparsity-train the model first (slimfx train -sr --s 1e-4, or "
        "slimfx.train.SparsityRegularizer in your own loop)"
    )


#: Scores are "tied" when this fraction of the channels share one value.
TIED_FRACTION = 0.2


def cuttable_groups(
    cg: ChannelGraph, *, compensate: bool = True, constants: ConstantTables | None = None
) -> list[ChannelGroup]:
    """The groups :func:`plan` can prune exactly (with compensation or by zeroing).

    These are the groups whose BatchNorms sparsity training should penalise.
    """
    sinks = _SinkView(cg, constants)
    return [g for g, _ in _cuttable(cg, sinks, compensate, [], {})]


def _cuttable(cg, sinks, compensate, notes, frozen) -> list[tuple[ChannelGroup, Mode]]:
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
        if mode is Mode.ZERO and compensate:
            notes.append(f"group {g.name}: compensation not exact ({why}); zeroing instead")
        out.append((g, mode))
    return out


def _choose_mode(g: ChannelGroup, sinks: _SinkView, compensate: bool):
    """(mode, why the modes before it failed), or (None, why) when no mode is exact."""
    tried = [Mode.COMPENSATE, Mode.ZERO] if compensate else [Mode.ZERO]
    why = ""
    for mode in tried:
        leak = sinks.first_inexact_sink(g.id, mode)
        if leak is not None:
            why = f"a pruned channel would still depend on the input at {leak}"
            continue
        if sinks.needs_carrier(g.id, mode, np.ones(g.size, dtype=bool)):
            blocked = sinks.carrier_blocker(g.id, mode)
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
    for k, size in enumerate(sizes):
        block = score[offsets[k] : offsets[k + 1]]
        top = np.argsort(-block, kind="stable")[: min(min_channels, int(size))]
        protected[offsets[k] + top] = True
    return protected


def _balance_blocks(g, pruned, score, options: SlimOptions) -> np.ndarray:
    """Keep the same count in every block: the top ``k`` by score, ``k`` rounded up."""
    round_to, min_channels = options.round_to, options.min_channels
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


def _equal_pieces(cg, decided, modes, scores, sinks, notes):
    """Case 6: the groups of each chunk widened to equal widths, those of each split at
    given sizes to their whole widths (a new dict)."""
    decided = dict(decided)
    by_id = {g.id: g for g in cg.groups}

    def width(gid: int) -> int:
        if gid not in decided:
            return by_id[gid].size  # frozen: it keeps every channel
        pruned, carrier = decided[gid]
        return int((~pruned).sum()) + (carrier is not None)

    for _ in range(len(cg.splits) + 1):  # widening one chunk's groups can widen another's
        changed = False
        for name, kind, pieces in cg.splits:
            ids = [p[0] for p in pieces if len(p) == 1]
            single = len(ids) == len(pieces) and len(set(ids)) == len(ids)
            if single and len({by_id[g].size for g in ids}) > 1:
                single = False
            if kind == "sizes" or not single:  # keep every piece whole
                ids = sorted({g for p in pieces for g in p})
                target = max(by_id[g].size for g in ids)
                why = f"the model's forward sizes the pieces of {name}: kept whole"
            else:
                target = max(width(g) for g in ids)
                why = None
            for gid in ids:
                if gid in decided and width(gid) < target:
                    g = by_id[gid]
                    decided[gid] = _widened(g, modes[gid], decided[gid], scores[gid], target, sinks)
                    changed = True
                    if why:
                        notes.append(f"group {g.name}: {why}")
        if not changed:
            break
    return decided


def block_order(g: ChannelGroup, score: np.ndarray) -> np.ndarray:
    """The group's channels in the order a width keeps them: the top ``w`` of this order are
    the channels a structural width ``w`` keeps (before a carrier). A group split into
    blocks takes the best of every block in turn, so a multiple of the blocks keeps as many
    of each."""
    if g.blocks <= 1:
        return np.argsort(-score, kind="stable")
    size = g.size // g.blocks
    ranks = np.empty(g.size, dtype=np.int64)
    for b in range(g.blocks):
        block = score[b * size : (b + 1) * size]
        ranks[b * size + np.argsort(-block, kind="stable")] = np.arange(size) * g.blocks + b
    return np.argsort(ranks, kind="stable")


def _given_widths(candidates, scores, widths, sinks: _SinkView):
    """Case 7: every named group keeps its best channels up to the given width."""
    known = {g.name for g, _ in candidates}
    unknown = sorted(set(widths) - known)
    if unknown:
        raise ValueError(f"widths name groups that cannot be pruned: {', '.join(unknown[:5])}")
    decided = {}
    for g, mode in candidates:
        width = int(widths.get(g.name, g.size))
        if not 1 <= width <= g.size or width % g.blocks:
            raise ValueError(
                f"group {g.name}: width {width} is not in [1, {g.size}] or not a multiple of "
                f"its {g.blocks} blocks"
            )
        order = block_order(g, scores[g.id])
        pruned = np.ones(g.size, dtype=bool)
        pruned[order[:width]] = False
        carrier = None
        if g.blocks == 1 and pruned.any() and sinks.needs_carrier(g.id, mode, pruned):
            if width > 1:  # the carrier takes the last of the width's places
                pruned[order[width - 1]] = True
            carrier = int(np.flatnonzero(pruned)[0])
        decided[g.id] = pruned, carrier
    return decided


def _widened(g, mode, decision, score, target: int, sinks: _SinkView):
    """``decision`` with the largest pruned channels restored until the structural width
    (kept channels plus a carrier) reaches ``target``."""
    pruned = decision[0].copy()
    for channel in np.argsort(-score, kind="stable"):
        carrier = bool(pruned.any()) and sinks.needs_carrier(g.id, mode, pruned)
        if int((~pruned).sum()) + carrier >= target:
            break
        pruned[channel] = False
    carrier = bool(pruned.any()) and sinks.needs_carrier(g.id, mode, pruned)
    return pruned, (int(np.flatnonzero(pruned)[0]) if carrier else None)


def _round_and_carry(g, mode, pruned, score, options: SlimOptions, sinks: _SinkView):
    """Round the group's structural width up to ``round_to`` and pick its carrier (cases
    4 and 5): ``(pruned mask, carrier channel or None)``."""
    pruned = pruned.copy()
    by_score = np.argsort(-score, kind="stable")
    restore_order = by_score[pruned[by_score]]  # pruned channels, largest score first
    restored = 0
    for _ in range(4):
        carrier = bool(pruned.any()) and sinks.needs_carrier(g.id, mode, pruned)
        width = int((~pruned).sum()) + carrier
        target = min(g.size, -(-width // options.round_to) * options.round_to)
        if target == g.size and (width < g.size or carrier):
            pruned[:] = False  # rounding reaches the full width: keep the real channels
            carrier = False
            break
        if target == width:
            break
        pruned[restore_order[restored : restored + target - width]] = False
        restored = min(len(restore_order), restored + target - width)
    carrier_index = int(np.flatnonzero(pruned)[0]) if carrier else None
    return pruned, carrier_index
