"""Part of the rewrite pass: BatchNorm subclasses traced through become modules again.

A BatchNorm subclass with its own ``forward`` (timm's ``BatchNormAct2d``: BatchNorm, drop
and activation in one module) is traced through: its ``F.batch_norm`` call and the layers
after it are nodes of the graph, which the analysis and the constant propagation read
like any other. Left like that, the slim model would hold the ``training`` flag the model
had when it was traced, and the module would disappear from ``print(slim)``.

:func:`refold_batchnorms` puts each such region of the slim graph back into one
``call_module`` of a copy of the original module: its class and settings, its sliced
tensors (from the slim ``F.batch_norm``), ``num_features`` the kept count, and its children
as the rewrite sliced them. So the slim model trains, evaluates and prints as the original.
A region that does not have that form (several inputs or outputs, tensors of other
modules, more than one ``F.batch_norm``) stays inlined, which is exact too.
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

_TENSORS = ("weight", "bias", "running_mean", "running_var")


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
    """Nodes traced inside each BatchNorm subclass (innermost such module), in graph order."""
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
            if is_batchnorm(module):
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
    ``new_modules``; ``None`` when the region is not one BatchNorm call and its tail."""
    inside = set(nodes)
    own = {f"{path}.{name}" for name in (*_TENSORS, "num_batches_tracked")}
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
    norms = [n for n in nodes if n.op == "call_function" and n.target is F.batch_norm]
    if len(inputs) != 1 or len(outputs) != 1 or len(norms) != 1:
        return None
    slim_norm = env.get(norms[0].name)
    if slim_norm is None or slim_norm.target is not F.batch_norm:
        return None
    tensors = {}
    for name in _TENSORS:
        arg = slim_norm.kwargs.get(name)
        if arg is None:
            continue
        if not isinstance(arg, fx.Node) or str(arg.target) not in attrs:
            return None
        tensors[name] = attrs[str(arg.target)]
    new = copy.copy(module)
    new.__dict__ = dict(module.__dict__)
    new._parameters = {
        name: tensors.get(name, _copied(value, dtype)) for name, value in module._parameters.items()
    }
    new._buffers = {
        name: tensors.get(name, _copied(value, dtype)) for name, value in module._buffers.items()
    }
    new._modules = {}
    width = next(iter(tensors.values())).shape[0] if tensors else module.num_features
    new.num_features = int(width)
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
