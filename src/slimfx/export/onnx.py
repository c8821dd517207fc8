"""ONNX export with a numerical check: the written file runs in onnxruntime like in PyTorch.

:func:`export_onnx` writes a model (the slim GraphModule or the original ``nn.Module``) to
ONNX and only lets the file appear once it passed ``onnx.checker`` and onnxruntime's output,
on a batch of a *different* size than the example, matched PyTorch within
:data:`slimfx.tolerances.ONNX_RTOL`. Anything else raises, and leaves no file behind.

Exporter choice
---------------
PyTorch ships two ONNX exporters, and both exist in the torch versions slimfx supports:

``"torchscript"`` — ``torch.onnx.export(..., dynamo=False)``
    Traces the module with the TorchScript tracer. Deprecated since torch 2.9 but still
    present (torch 2.14 warns, and the warning is silenced here). Measured on a 2-core
    Xeon (torch 2.14.1, opset 20): CIFAR VGG-19 (20M parameters) in 0.35 s, its 50% slim
    GraphModule in 0.09 s.
``"dynamo"`` — ``torch.onnx.export(..., dynamo=True)``
    ``torch.export`` followed by onnxscript's translation and optimiser. The same two models
    take 2.1 s and 2.0 s, 6 to 20 times longer.

Both produce the same graph for CNNs (BatchNorm folded into the convolution; only the
flatten's target shape is computed by a few shape ops in the TorchScript graph and is a
constant in the dynamo one), run equally fast in onnxruntime and match PyTorch to about 1e-7
relative. ``exporter="auto"`` therefore tries ``"torchscript"`` first and falls
back to ``"dynamo"`` when the TorchScript path is missing (a future torch), fails, or writes
a model that does not pass the check; the exporter used is in :class:`ExportResult`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slimfx.errors import EquivalenceError, SlimfxError, first_line, strip_ansi
from slimfx.export.check import check_onnx, export_inputs, flatten_outputs, resize_batch
from slimfx.export.quantize import (
    QuantizeOptions,
    QuantizeReport,
    prepare_calibration,
    quantize_onnx,
)
from slimfx.files import atomic_path
from slimfx.numerics import as_input_tuple, eval_mode, relative_error
from slimfx.tolerances import ONNX_RTOL
from slimfx.validation import check_finite_weights, check_inputs_fit

__all__ = [
    "EXPORTERS",
    "ExportResult",
    "as_input_tuple",
    "check_onnx",
    "eval_mode",
    "export_onnx",
    "flatten_outputs",
    "relative_error",
    "resize_batch",
]

logger = logging.getLogger(__name__)

#: Exporters in the order ``exporter="auto"`` tries them (fastest correct one first).
EXPORTERS = ("torchscript", "dynamo")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how it was checked.

    Attributes
    ----------
    path : pathlib.Path
        The ONNX file.
    exporter : str
        ``"torchscript"`` or ``"dynamo"`` (see the module documentation).
    export_seconds : float
        Wall time of the export itself.
    check_seconds : float
        Wall time of ``onnx.checker`` and the onnxruntime comparison.
    max_relative_error : float
        ``max|onnxruntime - torch| / max|torch|`` over all outputs on the check batch.
    checked_batch_size : int
        Batch size of the check (differs from the example's when the batch is dynamic).
    opset : int
        The default-domain opset of the written model.
    dynamic_batch : bool
        Whether the batch dimension of inputs and outputs is symbolic.
    quantization : QuantizeReport or None
        With ``quantize=``: how the int8 model was calibrated and checked (the file holds
        the int8 model; ``max_relative_error`` is the float model's check before it).
    """

    path: Path
    exporter: str
    export_seconds: float
    check_seconds: float
    max_relative_error: float
    checked_batch_size: int
    opset: int
    dynamic_batch: bool
    quantization: QuantizeReport | None = None

    @property
    def quantized(self) -> bool:
        """Whether the file holds the int8 model."""
        return self.quantization is not None

    def __str__(self) -> str:
        text = (
            f"{self.path} ({self.exporter} exporter, opset {self.opset}, "
            f"{self.export_seconds:.2f} s; onnxruntime matches PyTorch within "
            f"{self.max_relative_error:.1e} relative at batch {self.checked_batch_size})"
        )
        return text if self.quantization is None else f"{text}, then {self.quantization}"


