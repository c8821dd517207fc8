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
   on the ``meta`` device with PyTorch's own meta kernels (:mod:`passes.shapes`), so no
   real computation happens and the model's buffers are never touched.

The traced module shares its submodules with the model (as ``torch.fx.symbolic_trace``
does); it never modifies them.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import logging
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

import slimfx.rules  # noqa: F401  (registers the rules that decide leaves)
from slimfx.errors import TraceError
from slimfx.numerics import as_input_tuple, attributes_kept
from slimfx.passes.shapes import propagate_shapes
from slimfx.rules.norm import frozen_batchnorms
from slimfx.rules.registry import module_rule

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
    frozen_batchnorms : list of str
        torchvision ``FrozenBatchNorm2d`` modules of the model (fixed scales: they rank
        nothing; named when nothing else can be pruned).
    """

    opaque: dict[str, str] = field(default_factory=dict)
    inlined: list[str] = field(default_factory=list)
    frozen_batchnorms: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"opaque leaf {name}: {why}" for name, why in self.opaque.items()]
        out += [f"traced through {what}" for what in self.inlined]
        return out


def trace_notes(gm: fx.GraphModule) -> TraceNotes:
    """The :class:`TraceNotes` of a module from :func:`trace` (empty for any other)."""
    notes = gm.meta.get("slimfx_trace_notes")
    return notes if isinstance(notes, TraceNotes) else TraceNotes()


def _user_frame(exc: BaseException) -> str:
    """``file:line: code`` of the innermost frame outside torch and slimfx."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        if not path.startswith((_TORCH_DIR + os.sep, _PASSES_DIR + os.sep, _SLIMFX_DIR + os.sep)):
            return f"{frame.filename}:{frame.lineno}: `{(frame.line or '').strip()}`"
    return "unknown location"


class SlimTracer(fx.Tracer):
    """A symbolic tracer that survives untraceable submodules (see the module docstring)."""

    def __init__(
        self, leaf_modules: tuple[str, ...] = (), leaf_types: tuple[type, ...] = ()
    ) -> None:
        super().__init__()
        self.notes = TraceNotes()
        self._opaque_ids: set[int] = set()
        self.leaf_modules = set(leaf_modules)
        self.leaf_types = tuple(leaf_types)

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        """torch.nn modules, modules with a slimfx rule, opaque leaves, and the modules the
        caller marked as leaves (which count as opaque: their channels are frozen)."""
        if id(m) in self._opaque_ids or module_rule(m) is not None:
            return True
        if module_qualified_name in self.leaf_modules or isinstance(m, self.leaf_types):
            if module_qualified_name not in self.notes.opaque:
                self.notes.opaque[module_qualified_name] = "marked as a leaf by the caller"
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            qualname = self.path_of_module(m)
        except NameError:
            return self._call_unregistered(m, forward, args, kwargs)
        if qualname == "" or self.is_leaf_module(m, qualname):
            return super().call_module(m, forward, args, kwargs)
        count = len(self.graph.nodes)
        stack = self.module_stack.copy()
        calls = dict(self.num_calls)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:  # the submodule's code is not symbolically traceable
            self._erase_after(count)
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

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _PieceProxy(node, self)

    def iter(self, obj):
        """Iterate the pieces of a ``chunk`` or ``split`` (``a, b = x.chunk(2, 1)``,
        ``list(x.split([8, 8], 1))``): the call gives their number. Anything else cannot be
        iterated symbolically. A chunk count the tensor cannot give (fewer channels than
        chunks) fails when the shapes are propagated, naming the node."""
        count = _piece_count(obj.node)
        if count is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(count)])

    def _call_unregistered(self, m, forward, args, kwargs):
        state = list(m.parameters()) + list(m.buffers())
        if state:
            raise TraceError(
                f"{type(m).__name__} is constructed inside forward and holds parameters or "
                "buffers that are re-created on every call; register it in __init__ instead"
            )
        self.notes.inlined.append(f"{type(m).__name__} constructed inside forward")
        return forward(*args, **kwargs)

    def _erase_after(self, count: int) -> None:
        """Erase the nodes created after the first ``count`` (latest first: users first)."""
        extra = len(self.graph.nodes) - count
        for node in list(itertools.islice(reversed(self.graph.nodes), extra)):
            self.graph.erase_node(node)


