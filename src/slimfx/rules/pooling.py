"""Spatial ops that act on each channel alone: pooling, resampling, padding.

Their effect on a pruned channel's constant:

1. max pooling (its padding is ``-inf``) keeps a constant a constant; a spatial pattern
   ``v*P`` does not survive it (max is not linear);
2. adaptive average pooling, average pooling that ignores padding and resampling are linear:
   constants stay constants, patterns stay patterns;
3. average pooling that counts zero padding and zero padding itself turn constants into a
   pattern; padding with another fill value makes them unknown; reflection and replication
   padding are linear and keep constants.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from slimfx.ir.values import PrunedValues
from slimfx.rules.base import (
    Passthrough,
    arg_value,
    first_input,
    int_tuple,
    meta_like,
    window_output,
)
from slimfx.rules.registry import register


@register(
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
)
class MaxPool(Passthrough):
    """Max pooling: constants stay, patterns become unknown."""

    name = "max-pool"

    def meta_output(self, module, x):
        return _pooled(module, x)

    def propagate(self, node, ctx):
        values = ctx.values(first_input(node))
        return None if values is None else values.as_unknown_unless_exact()


@register(
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    F.interpolate,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReflectionPad3d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.ReplicationPad3d,
)
class LinearSpatial(Passthrough):
    """Linear spatial ops that map a constant field to the same constant."""

    name = "linear-spatial"

    def propagate(self, node, ctx):
        values = ctx.values(first_input(node))
        if values is None:
            return None
        return values.repattern(ctx.new_pattern(node, values.pattern))


@register(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)
class AvgPool(Passthrough):
    """Average pooling: a pattern appears when zero padding is counted in the average."""

    name = "avg-pool"

    def meta_output(self, module, x):
        return _pooled(module, x)

    def counts_padding(self, node, ctx) -> bool:
        if node.op == "call_module":
            pool = ctx.module(node)
            padding, include = pool.padding, pool.count_include_pad
        else:
            padding = arg_value(node, 3, "padding", 0)
            include = arg_value(node, 5, "count_include_pad", True)
        pads = padding if isinstance(padding, tuple | list) else (padding,)
        return bool(include) and any(p > 0 for p in pads)

    def propagate(self, node, ctx):
        values = ctx.values(first_input(node))
        if values is None:
            return None
        new = ctx.new_pattern(node, values.pattern)
        return values.to_pattern(new) if self.counts_padding(node, ctx) else values.repattern(new)


@register(nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, F.pad)
class Pad(Passthrough):
    """Padding: zero fill makes a pattern, other fills make values unknown."""

    name = "pad"

    def propagate(self, node, ctx):
        values = ctx.values(first_input(node))
        if values is None:
            return None
        if node.op == "call_module":
            mode, fill = "constant", getattr(ctx.module(node), "value", 0.0)
        else:
            mode = arg_value(node, 2, "mode", "constant")
            fill = arg_value(node, 3, "value", None) or 0.0
        new = ctx.new_pattern(node, values.pattern)
        if mode != "constant":
            return values.repattern(new)
        if fill != 0:
            return PrunedValues.unknown(len(values))
        return values.to_pattern(new)


def _pooled(pool, x):
    """A window pooling layer's output on the meta device, from its settings.

    PyTorch's pooling meta kernels cost about 80 µs a call (``benchmarks/pass_time.py``);
    adaptive pooling, returned indices and inputs a kernel would refuse run the kernel.
    """
    kernel_size = getattr(pool, "kernel_size", None)
    if kernel_size is None or getattr(pool, "return_indices", False) or not x.is_contiguous():
        return None
    dims = {"1d": 1, "2d": 2, "3d": 3}.get(type(pool).__name__[-2:].lower())
    if dims is None or x.dim() != dims + 2:
        return None
    kernel = int_tuple(kernel_size, dims)
    stride = int_tuple(pool.stride if pool.stride else kernel_size, dims)
    padding = int_tuple(pool.padding, dims)
    dilation = int_tuple(getattr(pool, "dilation", 1), dims)
    if None in (kernel, stride, padding, dilation):
        return None
    spatial = tuple(x.shape[2:])
    if any(p > k // 2 for p, k in zip(padding, kernel, strict=True)) or any(
        s < d * (k - 1) + 1 for s, k, d in zip(spatial, kernel, dilation, strict=True)
    ):
        return None  # PyTorch refuses these (or some kernels do): let it say so
    out = [
        window_output(s, k, st, p, d, pool.ceil_mode)
        for s, k, st, p, d in zip(spatial, kernel, stride, padding, dilation, strict=True)
    ]
    return meta_like(x, (*x.shape[:2], *out)) if min(out) > 0 else None
