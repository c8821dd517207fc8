"""Rules for the graph's own nodes: inputs, outputs, attributes, Python values, and ops
without a rule."""

from __future__ import annotations

from typing import Any

from slimfx.ir.layout import Layout
from slimfx.ir.values import PrunedValues
from slimfx.rules.base import Rule, node_shape


def untracked_like(meta: Any) -> Any:
    """Untracked layouts in the shape of a node's recorded output: one per tensor with a
    channel axis, in the same tuples, lists (as tuples) and dicts; ``None`` elsewhere."""
    if hasattr(meta, "shape"):  # a TensorMetadata (itself a named tuple)
        return Layout.untracked(meta.shape[1]) if len(meta.shape) >= 2 else None
    if isinstance(meta, tuple | list):
        return tuple(untracked_like(m) for m in meta)
    if isinstance(meta, dict):
        return {key: untracked_like(m) for key, m in meta.items()}
    return None


def unknown_like(layout: Any) -> Any:
    """:meth:`PrunedValues.unknown` in the shape of ``layout`` (see :func:`untracked_like`)."""
    if isinstance(layout, Layout):
        return PrunedValues.unknown(len(layout))
    if isinstance(layout, tuple):
        return tuple(unknown_like(x) for x in layout)
    if isinstance(layout, dict):
        return {key: unknown_like(x) for key, x in layout.items()}
    return None


class Placeholder(Rule):
    """A model input: its channels belong to the user's data and never change."""

    name = "input"

    def analyze(self, node, ctx):
        shape = node_shape(node)
        if shape is None or len(shape) < 2:
            return None
        layout = ctx.new_group(node, shape[1])
        ctx.freeze(layout, f"model input {node.name}")
        return layout


class Output(Rule):
    """The model output: its channels (class scores, features) never change."""

    name = "output"

    def analyze(self, node, ctx):
        ctx.freeze(ctx.layouts_in(node.args), "model output")
        return None

    def propagate(self, node, ctx):
        return None


class GetAttr(Rule):
    """A parameter or buffer used directly; rules of the ops using it slice it."""

    name = "attribute"

    def analyze(self, node, ctx):
        return None

    def propagate(self, node, ctx):
        return None


class PythonValue(Rule):
    """A node whose output is no tensor (``x.size(0)``, a Python number): no channels."""

    name = "python value"

    def analyze(self, node, ctx):
        return None

    def propagate(self, node, ctx):
        return None


class Unknown(Rule):
    """An op without a rule: the groups it touches are frozen and its output is untracked."""

    name = "unknown"

    def analyze(self, node, ctx):
        layouts = ctx.layouts_in((node.args, node.kwargs))
        ctx.unsupported(node, layouts, self.what(node, ctx))
        return untracked_like(node.meta.get("tensor_meta"))

    def what(self, node, ctx) -> str:
        """Why the op's channels are frozen, for the report."""
        if ctx.is_opaque(node):
            return "opaque leaf module (could not be traced)"
        return "no rule for op"

    def propagate(self, node, ctx):
        return unknown_like(ctx.output_layouts(node))


class UnknownOnTokens(Unknown):
    """An op whose rule knows channels in dim 1 only, on a tensor that holds them elsewhere
    (tokens ``(N, L, C)``): frozen like an op without a rule."""

    def what(self, node, ctx) -> str:
        return "op with channels outside dim 1 (tokens) and no rule for that"
