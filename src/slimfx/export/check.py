"""Checking an exported ONNX model against PyTorch, and the input plumbing it needs.

:func:`check_onnx` is the check :func:`slimfx.export_onnx` runs before a file may appear:
``onnx.checker`` (full), then onnxruntime's CPU output on a seeded batch of a different size
compared with the module's within a relative tolerance.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from slimfx.errors import EquivalenceError, SlimfxError, first_line
from slimfx.numerics import eval_mode, relative_error
from slimfx.tolerances import ONNX_RTOL


def export_inputs(inputs: tuple[torch.Tensor, ...], dynamic_batch: bool) -> tuple:
    """``(inputs, dynamic_shapes)`` for ``torch.export``: with a dynamic batch, dimension 0
    of every input is ``Dim("batch")`` and a batch of 1 is traced as 2 (torch.export
    specialises sizes 0 and 1, which would fix the batch); else the inputs and ``None``."""
    if not dynamic_batch:
        return inputs, None
    traced = resize_batch(inputs, 2) if inputs[0].shape[0] < 2 else inputs
    batch = torch.export.Dim("batch", min=1)
    return traced, tuple({0: batch} for _ in inputs)


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

    ``module`` runs in eval mode, as it was exported; its own mode is restored afterwards.

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
        raise SlimfxError(f"the exported model fails onnx.checker: {first_line(exc, 300)}") from exc
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
        message = f"onnxruntime cannot load the exported model: {first_line(exc, 300)}"
        raise SlimfxError(message) from exc
    feed = {
        arg.name: value.detach().cpu().numpy()
        for arg, value in zip(session.get_inputs(), fresh, strict=True)
    }
    got = session.run(None, feed)
    with torch.no_grad(), eval_mode(module):  # as exported; running stats stay untouched
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


def flatten_outputs(value: Any) -> list[torch.Tensor]:
    """The tensors of a module's output (tensor, tuple/list or dict of them), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in flatten_outputs(item)]
    if isinstance(value, dict):
        return [t for key in value for t in flatten_outputs(value[key])]
    raise SlimfxError(f"cannot export an output of type {type(value).__name__}")


def _default_opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return -1
