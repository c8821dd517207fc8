"""What a rule sees of the pass it runs in: one protocol per pass, one shared base.

Each pass walks the traced graph node by node (:func:`slimfx.passes.walk.walk`) and hands
every node's rule a context. The rules are typed against these protocols, so a rule
module imports no pass; the passes supply the implementations.

:class:`GraphView`
    reading the traced graph: modules, shapes, attributes, channel layouts;
:class:`AnalysisContext`
    building the channel graph (``Rule.analyze``);
:class:`PropagationContext`
    following pruned channels' constants (``Rule.propagate``);
:class:`RewriteContext`
    building the slim graph (``Rule.rewrite``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.fx as fx

from slimfx.ir.layout import Layout
from slimfx.ir.values import PrunedValues


class GraphView(Protocol):
    """Reading the traced graph, in every pass."""

    gm: fx.GraphModule

    def module(self, node: fx.Node) -> torch.nn.Module:
        """The submodule a ``call_module`` node calls."""

    def shape(self, arg: Any) -> tuple[int, ...] | None:
        """The recorded output shape of a node producing one tensor, else ``None``."""

    def attr(self, node: fx.Node) -> Any:
        """The value behind a ``get_attr`` node."""

    def layout(self, arg: Any) -> Layout | None:
        """The channel layout of a node's output (``None`` for non-nodes and no tensor)."""

    def output_layouts(self, node: fx.Node) -> Layout | tuple | None:
        """A node's layout as recorded: a :class:`Layout`, a tuple of them, or ``None``."""


class AnalysisContext(GraphView, Protocol):
    """Building the channel graph (see :mod:`slimfx.passes.analyze`)."""

    def layouts_in(self, args: Iterable[Any]) -> list[Layout]:
        """Layouts of every node found (recursively) in ``args``."""

    def is_opaque(self, node: fx.Node) -> bool:
        """Whether a ``call_module`` node calls a module the trace kept as an opaque leaf."""

    def new_group(self, node: fx.Node, size: int) -> Layout:
        """Start a group of ``size`` channels at ``node``'s output."""

    def space(self, node: fx.Node, layout: Layout) -> None:
        """Record ``node``'s output as a member space of its layout's group, if plain."""

    def freeze(self, layouts: Iterable[Layout] | Layout, reason: str) -> None:
        """Keep every channel of the groups in ``layouts``; ``reason`` goes to the report."""

    def unsupported(self, node: fx.Node, layouts: list[Layout], what: str) -> None:
        """An op the analysis cannot see through: freeze, or raise in strict mode."""

    def cut(self, node: fx.Node, piece: Layout) -> None:
        """A split takes ``piece`` out of its groups: each group it cuts is divided into
        one group per piece (by analysing again)."""

    def split_pieces(self, node: fx.Node, kind: str, pieces: list[Layout]) -> None:
        """Record that ``node`` divides a tensor into ``pieces``: into equal parts
        (``kind="chunk"``) or at sizes its arguments give (``"sizes"``)."""
        ...

    def couple(self, node: fx.Node, layouts: list[Layout]) -> None:
        """Tie layouts of equal length position by position (an elementwise op)."""

    def add_scorer(self, node: fx.Node, layout: Layout, module: str | None = None) -> None:
        """Register BatchNorm ``node`` as a scorer of every group its channels belong to.

        ``module`` names the module holding its ``weight`` and ``bias`` (default: the
        node's own module, for a ``call_module`` node)."""

    def add_sink(
        self, node: fx.Node, input_node: fx.Node, padded: bool, has_bias: bool, groups: int
    ) -> None:
        """Record a consumer of ``input_node``'s channels (where constants are folded)."""

    def require_blocks(self, node: fx.Node, layout: Layout, blocks: int) -> None:
        """The layout's group must keep equal counts in ``blocks`` contiguous blocks."""


