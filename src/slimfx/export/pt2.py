"""torch.export and torch.compile for slim models, each with a numerical check.

:func:`export_pt2` writes a model (the slim GraphModule or any exportable ``nn.Module``) as a
``.pt2`` archive with ``torch.export`` and only lets the file appear once the program
*loaded back from it* matched the module, on a batch of a different size than the example,
within :data:`slimfx.tolerances.FLOAT32_RTOL`. :func:`check_compiled` compiles a module with
``torch.compile`` (the default inductor backend) and compares the compiled module with the
eager one the same way.

Both run the module in eval mode and restore its own mode; neither modifies it. Failures
raise a one-line :class:`~slimfx.errors.SlimfxError` (torch's messages span pages and may
carry terminal colour codes; only their first line, without them, is kept).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slimfx.errors import EquivalenceError, SlimfxError, strip_ansi
from slimfx.export.check import export_inputs, flatten_outputs, resize_batch
from slimfx.files import atomic_path
from slimfx.numerics import as_input_tuple, eval_mode, relative_error
from slimfx.tolerances import FLOAT32_RTOL
from slimfx.validation import check_finite_weights, check_inputs_fit

__all__ = ["CompileCheck", "Pt2Result", "check_compiled", "export_pt2"]


@dataclass(frozen=True)
class Pt2Result:
    """What :func:`export_pt2` wrote and how it was checked.

    Attributes
    ----------
    path : pathlib.Path
        The ``.pt2`` archive.
    seconds : float
        Wall time of ``torch.export.export`` and ``torch.export.save``.
    max_relative_error : float
        ``max|loaded - module| / max|module|`` over all outputs on the check batch.
    checked_batch_size : int
        Batch size of the check (differs from the example's when the batch is dynamic).
    dynamic_batch : bool
        Whether dimension 0 of the inputs is symbolic (``"batch"``) in the program.
    """

    path: Path
    seconds: float
    max_relative_error: float
    checked_batch_size: int
    dynamic_batch: bool

    def __str__(self) -> str:
        batch = "dynamic batch" if self.dynamic_batch else "static batch"
        return (
            f"{self.path} (torch.export, {batch}, {self.seconds:.2f} s; the loaded program "
            f"matches PyTorch within {self.max_relative_error:.1e} relative at batch "
            f"{self.checked_batch_size})"
        )


@dataclass(frozen=True)
class CompileCheck:
    """How ``torch.compile`` of a module compared with the module (:func:`check_compiled`).

    Attributes
    ----------
    seconds : float
        Wall time of the first compiled call (compilation included).
    max_relative_error : float
        ``max|compiled - module| / max|module|`` over all outputs.
    checked_batch_size : int
        Batch size of the example inputs the module was compiled for.
    """

    seconds: float
    max_relative_error: float
    checked_batch_size: int

    def __str__(self) -> str:
        return (
            f"torch.compile (inductor, {self.seconds:.2f} s) matches PyTorch within "
            f"{self.max_relative_error:.1e} relative at batch {self.checked_batch_size}"
        )


def export_pt2(
    module: torch.nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    rtol: float = FLOAT32_RTOL,
) -> Pt2Result:
    """Export ``module`` with ``torch.export`` to a ``.pt2`` file that is checked loaded back.

    Parameters
    ----------
    module : torch.nn.Module
        The model (a slim ``torch.fx.GraphModule`` or any exportable module). It is exported
        in eval mode; its own mode is restored afterwards and it is not modified.
    example_inputs : tensor or sequence of tensors
        Inputs of the shape the model is used with; dimension 0 is the batch.
    path : str or os.PathLike
        Destination, ending in ``.pt2`` (``torch.export.load`` expects it). Written
        atomically: it appears only after the check passed.
    dynamic_batch : bool
        Make dimension 0 of every input symbolic (``"batch"``, any size from 1).
    rtol : float
        Largest accepted ``max|loaded - module| / max|module|``.

    Returns
    -------
    Pt2Result

    Raises
    ------
    EquivalenceError
        The loaded program's output differs from the module's beyond ``rtol``.
    SlimfxError
        ``torch.export`` cannot export the module (for example a batch size fixed in its
        code, with ``dynamic_batch``), or the archive cannot be saved or loaded back.
    TraceError
        The example inputs do not fit the module.
    ValueError
        ``path`` does not end in ``.pt2``, NaN or infinite weights, invalid inputs.

    Examples
    --------
    >>> import torch, slimfx
    >>> from slimfx.models import VGG
    >>> x = torch.randn(1, 3, 32, 32)
    >>> res = slimfx.slim(VGG(depth=11), x, 0.5)
    >>> out = export_pt2(res.module, x, "slim.pt2")  # doctest: +SKIP
    >>> program = torch.export.load("slim.pt2").module()  # doctest: +SKIP
    """
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    inputs = as_input_tuple(example_inputs)
    dest = Path(path)
    if dest.suffix != ".pt2":
        raise ValueError(f"a torch.export archive must end in .pt2, got {str(dest)!r}")
    check_finite_weights(module)
    check_inputs_fit(module, inputs, "an example input")  # before any file is touched
    what = f"{type(module).__name__} to {dest}"
    with eval_mode(module), atomic_path(dest, suffix=".tmp.pt2") as tmp:
        traced, shapes = export_inputs(inputs, dynamic_batch)
        start = time.perf_counter()
        try:
            program = torch.export.export(module, traced, dynamic_shapes=shapes)
        except Exception as exc:  # torch.export raises many unrelated types
            hint = (
                " (a batch size fixed in the model's code: use dynamic_batch=False, --static-batch)"
            )
            raise SlimfxError(
                f"torch.export cannot export {what}: {one_line(exc)}"
                + (hint if dynamic_batch and "specialized" in str(exc) else "")
            ) from exc
        try:
            torch.export.save(program, tmp)
        except Exception as exc:
            raise SlimfxError(f"torch.export cannot save {what}: {one_line(exc)}") from exc
        seconds = time.perf_counter() - start
        batch = traced[0].shape[0]
        if dynamic_batch:
            batch = 2 if batch != 2 else 3
        fresh = resize_batch(inputs, batch, seed=batch)
        try:
            loaded = torch.export.load(tmp).module()
            with torch.no_grad():
                got = flatten_outputs(loaded(*fresh))
        except Exception as exc:
            raise SlimfxError(
                f"the program exported from {what} does not load and run back at batch "
                f"{batch}: {one_line(exc)}"
            ) from exc
        with torch.no_grad():
            want = flatten_outputs(module(*fresh))
        error = _compare(got, want, rtol, f"the loaded program at batch {batch}")
    return Pt2Result(dest, seconds, error, batch, dynamic_batch)


def check_compiled(
    module: torch.nn.Module, example_inputs: Any, *, rtol: float = FLOAT32_RTOL
) -> CompileCheck:
    """Compile ``module`` with ``torch.compile`` (inductor) and compare it with the module.

    The module runs in eval mode under ``torch.inference_mode`` (as the ``torch-compile``
    benchmark backend runs it), compiled for the shapes of ``example_inputs``
    (``dynamic=False``); its own mode is restored afterwards and it is not modified.
    Compiling takes seconds (C++ kernels are built; inductor caches them on disk).

    Returns
    -------
    CompileCheck

    Raises
    ------
    EquivalenceError
        The compiled module's output differs from the module's beyond ``rtol``.
    SlimfxError
        ``torch.compile`` fails (for example no C++ compiler is installed).
    """
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    inputs = as_input_tuple(example_inputs)
    check_inputs_fit(module, inputs, "an example input")
    with eval_mode(module), torch.inference_mode():
        start = time.perf_counter()
        try:
            got = flatten_outputs(torch.compile(module, dynamic=False)(*inputs))
        except Exception as exc:  # dynamo and inductor raise their own types
            raise SlimfxError(
                f"torch.compile cannot compile {type(module).__name__}: {one_line(exc)}"
            ) from exc
        seconds = time.perf_counter() - start
        want = flatten_outputs(module(*inputs))
    error = _compare(got, want, rtol, "torch.compile")
    return CompileCheck(seconds, error, inputs[0].shape[0])


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message without terminal escape codes (its first bullet
    appended when torch puts the explanation there), cut to ``limit``."""
    lines = [line.strip() for line in strip_ansi(str(exc)).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if len(lines) > 1 and lines[1].startswith("- "):
        text = f"{text} {lines[1][2:]}"
    return text[:limit]


def _compare(got: list, want: list, rtol: float, what: str) -> float:
    if len(got) != len(want):
        raise EquivalenceError(
            f"{what} returns {len(got)} outputs, PyTorch {len(want)}", float("inf"), rtol
        )
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        if a.shape != b.shape:
            raise EquivalenceError(
                f"output {k} of {what} has shape {tuple(a.shape)}, PyTorch's {tuple(b.shape)}",
                float("inf"),
                rtol,
            )
    error = relative_error(got, want)
    if not error <= rtol:
        raise EquivalenceError(
            f"{what} differs from PyTorch by {error:.3g} relative (tolerance {rtol:g})",
            error,
            rtol,
        )
    return error
