"""The slim layers put back into a copy of the input model (:meth:`SlimResult.into_model`).

The slim ``GraphModule`` keeps every layer's qualified name, so its layers can replace the
model's own in a copy of the model, whose class, attributes and ``forward`` stay what they
were: a model from a framework (an Ultralytics ``DetectionModel``, a timm model with its
``pretrained_cfg``) stays that framework's model. This is possible when the slim graph
differs from the traced one in its layers and attributes only: where the rewrite changed
an op's arguments (a literal size in a ``view``, a ``chunk`` that became an uneven
``split``), the model's own ``forward`` would compute the old sizes, and
:func:`into_model` refuses, naming the op. Plan with ``SlimOptions(keep_forward=True)`` so
that chunks stay even.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx

from slimfx.errors import UnsupportedError
from slimfx.passes.walk import fetch_attr


def changed_ops(traced: fx.GraphModule, slim: fx.GraphModule) -> list[str]:
    """The ops of ``slim`` that are not the traced model's own op with the same arguments
    (the reasons :func:`into_model` refuses), as readable lines."""
    before = {n.name: n for n in traced.graph.nodes}
    changed = []
    for node in slim.graph.nodes:
        if node.op == "get_attr":
            continue  # attributes are copied over by name
        old = before.get(node.name)
        if old is None and node.op == "call_module" and _exists(traced, str(node.target)):
            continue  # a module traced into and rebuilt whole (passes/refold.py)
        if old is None or old.op != node.op or old.target != node.target:
            changed.append(node.format_node())
            continue
        if _named(old.args, old.kwargs) != _named(node.args, node.kwargs):
            changed.append(f"{node.format_node()} (was {old.format_node()})")
    return changed


def into_model(model: torch.nn.Module, traced: fx.GraphModule, slim: fx.GraphModule):
    """A copy of ``model`` holding ``slim``'s layers and attributes in place of its own.

    Parameters
    ----------
    model : torch.nn.Module
        The input model (not modified).
    traced, slim : torch.fx.GraphModule
        Its trace and the slim model rewritten from it.

    Raises
    ------
    UnsupportedError
        Where the slim graph changed an op's arguments (see the module docstring).
    """
    changed = changed_ops(traced, slim)
    if changed:
        raise UnsupportedError(
            f"the slim layers cannot replace the model's own: {len(changed)} op(s) of the "
            f"slim graph differ from the model's forward, first {changed[0]}; slim with "
            "keep_forward=True, or use the slim GraphModule"
        )
    out = copy.deepcopy(model)
    dtype = next((p.dtype for p in slim.parameters() if p.is_floating_point()), None)
    if dtype is not None:
        out.to(dtype)
    for node in slim.graph.nodes:
        if node.op == "call_module":
            _set(out, str(node.target), slim.get_submodule(str(node.target)))
        elif node.op == "get_attr":
            target = str(node.target)
            if _exists(traced, target):
                _set(out, target, fetch_attr(slim, target))
    return out


def _named(args, kwargs):
    return fx.node.map_arg((args, kwargs), lambda n: n.name)


def _exists(module: torch.nn.Module, target: str) -> bool:
    try:
        fetch_attr(module, target)
    except AttributeError:
        return False
    return True


def _set(root: torch.nn.Module, target: str, value) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if isinstance(value, torch.nn.Module):
        parent._modules[name] = value
    elif name in parent._parameters:
        parent._parameters[name] = value
    elif name in parent._buffers:
        parent._buffers[name] = value
    else:
        setattr(parent, name, value)
