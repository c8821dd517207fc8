"""Elementwise binary ops, concatenation and splitting along channels.

1. ``add``/``sub``/``mul``/``div`` of two tensors that both span the channel axis couple their
   channels one to one (a residual add, a squeeze-and-excitation gate): one group;
2. an operand that broadcasts over the channel axis (a scalar, a ``(N, 1, H, W)`` map) does
   not couple; a per-channel parameter or buffer (``(1, C, 1, 1)``) is sliced with the
   channels; a per-channel value computed from parameters alone (a layer scale's
   ``gamma.view(1, -1, 1, 1)``) is indexed by the kept channels where it is used;
3. ``cat`` along channels concatenates layouts (each input keeps its own group; consumers see
   the offsets); along another axis it couples the inputs;
4. ``split``/``chunk`` along channels slice the layout; the slim model splits by the kept
   counts.
"""

from __future__ import annotations

import itertools
import operator

import numpy as np
import torch
import torch.fx as fx

from slimfx.ir.layout import Layout
from slimfx.ir.values import PrunedValues, combine_add, combine_div, combine_mul
from slimfx.rules.base import (
    Rule,
    arg_value,
    constant_value,
    first_input,
    is_constant_expression,
    moved,
    node_shape,
)
from slimfx.rules.registry import register

ADD = (operator.add, operator.iadd, torch.add, "add", "add_")
SUB = (operator.sub, operator.isub, torch.sub, "sub", "sub_")
MUL = (operator.mul, operator.imul, torch.mul, "mul", "mul_")
DIV = (operator.truediv, operator.itruediv, torch.div, "div", "div_")


def _operands(node: fx.Node) -> list:
    first = node.args[0] if node.args else node.kwargs.get("input")
    second = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    return [first, second]


def _channel_dim(operand_shape: tuple, out_rank: int, axis: int = 1) -> int | None:
    """Which dim of a broadcast operand lines up with the output's dim ``axis``."""
    d = axis - (out_rank - len(operand_shape))
    return d if d >= 0 else None


def _output_axis(node: fx.Node, ctx) -> int | None:
    """The output dim holding the channels of the operands with tracked channels (1 when
    none has any), or ``None`` when they disagree. (Untracked channels say nothing about
    where a tensor's channels are: an op without a rule gives its output untracked
    channels in dim 1.)"""
    out_rank = len(node_shape(node))
    axes = set()
    for operand in _operands(node):
        layout, shape = ctx.layout(operand), node_shape(operand)
        if layout is not None and shape is not None and layout.group_ids():
            axes.add(layout.axis + out_rank - len(shape))
    if len(axes) > 1:
        return None
    return axes.pop() if axes else 1


