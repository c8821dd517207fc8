"""The channel graph: which channel axes of a traced model must shrink together.

Produced by :func:`slimfx.passes.analyze`. The networkx graph ``ChannelGraph.graph`` has one
node per *channel space* — the channel axis of a node's output whose layout is one group,
whole and in order — named like the fx node (``"features.0"``, ``"add_1"``). An edge is a
coupling: ``kind="identity"`` joins two spaces that keep the same channel indices (a
BatchNorm after a convolution, both inputs of a residual add). A :class:`ChannelGroup` is a
connected component: every member keeps the same set of channels.

Derived axes — a flatten that turns channel ``c`` into features ``c*k .. c*k+k-1``, a
concatenation of several groups — are not nodes of their own: their :class:`Layout` says
which group channel sits at each position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch.fx as fx

from slimfx.ir.layout import Layout


@dataclass
class Scorer:
    """A BatchNorm whose scaling factors rank (and gate) channels of a group.

    Attributes
    ----------
    module : str
        Qualified name of the BatchNorm module.
    group_index : numpy.ndarray
        Channels of the group this BatchNorm covers.
    bn_channel : numpy.ndarray
        The BatchNorm channel of each of them.
    node : str
        The fx node that calls the BatchNorm.
    """

    module: str
    group_index: np.ndarray
    bn_channel: np.ndarray
    node: str = ""


@dataclass
class Sink:
    """An op that consumes channels and mixes them (a convolution or linear layer's input).

    Attributes
    ----------
    node, input : str
        The consumer and the node whose output it consumes.
    padded : bool
        It zero-pads its input, so a constant channel is not constant to it at the borders.
    has_bias : bool
        It has a bias that constants can be folded into (otherwise a carrier channel keeps
        the layer's structure, so the slim model stays buildable from its cfg).
    groups : int
        Convolution groups; a grouped convolution sees each input block only from its own
        output block, so one carrier channel cannot serve it.
    """

    node: str
    input: str
    padded: bool
    has_bias: bool = True
    groups: int = 1


@dataclass
class ChannelGroup:
    """Channel axes that keep the same channel indices.

    Attributes
    ----------
    id : int
        Position of the group in ``ChannelGraph.groups``.
    name : str
        The first space of the group in graph order; stable for a given model.
    size : int
        Number of channels.
    members : list of str
        Channel spaces (fx node names) in the group.
    scorers : list of Scorer
        BatchNorms governing the group's channels; empty when none does.
    frozen : list of str
        Why the group must keep every channel; empty when it may be pruned.
    blocks : int
        The channels form this many equal contiguous blocks (the groups of a grouped
        convolution) that must each keep the same number of channels.
    """

    id: int
    name: str
    size: int
    members: list[str] = field(default_factory=list)
    scorers: list[Scorer] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    blocks: int = 1

    @property
    def prunable(self) -> bool:
        """True when some BatchNorm governs the group and nothing froze it."""
        return bool(self.scorers) and not self.frozen


@dataclass
class ChannelGraph:
    """Result of the ``analyze`` pass (see the module docstring).

    Attributes
    ----------
    gm : torch.fx.GraphModule
        The traced model the analysis refers to.
    graph : networkx.Graph
        Channel spaces and their couplings.
    groups : list of ChannelGroup
    layouts : dict
        fx node name → :class:`Layout` of its output's channel axis (a tuple of layouts for
        nodes that return several tensors).
    sinks : list of Sink
        Ops where pruned channels' values are folded into the consumer.
    notes : list of str
        What the trace and the analysis worked around (opaque leaves, unknown ops).
    splits : list of (str, str, list of list of int)
        Each ``chunk`` or ``split`` along channels: its node, ``"chunk"`` or ``"sizes"``,
        and per piece the ids of the groups the piece holds. Where the slim layers replace
        the model's own (``SlimOptions.keep_forward``), the model's forward still chunks
        into equal parts and splits at its own sizes: the pieces of a chunk must keep equal
        widths, those of a split their widths.
    """

    gm: fx.GraphModule
    graph: nx.Graph
    groups: list[ChannelGroup]
    layouts: dict[str, object]
    sinks: list[Sink]
    notes: list[str] = field(default_factory=list)
    splits: list[tuple[str, str, list[list[int]]]] = field(default_factory=list)

    def layout(self, node: fx.Node | str) -> Layout | None:
        """The channel layout of a node's output (``None`` for non-tensors and unknown)."""
        name = node if isinstance(node, str) else node.name
        lay = self.layouts.get(name)
        return lay if isinstance(lay, Layout) else None

    def group_of(self, space: str) -> ChannelGroup:
        """The group holding channel space ``space`` (an fx node name)."""
        lay = self.layout(space)
        if lay is None or lay.plain_group() is None:
            raise KeyError(f"{space!r} is not a channel space of one group")
        return self.groups[lay.plain_group()]

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def frozen_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.frozen]

    def summary(self) -> str:
        """One line per group: name, size, scorers, frozen reasons."""
        lines = []
        for g in self.groups:
            bns = ", ".join(s.module for s in g.scorers) or "-"
            state = "frozen: " + "; ".join(g.frozen) if g.frozen else "prunable"
            if not g.scorers and not g.frozen:
                state = "no BatchNorm"
            lines.append(f"[{g.id}] {g.name} ({g.size} ch) scorers: {bns} — {state}")
        return "\n".join(lines)
