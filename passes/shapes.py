"""The second half of the trace pass: every node's output shape, from PyTorch's meta kernels.

:func:`propagate_shapes` runs the traced graph with a ``torch.fx.Interpreter`` on the
``meta`` device — parameters and buffers replaced by meta tensors of their shapes, so
nothing is computed and the model's state is never touched; a layer whose rule knows its
output (:meth:`slimfx.rules.base.Rule.meta_output`) is not run at all — and records each node's
output in ``node.meta["tensor_meta"]`` (a ``torch.fx.passes.shape_prop.TensorMetadata``,
as ``ShapeProp`` records it). Should an op refuse meta tensors, or the input not fit, the
graph runs for real instead (under ``torch.no_grad``, in eval mode, with copies of the
buffers and inputs), which either records the shapes or fails with PyTorch's own message; that
failure becomes a :class:`slimfx.TraceError` naming the node and what the model's first
layer takes.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.fx as fx
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import TensorMetadata

from slimfx.errors import TraceError, first_line
from slimfx.numerics import eval_mode
from slimfx.rules import expected_input
from slimfx.rules.base import meta_like
from slimfx.rules.registry import module_rule

logger = logging.getLogger(__name__)

_MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)


def tensor_metadata(tensor: torch.Tensor) -> TensorMetadata:
    """``TensorMetadata`` of a dense tensor: shape, dtype, strides, memory format."""
    memory_format = next(
        (f for f in _MEMORY_FORMATS if tensor.is_contiguous(memory_format=f)), None
    )
    return TensorMetadata(
        tensor.shape,
        tensor.dtype,
        tensor.requires_grad,
        tensor.stride(),
        memory_format,
        False,
        {},
    )


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, list | tuple):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


class _NodeFailure(Exception):
    def __init__(self, node: fx.Node):
        super().__init__(node.format_node())
        self.node = node


class _ShapeInterpreter(fx.Interpreter):
    """Runs the graph and records every node's output (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, on_meta: bool):
        super().__init__(gm)
        self.on_meta = on_meta
        self.extra_traceback = False  # the failure names the node itself

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:
            raise _NodeFailure(n) from exc
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = tensor_metadata(result)
        elif _holds_tensor(result):  # tuples, lists and dicts, nested
            n.meta["tensor_meta"] = map_aggregate(
                result, lambda r: tensor_metadata(r) if isinstance(r, torch.Tensor) else r
            )
        n.meta["type"] = type(result)
        return result

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        if self.on_meta and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            rule = module_rule(module)
            output = rule.meta_output(module, args[0]) if rule is not None else None
            if output is not None:
                return output
        state = self._state(module)
        if not state:  # nothing to replace
            return module(*args, **kwargs)
        return torch.func.functional_call(module, state, args, kwargs)

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        if isinstance(value, torch.Tensor):
            return meta_like(value, requires_grad=False) if self.on_meta else value.clone()
        return value

    def _state(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        if self.on_meta:
            named = [*module.named_parameters(), *module.named_buffers()]
            return {name: meta_like(t, requires_grad=False) for name, t in named}
        return {name: b.clone() for name, b in module.named_buffers()}  # BN updates its own


def propagate_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    """Record every node's output shape in ``node.meta["tensor_meta"]`` (see module doc).

    Raises
    ------
    TraceError
        The inputs do not fit the model: names the node, PyTorch's message, the shapes
        given and what the model's first layer takes.
    """
    try:
        _ShapeInterpreter(gm, on_meta=True).run(*[t.to("meta") for t in inputs])
        return
    except _NodeFailure as failure:
        logger.info("meta shape propagation failed (%s); running the graph for real", failure)
    try:
        with torch.no_grad(), eval_mode(gm):  # shapes do not depend on the mode; BN's batch does
            _ShapeInterpreter(gm, on_meta=False).run(*[t.clone() for t in inputs])
    except _NodeFailure as failure:
        node = failure.node
        wants = _expected_by(node, gm)
        raise TraceError(
            f"the example inputs do not fit the model at node {node.format_node()}"
            f"{f' ({wants})' if wants else ''}: {first_line(failure.__cause__)}"
            f"{_first_layer(gm, inputs)}"
        ) from failure.__cause__


def _expected_by(node: fx.Node, gm: fx.GraphModule) -> str | None:
    if node.op != "call_module":
        return None
    return expected_input(gm.get_submodule(str(node.target)), str(node.target))


def _first_layer(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> str:
    """``; got (1, 4, 32, 32) and its first layer, Conv2d feature.0 takes (N, 3, H, W)``."""
    got = f"; got {', '.join(str(tuple(t.shape)) for t in inputs)}"
    for node in gm.graph.nodes:
        wants = _expected_by(node, gm)
        if wants is not None:
            return f"{got} and its first layer, {wants}"
    return got
