"""Part of the rewrite pass: BatchNorm and Linear subclasses traced through become modules
again.

A BatchNorm subclass with its own ``forward`` (timm's ``BatchNormAct2d``: BatchNorm, drop
and activation in one module) or a Linear subclass (timm's ``Linear``) is traced through:
its ``F.batch_norm`` or ``F.linear`` call and the layers after it are nodes of the graph,
which the analysis and the constant propagation read like any other. Left like that, the
slim model would hold the ``training`` flag the model had when it was traced, and the
module would disappear from ``print(slim)``.

:func:`refold_modules` puts each such region of the slim graph back into one
``call_module`` of a copy of the original module: its class and settings, its sliced
tensors (from the slim functional call), its sizes (``num_features``, ``in_features`` …)
the kept counts, and its children as the rewrite sliced them. So the slim model trains,
evaluates and prints as the original. A region that does not have that form (several
inputs or outputs, tensors of other modules, more than one such call) stays inlined,
which is exact too.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from slimfx.rules.norm import is_batchnorm

if TYPE_CHECKING:
    from slimfx.passes.rewrite import RewriteContext

logger = logging.getLogger(__name__)

#: The functional op of each module kind, and the size attributes its tensors give:
#: attribute → the (tensor, dimension) pairs that hold it, first present wins.
_SIZES = {
    F.batch_norm: {"num_features": (("weight", 0), ("running_mean", 0))},
    F.linear: {"out_features": (("weight", 0),), "in_features": (("weight", 1),)},
}


def refold_modules(gm: fx.GraphModule, ctx: RewriteContext) -> None:
    """Replace each traced-through BatchNorm or Linear subclass's region of the slim graph
    by one call of the module rebuilt.

    Parameters
    ----------
    gm : torch.fx.GraphModule
        The traced model.
    ctx : RewriteContext
        The rewrite's context, after its walk: its graph is edited in place, ``ctx.env``
        updated for the regions' outputs and the rebuilt modules put in ``ctx.new_modules``.
    """
    for path, nodes in _regions(gm).items():
        module = gm.get_submodule(path)
        folded = _refold(path, module, nodes, ctx)
        if folded is None:
            logger.debug("%s stays inlined in the slim graph", path)
            continue
        source, output = folded
        last, graph = ctx.env[output.name], ctx.graph
        with graph.inserting_after(last):
            call = graph.call_module(path, (source,))
        call.meta = dict(last.meta)
        last.replace_all_uses_with(call)
        for node in reversed(nodes):
            slim_node = ctx.env.get(node.name)
            if slim_node is not None and slim_node.graph is graph and not slim_node.users:
                graph.erase_node(slim_node)
        ctx.env[output.name] = call


def _regions(gm: fx.GraphModule) -> dict[str, list[fx.Node]]:
    """Nodes traced inside each BatchNorm or Linear subclass (innermost such module), in graph
    order."""
    regions: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack", {})
        for path in reversed([_qualified(key, value) for key, value in stack.items()]):
            if node.op == "call_module" and str(node.target) == path:
                continue  # a leaf module's own call: look further out
            try:
                module = gm.get_submodule(path)
            except AttributeError:
                continue
            if is_batchnorm(module) or isinstance(module, torch.nn.Linear):
                regions.setdefault(path, []).append(node)
                break
    return regions


def _qualified(key: str, value: Any) -> str:
    """The module path of an ``nn_module_stack`` entry (its value is ``(path, class)``)."""
    if isinstance(value, tuple) and value and isinstance(value[0], str):
        return value[0]
    return key


def _refold(path, module, nodes, ctx: RewriteContext) -> tuple[Any, fx.Node] | None:
    """(the slim input node, the region's output node) and the new module registered in
    ``ctx.new_modules``; ``None`` when the region is not one call of the module's functional
    op (``F.batch_norm``, ``F.linear``) and its tail."""
    inside = set(nodes)
    own = {f"{path}.{name}" for name in (*module._parameters, *module._buffers)}
    inputs: list[fx.Node] = []
    for node in nodes:
        if node.op == "get_attr" and str(node.target) not in own:
            return None
        if node.op == "call_module" and not str(node.target).startswith(path + "."):
            return None
        for arg in node.all_input_nodes:
            if arg not in inside and arg not in inputs:
                inputs.append(arg)
    outputs = [n for n in nodes if any(user not in inside for user in n.users)]
    calls = [n for n in nodes if n.op == "call_function" and n.target in _SIZES]
    if len(inputs) != 1 or len(outputs) != 1 or len(calls) != 1:
        return None
    call, slim_call = calls[0], ctx.env.get(calls[0].name)
    if slim_call is None or slim_call.target is not call.target:
        return None
    tensors = _sliced_tensors(path, call, slim_call, ctx.attrs)
    if tensors is None:
        return None
    new = copy.copy(module)
    new.__dict__ = dict(module.__dict__)

    def copied(value):  # a tensor the slicing did not touch (or None)
        return None if value is None else ctx.copied_tensor(value)

    new._parameters = {
        name: tensors[name] if name in tensors else copied(value)
        for name, value in module._parameters.items()
    }
    new._buffers = {
        name: tensors[name] if name in tensors else copied(value)
        for name, value in module._buffers.items()
    }
    new._modules = {}
    for attribute, holders in _SIZES[call.target].items():
        size = next((tensors[t].shape[d] for t, d in holders if t in tensors), None)
        if size is not None:
            setattr(new, attribute, int(size))
    for name, child in module._modules.items():
        qualified = f"{path}.{name}"
        rebuilt = ctx.new_modules.pop(qualified, None)
        if rebuilt is None:  # a child the forward never calls
            rebuilt = (
                copy.deepcopy(child) if ctx.dtype is None else copy.deepcopy(child).to(ctx.dtype)
            )
        new._modules[name] = rebuilt
    for key in [k for k in ctx.new_modules if k.startswith(path + ".")]:
        ctx.new_modules.pop(key)
    ctx.new_modules[path] = new
    return ctx.env[inputs[0].name], outputs[0]


def _sliced_tensors(path, call, slim_call, attrs) -> dict[str, torch.Tensor] | None:
    """The module's tensors as the slim call uses them, by attribute name (``weight`` …):
    the traced call's ``get_attr`` arguments paired with the slim call's."""
    original_args, slim_args = (_by_name(n) for n in (call, slim_call))
    if original_args is None or slim_args is None:
        return None
    pairs = [(value, slim_args.get(key)) for key, value in original_args.items()]
    tensors = {}
    for original, slim in pairs:
        if not (isinstance(original, fx.Node) and original.op == "get_attr"):
            continue
        owner, _, name = str(original.target).rpartition(".")
        if owner != path:
            return None
        if not isinstance(slim, fx.Node) or str(slim.target) not in attrs:
            return None
        tensors[name] = attrs[str(slim.target)]
    return tensors


def _by_name(node: fx.Node) -> dict[str, Any] | None:
    """A functional call's arguments by parameter name (``None`` if they do not fit)."""
    normalized = node.normalized_arguments(None, normalize_to_only_use_kwargs=True)
    return None if normalized is None else dict(normalized.kwargs)
