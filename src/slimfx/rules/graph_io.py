"""Rules for the graph's own nodes: inputs, outputs, attributes, Python values, and ops
without a rule."""

from __future__ import annotations

import torch.fx as fx

from slimfx.ir.layout import Layout
from slimfx.ir.values import PrunedValues
from slimfx.rules.base import Rule, node_shape


def _untracked_like(node: fx.Node):
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return None
    if not hasattr(meta, "shape") and isinstance(meta, tuple | list):
        return tuple(
            Layout.untracked(m.shape[1]) if hasattr(m, "shape") and len(m.shape) >= 2 else None
            for m in meta
        )
    return Layout.untracked(meta.shape[1]) if len(meta.shape) >= 2 else None


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
        if ctx.is_opaque(node):
            what = "opaque leaf module (could not be traced)"
        else:
            what = "no rule for op"
        ctx.unsupported(node, layouts, what)
        return _untracked_like(node)

    def propagate(self, node, ctx):
        layout = ctx.output_layouts(node)
        if isinstance(layout, tuple):
            return tuple(PrunedValues.unknown(len(x)) if x is not None else None for x in layout)
        return PrunedValues.unknown(len(layout)) if layout is not None else None
