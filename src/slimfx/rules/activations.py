"""Channel-wise elementwise ops: activations, dropout, identity-like tensor methods.

Pruned values are pushed through the op by evaluating the op itself on a float64 tensor of
the values (shaped ``(1, C, 1, …)``), so every activation is exact without a hand-written
formula. Positively homogeneous ops
(``f(a*x) = a*f(x)`` for ``a >= 0``) also carry spatial patterns; dropout is the identity at
inference.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from slimfx.rules.base import Passthrough, first_input, module_arg_tensor
from slimfx.rules.folding import gather
from slimfx.rules.registry import register
from slimfx.rules.slicing import sliced_shell

DROPOUT_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


class ElementwiseUnary(Passthrough):
    """An activation applied channel by channel (to tokens too: elementwise)."""

    name = "activation"
    homogeneous = False
    any_channel_axis = True

    def propagate(self, node, ctx):
        values = ctx.values(first_input(node))
        if values is None:
            return None
        rank = len(node.meta["tensor_meta"].shape)
        out = self.evaluate(node, ctx, module_arg_tensor(values, rank))
        if out is None:
            return values.mapped(np.full(len(values), np.nan), self.homogeneous)
        return values.mapped(out.reshape(-1).numpy(), self.homogeneous)

    def evaluate(self, node: fx.Node, ctx, x: torch.Tensor) -> torch.Tensor | None:
        """The op applied to ``x`` (float64), or ``None`` when it cannot be evaluated."""
        if node.op == "call_module":
            module = ctx.module(node)
            state = {
                name: t.detach().to(torch.float64) if t.is_floating_point() else t
                for name, t in [*module.named_parameters(), *module.named_buffers()]
            }
            return torch.func.functional_call(module, state, (x,)) if state else module(x)
        if any(arg is not first_input(node) for arg in node.all_input_nodes):
            return None  # a runtime argument: cannot evaluate ahead of time
        if node.op == "call_method":
            return getattr(x, str(node.target))(*node.args[1:], **node.kwargs)
        return node.target(x, *node.args[1:], **node.kwargs)


@register(
    nn.ReLU,
    nn.LeakyReLU,
    nn.Identity,
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    F.leaky_relu,
    F.leaky_relu_,
    "relu",
    "relu_",
)
class HomogeneousActivation(ElementwiseUnary):
    """ReLU, LeakyReLU, identity: ``f(a*x) = a*f(x)`` for ``a >= 0``."""

    name = "relu-like"
    homogeneous = True


@register(
    nn.ReLU6,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Hardshrink,
    nn.Softshrink,
    nn.LogSigmoid,
    F.relu6,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.hardtanh_,
    F.softplus,
    F.softsign,
    F.tanhshrink,
    F.logsigmoid,
    F.sigmoid,
    F.tanh,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.clip,
    torch.abs,
    torch.exp,
    torch.square,
    operator.neg,
    torch.neg,
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "clamp",
    "clamp_",
    "clip",
    "clamp_min",
    "clamp_min_",
    "abs",
    "exp",
    "neg",
    "square",
)
class Activation(ElementwiseUnary):
    """Any other elementwise activation: exact on constants, not on patterns."""

    name = "activation"


@register(nn.PReLU)
class PReLU(ElementwiseUnary):
    """PReLU: positively homogeneous; a per-channel slope is sliced with the channels."""

    name = "prelu"
    homogeneous = True
    any_channel_axis = False  # its slopes scale dim 1

    def rewrite(self, node, ctx):
        module = ctx.module(node)
        if module.num_parameters == 1 or ctx.layout(first_input(node)) is None:
            return ctx.emit(node, module=ctx.unchanged(node))
        kept = ctx.kept(first_input(node))
        new = sliced_shell(
            module,
            {"num_parameters": len(kept)},
            weight=ctx.cast(gather(module.weight, kept)),
        )
        return ctx.emit(node, module=new)


@register(
    *DROPOUT_MODULES,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    "contiguous",
    "clone",
    "detach",
    "float",
    "double",
    "to",
    "type_as",
    torch.clone,
)
class Identity(Passthrough):
    """Dropout (the identity at inference) and tensor methods that keep values."""

    name = "identity"
    any_channel_axis = True
