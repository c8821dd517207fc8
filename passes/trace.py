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
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx

from slimfx.errors import TraceError
from slimfx.numerics import as_input_tuple, attributes_kept
from slimfx.passes.shapes import propagate_shapes
from slimfx.passes.tracer import SlimTracer, TraceNotes, trace_notes, user_frame
from slimfx.rules.norm import frozen_batchnorms

__all__ = ["SlimTracer", "TraceNotes", "restore_containers", "trace", "trace_notes"]


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
    constants = _defaults_after(root, len(inputs))
    try:
        graph = tracer.trace(root, concrete_args=constants)
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
            f"at {user_frame(exc)}. Data-dependent control flow in the model's own forward "
            f"cannot be slimmed; move it into a submodule or make it static.{hint}"
        ) from exc
    if constants:  # fx keeps them as inputs checked against the constant: use the constant
        extra = [n for n in graph.nodes if n.op == "placeholder"][len(inputs) :]
        for node, value in zip(extra, constants.values(), strict=False):
            for user in list(node.users):
                if user.op == "call_function" and not user.users:  # the check
                    graph.erase_node(user)
                    continue
                user.args = fx.node.map_arg(
                    user.args, lambda n, p=node, v=value: v if n is p else n
                )
                user.kwargs = fx.node.map_arg(
                    user.kwargs, lambda n, p=node, v=value: v if n is p else n
                )
            if not node.users:
                graph.erase_node(node)
    gm = fx.GraphModule(root, graph, class_name=type(model).__name__)
    restore_containers(gm, model, all_tensors=True)
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


def _defaults_after(model: torch.nn.Module, count: int) -> dict[str, Any] | None:
    """The ``forward`` parameters after the first ``count`` that have defaults, with their
    defaults: traced as constants, not as inputs (``forward(self, x, attn_mask=None)``)."""
    parameters = list(inspect.signature(type(model).forward).parameters.values())[1:]
    later = [
        p
        for p in parameters[count:]
        if p.default is not inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    return {p.name: p.default for p in later} or None


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


def restore_containers(
    slim: fx.GraphModule, original: torch.nn.Module, *, all_tensors: bool = False
) -> None:
    """Give intermediate modules their original classes and child order back.

    ``GraphModule`` builds the path to each leaf from plain ``nn.Module`` objects; users
    expect ``slim.features[3]`` to work and ``print(slim)`` to look like the original.

    With ``all_tensors`` (the traced module, which shares the model's tensors and modules
    anyway) each shell also holds the parameters, buffers and children that the graph does
    not use — a BatchNorm subclass's ``num_batches_tracked``, a ``bias`` of ``None``, an
    activation its forward skips — so that the rewrite can rebuild the module whole
    (:mod:`passes.refold`).
    """
    _restore_children(slim, original, all_tensors)
    order = list(original._modules) + [k for k in slim._modules if k not in original._modules]
    slim._modules = {k: slim._modules[k] for k in order if k in slim._modules}


def _restore_children(
    current: torch.nn.Module, source: torch.nn.Module, all_tensors: bool = False
) -> None:
    """Walk ``current`` and ``source`` side by side, deepest first, replacing each plain
    ``nn.Module`` that stands for one of ``source``'s containers by a shell of its class."""
    for key, child in list(current._modules.items()):
        origin = source._modules.get(key)
        if child is None or origin is None:
            continue
        _restore_children(child, origin, all_tensors)
        if type(child) is torch.nn.Module and type(origin) is not torch.nn.Module:
            current._modules[key] = _container_shell(child, origin, all_tensors)


def _container_shell(
    current: torch.nn.Module, source: torch.nn.Module, all_tensors: bool = False
) -> torch.nn.Module:
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
    if all_tensors:
        shell._parameters.update(source._parameters)
        shell._buffers.update(source._buffers)
        shell._non_persistent_buffers_set = set(source._non_persistent_buffers_set)
        for key, child in source._modules.items():  # children the graph never calls
            if key not in current._modules:
                shell._modules[key] = child
    shell._parameters.update(current._parameters)
    shell._buffers.update(current._buffers)
    return shell