@register(*ADD, *SUB, *MUL, *DIV)
class Binary(Rule):
    """Elementwise arithmetic between tensors, parameters and scalars."""

    name = "elementwise"
    any_channel_axis = True

    def _classify(self, node, ctx):
        """Per operand: ('layout', Layout), ('channel-attr', dim), ('channel-constant', dim),
        ('scalar', v), ('unknown-channel',) or ('other',)."""
        out_shape = node_shape(node)
        out_rank = len(out_shape)
        axis = _output_axis(node, ctx)
        width = out_shape[axis] if out_rank >= 2 and axis is not None else None
        kinds = []
        for operand in _operands(node):
            if isinstance(operand, int | float | bool):
                kinds.append(("scalar", float(operand)))
                continue
            if not isinstance(operand, fx.Node):
                kinds.append(("other",))
                continue
            shape = node_shape(operand)
            if shape is None:
                kinds.append(("other",))  # a runtime Python number
                continue
            d = _channel_dim(shape, out_rank, axis) if width is not None else None
            spans = d is not None and shape[d] == width and width != 1
            layout = ctx.layout(operand)
            if spans and layout is not None and d == layout.axis:
                kinds.append(("layout", layout))
            elif spans and operand.op == "get_attr":
                kinds.append(("channel-attr", d))
            elif spans and is_constant_expression(operand):
                kinds.append(("channel-constant", d))
            elif spans:
                kinds.append(("unknown-channel",))
            else:
                kinds.append(("other",))
        return kinds

    def analyze(self, node, ctx):
        out_shape = node_shape(node)
        if out_shape is None or len(out_shape) < 2:
            return None
        axis = _output_axis(node, ctx)
        if axis is None:
            layouts = ctx.layouts_in(node.args)
            ctx.unsupported(node, layouts, "elementwise op between channels in different dims")
            return Layout.untracked(out_shape[1])
        kinds = self._classify(node, ctx)
        layouts = [k[1] for k in kinds if k[0] == "layout"]
        if any(k[0] == "unknown-channel" for k in kinds):
            ctx.unsupported(node, layouts, "elementwise op with an untracked channel operand")
            return Layout.untracked(out_shape[axis], axis)
        if not layouts:
            return None
        ctx.couple(node, layouts)
        ctx.space(node, layouts[0])
        return moved(layouts[0], axis)

    def _operand_values(self, node, ctx, kind, operand, size):
        if kind[0] == "layout":
            return ctx.values(operand)
        if kind[0] == "scalar":
            return PrunedValues.exact(np.full(size, kind[1]))
        if kind[0] in ("channel-attr", "channel-constant"):
            tensor = constant_value(operand, ctx).detach().double()
            d = kind[1]
            moved = tensor.movedim(d, 0).reshape(tensor.shape[d], -1)
            if moved.shape[1] == 1 or bool((moved == moved[:, :1]).all()):
                return PrunedValues.exact(moved[:, 0].numpy())
            return PrunedValues.unknown(size)
        if isinstance(operand, fx.Node) and operand.op == "get_attr":
            tensor = ctx.attr(operand).detach().double()
            if tensor.numel() > 0 and bool((tensor == tensor.reshape(-1)[0]).all()):
                return PrunedValues.exact(np.full(size, float(tensor.reshape(-1)[0])))
        return PrunedValues.unknown(size)

    def propagate(self, node, ctx):
        layout = ctx.layout(node)
        if layout is None:
            return None
        kinds = self._classify(node, ctx)
        a, b = (
            self._operand_values(node, ctx, k, op, len(layout))
            for k, op in zip(kinds, _operands(node), strict=True)
        )
        target = node.target
        if target in ADD:
            alpha = node.kwargs.get("alpha", 1)
            return combine_add(a, b, float(alpha))
        if target in SUB:
            alpha = node.kwargs.get("alpha", 1)
            return combine_add(a, b, -float(alpha))
        if target in MUL:
            return combine_mul(a, b)
        return combine_div(a, b)

    def rewrite(self, node, ctx):
        kinds = self._classify(node, ctx) if node_shape(node) and len(node_shape(node)) >= 2 else []
        if not any(k[0] in ("channel-attr", "channel-constant") for k in kinds):
            return ctx.emit(node)
        kept = ctx.kept(node)
        operands = _operands(node)
        replaced = {}
        for kind, operand in zip(kinds, operands, strict=True):
            if kind[0] == "channel-attr":
                replaced[operand] = ctx.sliced_attr(operand, kind[1], kept)
            elif kind[0] == "channel-constant":  # computed in the graph: index it here
                index = (*(slice(None),) * kind[1], [int(k) for k in kept])
                replaced[operand] = ctx.emit_function(
                    operand, operator.getitem, (operand, index), {}
                )
        args = tuple(replaced.get(a, a) if isinstance(a, fx.Node) else a for a in node.args)
        kwargs = {
            k: replaced.get(v, v) if isinstance(v, fx.Node) else v for k, v in node.kwargs.items()
        }
        return ctx.emit(node, args=args, kwargs=kwargs)


def _cat_inputs(node: fx.Node) -> tuple[list, int]:
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    dim = arg_value(node, 1, "dim", 0)
    return list(tensors), dim


