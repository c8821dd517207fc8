"""Pass 1 — trace: turn an ``nn.Module`` into a ``torch.fx.GraphModule`` with shapes.

Handled on the way:

1. modules constructed inside ``forward`` (``nn.AvgPool2d(2)(x)``) are traced through into
   their functional form, when they hold no parameters or buffers;
2. a submodule whose Python code cannot be traced symbolically (it branches on ``x.shape``,
   iterates a tensor …) becomes an opaque leaf: it is called as a whole, and the channels it
   touches are frozen later; the trace notes say so;
3. data-dependent control flow in the model's own ``forward`` raises :class:`TraceError`
   naming the file, line and code of the construct;
4. every node's output shape is recorded (``node.meta["tensor_meta"]``) by running the graph
   on the ``meta`` device, so no real computation happens and the model's buffers are never
   touched; the layers :mod:`slimfx.shapes` knows get their output shape from their
   settings without running. Should an op refuse meta tensors, the graph runs for real
   instead, under ``torch.no_grad`` with copies of the buffers.

The traced module shares its submodules with the model (as ``torch.fx.symbolic_trace``
does); it never modifies them.
"""

from __future__ import annotations

import collections
import copy
import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch.fx.immutable_collections import immutable_list
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata

import slimfx.rules  # noqa: F401  (registers the rules that decide leaves)
from slimfx.errors import TraceError
from slimfx.numerics import as_input_tuple, eval_mode
from slimfx.rules.registry import module_rule
from slimfx.shapes import output_shape
from slimfx.validation import expected_input

try:  # a GraphModule that generates its code on first use (torch >= 2.2)
    from torch.fx._lazy_graph_module import _LazyGraphModule
except ImportError:  # pragma: no cover - older torch: generate it at once
    _LazyGraphModule = fx.GraphModule

logger = logging.getLogger(__name__)

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_PASSES_DIR = os.path.dirname(os.path.abspath(__file__))
_SLIMFX_DIR = os.path.dirname(os.path.abspath(__import__("slimfx").__file__))


@dataclass
class TraceNotes:
    """What the tracer had to work around, for the report.

    Attributes
    ----------
    opaque : dict
        Qualified name of each submodule kept as an opaque leaf → why it could not be traced.
    inlined : list of str
        Modules constructed inside ``forward`` that were traced into their functional form.
    """

    opaque: dict[str, str] = field(default_factory=dict)
    inlined: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"opaque leaf {name}: {why}" for name, why in self.opaque.items()]
        out += [f"traced through {what}" for what in self.inlined]
        return out


