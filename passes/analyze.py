"""Pass 2 — analyze: the channel dependency graph of a traced model.

Walks the graph in order and asks each node's rule (:mod:`slimfx.rules`) for the layout of
its output. Rules create groups (a convolution's output channels), couple spaces that must
keep the same channels (a residual add), register BatchNorms as scorers and record sinks
(convolution/linear inputs where pruned channels are folded away). Afterwards the connected
components of the networkx graph become the :class:`ChannelGroup` list.

Frozen — kept whole — are the groups that touch

1. the model's inputs or outputs (the first layer's input and the classifier's output never
   change);
2. an op without a rule (the node is named in the reason; ``strict=True`` raises instead);
3. an opaque leaf module (see the trace pass);
4. a coupling whose channel layouts do not line up one to one.

The pass reads shapes only, never weights.

The file runs to about 340 lines: its context is the one place where layouts are built,
tied, frozen and cut, and reads best whole; dividing cut groups is :mod:`passes.partition`.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx
import numpy as np
import torch.fx as fx

from slimfx.errors import UnsupportedError
from slimfx.ir.channel_graph import ChannelGraph, ChannelGroup, Scorer, Sink
from slimfx.ir.layout import UNTRACKED, Layout
from slimfx.passes.partition import (
    MAX_SPLIT_ROUNDS,
    matching_cuts,
    refined_partitions,
    same_partitions,
)
from slimfx.passes.trace import trace_notes
from slimfx.passes.walk import GraphReader, walk
from slimfx.rules.base import Rule

logger = logging.getLogger(__name__)


class AnalyzeContext(GraphReader):
    """What rules see and do while the graph is analysed
    (:class:`slimfx.ir.contexts.AnalysisContext`)."""

    def __init__(
        self,
        gm: fx.GraphModule,
        strict: bool,
        partitions: Mapping[str, list[np.ndarray]] | None = None,
    ):
        super().__init__(gm, layouts={})
        self.strict = strict
        self.partitions = dict(partitions or {})
        self.origins: list[tuple[str, np.ndarray]] = []  # per group: its node, its channels
        self.cuts: list[tuple[int, np.ndarray]] = []
        self.opaque = set(trace_notes(gm).opaque)
        self.graph = nx.Graph()
        self.group_names: list[str] = []
        self.group_sizes: list[int] = []
        self.frozen: dict[int, list[str]] = defaultdict(list)
        self.scorers: dict[int, list[Scorer]] = defaultdict(list)
        self.sinks: list[Sink] = []
        self.notes: list[str] = []
        self.blocks: dict[int, set[int]] = defaultdict(set)
        self.splits: list[tuple[str, str, list[Layout]]] = []

    def layouts_in(self, args: Iterable[Any]) -> list[Layout]:
        """Layouts of every node found (recursively) in ``args``."""
        found: list[Layout] = []
        fx.node.map_arg(args, lambda n: found.append(self.layouts.get(n.name)) or n)
        out: list[Layout] = []
        for lay in found:
            if isinstance(lay, Layout):
                out.append(lay)
            elif isinstance(lay, tuple):
                out.extend(x for x in lay if isinstance(x, Layout))
        return out

    def is_opaque(self, node: fx.Node) -> bool:
        return node.op == "call_module" and str(node.target) in self.opaque

    # -- building ----------------------------------------------------------------------
    def new_group(self, node: fx.Node, size: int) -> Layout:
        """Start a group of ``size`` channels at ``node``'s output — or one group per part,
        named ``node[k]``, where a split further on cuts it into parts (:meth:`cut`)."""
        parts = self.partitions.get(node.name)
        if not parts:
            gid = len(self.group_names)
            self.group_names.append(node.name)
            self.group_sizes.append(int(size))
            self.origins.append((node.name, np.arange(size)))
            self.graph.add_node(node.name, size=int(size), op=self._op_label(node))
            return Layout.plain(gid, size)
        group = np.empty(size, dtype=np.int64)
        index = np.empty(size, dtype=np.int64)
        for k, part in enumerate(parts):
            gid, name = len(self.group_names), f"{node.name}[{k}]"
            self.group_names.append(name)
            self.group_sizes.append(len(part))
            self.origins.append((node.name, part))
            self.graph.add_node(name, size=len(part), op=self._op_label(node))
            group[part] = gid
            index[part] = np.arange(len(part))
        return Layout(group, index)

    def cut(self, node: fx.Node, piece: Layout) -> None:
        """A split takes ``piece`` out of the groups it holds part of.

        Where it cuts a group, the group is frozen in this analysis and the cut recorded:
        :func:`analyze` then analyses again with the group's channels divided into one
        group per piece, each pruned on its own.
        """
        for gid in piece.group_ids():
            channels = np.unique(piece.index[piece.group == gid])
            if len(channels) == self.group_sizes[gid]:
                continue
            self.cuts.append((gid, channels))
            reason = f"split through the middle of a channel group: {node.format_node()}"
            if reason not in self.frozen[gid]:
                self.frozen[gid].append(reason)

    def space(self, node: fx.Node, layout: Layout) -> None:
        """Record ``node``'s output as a member space of its layout's group, if plain."""
        gid = layout.plain_group()
        if gid is None:
            return
        root = self.group_names[gid]
        if node.name != root:
            self.graph.add_node(node.name, size=len(layout), op=self._op_label(node))
            self.graph.add_edge(root, node.name, kind="identity", via=node.name)

    def freeze(self, layouts: Iterable[Layout] | Layout, reason: str) -> None:
        """Keep every channel of the groups in ``layouts``; ``reason`` goes to the report."""
        if isinstance(layouts, Layout):
            layouts = [layouts]
        for lay in layouts:
            for gid in lay.group_ids():
                if reason not in self.frozen[gid]:
                    self.frozen[gid].append(reason)

    def unsupported(self, node: fx.Node, layouts: list[Layout], what: str) -> None:
        """An op the analysis cannot see through: freeze, or raise in strict mode."""
        reason = f"{what}: {node.format_node()}"
        if self.strict and any(lay.group_ids() for lay in layouts):
            raise UnsupportedError(f"strict mode: {reason}")
        if layouts:
            self.notes.append(reason)
        self.freeze(layouts, reason)

    def split_pieces(self, node: fx.Node, kind: str, pieces: list[Layout]) -> None:
        """Record that ``node`` divides a tensor into ``pieces``: into equal parts
        (``kind="chunk"``) or at sizes its arguments give (``"sizes"``)."""
        self.splits.append((node.name, kind, pieces))

    def couple(self, node: fx.Node, layouts: list[Layout]) -> None:
        """Tie layouts of equal length position by position (an elementwise op)."""
        if len(layouts) < 2:
            return
        base = layouts[0]
        for other in layouts[1:]:
            if len(other) != len(base):
                self.unsupported(node, layouts, "channel axes of different sizes meet")
                return
            if other.axis != base.axis:
                self.unsupported(node, layouts, "channels in different dims meet")
                return
            pairs = self._group_pairs(base, other)
            if pairs is None:
                self.cuts += matching_cuts(base, other, self.group_sizes)
                self.cuts += matching_cuts(other, base, self.group_sizes)
                self.freeze(
                    layouts, f"channel layouts do not line up one to one at {node.format_node()}"
                )
                continue
            for a, b in pairs:
                self.graph.add_edge(
                    self.group_names[a], self.group_names[b], kind="identity", via=node.name
                )

    def _group_pairs(self, a: Layout, b: Layout) -> set[tuple[int, int]] | None:
        same = (a.group == b.group) & (a.index == b.index)
        if same.all():
            return set()
        if not np.array_equal(a.index, b.index):
            return None
        if np.any((a.group == UNTRACKED) != (b.group == UNTRACKED)):
            return None
        pairs = {(int(x), int(y)) for x, y in zip(a.group, b.group, strict=True) if x != y}
        for x, y in pairs:
            if self.group_sizes[x] != self.group_sizes[y]:
                return None
        # a group may meet several (a ghost module's [A, A] against a shortcut cut into
        # [B0, B1]: A, B0 and B1 become one group, held twice by both tensors); each must
        # be whole in its layout
        for lay, ids in ((a, {x for x, _ in pairs}), (b, {y for _, y in pairs})):
            for g in ids:
                if len(np.unique(lay.index[lay.group == g])) != self.group_sizes[g]:
                    return None
        return pairs

    def add_scorer(self, node: fx.Node, layout: Layout, module: str | None = None) -> None:
        """Register BatchNorm ``node`` as a scorer of every group its channels belong to."""
        name = str(node.target) if module is None else module
        for gid in layout.group_ids():
            pos = np.flatnonzero(layout.group == gid)
            self.scorers[gid].append(Scorer(name, layout.index[pos], pos, node.name))

    def add_sink(
        self,
        node: fx.Node,
        input_node: fx.Node,
        padded: bool,
        has_bias: bool = True,
        groups: int = 1,
    ) -> None:
        """Record a consumer of ``input_node``'s channels (where constants are folded)."""
        self.sinks.append(Sink(node.name, input_node.name, padded, has_bias, groups))

    def require_blocks(self, node: fx.Node, layout: Layout, blocks: int) -> None:
        """The layout's group must keep equal counts in ``blocks`` contiguous blocks."""
        gid = layout.plain_group()
        if gid is None:
            self.freeze([layout], f"grouped convolution on mixed channels: {node.format_node()}")
        else:
            self.blocks[gid].add(int(blocks))

    def _op_label(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return type(self.module(node)).__name__
        return getattr(node.target, "__name__", str(node.target))


def analyze(gm: fx.GraphModule, *, strict: bool = False) -> ChannelGraph:
    """Build the channel graph of a traced model.

    Parameters
    ----------
    gm : torch.fx.GraphModule
        A module from :func:`slimfx.trace` (its nodes must carry ``tensor_meta``).
    strict : bool, default False
        Raise :class:`UnsupportedError` at the first op without a rule that touches
        channels, instead of freezing its groups.

    Returns
    -------
    ChannelGraph

    Examples
    --------
    >>> import torch, torchvision, slimfx
    >>> gm = slimfx.trace(torchvision.models.vgg11_bn(), torch.randn(1, 3, 32, 32))
    >>> cg = analyze(gm)
    >>> len(cg.prunable_groups)
    8
    """
    if not any("tensor_meta" in n.meta for n in gm.graph.nodes):
        raise ValueError("analyze needs a GraphModule with shapes: use slimfx.trace()")
    shared = _shared_modules(gm)
    partitions: dict[str, list[np.ndarray]] = {}
    for _ in range(MAX_SPLIT_ROUNDS):
        ctx = AnalyzeContext(gm, strict, partitions)

        def step(node: fx.Node, rule: Rule, ctx: AnalyzeContext = ctx) -> Any:
            layout = rule.analyze(node, ctx)
            if node.op == "call_module" and node.target in shared:
                ctx.layouts[node.name] = layout
                touched = ctx.layouts_in((node.args, node.kwargs)) + ctx.layouts_in([node])
                reason = f"module {node.target} is called more than once (shared weights)"
                ctx.freeze(touched, reason)
            return layout

        walk(gm, ctx.modules, step, into=ctx.layouts, layouts=ctx.layouts)
        refined = refined_partitions(
            ctx.graph, ctx.group_names, ctx.origins, ctx.cuts, ctx.partitions
        )
        if not ctx.cuts or same_partitions(refined, partitions):
            break
        partitions = refined
    return _finish(ctx)


def _shared_modules(gm: fx.GraphModule) -> set[str]:
    """Modules with parameters or buffers that more than one node calls."""
    calls: dict[str, int] = defaultdict(int)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] += 1
    shared = set()
    for target, count in calls.items():
        if count < 2:
            continue
        module = gm.get_submodule(target)
        has_state = next(module.parameters(), None) is not None
        if has_state or next(module.buffers(), None) is not None:
            shared.add(target)
    return shared


