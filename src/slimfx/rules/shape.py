"""Ops that move data between axes: flatten, view/reshape, transpose, spatial reductions,
indexing.

The channel axis is dim 1, or the last dim of a token tensor ``(N, L, C)`` (a transpose or
permute moves it: :attr:`slimfx.ir.layout.Layout.axis`). A reshape is understood from the
recorded shapes:

1. ``(N, C, *S) -> (N, C, *S')``: channels unchanged (``view(N, C, -1)``, ``squeeze(-1)``);
2. ``(N, C, *S) -> (N, C*m, *S'')`` with ``m`` the product of the leading spatial dims:
   channel ``c`` becomes ``c*m .. c*m+m-1`` (``flatten(1)``, ``view(x.size(0), -1)``);
3. ``(*B, C) -> (*B', C)`` with the channels last before and after and the other dims
   regrouped (tokens into a batch of rows, ``x.flatten(0, 1)``, and back, ``reshape_as``);
4. anything else (a channel shuffle, channels split into attention heads) has no rule.

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
from slimfx.rules.base import Rule, first_input, moved, node_shape
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


def _dim_size_sources(arg, seen=None) -> list[tuple[fx.Node, int]]:
    """``(tensor, dim)`` pairs whose sizes a size argument is computed from
    (``t.size(1)``, ``t.shape[-1]``, and arithmetic on them)."""
    seen = set() if seen is None else seen
    if not isinstance(arg, fx.Node) or arg in seen or "tensor_meta" in arg.meta:
        return []
    seen.add(arg)
    found = None
    if arg.op == "call_method" and arg.target == "size" and len(arg.args) == 2:
        found = arg.args[0], arg.args[1]
    if arg.op == "call_function" and arg.target is operator.getitem:
        base = arg.args[0]
        if isinstance(base, fx.Node) and (
            (base.op == "call_function" and base.target is getattr and base.args[1] == "shape")
            or (base.op == "call_method" and base.target == "size" and len(base.args) == 1)
        ):
            found = base.args[0], arg.args[1]
    if found is not None:
        tensor, dim = found
        shape = node_shape(tensor)
        if isinstance(dim, int) and shape is not None and -len(shape) <= dim < len(shape):
            return [(tensor, dim % len(shape))]
        return []
    if arg.op in ("call_function", "call_method"):
        return [t for a in arg.args for t in _dim_size_sources(a, seen)]
    return []


def _freeze_foreign_sizes(node: fx.Node, layout: Layout | None, ctx) -> None:
    """A reshape sized by another tensor's channel count (``y.view(B, C, H, W)`` with
    ``C = x.shape[1]``): in the slim model the size follows ``x``'s kept count, so ``x``'s
    channels must keep their width unless ``y`` holds the very same channels."""
    sizes = [a for a in (*node.args[1:], *node.kwargs.values())]
    for source, dim in {t for a in sizes for t in _dim_size_sources(a)}:
        theirs = ctx.layout(source)
        if theirs is None or theirs.axis != dim:
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
    "reshape_as",
    "view_as",
)
class Reshape(Rule):
    """Flatten/view/reshape/squeeze understood from shapes (see the module docstring)."""

    name = "reshape"
    any_channel_axis = True

    def _mapping(self, node, layout) -> tuple[str, int] | None:
        """``("expand", m)`` (rules 1 and 2 of the module docstring), ``("last", axis)``
        (rule 3) or ``None``."""
        in_shape, out_shape = node_shape(first_input(node)), node_shape(node)
        if in_shape is None or out_shape is None:
            return None
        if layout.axis == 1:
            factor = _reshape_factor(in_shape, out_shape)
            if factor is not None:
                return "expand", factor
        last_kept = (
            layout.axis == len(in_shape) - 1
            and len(out_shape) >= 2
            and out_shape[-1] == in_shape[-1]
            and math.prod(in_shape[:-1]) == math.prod(out_shape[:-1])
        )
        return ("last", len(out_shape) - 1) if last_kept else None

    def analyze(self, node, ctx):
        inp = first_input(node)
        layout = ctx.layout(inp)
        out_shape = node_shape(node)
        _freeze_foreign_sizes(node, layout, ctx)
        if layout is None:
            return None
        mapping = self._mapping(node, layout)
        if mapping is None:
            ctx.unsupported(node, [layout], "reshape that moves the channel axis")
            return Layout.untracked(out_shape[1]) if out_shape and len(out_shape) >= 2 else None
        kind, k = mapping
        if kind == "expand" and k != 1:
            return layout.expand(k)
        out = moved(layout, k if kind == "last" else 1)
        if out is None:
            return None
        if node.target in ("reshape_as", "view_as") and ctx.layout(node.args[1]) != out:
            # the slim size comes from the other tensor: it must hold the same channels
            theirs = ctx.layout(node.args[1])
            touched = [layout] + ([theirs] if theirs is not None else [])
            ctx.unsupported(node, touched, "reshape to the shape of a tensor of other channels")
            return Layout.untracked(out_shape[k], k) if kind == "last" else None
        ctx.space(node, layout)
        return out

    def propagate(self, node, ctx):
        inp = first_input(node)
        values = ctx.values(inp)
        layout = ctx.layout(node)
        if values is None or layout is None:
            return None
        mapping = self._mapping(node, ctx.layout(inp))
        if mapping is None:  # the channel axis moved: the analysis froze it
            return PrunedValues.unknown(len(layout))
        kind, k = mapping
        if kind == "last":
            return values.as_unknown_unless_exact()
        if k == 1:
            return values
        return values.as_unknown_unless_exact().repeat(k)

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
        axis = ctx.layout(node).axis
        if len(sizes) > axis and isinstance(sizes[axis], int) and sizes[axis] != -1:
            sizes[axis] = len(kept)
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


def _permutation(node: fx.Node, rank: int) -> list[int] | None:
    """Where each output dim of a transpose/permute comes from."""
    args = list(node.args[1:])
    if node.target in ("transpose", torch.transpose, "swapaxes", torch.swapaxes):
        dims = args or [node.kwargs.get("dim0"), node.kwargs.get("dim1")]
        if len(dims) != 2 or not all(isinstance(d, int) for d in dims):
            return None
        perm = list(range(rank))
        a, b = (d % rank for d in dims)
        perm[a], perm[b] = perm[b], perm[a]
        return perm
    dims = args[0] if len(args) == 1 and isinstance(args[0], tuple | list) else args
    dims = dims or node.kwargs.get("dims")
    if not dims or len(dims) != rank or not all(isinstance(d, int) for d in dims):
        return None
    return [d % rank for d in dims]


@register("transpose", torch.transpose, "swapaxes", torch.swapaxes, "permute", torch.permute)
class Transpose(Rule):
    """A transpose or permute moves the channel axis (into tokens ``(N, L, C)`` and back)."""

    name = "transpose"
    any_channel_axis = True

    def analyze(self, node, ctx):
        layout = ctx.layout(first_input(node))
        if layout is None:
            return None
        perm = _permutation(node, len(node_shape(node)))
        if perm is None or perm[0] != 0:
            ctx.unsupported(node, [layout], "transpose of the batch axis or of computed dims")
            out = node_shape(node)
            return Layout.untracked(out[1]) if len(out) >= 2 else None
        ctx.space(node, layout)
        return moved(layout, perm.index(layout.axis))

    def propagate(self, node, ctx):
        values = ctx.values(first_input(node))
        return values.as_unknown_unless_exact() if values is not None else None


@register(torch.mean, "mean", torch.sum, "sum", torch.amax, "amax", torch.amin, "amin")
class SpatialReduce(Rule):
    """A reduction over spatial dims or tokens only (``x.mean(dim=(2, 3))``, global
    pooling, ``tokens.mean(1)``)."""

    name = "spatial-reduce"
    any_channel_axis = True

    def analyze(self, node, ctx):
        inp = first_input(node)
        layout = ctx.layout(inp)
        if layout is None:
            return None
        shape = node_shape(inp)
        dims = _reduced_dims(node, len(shape)) if shape else None
        if dims is None or 0 in dims or layout.axis in dims:
            ctx.unsupported(node, [layout], "reduction over the batch or channel axis")
            out = node_shape(node)
            return Layout.untracked(out[1]) if out and len(out) >= 2 else None
        ctx.space(node, layout)
        if len(node_shape(node)) == len(shape):  # keepdim
            return layout
        return moved(layout, layout.axis - sum(d < layout.axis for d in dims))

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
    any_channel_axis = True

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
        kind = _tensor_index_kind(index, layout.axis)
        if kind == "spatial":
            ctx.space(node, layout)
            dropped = sum(isinstance(i, int) for i in index[: layout.axis])
            return moved(layout, layout.axis - dropped)
        if kind == "channel":
            sl = index[layout.axis]
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
        axis = ctx.layout(source).axis
        kind = _tensor_index_kind(index, axis)
        if kind == "spatial":
            return values.repattern(ctx.new_pattern(node, values.pattern))
        if kind == "channel":
            start, stop, _ = index[axis].indices(len(values))
            return values.take(np.arange(start, stop))
        return PrunedValues.unknown(len(ctx.layout(node)))

    def rewrite(self, node, ctx):
        source, index = node.args[0], node.args[1]
        layout = ctx.layout(source)
        if isinstance(ctx.output_layouts(source), tuple) or layout is None:
            return ctx.emit(node)
        if _tensor_index_kind(index, layout.axis) != "channel":
            return ctx.emit(node)
        start, stop, _ = index[layout.axis].indices(len(layout))
        kept = ctx.kept(source)
        new_start, new_stop = int(np.searchsorted(kept, start)), int(np.searchsorted(kept, stop))
        new_index = list(index)
        new_index[layout.axis] = slice(new_start, new_stop)
        return ctx.emit(node, args=(source, tuple(new_index)))


def _forward(sl: slice) -> bool:
    return sl.step is None or (isinstance(sl.step, int) and sl.step > 0)


def _tensor_index_kind(index, axis: int = 1) -> str:
    """'spatial' (``x[:, :, a:b]``, ``tokens[:, 0]``: every position but the batch and
    the channel axis ``axis`` a slice or an int), 'channel' (``x[:, a:b]``: a slice of the
    channel axis only) or 'other'."""
    if not isinstance(index, tuple):
        index = (index,)
    full = slice(None, None, None)
    if index[0] != full or any(i is None or i is Ellipsis for i in index):
        return "other"
    if len(index) <= axis or index[axis] == full:
        rest = [i for p, i in enumerate(index) if p not in (0, axis)]
        if all(isinstance(i, int) or (isinstance(i, slice) and _forward(i)) for i in rest):
            return "spatial" if len(index) > 1 else "other"
        return "other"
    sl = index[axis]
    if (
        isinstance(sl, slice)
        and sl.step in (None, 1)
        and all(isinstance(b, int | type(None)) for b in (sl.start, sl.stop))
        and all(i == full for p, i in enumerate(index) if p != axis)
    ):
        return "channel"
    return "other"
