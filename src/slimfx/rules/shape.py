"""Ops that move data between axes: flatten, view/reshape, squeeze, spatial reductions, indexing.

The channel axis stays dim 1. A reshape is understood from the recorded shapes:

1. ``(N, C, *S) -> (N, C, *S')``: channels unchanged (``view(N, C, -1)``, ``squeeze(-1)``);
2. ``(N, C, *S) -> (N, C*m, *S'')`` with ``m`` the product of the leading spatial dims:
   channel ``c`` becomes ``c*m .. c*m+m-1`` (``flatten(1)``, ``view(x.size(0), -1)``);
3. anything else (a channel shuffle, a flatten into the batch) has no rule.

Literal sizes in a reshape's arguments (``x.view(-1, 512 * 7 * 7)``) are rewritten to the
slim sizes; sizes computed at run time (``x.size(0)``) need nothing.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.fx as fx

from slimfx.ir.layout import Layout
from slimfx.ir.values import PrunedValues
from slimfx.rules.base import Rule, first_input, node_shape
from slimfx.rules.registry import register


def _reshape_factor(in_shape: tuple, out_shape: tuple) -> int | None:
    """``m`` when the reshape maps channel ``c`` to features ``c*m .. c*m+m-1``, else None."""
    if len(in_shape) < 2 or len(out_shape) < 2 or in_shape[0] != out_shape[0]:
        return None
    channels, spatial = in_shape[1], in_shape[2:]
    if out_shape[1] % channels if channels else True:
        return None
    m = out_shape[1] // channels
    prefix = 1
    for j in range(len(spatial) + 1):
        if prefix == m and math.prod(spatial[j:]) == math.prod(out_shape[2:]):
            return m
        if j < len(spatial):
            prefix *= spatial[j]
    return None


def _channel_count_sources(arg, seen=None) -> list[fx.Node]:
    """Tensors whose channel count a size argument is computed from (``t.size(1)``,
    ``t.shape[1]``, and arithmetic on them)."""
    seen = set() if seen is None else seen
    if not isinstance(arg, fx.Node) or arg in seen or "tensor_meta" in arg.meta:
        return []
    seen.add(arg)
    if arg.op == "call_method" and arg.target == "size" and arg.args[1:2] == (1,):
        return [arg.args[0]]
    if arg.op == "call_function" and arg.target is operator.getitem and arg.args[1] == 1:
        base = arg.args[0]
        if isinstance(base, fx.Node) and (
            (base.op == "call_function" and base.target is getattr and base.args[1] == "shape")
            or (base.op == "call_method" and base.target == "size" and len(base.args) == 1)
        ):
            return [base.args[0]]
    if arg.op in ("call_function", "call_method"):
        return [t for a in arg.args for t in _channel_count_sources(a, seen)]
    return []


def _freeze_foreign_sizes(node: fx.Node, layout: Layout | None, ctx) -> None:
    """A reshape sized by another tensor's channel count (``y.view(B, C, H, W)`` with
    ``C = x.shape[1]``): in the slim model the size follows ``x``'s kept count, so ``x``'s
    channels must keep their width unless ``y`` holds the very same channels."""
    sizes = [a for a in (*node.args[1:], *node.kwargs.values())]
    for source in {t for a in sizes for t in _channel_count_sources(a)}:
        theirs = ctx.layout(source)
        if theirs is None:
            continue
        same = (
            layout is not None
            and np.array_equal(theirs.group, layout.group)
            and np.array_equal(theirs.index, layout.index)
        )
        if not same:
            ctx.freeze(
                [theirs],
                f"its channel count sizes a reshape of another tensor: {node.format_node()}",
            )


@register(
    torch.flatten,
    "flatten",
    "view",
    "reshape",
    torch.reshape,
    "squeeze",
    "unsqueeze",
    torch.squeeze,
    torch.unsqueeze,
    torch.nn.Flatten,
    torch.nn.Unflatten,
)
class Reshape(Rule):
    """Flatten/view/reshape/squeeze understood from shapes (see the module docstring)."""

    name = "reshape"

    def analyze(self, node, ctx):
        inp = first_input(node)
        layout = ctx.layout(inp)
        in_shape, out_shape = node_shape(inp), node_shape(node)
        _freeze_foreign_sizes(node, layout, ctx)
        if layout is None:
            return None
        factor = (
            None if in_shape is None or out_shape is None else _reshape_factor(in_shape, out_shape)
        )
        if factor is None:
            ctx.unsupported(node, [layout], "reshape that moves the channel axis")
            return Layout.untracked(out_shape[1]) if out_shape and len(out_shape) >= 2 else None
        if factor == 1:
            ctx.space(node, layout)
            return layout
        return layout.expand(factor)

    def propagate(self, node, ctx):
        inp = first_input(node)
        values = ctx.values(inp)
        layout = ctx.layout(node)
        if values is None or layout is None:
            return None
        in_shape, out_shape = node_shape(inp), node_shape(node)
        factor = (
            None if in_shape is None or out_shape is None else _reshape_factor(in_shape, out_shape)
        )
        if factor is None:  # the channel axis moved: the analysis froze it
            return PrunedValues.unknown(len(layout))
        if factor == 1:
            return values
        return values.as_unknown_unless_exact().repeat(factor)

    def rewrite(self, node, ctx):
        if node.op == "call_module":
            return ctx.emit(node, module=ctx.unchanged(node))
        if node.target not in ("view", "reshape", torch.reshape):
            return ctx.emit(node)
        kept = ctx.kept(node)
        if kept is None:
            return ctx.emit(node)
        args = list(node.args)
        packed = len(args) == 2 and isinstance(args[1], tuple | list)
        sizes = list(args[1]) if packed else args[1:]
        if "shape" in node.kwargs:
            sizes = list(node.kwargs["shape"])
        if len(sizes) > 1 and isinstance(sizes[1], int) and sizes[1] != -1:
            sizes[1] = len(kept)
        kwargs = dict(node.kwargs)
        if "shape" in kwargs:
            kwargs["shape"] = tuple(sizes)
            return ctx.emit(node, kwargs=kwargs)
        new_args = [args[0], tuple(sizes)] if packed else [args[0], *sizes]
        return ctx.emit(node, args=tuple(new_args))


def _reduced_dims(node: fx.Node, rank: int) -> tuple[int, ...] | None:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None:
        return None
    dims = dims if isinstance(dims, tuple | list) else (dims,)
    if not all(isinstance(d, int) for d in dims):
        return None
    return tuple(sorted(d % rank for d in dims))


@register(torch.mean, "mean", torch.sum, "sum", torch.amax, "amax", torch.amin, "amin")
class SpatialReduce(Rule):
    """A reduction over spatial dims only (``x.mean(dim=(2, 3))``, global pooling)."""

    name = "spatial-reduce"

    def analyze(self, node, ctx):
        inp = first_input(node)
        layout = ctx.layout(inp)
        if layout is None:
            return None
        shape = node_shape(inp)
        dims = _reduced_dims(node, len(shape)) if shape else None
        if dims is None or 0 in dims or 1 in dims:
            ctx.unsupported(node, [layout], "reduction over the batch or channel axis")
            out = node_shape(node)
            return Layout.untracked(out[1]) if out and len(out) >= 2 else None
        ctx.space(node, layout)
        return layout

    def propagate(self, node, ctx):
        values = ctx.values(first_input(node))
        if values is None:
            return None
        values = values.as_unknown_unless_exact()
        if node.target in (torch.sum, "sum"):
            shape = node_shape(first_input(node))
            count = math.prod(shape[d] for d in _reduced_dims(node, len(shape)))
            return PrunedValues(values.value * count, values.kind, values.pattern)
        return values


@register(operator.getitem)
class GetItem(Rule):
    """Indexing: an element of a tuple (after ``split``) or of a dict an op returned, or a
    slice of a tensor."""

    name = "getitem"

    def analyze(self, node, ctx):
        source, index = node.args[0], node.args[1]
        packed = ctx.output_layouts(source) if isinstance(source, fx.Node) else None
        if isinstance(packed, tuple):
            return packed[index] if isinstance(index, int) else None
        if isinstance(packed, dict):
            return packed.get(index)
        layout = ctx.layout(source)
        if layout is None:
            return None
        kind = _tensor_index_kind(index)
        if kind == "spatial":
            ctx.space(node, layout)
            return layout
        if kind == "channel":
            sl = index[1]
            piece = layout.slice(*sl.indices(len(layout))[:2])
            ctx.cut(node, piece)  # a slice of a group becomes a group of its own
            return piece
        ctx.unsupported(node, [layout], "indexing across the channel or batch axis")
        out = node_shape(node)
        return Layout.untracked(out[1]) if out and len(out) >= 2 else None

    def propagate(self, node, ctx):
        source, index = node.args[0], node.args[1]
        packed = ctx.output_values(source) if isinstance(source, fx.Node) else None
        if isinstance(packed, tuple):
            return packed[index]
        if isinstance(packed, dict):
            return packed.get(index)
        values = ctx.values(source)
        if values is None:
            return None
        kind = _tensor_index_kind(index)
        if kind == "spatial":
            return values.repattern(ctx.new_pattern(node, values.pattern))
        if kind == "channel":
            start, stop, _ = index[1].indices(len(values))
            return values.take(np.arange(start, stop))
        return PrunedValues.unknown(len(ctx.layout(node)))

    def rewrite(self, node, ctx):
        source, index = node.args[0], node.args[1]
        if _tensor_index_kind(index) != "channel" or isinstance(ctx.output_layouts(source), tuple):
            return ctx.emit(node)
        start, stop, _ = index[1].indices(len(ctx.layout(source)))
        kept = ctx.kept(source)
        new_start, new_stop = int(np.searchsorted(kept, start)), int(np.searchsorted(kept, stop))
        new_index = (index[0], slice(new_start, new_stop), *index[2:])
        return ctx.emit(node, args=(source, new_index))


def _tensor_index_kind(index) -> str:
    """'spatial' (``x[:, :, a:b]``), 'channel' (``x[:, a:b]``) or 'other'."""
    if not isinstance(index, tuple) or len(index) < 2:
        return "other"
    full = slice(None, None, None)
    if index[0] != full or any(i is None or i is Ellipsis for i in index):
        return "other"
    if index[1] == full:
        rest = index[2:]
        if all(isinstance(i, slice) and i.step in (None, 1) for i in rest):
            return "spatial"
        return "other"
    sl = index[1]
    if (
        isinstance(sl, slice)
        and sl.step in (None, 1)
        and all(isinstance(b, int | type(None)) for b in (sl.start, sl.stop))
        and all(i == full for i in index[2:])
    ):
        return "channel"
    return "other"