def _user_frame(exc: BaseException) -> str:
    """``file:line: code`` of the innermost frame outside torch and slimfx."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        if not path.startswith((_TORCH_DIR + os.sep, _PASSES_DIR + os.sep, _SLIMFX_DIR + os.sep)):
            return f"{frame.filename}:{frame.lineno}: `{(frame.line or '').strip()}`"
    return "unknown location"


class _ModuleStack(collections.OrderedDict):
    """The tracer's module stack; fx copies it into every node's ``meta["nn_module_stack"]``.

    ``copy.copy`` of a plain ``OrderedDict`` goes through ``__reduce_ex__``; this copies it
    directly, into a plain ``OrderedDict`` with the same items.
    """

    def __copy__(self) -> collections.OrderedDict:
        return collections.OrderedDict(self)


#: Argument types that stand for themselves in a graph (``fx.Tracer.create_arg`` returns them).
_PLAIN_ARGUMENTS = frozenset({int, float, bool, str, type(None)})


class SlimTracer(fx.Tracer):
    """A symbolic tracer that survives untraceable submodules (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.notes = TraceNotes()
        self._opaque_ids: set[int] = set()
        self.module_stack = _ModuleStack()

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        """torch.nn modules, modules with a slimfx rule, and opaque leaves."""
        if id(m) in self._opaque_ids or module_rule(m) is not None:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def create_arg(self, a: Any) -> Any:
        """``fx.Tracer.create_arg``, with the answer for its most common arguments up front.

        A proxy stands for its node and a plain scalar for itself; ``fx.Tracer`` reaches the
        same answers only after checking each against parameters, buffers, modules and
        constant types. Everything else takes the general way.
        """
        kind = type(a)
        if kind is fx.Proxy:
            return a.node
        if kind in _PLAIN_ARGUMENTS:
            return a
        if kind is tuple:
            return tuple([self.create_arg(item) for item in a])
        return super().create_arg(a)

    def call_module(self, m, forward, args, kwargs):
        try:
            qualname = self.path_of_module(m)
        except NameError:
            return self._call_unregistered(m, forward, args, kwargs)
        if qualname == "" or self.is_leaf_module(m, qualname):
            return super().call_module(m, forward, args, kwargs)
        marker = self.graph._root.prev  # the last node created so far
        stack = self.module_stack.copy()
        calls = dict(self.num_calls)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:  # the submodule's code is not symbolically traceable
            self._erase_after(marker)
            self.module_stack.clear()
            self.module_stack.update(stack)
            self.num_calls.clear()
            self.num_calls.update(calls)
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            reason += f" at {_user_frame(exc)}"
            self.notes.opaque[qualname] = reason
            self._opaque_ids.add(id(m))
            logger.warning("keeping %s as an opaque leaf (%s)", qualname, reason)
            return super().call_module(m, forward, args, kwargs)

    def _call_unregistered(self, m, forward, args, kwargs):
        state = list(m.parameters()) + list(m.buffers())
        if state:
            raise TraceError(
                f"{type(m).__name__} is constructed inside forward and holds parameters or "
                "buffers that are re-created on every call; register it in __init__ instead"
            )
        self.notes.inlined.append(f"{type(m).__name__} constructed inside forward")
        return forward(*args, **kwargs)

    def _erase_after(self, marker: fx.Node) -> None:
        doomed = []
        node = marker.next
        while node is not self.graph._root:
            doomed.append(node)
            node = node.next
        for node in reversed(doomed):
            self.graph.erase_node(node)


def trace(
    model: torch.nn.Module, example_inputs: Any, *, lazy_code: bool = False
) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule whose nodes carry their output shapes.

    Parameters
    ----------
    model : torch.nn.Module
        The model; it is not modified.
    example_inputs : torch.Tensor or tuple of torch.Tensor
        Inputs of the shape the model will be used with.
    lazy_code : bool
        Generate the module's Python code when it is first called or read, not now (for a
        trace that is only analysed, as in :func:`slimfx.slim`). Such a module cannot be
        given to ``torch.jit.script``.

    Returns
    -------
    torch.fx.GraphModule
        Shares submodules with ``model``. ``gm.meta["slimfx_trace_notes"]`` holds the
        :class:`TraceNotes`; each node's ``meta["tensor_meta"]`` its output shape and dtype.

    Raises
    ------
    TraceError
        When the model's own ``forward`` has data-dependent control flow, or shapes cannot be
        propagated with the example inputs (for example a wrong channel count).

    Examples
    --------
    >>> import torch, torchvision
    >>> gm = trace(torchvision.models.vgg11_bn(), torch.randn(1, 3, 32, 32))
    >>> [n.meta["tensor_meta"].shape[1] for n in gm.graph.nodes if n.op == "call_module"][0]
    64
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = as_input_tuple(example_inputs)
    tracer = SlimTracer()
    try:
        graph = tracer.trace(model)
    except TraceError:
        raise
    except Exception as exc:
        raise TraceError(
            f"cannot trace {type(model).__name__}.forward: {str(exc).splitlines()[0]} "
            f"at {_user_frame(exc)}. Data-dependent control flow in the model's own forward "
            "cannot be slimmed; move it into a submodule or make it static."
        ) from exc
    graph_module_cls = _LazyGraphModule if lazy_code else fx.GraphModule
    gm = graph_module_cls(model, graph, class_name=type(model).__name__)
    restore_containers(gm, model)
    gm.meta["slimfx_trace_notes"] = tracer.notes
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise ValueError(
            f"{type(model).__name__}.forward takes {len(placeholders)} input(s), "
            f"example_inputs has {len(inputs)}"
        )
    propagate_shapes(gm, inputs)
    return gm


