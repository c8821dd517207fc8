"""BatchNorm: channel-wise, and the scorer and gate of network slimming.

An affine BatchNorm ranks the channels of its group by ``|gamma|``; with ``gamma`` zeroed it
outputs ``beta`` whatever its input, which is what makes a pruned channel a constant. In the
slim model a carrier channel is a BatchNorm channel with ``gamma = 0`` and ``beta = 1``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from slimfx.rules.base import Passthrough, first_input
from slimfx.rules.registry import register
from slimfx.rules.slicing import sliced_shell
from slimfx.ir.values import PrunedValues


@register(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
class BatchNorm(Passthrough):
    """BatchNorm over dim 1 (``(N, C, ...)`` or ``(N, F)``)."""

    name = "batchnorm"

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
        index = torch.from_numpy(np.ascontiguousarray(kept, dtype=np.int64))
        whole = len(kept) == bn.num_features  # kept positions are sorted and distinct
        carriers = np.flatnonzero(ctx.carriers(node)) if bn.affine else ()
        fill_at = torch.from_numpy(carriers) if len(carriers) else None
        tensors = {}
        for name, fill in _CARRIER_STATE:
            value = bn._parameters[name] if name in bn._parameters else bn._buffers.get(name)
            if value is None:
                continue
            value = value.detach()
            value = ctx.cast(value.clone() if whole else value.index_select(0, index))
            if fill_at is not None:
                value.index_fill_(0, fill_at, fill)
            tensors[name] = value
        return ctx.emit(node, module=sliced_shell(bn, {"num_features": len(kept)}, **tensors))


#: BatchNorm state and its value at a carrier channel (gamma 0 and beta 1: it outputs 1).
_CARRIER_STATE = (("weight", 0.0), ("bias", 1.0), ("running_mean", 0.0), ("running_var", 1.0))
