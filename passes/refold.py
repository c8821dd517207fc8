"""Part of the rewrite pass: BatchNorm and Linear subclasses traced through become modules
again.

A BatchNorm subclass with its own ``forward`` (timm's ``BatchNormAct2d``: BatchNorm, drop
and activation in one module) or a Linear subclass (timm's ``Linear``) is traced through:
its ``F.batch_norm`` or ``F.linear`` call and the layers after it are nodes of the graph,
which the analysis and the constant propagation read like any other. Left like that, the
slim model would hold the ``training`` flag the model had when it was traced, and the
module would disappear from ``print(slim)``.

:func:`refold_batchnorms` puts each such region of the slim graph back into one
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
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from slimfx.rules.norm import is_batchnorm

logger = logging.getLogger(__name__)

#: The functional op of each module kind, and the size attributes its tensors give:
#: attribute → the (tensor, dimension) pairs that hold it, first present wins.
_SIZES = {
    F.batch_norm: {"num_features": (("weight", 0), ("running_mean", 0))},
    F.linear: {"out_features": (("weight", 0),), "in_features": (("weight", 1),)},
}


def refold_batchnorms(
    gm: fx.GraphModule,
    graph: fx.Graph,
    env: dict[str, fx.Node],
    new_modules: dict[str, torch.nn.Module],
    attrs: dict[str, torch.Tensor],
    dtype: torch.dtype | None = None,
) -> None:
    """Replace each traced-through BatchNorm subclass's region of ``graph`` by one call.

    Parameters
    ----------
    gm : torch.fx.GraphModule
        The traced model.
    graph : torch.fx.Graph
        The slim graph being built (edited in place: it is the rewrite's own).
    env : dict
        Traced node name → its node in ``graph`` (updated for the regions' outputs).
    new_modules, attrs : dict
        The rewrite's new modules and tensors by qualified name; the refolded modules are
        added to ``new_modules``.
    dtype : torch.dtype, optional
        The rewrite's target dtype, for the children and tensors that were not sliced.
    """
    for path, nodes in _regions(gm).items():
        module = gm.get_submodule(path)
        folded = _refold(path, module, nodes, env, new_modules, attrs, dtype)
        if folded is None:
            logger.debug("%s stays inlined in the slim graph", path)
            continue
        source, output = folded
        last = env[output.name]
        with graph.inserting_after(last):
            call = graph.call_module(path, (source,))
        call.meta = dict(last.meta)
        last.replace_all_uses_with(call)
        for node in reversed(nodes):
            slim_node = env.get(node.name)
            if slim_node is not None and slim_node.graph is graph and not slim_node.users:
                graph.erase_node(slim_node)
        env[output.name] = call


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


def _refold(path, module, nodes, env, new_modules, attrs, dtype) -> tuple[Any, fx.Node] | None:
    """(the slim input node, the region's output node) and the new module registered in
    ``new_modules``; ``None`` when the region is not one call of the module's functional
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
    call, slim_call = calls[0], env.get(calls[0].name)
    if slim_call is None or slim_call.target is not call.target:
        return None
    tensors = _sliced_tensors(path, call, slim_call, attrs)
    if tensors is None:
        return None
    new = copy.copy(module)
    new.__dict__ = dict(module.__dict__)
    new._parameters = {
        name: tensors.get(name, _copied(value, dtype)) for name, value in module._parameters.items()
    }
    new._buffers = {
        name: tensors.get(name, _copied(value, dtype)) for name, value in module._buffers.items()
    }
    new._modules = {}
    for attribute, holders in _SIZES[call.target].items():
        size = next((tensors[t].shape[d] for t, d in holders if t in tensors), None)
        if size is not None:
            setattr(new, attribute, int(size))
    for name, child in module._modules.items():
        qualified = f"{path}.{name}"
        copied = new_modules.pop(qualified, None)
        if copied is None:
            copied = copy.deepcopy(child) if dtype is None else copy.deepcopy(child).to(dtype)
        new._modules[name] = copied
    for key in [k for k in new_modules if k.startswith(path + ".")]:
        new_modules.pop(key)
    new_modules[path] = new
    return env[inputs[0].name], outputs[0]


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


def _copied(value: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    """An independent copy of a tensor the slicing did not touch, in ``dtype``."""
    if value is None:
        return None
    cloned = value.detach().clone()
    if dtype is not None and cloned.is_floating_point():
        cloned = cloned.to(dtype)
    if isinstance(value, torch.nn.Parameter):
        return torch.nn.Parameter(cloned, requires_grad=value.requires_grad)
    return cloned
