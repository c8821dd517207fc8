"""Small shared helpers for running and comparing models: inputs, modes, errors."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch


def as_input_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """``example_inputs`` (a tensor or a sequence of tensors) as a tuple, else ``ValueError``."""
    if isinstance(example_inputs, torch.Tensor):
        inputs: Any = (example_inputs,)
    else:
        inputs = example_inputs
    if isinstance(inputs, str | bytes) or not isinstance(inputs, Sequence) or not inputs:
        raise ValueError(
            "example_inputs must be a tensor or a non-empty tuple of tensors, "
            f"got {type(example_inputs).__name__}"
        )
    inputs = tuple(inputs)
    for k, value in enumerate(inputs):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"example_inputs: input {k} is a {type(value).__name__}, not a tensor")
        if value.dim() == 0:
            raise ValueError(f"example_inputs: input {k} is a scalar; dimension 0 is the batch")
    return inputs


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode; restore every submodule's training flag afterwards."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


@contextlib.contextmanager
def attributes_kept(model: torch.nn.Module) -> Iterator[None]:
    """Undo what running ``forward`` writes into the model's plain attributes.

    Some models cache values in plain attributes as they run (timm's LeViT and
    EfficientFormer keep ``attention_bias_cache``, a dict keyed by device): tracing would
    leave an fx ``Proxy`` or a meta tensor there, and a verification run a float64 tensor.
    Every module's plain attributes — and the contents of its dicts, lists and sets — are
    put back as they were (parameters, buffers and submodules are not covered: the passes
    never write them).
    """
    saved = []
    for module in model.modules():
        state = {k: v for k, v in vars(module).items() if k not in _MODULE_TABLES}
        contents = {k: copy.copy(v) for k, v in state.items() if isinstance(v, dict | list | set)}
        saved.append((module, state, contents))
    try:
        yield
    finally:
        for module, state, contents in saved:
            for key in [k for k in vars(module) if k not in state and k not in _MODULE_TABLES]:
                delattr(module, key)
            for key, value in state.items():
                module.__dict__[key] = value
                if key in contents:  # the same container, with its contents as they were
                    value.clear()
                    if isinstance(value, list):
                        value.extend(contents[key])
                    else:
                        value.update(contents[key])


#: The tables of ``nn.Module.__dict__`` that hold parameters, buffers, submodules, hooks.
_MODULE_TABLES = frozenset(vars(torch.nn.Module()))


#: Tensor dtypes numpy reads directly (others are converted by torch first).
_NUMPY_FLOAT_DTYPES = (torch.float16, torch.float32, torch.float64)


def float64_array(tensor: torch.Tensor) -> np.ndarray:
    """A new float64 numpy array of ``tensor``'s values (on the CPU, detached)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype in _NUMPY_FLOAT_DTYPES:
        return np.array(tensor.numpy(), dtype=np.float64)
    return tensor.to(torch.float64).numpy()


def _leaves(value: Any) -> Iterator[Any]:
    """The tensors and arrays of nested tuples, lists and dicts, in order."""
    if isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value


def relative_error(got: Any, want: Any) -> float:
    """``max|got - want| / max|want|`` over all tensors or arrays of two outputs, in float64.

    The outputs may be tensors, arrays or nested tuples/lists/dicts of them. The absolute
    error is returned where ``want`` is all zero; ``inf`` for a shape mismatch or a
    non-finite difference.
    """
    leaves_got, leaves_want = list(_leaves(got)), list(_leaves(want))
    if len(leaves_got) != len(leaves_want):
        return float("inf")
    diff, scale = 0.0, 0.0
    for a, b in zip(leaves_got, leaves_want, strict=True):
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().double().numpy()
        if isinstance(b, torch.Tensor):
            b = b.detach().cpu().double().numpy()
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            return float("inf")
        if b.size == 0:
            continue
        leaf_diff = float(np.max(np.abs(a - b)))
        if not np.isfinite(leaf_diff):  # a NaN compares False: max() would drop it
            return float("inf")
        diff = max(diff, leaf_diff)
        scale = max(scale, float(np.max(np.abs(b))))
    if not np.isfinite(diff):
        return float("inf")
    return diff / scale if scale > 0 else diff
