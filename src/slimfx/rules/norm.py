"""BatchNorm: channel-wise, and the scorer and gate of network slimming.

An affine BatchNorm ranks the channels of its group by ``|gamma|``; with ``gamma`` zeroed it
outputs ``beta`` whatever its input, which is what makes a pruned channel a constant. In the
slim model a carrier channel is a BatchNorm channel with ``gamma = 0`` and ``beta = 1``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from slimfx.ir.values import PrunedValues
from slimfx.rules.base import Passthrough, first_input, meta_like
from slimfx.rules.registry import register
from slimfx.rules.slicing import sliced_shell


def is_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm (of any class derived from PyTorch's)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


#: The ranks each BatchNorm class takes.
_RANKS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}

#: The input each BatchNorm class takes, by its channel count ``c``.
_INPUT_SHAPES = {
    nn.BatchNorm1d: "(N, {c}) or (N, {c}, L)",
    nn.BatchNorm3d: "(N, {c}, D, H, W)",
}


@register(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
class BatchNorm(Passthrough):
    """BatchNorm over dim 1 (``(N, C, ...)`` or ``(N, F)``)."""

    name = "batchnorm"

    def expected_input(self, module):
        shape = next(
            (text for cls, text in _INPUT_SHAPES.items() if isinstance(module, cls)),
            "(N, {c}, H, W)",
        )
        return shape.format(c=module.num_features)

    def meta_output(self, module, x):
        """The input's shape: PyTorch's BatchNorm meta kernel is a Python decomposition that
        costs about 1 ms a call, most of the trace of a VGG (``benchmarks/pass_time.py``)."""
        ranks = next((r for cls, r in _RANKS.items() if isinstance(module, cls)), None)
        if (ranks is not None and x.dim() not in ranks) or x.dim() < 2:
            return None
        weight = module.weight if module.weight is not None else module.running_mean
        if x.shape[1] != module.num_features or (weight is not None and weight.dtype != x.dtype):
            return None
        return meta_like(x)

    def analyze(self, node, ctx):
        layout = super().analyze(node, ctx)
        if layout is not None and ctx.module(node).affine:
            ctx.add_scorer(node, layout)
        return layout

    def propagate(self, node, ctx):
        bn = ctx.module(node)
        layout = ctx.layout(node)
        if bn.affine:
            return ctx.gate_values(layout, bn.bias)
        values = ctx.values(first_input(node))
        if values is None or bn.running_mean is None:
            return PrunedValues.unknown(len(layout))
        mean = bn.running_mean.detach().double().numpy()
        std = torch.sqrt(bn.running_var.detach().double() + bn.eps).numpy()
        out = values.as_unknown_unless_exact()
        value = (out.value - mean) / std
        return PrunedValues(value, out.kind, out.pattern).normalized()

    def rewrite(self, node, ctx):
        bn = ctx.module(node)
        kept = ctx.kept(node)
        if kept is None:
            return ctx.emit(node, module=ctx.unchanged(node))
        index = torch.as_tensor(kept, dtype=torch.long)
        carriers = torch.as_tensor(np.flatnonzero(ctx.carriers(node)) if bn.affine else [])
        tensors = {}
        for name, fill in _CARRIER_STATE:
            value = bn._parameters[name] if name in bn._parameters else bn._buffers.get(name)
            if value is None:
                continue
            value = ctx.cast(value.detach().index_select(0, index))
            value[carriers.long()] = fill
            tensors[name] = value
        return ctx.emit(node, module=sliced_shell(bn, {"num_features": len(kept)}, **tensors))


#: BatchNorm state and its value at a carrier channel (gamma 0 and beta 1: it outputs 1).
_CARRIER_STATE = (("weight", 0.0), ("bias", 1.0), ("running_mean", 0.0), ("running_var", 1.0))
