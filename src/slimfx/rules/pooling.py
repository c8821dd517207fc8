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
from slimfx.rules.base import Passthrough, arg_value, first_input
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