@register(torch.cat, torch.concat, torch.concatenate)
class Cat(Rule):
    """Concatenation: along channels joins layouts, along other axes couples them."""

    name = "concat"
    any_channel_axis = True

    def analyze(self, node, ctx):
        tensors, dim = _cat_inputs(node)
        out_shape = node_shape(node)
        if out_shape is None or len(out_shape) < 2:
            return None
        dim %= len(out_shape)
        axes = {lay.axis for lay in map(ctx.layout, tensors) if lay and lay.group_ids()}
        if len(axes) > 1:
            what = "concatenation of channels in different dims"
            ctx.unsupported(node, ctx.layouts_in(tensors), what)
            return Layout.untracked(out_shape[1])
        axis = axes.pop() if axes else 1
        layouts = []
        for t in tensors:
            lay = ctx.layout(t)
            if lay is None or lay.axis != axis:  # untracked where the others' channels are
                lay = Layout.untracked(node_shape(t)[axis], axis)
            layouts.append(lay)
        if dim == axis:
            return Layout.concat(layouts)
        ctx.couple(node, layouts)
        ctx.space(node, layouts[0])
        return layouts[0]

    def propagate(self, node, ctx):
        tensors, dim = _cat_inputs(node)
        axis = ctx.layout(node).axis if ctx.layout(node) is not None else 1
        parts = [
            ctx.values(t)
            if ctx.layout(t) is not None and ctx.layout(t).axis == axis
            else PrunedValues.unknown(node_shape(t)[axis])
            for t in tensors
        ]
        if dim % len(node_shape(node)) == axis:
            return PrunedValues.concat(parts)
        first = parts[0].as_unknown_unless_exact()
        same = np.ones(len(first), dtype=bool)
        for p in parts[1:]:
            same &= (p.kind == 0) & (p.value == first.value)
        kind = np.where(same, first.kind, 2).astype(np.int8)
        return PrunedValues(first.value, kind, first.pattern).normalized()


def _split_sizes(node: fx.Node, length: int) -> list[int] | None:
    target = node.target
    if target in (torch.chunk, "chunk"):
        chunks = arg_value(node, 1, "chunks", None)
        step = -(-length // chunks)
        return [min(step, length - i) for i in range(0, length, step)]
    sizes = arg_value(node, 1, "split_size_or_sections", None)
    if sizes is None:
        sizes = node.kwargs.get("split_size")
    if isinstance(sizes, int):
        return [min(sizes, length - i) for i in range(0, length, sizes)]
    if isinstance(sizes, list | tuple) and all(isinstance(s, int) for s in sizes):
        return list(sizes)
    return None


@register(torch.split, "split", torch.chunk, "chunk")
class Split(Rule):
    """``split``/``chunk``: along channels each piece is a slice of the layout."""

    name = "split"
    any_channel_axis = True

    def _dim(self, node) -> int:
        pos = 2
        return arg_value(node, pos, "dim", 0) % len(node_shape(first_input(node)))

    def analyze(self, node, ctx):
        inp = first_input(node)
        layout = ctx.layout(inp)
        if layout is None:
            return None
        if self._dim(node) != layout.axis:
            return tuple(layout for _ in node.meta["tensor_meta"])
        sizes = _split_sizes(node, len(layout))
        if sizes is None:
            ctx.unsupported(node, [layout], "split with sizes computed at run time")
            axis = layout.axis
            return tuple(Layout.untracked(m.shape[axis], axis) for m in node.meta["tensor_meta"])
        bounds = np.cumsum([0, *sizes])
        pieces = [layout.slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        for piece in pieces:
            ctx.cut(node, piece)  # a group split into pieces becomes one group per piece
        ctx.split_pieces(
            node, "chunk" if node.target in (torch.chunk, "chunk") else "sizes", pieces
        )
        return tuple(pieces)

    def propagate(self, node, ctx):
        values = ctx.values(first_input(node))
        layouts = ctx.output_layouts(node)
        if values is None or layouts is None:
            return None
        if self._dim(node) != ctx.layout(first_input(node)).axis:
            return tuple(values for _ in layouts)
        out, start = [], 0
        for lay in layouts:
            out.append(values.take(np.arange(start, start + len(lay))))
            start += len(lay)
        return tuple(out)

    def rewrite(self, node, ctx):
        layouts = ctx.output_layouts(node)
        layout = ctx.layout(first_input(node))
        if layout is None or self._dim(node) != layout.axis:
            return ctx.emit(node)
        mask = ctx.kept_mask(first_input(node))
        sizes, start = [], 0
        for lay in layouts:
            sizes.append(int(mask[start : start + len(lay)].sum()))
            start += len(lay)
        if any(s == 0 for s in sizes):
            raise AssertionError(f"a split piece of {node.name} lost every channel")
        if _split_sizes(node, sum(sizes)) == sizes:
            return ctx.emit(node)  # its own arguments still give these sizes
        return ctx.emit_function(
            node, torch.split, (first_input(node), sizes), {"dim": layout.axis}
        )