def export_onnx(
    module: torch.nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    exporter: str = "auto",
    rtol: float = ONNX_RTOL,
    quantize: QuantizeOptions | None = None,
) -> ExportResult:
    """Export ``module`` to an ONNX file that provably computes what the module computes.

    Parameters
    ----------
    module : torch.nn.Module
        The model (a slim ``torch.fx.GraphModule`` or any traceable module). It is exported
        in eval mode; its own mode is restored afterwards.
    example_inputs : tensor or sequence of tensors
        Inputs of the shape the model is used with; dimension 0 is the batch.
    path : str or os.PathLike
        Destination. Written atomically: it appears only after every check passed.
    opset : int, optional
        ONNX opset; the exporter's default when ``None``.
    dynamic_batch : bool
        Make dimension 0 of every input and output symbolic (``"batch"``).
    exporter : {"auto", "torchscript", "dynamo"}
        ``"auto"`` tries the fastest exporter first and falls back (module documentation).
    rtol : float
        Largest accepted ``max|onnxruntime - torch| / max|torch|``.
    quantize : QuantizeOptions, optional
        Write the int8 model instead: the float model is exported and checked as above,
        then quantized by onnxruntime (QDQ, per-channel weights, calibrated on
        ``quantize.calibration``) and checked against the module within ``quantize.rtol``
        (:mod:`slimfx.export.quantize`).

    Returns
    -------
    ExportResult

    Raises
    ------
    EquivalenceError
        onnxruntime's output differs from PyTorch's beyond ``rtol`` (with every exporter
        tried), or the int8 model's beyond ``quantize.rtol``.
    TraceError
        The example inputs do not fit the module (the message says what it takes).
    ValueError
        NaN or infinite weights (named), or invalid arguments.
    SlimfxError
        No exporter could export the module, or the file fails ``onnx.checker``.
    OSError
        ``path`` cannot be written (checked before exporting).

    Examples
    --------
    >>> import torch, slimfx
    >>> from slimfx.models import VGG
    >>> res = slimfx.slim(VGG(depth=11), torch.randn(1, 3, 32, 32), 0.5)
    >>> out = export_onnx(res.module, torch.randn(1, 3, 32, 32), "slim.onnx")  # doctest: +SKIP
    >>> out.max_relative_error < 1e-4  # doctest: +SKIP
    True
    """
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    inputs = as_input_tuple(example_inputs)
    if opset is not None and (not isinstance(opset, int) or opset < 7):
        raise ValueError(f"opset must be an int >= 7, got {opset!r}")
    order = _exporter_order(exporter)
    check_finite_weights(module)
    check_inputs_fit(module, inputs, "an example input")  # before any file is touched
    static = None if dynamic_batch else int(inputs[0].shape[0])
    calibration = prepare_calibration(quantize, inputs, static_batch=static)
    dest = Path(path)
    with eval_mode(module), atomic_path(dest, suffix=".tmp.onnx") as tmp:
        names = _io_names(module, inputs)
        exportable = lowered_for_export(module, inputs, trace_modules=False)
        outcome = _try_exporters(
            exportable, module, inputs, tmp, order, opset, dynamic_batch, rtol, names
        )
        if outcome.result is None and exportable is module:
            # a plain module: trace it and lower what the exporters refused, then again
            retraced = lowered_for_export(module, inputs, trace_modules=True)
            if retraced is not module:
                logger.info("exporting %s with adaptive pooling lowered", type(module).__name__)
                outcome = _try_exporters(
                    retraced, module, inputs, tmp, order, opset, dynamic_batch, rtol, names
                )
        if outcome.result is None:
            mismatch = outcome.mismatch
            detail = "; ".join(outcome.failures)
            culprit = _culprit(exportable, inputs, " ".join([detail, *outcome.messages]))
            where = f" at {culprit}" if culprit else ""
            if mismatch is not None:
                raise EquivalenceError(
                    f"cannot export {type(module).__name__} to {dest}{where}: {detail}",
                    mismatch.relative_error,
                    mismatch.tolerance,
                )
            raise SlimfxError(f"cannot export {type(module).__name__} to {dest}{where}: {detail}")
        result = dataclasses.replace(outcome.result, path=dest)
        if quantize is not None:  # the checked float model in tmp becomes the int8 model
            report = quantize_onnx(tmp, module, calibration, quantize, static_batch=static)
            result = dataclasses.replace(result, quantization=report)
    logger.info("exported %s", result)
    return result


@dataclasses.dataclass
class _Attempts:
    """What the exporters did: the first result that passed, or every failure."""

    result: ExportResult | None = None
    failures: list[str] = dataclasses.field(default_factory=list)
    mismatch: EquivalenceError | None = None
    messages: list[str] = dataclasses.field(default_factory=list)  # in full, to find the op


