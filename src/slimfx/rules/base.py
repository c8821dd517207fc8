"""Rule base classes shared by the rule families.

A rule says, for one op kind, three things — one method each:

``analyze(node, ctx)``
    the channel layout of the node's output, coupling, freezing, scoring and sinking through
    ``ctx`` (:class:`slimfx.ir.contexts.AnalysisContext`);
``propagate(node, ctx)``
    the values pruned channels carry at the node's output
    (:class:`slimfx.ir.values.PrunedValues`), from those at its inputs
    (:class:`slimfx.ir.contexts.PropagationContext`);
``rewrite(node, ctx)``
    the node of the slim graph: a sliced module, adjusted arguments
    (:class:`slimfx.ir.contexts.RewriteContext`).

A module rule may also say what input its module takes (:meth:`Rule.expected_input`), for
the error a wrongly shaped example input gets, and what it outputs on the ``meta`` device
(:meth:`Rule.meta_output`), where PyTorch's meta kernel is slow.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.fx as fx

from slimfx.ir.contexts import AnalysisContext, PropagationContext, RewriteContext
from slimfx.ir.layout import Layout
from slimfx.ir.values import PrunedValues


def first_input(node: fx.Node) -> fx.Node | None:
    """The node's first argument when it is a node (the tensor an op works on)."""
    arg = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
    return arg if isinstance(arg, fx.Node) else None


def node_shape(node: Any) -> tuple[int, ...] | None:
    """The recorded output shape of a node producing one tensor, else ``None``."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def moved(layout: Layout, axis: int) -> Layout | None:
    """``layout`` with its channels in tensor dim ``axis``; ``None`` for untracked channels
    moved out of dim 1 (they say nothing about where a tensor's channels are: an op
    without a rule gives its output untracked channels in dim 1, whatever it is)."""
    if axis != 1 and not layout.group_ids():
        return None
    return layout.with_axis(axis)


def is_constant_expression(node: Any) -> bool:
    """Whether ``node`` is computed from parameters, buffers and literals alone (a layer
    scale's ``gamma.view(1, -1, 1, 1)``, ``alpha.sigmoid()``): it does not depend on the
    model's inputs."""
    if not isinstance(node, fx.Node) or node.op == "get_attr":
        return False
    seen, todo = set(), [node]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op in ("placeholder", "output"):
            return False
        todo.extend(current.all_input_nodes)
    return True


def constant_value(node: fx.Node, ctx: Any) -> Any:
    """The value of a constant expression (:func:`is_constant_expression`), computed in
    float64 from the traced module's attributes (the values pruned channels carry are
    float64 whatever the model's dtype)."""
    if node.op == "get_attr":
        value = ctx.attr(node)
        return value.double() if torch.is_tensor(value) and value.is_floating_point() else value
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: constant_value(n, ctx))
    with torch.no_grad():
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        return copy.deepcopy(ctx.module(node)).double()(*args, **kwargs)


def arg_value(node: fx.Node, position: int, name: str, default: Any) -> Any:
    """An argument given by position or keyword."""
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


class Rule:
    """Base class: an op that the analysis understands."""

    #: Short human name used in reports.
    name = "op"
    #: Whether the rule handles layouts whose channels are not in dim 1 (tokens
    #: ``(N, L, C)``, :attr:`slimfx.ir.layout.Layout.axis`). Other rules never see such
    #: layouts: the walk gives their nodes the rule for unknown ops, which freezes them.
    any_channel_axis = False

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Layout | tuple | None:
        """The layout of the node's output (see the module docstring)."""
        raise NotImplementedError

    def propagate(self, node: fx.Node, ctx: PropagationContext) -> PrunedValues | tuple | None:
        """The pruned values at the node's output; by default input dependent."""
        layout = ctx.layout(node)
        return PrunedValues.unknown(len(layout)) if layout is not None else None

    def rewrite(self, node: fx.Node, ctx: RewriteContext) -> fx.Node:
        """The node's counterpart in the slim graph; by default a copy."""
        return ctx.emit(node)

    def expected_input(self, module: torch.nn.Module) -> str | None:
        """The input shape ``module`` takes, e.g. ``"(N, 3, H, W)"``; ``None`` if not known."""
        return None

    def meta_output(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """What ``module`` returns for the meta tensor ``x``, from its settings alone.

        ``None`` (the default) runs the module on the meta device (PyTorch's meta kernels),
        as it does for an input the module would refuse.
        """
        return None


def meta_like(
    x: torch.Tensor, shape: tuple[int, ...] | None = None, *, requires_grad: bool | None = None
) -> torch.Tensor:
    """An empty meta tensor of ``x``'s dtype: of ``x``'s shape and strides, or of ``shape``
    (contiguous).

    ``requires_grad`` defaults to what an op on ``x`` with plain meta parameters gives.
    Built with ``torch.empty_strided``: ``torch.empty_like`` on the meta device is a Python
    decomposition, about 15 times slower, and shape propagation makes one for every
    parameter it meets (``benchmarks/pass_time.py``).
    """
    if requires_grad is None:
        requires_grad = torch.is_grad_enabled() and x.requires_grad
    if shape is None:
        size, stride = x.size(), x.stride()
    else:
        size, stride = shape, _contiguous_strides(shape)
    return torch.empty_strided(
        size, stride, dtype=x.dtype, device="meta", requires_grad=requires_grad
    )


def window_output(
    size: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool = False
) -> int:
    """Output length of a sliding window (PyTorch's formula, ``ceil_mode`` included)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def int_tuple(value: Any, n: int) -> tuple[int, ...] | None:
    """A layer setting (``3``, ``(3, 3)``, ``[3]``) as ``n`` ints, else ``None``."""
    if isinstance(value, int):
        return (value,) * n
    if isinstance(value, tuple | list) and all(isinstance(v, int) for v in value):
        if len(value) == n:
            return tuple(value)
        if len(value) == 1:
            return (value[0],) * n
    return None


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


class Passthrough(Rule):
    """Channel-wise op whose output keeps the input's channels one to one."""

    name = "channel-wise"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Layout | None:
        layout = ctx.layout(first_input(node))
        if layout is None:
            return None
        ctx.space(node, layout)
        return layout

    def propagate(self, node: fx.Node, ctx: PropagationContext) -> PrunedValues | None:
        return ctx.values(first_input(node))


def module_arg_tensor(values: PrunedValues, rank: int) -> torch.Tensor:
    """Values as a float64 tensor shaped ``(1, C, 1, ...)`` for evaluating an op on them."""
    shape = (1, len(values)) + (1,) * max(rank - 2, 0)
    return torch.as_tensor(values.value.copy(), dtype=torch.float64).reshape(shape)
