"""Convolutions and linear layers: the ops that consume channels and produce new ones.

1. ``groups == 1`` convolution / linear on ``(N, F)``: a *sink* for its input channels
   (pruned ones are folded into its weights or bias) and the *producer* of a new group;
2. depthwise convolution (``groups == in == out``): channel-wise, its output keeps the
   input's channels one to one;
3. other grouped convolutions: a sink and a producer whose input and output channels come
   in ``groups`` blocks that must each keep the same number of channels, so the slim
   convolution keeps its group count;
4. linear layers on tokens ``(N, L, C)``: the same on the last axis (their input layout
   must hold its channels there; the output's channels are there too);
5. transposed convolutions (``groups == 1``): a sink and a producer like a convolution. A
   constant input reaches each output pixel through a different part of the kernel (the
   pixel's phase), so no bias can take it: the sink counts as zero-padded and constants go
   to a carrier channel, whose kernel then holds their per-tap sums.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from slimfx.ir.layout import Layout
from slimfx.ir.values import EXACT, PrunedValues
from slimfx.rules.base import Rule, arg_value, first_input, int_tuple, meta_like, window_output
from slimfx.rules.folding import fold_weights, gather, slice_consumer, slice_grouped
from slimfx.rules.registry import register
from slimfx.rules.slicing import sliced_shell


def _is_padded(conv: nn.modules.conv._ConvNd) -> bool:
    if conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


def _is_depthwise(conv: nn.modules.conv._ConvNd) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


@register(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class Conv(Rule):
    """Convolution: sink and producer, depthwise channel-wise, grouped frozen."""

    name = "conv"

    def expected_input(self, module):
        spatial = {1: "L", 2: "H, W", 3: "D, H, W"}.get(len(module.kernel_size), "...")
        return f"(N, {module.in_channels}, {spatial})"

    def meta_output(self, module, x):
        """From the settings: PyTorch's convolution meta kernel costs about 100 µs a call,
        a fifth of a CIFAR VGG-19's trace (``benchmarks/pass_time.py``). Unusual inputs
        (unbatched, wrong channel count, too small, other dtypes) and padding modes other
        than zeros (whose limits on the input size only the kernel checks) run the kernel."""
        dims = len(module.kernel_size)
        if module.padding_mode != "zeros":
            return None
        if x.dim() != dims + 2 or x.shape[1] != module.in_channels:
            return None
        if module.weight.dtype != x.dtype or not x.is_contiguous():
            return None
        spatial = tuple(x.shape[2:])
        if module.padding == "same":
            return meta_like(x, (x.shape[0], module.out_channels, *spatial))
        padding = (0,) * dims if module.padding == "valid" else int_tuple(module.padding, dims)
        stride, dilation = int_tuple(module.stride, dims), int_tuple(module.dilation, dims)
        if padding is None or stride is None or dilation is None:
            return None
        out = [
            window_output(*settings)
            for settings in zip(spatial, module.kernel_size, stride, padding, dilation, strict=True)
        ]
        if min(out) <= 0:
            return None
        return meta_like(x, (x.shape[0], module.out_channels, *out))

    def analyze(self, node, ctx):
        conv = ctx.module(node)
        inp = first_input(node)
        in_layout = ctx.layout(inp)
        if conv.groups == 1:
            if in_layout is not None:
                ctx.add_sink(node, inp, _is_padded(conv), conv.bias is not None)
            return ctx.new_group(node, conv.out_channels)
        if _is_depthwise(conv) and in_layout is not None:
            ctx.space(node, in_layout)
            return in_layout
        out = ctx.new_group(node, conv.out_channels)
        ctx.require_blocks(node, out, conv.groups)
        if in_layout is not None:
            ctx.require_blocks(node, in_layout, conv.groups)
            ctx.add_sink(node, inp, _is_padded(conv), conv.bias is not None, conv.groups)
        return out

    def propagate(self, node, ctx):
        conv = ctx.module(node)
        if not _is_depthwise(conv):
            return super().propagate(node, ctx)
        values = ctx.values(first_input(node))
        if values is None:
            return None
        weight = conv.weight.detach().double()
        kernel_sum = weight.flatten(1).sum(1).numpy()
        bias = conv.bias.detach().double().numpy() if conv.bias is not None else 0.0
        zero = (values.kind == EXACT) & (values.value == 0)
        if _is_padded(conv):
            # a constant is not constant after a zero-padded depthwise filter, unless it is 0
            value = np.where(zero, 0.0, np.nan) + bias
            kind = np.where(zero, EXACT, 2).astype(np.int8)
            return PrunedValues(value, kind, np.zeros(len(values), np.int64)).normalized()
        out = values.as_unknown_unless_exact()
        return PrunedValues(out.value * kernel_sum + bias, out.kind, out.pattern).normalized()

    def rewrite(self, node, ctx):
        conv = ctx.module(node)
        if _is_depthwise(conv) and ctx.layout(node) is not None:
            kept = ctx.kept(node)
            bias = ctx.cast(gather(conv.bias, kept)) if conv.bias is not None else None
            sizes = dict.fromkeys(("in_channels", "out_channels", "groups"), len(kept))
            new = sliced_shell(conv, sizes, weight=ctx.cast(gather(conv.weight, kept)), bias=bias)
            return ctx.emit(node, module=new)
        if conv.groups != 1:
            return ctx.emit(node, module=slice_grouped(conv, node, ctx))
        return ctx.emit(node, module=slice_consumer(conv, node, ctx, "in_channels", "out_channels"))


@register(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTranspose(Rule):
    """Transposed convolution (case 5 of the module docstring); grouped ones are frozen."""

    name = "conv-transpose"

    def sliceable(self, node, conv) -> bool:
        """Ungrouped, and called on its input alone (no ``output_size``)."""
        return conv.groups == 1 and len(node.args) == 1 and not node.kwargs

    def analyze(self, node, ctx):
        conv = ctx.module(node)
        inp = first_input(node)
        in_layout = ctx.layout(inp)
        out = ctx.new_group(node, conv.out_channels)
        if not self.sliceable(node, conv):
            ctx.unsupported(
                node,
                [out] + ([in_layout] if in_layout else []),
                "grouped transposed convolution, or one given an output size",
            )
        elif in_layout is not None:
            ctx.add_sink(node, inp, padded=True, has_bias=conv.bias is not None)
        return out

    def rewrite(self, node, ctx):
        conv = ctx.module(node)
        if not self.sliceable(node, conv):
            return ctx.emit(node, module=ctx.unchanged(node))
        new = slice_consumer(conv, node, ctx, "in_channels", "out_channels", transposed=True)
        return ctx.emit(node, module=new)


def feature_layout(layout: Layout | None, shape: tuple[int, ...]) -> Layout | None:
    """A linear layer's input layout as its features (the last axis): ``None`` where it
    holds untracked channels in another dim (an op without a rule marks its output's
    dim 1 untracked, whatever the tensor); tracked channels elsewhere stay, to be frozen."""
    if layout is not None and layout.axis != len(shape) - 1 and not layout.group_ids():
        return None
    return layout


@register(nn.Linear)
class Linear(Rule):
    """Linear layer on ``(N, F)``: sink of its input features, producer of new ones."""

    name = "linear"
    any_channel_axis = True

    def expected_input(self, module):
        return f"(N, ..., {module.in_features})"

    def meta_output(self, module, x):
        """``(*x.shape[:-1], out_features)``: PyTorch's meta kernel for ``linear`` is a
        Python decomposition (about 0.6 ms a call, ``benchmarks/pass_time.py``)."""
        if x.dim() < 1 or x.shape[-1] != module.in_features or module.weight.dtype != x.dtype:
            return None
        return meta_like(x, (*x.shape[:-1], module.out_features))

    def analyze(self, node, ctx):
        inp = first_input(node)
        shape, out_shape = ctx.shape(inp), ctx.shape(node)
        if shape is None or len(shape) < 2:
            return None
        in_layout = feature_layout(ctx.layout(inp), shape)
        if in_layout is not None and in_layout.axis != len(shape) - 1:
            ctx.unsupported(node, [in_layout], "linear layer across a non-channel axis")
            return Layout.untracked(out_shape[1])
        if in_layout is not None:
            ctx.add_sink(node, inp, padded=False, has_bias=ctx.module(node).bias is not None)
        out = ctx.new_group(node, ctx.module(node).out_features)
        return out.with_axis(len(out_shape) - 1)

    def rewrite(self, node, ctx):
        linear = ctx.module(node)
        if ctx.layout(node) is None:
            return ctx.emit(node, module=ctx.unchanged(node))
        new = slice_consumer(linear, node, ctx, "in_features", "out_features")
        return ctx.emit(node, module=new)


@register(F.linear)
class FunctionalLinear(Rule):
    """``F.linear(x, weight, bias)`` with the weight (and bias) a module's attributes, as a
    ``Linear`` subclass with its own ``forward`` calls it (timm's ``Linear``): like
    :class:`Linear` on ``(N, F)``. A weight computed in the graph cannot be sliced: the
    channels it touches are frozen."""

    name = "linear"
    any_channel_axis = True

    def tensors(self, node: fx.Node) -> tuple[Any, Any]:
        return arg_value(node, 1, "weight", None), arg_value(node, 2, "bias", None)

    def sliceable(self, node: fx.Node) -> bool:
        weight, bias = self.tensors(node)
        attrs = [t for t in (weight, bias) if t is not None]
        return all(isinstance(t, fx.Node) and t.op == "get_attr" for t in attrs) and bool(attrs)

    def analyze(self, node, ctx):
        inp = first_input(node)
        shape, out_shape = ctx.shape(inp), ctx.shape(node)
        if shape is None or len(shape) < 2:
            return None
        in_layout = feature_layout(ctx.layout(inp), shape)
        touched = [in_layout] if in_layout else []
        if not self.sliceable(node) or (in_layout and in_layout.axis != len(shape) - 1):
            what = (
                "linear with a weight computed in the graph"
                if not self.sliceable(node)
                else "linear layer across a non-channel axis"
            )
            ctx.unsupported(node, touched, what)
            return Layout.untracked(out_shape[1])
        if in_layout is not None:
            ctx.add_sink(node, inp, padded=False, has_bias=self.tensors(node)[1] is not None)
        return ctx.new_group(node, out_shape[-1]).with_axis(len(out_shape) - 1)

    def rewrite(self, node, ctx):
        if ctx.layout(node) is None or not self.sliceable(node):
            return ctx.emit(node)
        weight_node, bias_node = self.tensors(node)
        rows = ctx.kept(node)
        fold = ctx.sink_fold(node, first_input(node))
        bias_value = ctx.attr(bias_node) if bias_node is not None else None
        weight, bias = fold_weights(ctx.attr(weight_node), bias_value, rows, fold, ctx.dtype)
        carrier_rows = np.flatnonzero(ctx.carriers(node))
        weight[carrier_rows] = 0
        args = [first_input(node), ctx.new_attr(weight_node, weight)]
        if bias_node is not None:
            bias[carrier_rows] = 0
            args.append(ctx.new_attr(bias_node, bias))
        return ctx.emit_function(node, F.linear, tuple(args), {})