class PropagationContext(GraphView, Protocol):
    """Following the constants pruned channels carry (see
    :mod:`slimfx.passes.constant_propagation`)."""

    def values(self, arg: Any) -> PrunedValues | None:
        """The pruned values at a node's output (``None`` for non-nodes and no tensor)."""

    def output_values(self, node: fx.Node) -> PrunedValues | tuple | None:
        """A node's values as recorded: :class:`PrunedValues`, a tuple of them, or ``None``."""

    def new_pattern(self, node: fx.Node, old: np.ndarray) -> np.ndarray:
        """Pattern ids after a spatial op at ``node`` (the same in every mode)."""

    def gate_values(self, layout: Layout, beta: torch.Tensor | None) -> PrunedValues:
        """What a BatchNorm with zeroed scaling factors outputs, position by position."""


@dataclass
class SinkFold:
    """How a consumer's input axis is sliced and what is folded into it.

    Attributes
    ----------
    kept : numpy.ndarray or None
        Input positions that stay (kept channels and carriers), ascending; ``None`` when
        the input has no channel layout (every position stays).
    contrib : numpy.ndarray
        Positions of pruned channels whose constant is not zero.
    value : numpy.ndarray
        Their constants.
    partner : numpy.ndarray
        For each, the column (index into ``kept``) of its group's carrier, or -1 to fold
        into the bias.
    carrier_value : numpy.ndarray
        The carrier's value at that column (1 through the ops after its BatchNorm).
    carrier_columns : numpy.ndarray
        Every column (index into ``kept``) that holds a carrier; its weights are replaced by
        the folded sums, zero when nothing is folded into it here.
    """

    kept: np.ndarray | None
    contrib: np.ndarray
    value: np.ndarray
    partner: np.ndarray
    carrier_value: np.ndarray
    carrier_columns: np.ndarray

    @property
    def active(self) -> bool:
        """Whether anything is folded (or a carrier column rewritten) at this consumer."""
        return len(self.contrib) > 0 or len(self.carrier_columns) > 0


class RewriteContext(GraphView, Protocol):
    """Building the slim graph (see :mod:`slimfx.passes.rewrite`)."""

    dtype: torch.dtype | None

    def kept(self, node: Any) -> np.ndarray | None:
        """Positions of ``node``'s output channel axis that stay (carriers included)."""

    def kept_mask(self, node: Any) -> np.ndarray:
        """Boolean over ``node``'s output channel axis: True where the position stays."""

    def carriers(self, node: Any) -> np.ndarray:
        """Boolean over ``kept(node)``: which kept positions are carrier channels."""

    def sink_fold(self, node: fx.Node, inp: fx.Node) -> SinkFold:
        """The slicing and folding of a consumer's input."""

    def cast(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` in the rewrite's dtype (floating tensors only)."""

    def unchanged(self, node: fx.Node) -> torch.nn.Module:
        """An independent copy of the node's module (in the rewrite's dtype)."""

    def emit(
        self,
        node: fx.Node,
        *,
        module: torch.nn.Module | None = None,
        args: tuple | None = None,
        kwargs: dict | None = None,
    ) -> fx.Node:
        """Copy ``node`` into the slim graph (with a new module, args or kwargs)."""

    def emit_function(self, node: fx.Node, fn: Any, args: tuple, kwargs: dict) -> fx.Node:
        """Emit ``fn(*args, **kwargs)`` in place of ``node``."""

    def sliced_attr(
        self,
        attr_node: fx.Node,
        dim: int,
        positions: np.ndarray,
        fill: tuple[np.ndarray, float] | None = None,
    ) -> fx.Node:
        """A ``get_attr`` node holding ``positions`` of the attribute along ``dim``, with
        the entries ``fill[0]`` of the slice set to ``fill[1]``."""

    def new_attr(self, attr_node: fx.Node, value: torch.Tensor) -> fx.Node:
        """A ``get_attr`` node holding ``value`` in place of ``attr_node``'s tensor."""
