"""Building the slim model's modules: slicing tensors without touching the originals."""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn


def sliced_shell(
    module: nn.Module,
    attributes: dict[str, Any] | None = None,
    **tensors: torch.Tensor | None,
) -> nn.Module:
    """A copy of ``module`` (same class and attributes) with new parameters and buffers.

    Parameters
    ----------
    module : torch.nn.Module
        The original; it is not modified.
    attributes : dict, optional
        New values of plain attributes (sizes such as ``in_channels``).
    **tensors
        New values by parameter or buffer name; every other parameter and buffer is cloned,
        so the copy never shares storage with the original.

    Notes
    -----
    The copy is assembled in its ``__dict__`` directly: ``nn.Module.__setattr__`` would
    check every assignment against the parameter, buffer and submodule tables. Hook tables
    are copied, so a hook registered on the copy never reaches the original.
    """
    for name in tensors:
        if name not in module._parameters and name not in module._buffers:
            raise KeyError(f"{type(module).__name__} has no parameter or buffer {name!r}")
    parameters: OrderedDict[str, nn.Parameter | None] = OrderedDict()
    for name, param in module._parameters.items():
        if name in tensors:
            value = tensors[name]
        else:
            value = None if param is None else param.detach().clone()
        if value is None:
            parameters[name] = None
        else:
            grad = param.requires_grad if param is not None else True
            parameters[name] = nn.Parameter(value.detach(), requires_grad=grad)
    buffers: OrderedDict[str, torch.Tensor | None] = OrderedDict()
    for name, buf in module._buffers.items():
        if name in tensors:
            buffers[name] = tensors[name]
        else:
            buffers[name] = None if buf is None else buf.clone()
    state = {
        key: value.copy() if "hooks" in key and isinstance(value, dict) else value
        for key, value in module.__dict__.items()
    }
    state["_parameters"] = parameters
    state["_buffers"] = buffers
    state["_modules"] = OrderedDict((k, copy.deepcopy(v)) for k, v in module._modules.items())
    state["_non_persistent_buffers_set"] = set(module._non_persistent_buffers_set)
    if attributes:
        state.update(attributes)
    new = type(module).__new__(type(module))
    new.__dict__.update(state)
    return new