def _try_exporters(exportable, module, inputs, tmp, order, opset, dynamic_batch, rtol, names):
    """Each exporter in ``order`` on ``exportable`` until a file passes the check against
    ``module``."""
    attempts = _Attempts()
    failures = attempts.failures
    for name in order:
        start = time.perf_counter()
        try:
            _EXPORT[name](exportable, inputs, tmp, opset, dynamic_batch, names)
        except Exception as exc:  # an exporter's failure is reported, then the next tried
            failures.append(f"{name}: {first_line(exc, 300)}")
            attempts.messages.append(strip_ansi(str(exc)))
            logger.info("%s exporter failed: %s", name, first_line(exc, 300))
            continue
        export_seconds = time.perf_counter() - start
        try:
            checked = check_onnx(tmp, module, inputs, dynamic_batch=dynamic_batch, rtol=rtol)
        except EquivalenceError as exc:
            attempts.mismatch = exc
            failures.append(f"{name}: {exc}")
            logger.info("%s exporter wrote a mismatching model: %s", name, exc)
            continue
        except SlimfxError as exc:
            failures.append(f"{name}: {exc}")
            logger.info("%s exporter wrote an invalid model: %s", name, exc)
            continue
        error, batch, check_seconds, opset_used = checked
        attempts.result = ExportResult(
            path=tmp,
            exporter=name,
            export_seconds=export_seconds,
            check_seconds=check_seconds,
            max_relative_error=error,
            checked_batch_size=batch,
            opset=opset_used,
            dynamic_batch=dynamic_batch,
        )
        return attempts
    return attempts


def lowered_for_export(module, inputs, *, trace_modules: bool) -> torch.nn.Module:
    """``module`` with the ops exporters refuse lowered (:mod:`slimfx.passes.lower`); a
    plain module is traced for it only with ``trace_modules``. ``module`` itself when
    nothing needs lowering or it cannot be traced."""
    from slimfx.passes.lower import lower_for_export

    if isinstance(module, torch.fx.GraphModule) and _has_shapes(module):
        return lower_for_export(module)
    if not trace_modules:
        return module
    from slimfx.passes.trace import trace

    try:
        gm = trace(module, inputs)
    except SlimfxError:
        return module
    lowered = lower_for_export(gm)
    return module if lowered is gm else lowered


def _has_shapes(gm: torch.fx.GraphModule) -> bool:
    return any("tensor_meta" in node.meta for node in gm.graph.nodes)


def _culprit(module, inputs, detail: str) -> str | None:
    """The traced node of the op the exporters' messages name (``node 'x' (op)``)."""
    from slimfx.passes.trace import trace

    named = [m.lower() for m in re.findall(r"(?:operator |aten::|aten\.)(\w+)", detail)]
    if not named:
        return None
    try:
        gm = module if isinstance(module, torch.fx.GraphModule) else trace(module, inputs)
    except Exception:  # naming the node is a courtesy; the exporters' message stands
        return None
    ops = {}
    for node in gm.graph.nodes:
        if node.op == "call_function":
            ops.setdefault(getattr(node.target, "__name__", str(node.target)).lower(), node)
        elif node.op == "call_method":
            ops.setdefault(str(node.target).lower(), node)
    for op in named:  # the op itself, else its variant (adaptive_max_pool2d_with_indices)
        for name, node in sorted(ops.items(), key=lambda item: item[0] != op):
            if name == op or name.startswith(op + "_"):
                return f"node {node.name!r} ({name})"
    return None


def _exporter_order(exporter: str) -> tuple[str, ...]:
    if exporter == "auto":
        return EXPORTERS
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be 'auto' or one of {EXPORTERS}, got {exporter!r}")
    return (exporter,)


def _io_names(module: torch.nn.Module, inputs: tuple) -> tuple[list[str], list[str]]:
    with torch.no_grad():
        outputs = flatten_outputs(module(*inputs))
    input_names = ["input"] if len(inputs) == 1 else [f"input_{k}" for k in range(len(inputs))]
    output_names = ["output"] if len(outputs) == 1 else [f"output_{k}" for k in range(len(outputs))]
    return input_names, output_names


def _export_torchscript(module, inputs, path, opset, dynamic_batch, names) -> None:
    input_names, output_names = names
    axes = {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            inputs,
            str(path),
            dynamo=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )


def _export_dynamo(module, inputs, path, opset, dynamic_batch, names) -> None:
    input_names, output_names = names
    inputs, shapes = export_inputs(inputs, dynamic_batch)
    log = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(log):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=shapes,
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    if log.getvalue().strip():
        logger.debug("dynamo exporter: %s", log.getvalue().strip())


_EXPORT = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}