def _finish(ctx: AnalyzeContext) -> ChannelGraph:
    names = ctx.group_names
    component_of: dict[str, int] = {}
    order = {name: i for i, name in enumerate(names)}
    components = sorted(
        (
            sorted(c, key=lambda s: order.get(s, len(order)))
            for c in nx.connected_components(ctx.graph)
        ),
        key=lambda c: order.get(c[0], len(order)),
    )
    groups: list[ChannelGroup] = []
    for members in components:
        roots = [m for m in members if m in order]
        if not roots:
            continue
        gid = len(groups)
        groups.append(ChannelGroup(gid, roots[0], ctx.group_sizes[order[roots[0]]], members))
        for m in members:
            component_of[m] = gid
    table = {pre: component_of[name] for pre, name in enumerate(names)}
    new_ids = np.array([table[pre] for pre in range(len(names))], dtype=np.int64)
    for pre, reasons in ctx.frozen.items():
        grp = groups[table[pre]]
        grp.frozen.extend(r for r in reasons if r not in grp.frozen)
    for pre, scorers in ctx.scorers.items():
        groups[table[pre]].scorers.extend(scorers)
    for pre, counts in ctx.blocks.items():
        grp = groups[table[pre]]
        grp.blocks = math.lcm(grp.blocks, *counts)
        if grp.size % grp.blocks:
            grp.frozen.append(f"grouped convolutions split it into {sorted(counts)} blocks")

    def relabel(lay: Any) -> Any:
        return lay.relabel(new_ids) if isinstance(lay, Layout) else lay

    layouts: dict[str, Any] = {}
    for name, lay in ctx.layouts.items():
        layouts[name] = tuple(relabel(x) for x in lay) if isinstance(lay, tuple) else relabel(lay)
    for grp in groups:
        if not grp.scorers and not grp.frozen:
            logger.debug("group %s has no BatchNorm: it keeps its width", grp.name)
    notes = trace_notes(ctx.gm).lines() + ctx.notes
    splits = [
        (name, kind, [[int(new_ids[g]) for g in piece.group_ids()] for piece in pieces])
        for name, kind, pieces in ctx.splits
    ]
    return ChannelGraph(ctx.gm, ctx.graph, groups, layouts, ctx.sinks, notes, splits)
