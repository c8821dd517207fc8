"""Building the slim model's modules: slicing tensors without touching the originals."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn as nn


def sliced_shell(module: nn.Module, **tensors: torch.Tensor | None) -> nn.Module:
    """A copy of ``module`` (same class and attributes) with new parameters and buffers.

    Parameters
    ----------
    module : torch.nn.Module
        The original; it is not modified.
    **tensors
        New values by parameter or buffer name; every other parameter and buffer is cloned,
        so the copy never shares storage with the original.
    """
    new = copy.copy(module)
    new._parameters = OrderedDict()
    new._buffers = OrderedDict()
    new._modules = OrderedDict((k, copy.deepcopy(v)) for k, v in module._modules.items())
    new._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    for name, param in module._parameters.items():
        if name in tensors:
            value = tensors[name]
        else:
            value = None if param is None else param.detach().clone()
        if value is None:
            new._parameters[name] = None
        else:
            grad = param.requires_grad if param is not None else True
            new._parameters[name] = nn.Parameter(value.detach(), requires_grad=grad)
    for name, buf in module._buffers.items():
        if name in tensors:
            new._buffers[name] = tensors[name]
        else:
            new._buffers[name] = None if buf is None else buf.clone()
    for name in tensors:
        if name not in module._parameters and name not in module._buffers:
            raise KeyError(f"{type(module).__name__} has no parameter or buffer {name!r}")
    return new