class _PieceProxy(fx.Proxy):
    """A proxy whose ``len()`` is known for the pieces of a ``chunk``/``split``
    (``list(x.chunk(2, 1))`` asks for it)."""

    def __len__(self) -> int:
        count = _piece_count(self.node)
        return super().__len__() if count is None else count


_CHUNK = (torch.chunk, "chunk", torch.Tensor.chunk)
_SPLIT = (torch.split, "split", torch.Tensor.split)


def _piece_count(node: fx.Node) -> int | None:
    """How many tensors a ``chunk``/``split`` node returns, when its arguments say it."""
    if node.op not in ("call_function", "call_method"):
        return None
    if node.target in _CHUNK:
        chunks = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks")
        return chunks if isinstance(chunks, int) and not isinstance(chunks, bool) else None
    if node.target in _SPLIT:
        sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
        return len(sizes) if isinstance(sizes, list | tuple) else None
    return None


def trace(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Iterable[str] = (),
    leaf_types: Iterable[type] = (),
) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule whose nodes carry their output shapes.

    Parameters
    ----------
    model : torch.nn.Module
        The model; it is not modified.
    example_inputs : torch.Tensor or tuple of torch.Tensor
        Inputs of the shape the model will be used with.
    leaf_modules, leaf_types
        Submodules (by qualified name) and module classes to keep as opaque leaves: called
        as a whole, their channels frozen. A name that is no submodule is an error.

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
    leaf_modules, leaf_types = tuple(leaf_modules), tuple(leaf_types)
    names = {name for name, _ in model.named_modules()}
    unknown = [name for name in leaf_modules if name not in names]
    if unknown:
        raise ValueError(f"leaf_modules: {type(model).__name__} has no submodule {unknown[0]!r}")
    tracer = SlimTracer(leaf_modules, leaf_types)
    with attributes_kept(model):
        return _trace(model, inputs, tracer)


def _trace(model: torch.nn.Module, inputs: tuple, tracer: SlimTracer) -> fx.GraphModule:
    root = _with_fixed_arguments(model, len(inputs))
    try:
        graph = tracer.trace(root)
    except TraceError:
        raise
    except Exception as exc:
        backbone = getattr(model, "backbone", None)
        hint = (
            f" {type(model).__name__} has a backbone: slim model.backbone (a CNN that traces) "
            "and put it back, as torchvision's detection models need."
            if isinstance(backbone, torch.nn.Module)
            else ""
        )
        raise TraceError(
            f"cannot trace {type(model).__name__}.forward: {str(exc).splitlines()[0]} "
            f"at {_user_frame(exc)}. Data-dependent control flow in the model's own forward "
            f"cannot be slimmed; move it into a submodule or make it static.{hint}"
        ) from exc
    gm = fx.GraphModule(root, graph, class_name=type(model).__name__)
    restore_containers(gm, model)
    tracer.notes.frozen_batchnorms = frozen_batchnorms(model)
    gm.meta["slimfx_trace_notes"] = tracer.notes
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise ValueError(
            f"{type(model).__name__}.forward takes {len(placeholders)} input(s), "
            f"example_inputs has {len(inputs)}"
        )
    propagate_shapes(gm, inputs)
    return gm


def _with_fixed_arguments(model: torch.nn.Module, count: int) -> torch.nn.Module:
    """``model`` itself, or — when its ``forward`` takes ``*args`` or ``**kwargs`` (as
    Ultralytics' ``DetectionModel.forward(self, x, *args, **kwargs)`` does) — a shallow copy
    sharing its submodules, whose ``forward`` takes exactly the ``count`` example inputs and
    passes them on. Symbolic tracing cannot expand ``*args``; the example fixes them."""
    forward = type(model).forward
    parameters = list(inspect.signature(forward).parameters.values())[1:]
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    if not any(p.kind in variadic for p in parameters):
        return model
    named = [p.name for p in parameters if p.kind not in variadic][:count]
    names = named + [f"input_{k}" for k in range(len(named), count)]
    arguments = ", ".join(names)
    namespace: dict[str, Any] = {"original_forward": forward}
    exec(  # a def with exactly these parameters: fx reads a function's own signature
        f"def forward(self, {arguments}):\n    return original_forward(self, {arguments})\n",
        namespace,
    )
    fixed = type(type(model).__name__, (type(model),), {"forward": namespace["forward"]})
    shim = copy.copy(model)
    shim.__class__ = fixed
    return shim


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
