"""Rule base classes shared by the rule families.

A rule says, for one op kind, three things — one method each:

``analyze(node, ctx)``
    the channel layout of the node's output, coupling, freezing, scoring and sinking through
    ``ctx`` (:class:`slimfx.passes.analyze.AnalyzeContext`);
``propagate(node, ctx)``
    the values pruned channels carry at the node's output
    (:class:`slimfx.ir.values.PrunedValues`), from those at its inputs
    (:class:`slimfx.passes.constant_propagation.PropagateContext`);
``rewrite(node, ctx)``
    the node of the slim graph: a sliced module, adjusted arguments
    (:class:`slimfx.passes.rewrite.RewriteContext`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from slimfx.ir.layout import Layout
from slimfx.ir.values import PrunedValues


def first_input(node: fx.Node) -> fx.Node | None:
    """The node's first argument when it is a node (the tensor an op works on)."""
    arg = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
    return arg if isinstance(arg, fx.Node) else None


def node_shape(node: Any) -> tuple[int, ...] | None:
    """The recorded output shape of a node producing one tensor, else ``None``."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def arg_value(node: fx.Node, position: int, name: str, default: Any) -> Any:
    """An argument given by position or keyword."""
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


class Rule:
    """Base class: an op that the analysis understands."""

    #: Short human name used in reports.
    name = "op"

    def analyze(self, node: fx.Node, ctx: Any) -> Layout | tuple | None:
        raise NotImplementedError

    def propagate(self, node: fx.Node, ctx: Any) -> PrunedValues | tuple | None:
        layout = ctx.layout(node)
        return PrunedValues.unknown(len(layout)) if isinstance(layout, Layout) else None

    def rewrite(self, node: fx.Node, ctx: Any) -> fx.Node:
        return ctx.emit(node)


class Passthrough(Rule):
    """Channel-wise op whose output keeps the input's channels one to one."""

    name = "channel-wise"

    def analyze(self, node, ctx):
        layout = ctx.layout(first_input(node))
        if layout is None:
            return None
        ctx.space(node, layout)
        return layout

    def propagate(self, node, ctx):
        return ctx.values(first_input(node))


def module_arg_tensor(values: PrunedValues, rank: int) -> torch.Tensor:
    """Values as a float64 tensor shaped ``(1, C, 1, ...)`` for evaluating an op on them."""
    shape = (1, len(values)) + (1,) * max(rank - 2, 0)
    return torch.as_tensor(values.value.copy(), dtype=torch.float64).reshape(shape)
