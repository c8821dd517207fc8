"""BatchNorm: channel-wise, and the scorer and gate of network slimming.

An affine BatchNorm ranks the channels of its group by ``|gamma|``; with ``gamma`` zeroed it
outputs ``beta`` whatever its input, which is what makes a pruned channel a constant. In the
slim model a carrier channel is a BatchNorm channel with ``gamma = 0`` and ``beta = 1``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from slimfx.ir.values import PrunedValues
from slimfx.numerics import float64_array
from slimfx.rules.base import Passthrough, arg_value, first_input, meta_like
from slimfx.rules.registry import register
from slimfx.rules.slicing import sliced_shell


def is_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm (of any class derived from PyTorch's)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def frozen_batchnorms(model: nn.Module) -> list[str]:
    """Names of torchvision's ``FrozenBatchNorm2d`` modules in ``model``: BatchNorms with
    fixed scales and statistics (buffers, not parameters), as detection backbones are built;
    they cannot be sparsity-trained, so they rank nothing."""
    misc = sys.modules.get("torchvision.ops.misc")  # a model holding one has imported it
    if misc is None:
        return []
    return [name for name, m in model.named_modules() if isinstance(m, misc.FrozenBatchNorm2d)]


def normalized_values(values, mean, var, eps, weight=None, bias=None) -> PrunedValues:
    """What BatchNorm with running statistics (and an affine ``weight``/``bias`` that does not
    gate) makes of ``values``: exact values are normalised, the rest become unknown."""
    out = values.as_unknown_unless_exact()
    value = (out.value - float64_array(mean)) / np.sqrt(float64_array(var) + eps)
    if weight is not None:
        value = value * float64_array(weight)
    if bias is not None:
        value = value + float64_array(bias)
    return PrunedValues(value, out.kind, out.pattern).normalized()


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
        return normalized_values(values, bn.running_mean, bn.running_var, bn.eps)

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


#: ``F.batch_norm``'s tensor arguments, by position.
_FUNCTIONAL_TENSORS = ("input", "running_mean", "running_var", "weight", "bias")
_FUNCTIONAL_SETTINGS = (("training", False), ("momentum", 0.1), ("eps", 1e-5))


@register(F.batch_norm)
class FunctionalBatchNorm(Passthrough):
    """``F.batch_norm``, as a BatchNorm subclass with its own ``forward`` calls it (timm's
    ``BatchNormAct2d``: BatchNorm, drop and activation in one module, traced through).

    When its ``weight`` and ``bias`` are a module's ``weight`` and ``bias`` attributes, that
    module is a scorer and gate like any BatchNorm; its tensors are sliced in the slim graph.
    Statistics or scales computed in the graph cannot be sliced: their channels are frozen.
    """

    name = "batchnorm"

    def tensors(self, node: fx.Node) -> dict[str, Any]:
        return {
            name: arg_value(node, position, name, None)
            for position, name in enumerate(_FUNCTIONAL_TENSORS)
        }

    def owner(self, node: fx.Node) -> str | None:
        """The module whose ``weight`` and ``bias`` this call uses, or ``None``."""
        tensors = self.tensors(node)
        weight, bias = tensors["weight"], tensors["bias"]
        if not isinstance(weight, fx.Node) or weight.op != "get_attr":
            return None
        owner, _, name = str(weight.target).rpartition(".")
        if name != "weight":
            return None
        expected_bias = f"{owner}.bias" if owner else "bias"
        if bias is not None and (
            not isinstance(bias, fx.Node) or bias.op != "get_attr" or bias.target != expected_bias
        ):
            return None
        return owner

    def analyze(self, node, ctx):
        layout = super().analyze(node, ctx)
        if layout is None:
            return None
        computed = self.computed(node)
        if computed:
            what = f"batch_norm with {', '.join(computed)} computed in the graph"
            ctx.unsupported(node, [layout], what)
            return layout
        owner = self.owner(node)
        if owner is not None:
            ctx.add_scorer(node, layout, module=owner)
        return layout

    def computed(self, node: fx.Node) -> list[str]:
        """The tensor arguments computed in the graph (not attributes): they cannot be sliced."""
        return [
            name
            for name, value in self.tensors(node).items()
            if name != "input"
            and value is not None
            and not (isinstance(value, fx.Node) and value.op == "get_attr")
        ]

    def propagate(self, node, ctx):
        layout = ctx.layout(node)
        if self.computed(node):
            return PrunedValues.unknown(len(layout))
        tensors = {
            name: ctx.attr(value) if isinstance(value, fx.Node) else value
            for name, value in self.tensors(node).items()
            if name != "input"
        }
        if self.owner(node) is not None:
            return ctx.gate_values(layout, tensors["bias"])
        values = ctx.values(first_input(node))
        if values is None or tensors["running_mean"] is None or tensors["running_var"] is None:
            return PrunedValues.unknown(len(layout))
        eps = float(arg_value(node, 7, "eps", 1e-5))
        mean, var = tensors["running_mean"], tensors["running_var"]
        return normalized_values(values, mean, var, eps, tensors["weight"], tensors["bias"])

    def rewrite(self, node, ctx):
        kept = ctx.kept(node)
        if kept is None or self.computed(node):  # the analysis froze computed tensors
            return ctx.emit(node)
        gated = self.owner(node) is not None
        carriers = np.flatnonzero(ctx.carriers(node)) if gated else np.zeros(0, dtype=np.int64)
        fills = dict(_CARRIER_STATE)
        kwargs = {}
        for name, value in self.tensors(node).items():
            if name == "input" or value is None:
                continue
            kwargs[name] = ctx.sliced_attr(value, 0, kept, (carriers, fills[name]))
        for position, (name, default) in enumerate(_FUNCTIONAL_SETTINGS, start=5):
            kwargs[name] = arg_value(node, position, name, default)
        return ctx.emit_function(node, F.batch_norm, (first_input(node),), kwargs)
