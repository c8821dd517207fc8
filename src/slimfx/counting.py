"""Parameter and multiply-accumulate counts."""

from __future__ import annotations

import math

import torch.fx as fx
import torch.nn as nn


def count_params(module: nn.Module) -> int:
    """Number of parameters (shared ones once)."""
    return sum(p.numel() for p in module.parameters())


def count_macs(gm: fx.GraphModule) -> int:
    """Multiply-accumulates of convolution and linear layers for one sample.

    Parameters
    ----------
    gm : torch.fx.GraphModule
        A traced module whose nodes carry ``tensor_meta`` (from :func:`slimfx.trace` or
        :func:`slimfx.passes.rewrite`).
    """
    total = 0
    for node in gm.graph.nodes:
        if node.op != "call_module" or "tensor_meta" not in node.meta:
            continue
        module = gm.get_submodule(str(node.target))
        shape = getattr(node.meta["tensor_meta"], "shape", None)
        if shape is None or len(shape) == 0:
            continue
        per_sample = math.prod(shape) // max(shape[0], 1)
        if isinstance(module, nn.modules.conv._ConvNd):
            fan_in = (module.in_channels // module.groups) * math.prod(module.kernel_size)
            total += per_sample * fan_in
        elif isinstance(module, nn.Linear):
            total += per_sample * module.in_features
    return int(total)