def propagate_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    """Record every node's output shape in ``node.meta["tensor_meta"]`` (see module doc)."""
    try:
        _ShapeRecorder(gm, on_meta=True).run(*[t.to("meta") for t in inputs])
        return
    except _NodeFailure as failure:
        logger.info("meta shape propagation failed (%s); running the graph for real", failure)
    try:
        with torch.no_grad(), eval_mode(gm):  # shapes do not depend on the mode; BN's batch does
            _ShapeRecorder(gm, on_meta=False).run(*inputs)
    except _NodeFailure as failure:
        node, exc = failure.node, failure.__cause__
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TraceError(
            f"the example inputs do not fit the model at node {node.format_node()}"
            f"{_expected_input(node, gm)}: {message}{_first_layer(gm, inputs)}"
        ) from exc


def _first_layer(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> str:
    """``; got (1, 4, 32, 32) and its first layer, Conv2d feature.0 takes (N, 3, H, W)``."""
    got = f"; got {', '.join(str(tuple(t.shape)) for t in inputs)}"
    for node in gm.graph.nodes:
        if node.op == "call_module":
            wants = expected_input(gm.get_submodule(str(node.target)), str(node.target))
            if wants is not None:
                return f"{got} and its first layer, {wants}"
    return got


def _computed_output(mod: torch.nn.Module, inp: torch.Tensor) -> torch.Tensor | None:
    """A meta tensor of the output :func:`slimfx.shapes.output_shape` computes, or ``None``.

    Only for a contiguous input and weight, whose output these layers return contiguous too
    (other layouts, such as channels-last, run the meta kernels, which know how PyTorch lays
    the output out), and when the dtypes agree (PyTorch refuses mixed dtypes: let it say so).
    """
    if not inp.is_contiguous():
        return None
    weight = getattr(mod, "weight", None)
    if isinstance(weight, torch.Tensor) and (
        weight.dtype != inp.dtype or not weight.is_contiguous()
    ):
        return None
    shape = output_shape(mod, tuple(inp.shape))
    if shape is None:
        return None
    # like the meta run, whose parameters are plain meta tensors: only the input's grad counts
    grad = torch.is_grad_enabled() and inp.requires_grad
    return torch.empty(shape, dtype=inp.dtype, device="meta", requires_grad=grad)


class _NodeFailure(Exception):
    def __init__(self, node: fx.Node):
        super().__init__(node.format_node())
        self.node = node


def _expected_input(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op != "call_module":
        return ""
    mod = gm.get_submodule(str(node.target))
    for attr in ("in_channels", "num_features", "in_features"):
        if hasattr(mod, attr):
            return f" ({node.target} is {mod!r}: it expects {getattr(mod, attr)} {attr})"
    return ""


class _ShapeRecorder:
    """Runs the graph node by node and records each output's ``tensor_meta``.

    Like ``torch.fx.Interpreter``, without its per-node bookkeeping; on the meta device the
    layers :func:`slimfx.shapes.output_shape` knows are not run at all.
    """

    def __init__(self, gm: fx.GraphModule, on_meta: bool):
        self.gm = gm
        self.on_meta = on_meta
        self.modules = dict(gm.named_modules())

    def run(self, *inputs: Any) -> None:
        env: dict[fx.Node, Any] = {}
        pending = iter(inputs)
        for node in self.gm.graph.nodes:
            if node.op == "output":
                return
            try:
                if node.op == "placeholder":
                    result = next(pending, _MISSING)
                    if result is _MISSING:
                        if not node.args:
                            raise TypeError(f"no input for {node.target}")
                        result = node.args[0]  # the argument's default value
                else:
                    args = map_nodes(node.args, env)
                    kwargs = map_nodes(node.kwargs, env)
                    result = getattr(self, node.op)(node.target, args, kwargs)
            except Exception as exc:
                raise _NodeFailure(node) from exc
            env[node] = result
            if isinstance(result, torch.Tensor):
                node.meta["tensor_meta"] = _tensor_meta(result)
            elif isinstance(result, list | tuple) and any(
                isinstance(r, torch.Tensor) for r in result
            ):
                node.meta["tensor_meta"] = map_aggregate(
                    result, lambda r: _tensor_meta(r) if isinstance(r, torch.Tensor) else r
                )
            node.meta["type"] = type(result)

    def _state(self, mod: torch.nn.Module) -> dict[str, torch.Tensor]:
        if self.on_meta:
            named = list(mod.named_parameters()) + list(mod.named_buffers())
            return {name: torch.empty_like(t, device="meta") for name, t in named}
        return {name: b.clone() for name, b in mod.named_buffers()}

    def call_module(self, target, args, kwargs):
        mod = self.modules[target]
        if self.on_meta and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            computed = _computed_output(mod, args[0])
            if computed is not None:  # skip the meta kernels
                return computed
        state = self._state(mod)
        if not state:
            return mod.forward(*args, **kwargs)  # stateless: nothing to swap
        return torch.func.functional_call(mod, state, args, kwargs)

    def call_function(self, target, args, kwargs):
        return target(*args, **kwargs)

    def call_method(self, target, args, kwargs):
        obj, *rest = args
        return getattr(obj, target)(*rest, **kwargs)

    def get_attr(self, target, args, kwargs):
        value = fetch_attr(self.gm, target)
        if isinstance(value, torch.Tensor):
            return torch.empty_like(value, device="meta") if self.on_meta else value.clone()
        return value


_MISSING = object()


def _tensor_meta(tensor: torch.Tensor) -> TensorMetadata:
    """``_extract_tensor_metadata``, short-cut for the usual contiguous dense tensor."""
    if tensor.is_quantized or tensor.layout != torch.strided or not tensor.is_contiguous():
        return _extract_tensor_metadata(tensor)
    return TensorMetadata(
        tensor.shape,
        tensor.dtype,
        tensor.requires_grad,
        tensor.stride(),
        torch.contiguous_format,
        False,
        {},
    )


def fetch_attr(gm: torch.nn.Module, target: str) -> Any:
    """The value a ``get_attr`` node's dotted ``target`` names in ``gm``."""
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def map_nodes(value: Any, env: dict) -> Any:
    """``value`` with every fx node replaced by ``env[node]`` (like ``fx.node.map_arg``).

    Containers are rebuilt as plain tuples, lists and dicts; written out here because the
    per-node cost of the general tree mapping shows in the pass time.
    """
    if isinstance(value, fx.Node):
        return env[value]
    kind = type(value)
    if kind is tuple or kind is list or kind is immutable_list:
        mapped = [map_nodes(v, env) for v in value]
        return tuple(mapped) if kind is tuple else mapped
    if isinstance(value, dict):
        return {k: map_nodes(v, env) for k, v in value.items()}
    if kind is slice:
        return slice(
            map_nodes(value.start, env), map_nodes(value.stop, env), map_nodes(value.step, env)
        )
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return kind(*(map_nodes(v, env) for v in value))
    return value


def restore_containers(slim: fx.GraphModule, original: torch.nn.Module) -> None:
    """Give intermediate modules their original classes and child order back.

    ``GraphModule`` builds the path to each leaf from plain ``nn.Module`` objects; users
    expect ``slim.features[3]`` to work and ``print(slim)`` to look like the original.
    """
    _restore_children(slim, original)
    order = list(original._modules) + [k for k in slim._modules if k not in original._modules]
    slim._modules = {k: slim._modules[k] for k in order if k in slim._modules}


def _restore_children(current: torch.nn.Module, source: torch.nn.Module) -> None:
    """Walk ``current`` and ``source`` side by side, deepest first, replacing each plain
    ``nn.Module`` that stands for one of ``source``'s containers by a shell of its class."""
    for key, child in list(current._modules.items()):
        origin = source._modules.get(key)
        if child is None or origin is None:
            continue
        _restore_children(child, origin)
        if type(child) is torch.nn.Module and type(origin) is not torch.nn.Module:
            current._modules[key] = _container_shell(child, origin)


def _container_shell(current: torch.nn.Module, source: torch.nn.Module) -> torch.nn.Module:
    """A module of ``source``'s class holding ``current``'s children, in ``source``'s order."""
    if isinstance(source, torch.nn.Sequential | torch.nn.ModuleList | torch.nn.ModuleDict):
        shell = type(source).__new__(type(source))
        torch.nn.Module.__init__(shell)
    else:
        shell = copy.copy(source)
        shell._modules = {}
        shell._parameters = {}
        shell._buffers = {}
        shell._non_persistent_buffers_set = set()
    shell.training = current.training
    order = list(source._modules) + [k for k in current._modules if k not in source._modules]
    for key in order:
        if key in current._modules:
            shell._modules[key] = current._modules[key]
    shell._parameters.update(current._parameters)
    shell._buffers.update(current._buffers)
    return shell
