"""Checking an exported ONNX model against PyTorch, and the input plumbing it needs.

:func:`check_onnx` is the check :func:`slimfx.export_onnx` runs before a file may appear:
``onnx.checker`` (full), then onnxruntime's CPU output on a seeded batch of a different size
compared with the module's within a relative tolerance.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from slimfx.errors import EquivalenceError, SlimfxError
from slimfx.tolerances import ONNX_RTOL


def as_input_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """``example_inputs`` as a tuple of tensors with a batch dimension (else ``ValueError``)."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(inputs, Sequence) or not inputs:
        raise ValueError("example_inputs must be a tensor or a non-empty sequence of tensors")
    inputs = tuple(inputs)
    for k, value in enumerate(inputs):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"example input {k} is a {type(value).__name__}, not a tensor")
        if value.dim() == 0:
            raise ValueError(f"example input {k} is a scalar; dimension 0 must be the batch")
    return inputs


def resize_batch(inputs: tuple[torch.Tensor, ...], batch: int, seed: int = 0) -> tuple:
    """Inputs like ``inputs`` with batch size ``batch``: floats drawn N(0, 1), others cycled."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for value in inputs:
        shape = (batch, *value.shape[1:])
        if value.is_floating_point():
            fresh = torch.randn(shape, generator=generator, dtype=torch.float64)
            out.append(fresh.to(dtype=value.dtype, device=value.device))
        else:
            index = torch.arange(batch, device=value.device) % value.shape[0]
            out.append(value[index])
    return tuple(out)


def check_onnx(
    path: str | os.PathLike,
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    *,
    dynamic_batch: bool = True,
    rtol: float = ONNX_RTOL,
) -> tuple[float, int, float, int]:
    """Validate an ONNX file and compare onnxruntime (CPU) with ``module``.

    Returns
    -------
    tuple
        ``(max_relative_error, batch_size, seconds, opset)``.

    Raises
    ------
    SlimfxError
        The file fails ``onnx.checker`` or cannot be loaded by onnxruntime.
    EquivalenceError
        The outputs differ beyond ``rtol`` (or in number or shape).
    """
    import onnx
    import onnxruntime as ort

    start = time.perf_counter()
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises several unrelated types
        raise SlimfxError(f"the exported model fails onnx.checker: {_first_line(exc)}") from exc
    opset = _default_opset(onnx.load(str(path), load_external_data=False))
    batch = inputs[0].shape[0]
    if dynamic_batch:
        batch = 2 if batch != 2 else 3
    fresh = resize_batch(inputs, batch, seed=batch)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        message = f"onnxruntime cannot load the exported model: {_first_line(exc)}"
        raise SlimfxError(message) from exc
    feed = {
        arg.name: value.detach().cpu().numpy()
        for arg, value in zip(session.get_inputs(), fresh, strict=True)
    }
    got = session.run(None, feed)
    with torch.no_grad():
        want = [t.detach().cpu().numpy() for t in flatten_outputs(module(*fresh))]
    if len(got) != len(want):
        raise EquivalenceError(
            f"onnxruntime returns {len(got)} outputs, PyTorch {len(want)}", float("inf"), rtol
        )
    error = 0.0
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        if a.shape != b.shape:
            raise EquivalenceError(
                f"output {k} has shape {a.shape} in onnxruntime but {b.shape} in PyTorch "
                f"at batch {batch}",
                float("inf"),
                rtol,
            )
        error = max(error, relative_error(a, b))
    if not error <= rtol:
        raise EquivalenceError(
            f"onnxruntime differs from PyTorch by {error:.3g} relative at batch {batch} "
            f"(tolerance {rtol:g})",
            error,
            rtol,
        )
    return error, batch, time.perf_counter() - start, opset


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """``max|got - want| / max|want|`` in float64 (the absolute error where ``want`` is 0)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if want.size == 0:
        return 0.0
    diff = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    if not np.isfinite(diff):
        return float("inf")
    return diff / scale if scale > 0 else diff


def flatten_outputs(value: Any) -> list[torch.Tensor]:
    """The tensors of a module's output (tensor, tuple/list or dict of them), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in flatten_outputs(item)]
    if isinstance(value, dict):
        return [t for key in value for t in flatten_outputs(value[key])]
    raise SlimfxError(f"cannot export an output of type {type(value).__name__}")


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _default_opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return -1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
