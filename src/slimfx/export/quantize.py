"""int8 ONNX: onnxruntime static quantization of an exported model, checked against PyTorch.

``slimfx.export_onnx(..., quantize=QuantizeOptions(calibration))`` exports and checks the
float model as always, then, in a temporary folder:

1. ``quant_pre_process`` (symbolic shape inference and onnxruntime's basic graph
   optimisation, which its quantizer recommends so that every tensor has a known shape);
2. ``quantize_static``: QDQ format (``QuantizeLinear``/``DequantizeLinear`` pairs, which
   onnxruntime's CPU provider fuses into integer kernels such as ``QLinearConv``), one weight
   scale per output channel, activation ranges calibrated on the calibration inputs;
3. the check: ``onnx.checker``, then onnxruntime (CPU, all graph optimisations, as deployed)
   on the first :data:`CHECK_IMAGES` calibration inputs against the float PyTorch module:
   ``‖int8 − torch‖ / ‖torch‖`` (Frobenius norms over all outputs) must not exceed
   ``rtol`` (:data:`slimfx.tolerances.INT8_RTOL`, justified there); a mismatch raises
   :class:`slimfx.EquivalenceError`.

Only then does the int8 model replace the float one in :func:`slimfx.export_onnx`'s
temporary file, which is renamed into place: a failure leaves the earlier file untouched.

Types: uint8 activations (asymmetric, so a ReLU output uses all 256 levels) and int8
symmetric weights (U8S8; onnxruntime's default, int8 activations, gives the same levels and
the same results). Weights use 7 bits (``reduce_range=True``): on x86 CPUs without VNNI,
onnxruntime's U8S8 kernels add pairs of products in 16 bits (``VPMADDUBSW``), which
full-range per-channel weights saturate — 4 points of accuracy on the slim digits VGG-11
(AVX2, onnxruntime 1.32), 0.4 with 7 bits.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimfx.errors import EquivalenceError, SlimfxError, first_line
from slimfx.numerics import eval_mode
from slimfx.tolerances import INT8_RTOL

__all__ = ["CHECK_IMAGES", "QuantizeOptions", "QuantizeReport", "onnx_accuracy"]

logger = logging.getLogger(__name__)

#: How many calibration inputs (the first ones) the int8 check runs.
CHECK_IMAGES = 64
TYPES = ("uint8", "int8")
METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantizeOptions:
    """How :func:`slimfx.export_onnx` quantizes a model to int8 (invalid values raise
    ``ValueError`` naming the field when the options are made).

    Attributes
    ----------
    calibration : iterable or tensor
        Calibration inputs: a dataset or iterable of input tensors (one sample each), of
        ``(input, label, ...)`` tuples (the first element is used) or of batches of either
        (a ``DataLoader``), or one tensor holding a batch. Use the images the model will
        see, preprocessed the same way (the training split without augmentation): the
        activation ranges are taken from them.
    calibration_images : int
        How many inputs to calibrate on (the first ones; fewer if there are fewer).
    per_channel : bool
        One weight scale per output channel of Conv and Gemm (else one per tensor).
    activation_type, weight_type : {"uint8", "int8"}
        onnxruntime's ``QuantType.QUInt8``/``QInt8`` (also accepted, as are their names).
    reduce_range : bool
        7-bit weights, which do not saturate x86 kernels without VNNI (module docstring).
    method : {"minmax", "entropy", "percentile"}
        onnxruntime's calibration method.
    batch_size : int
        Calibration batch size (a static-batch model is fed its own).
    rtol : float
        Largest accepted ``‖int8 − torch‖ / ‖torch‖`` on the check inputs.
    preprocess : bool
        Run ``quant_pre_process`` first.
    """

    calibration: Any
    calibration_images: int = 128
    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    reduce_range: bool = True
    method: str = "minmax"
    batch_size: int = 32
    rtol: float = INT8_RTOL
    preprocess: bool = True

    def __post_init__(self) -> None:
        data = self.calibration
        if isinstance(data, str | bytes | os.PathLike) or not (
            hasattr(data, "__iter__") or hasattr(data, "__getitem__")
        ):
            raise ValueError(
                "quantize.calibration must hold input tensors (a dataset, an iterable or a "
                f"batch tensor), got {type(data).__name__}"
            )
        for name in ("calibration_images", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"quantize.{name} must be a positive integer, got {value!r}")
        for name in ("activation_type", "weight_type"):
            value = getattr(self, name)
            key = str(getattr(value, "name", value)).lower().removeprefix("q")
            if key not in TYPES:
                raise ValueError(f"quantize.{name} must be one of {TYPES}, got {value!r}")
            object.__setattr__(self, name, key)
        if self.method not in METHODS:
            raise ValueError(f"quantize.method must be one of {METHODS}, got {self.method!r}")
        for name in ("per_channel", "reduce_range", "preprocess"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"quantize.{name} must be True or False")
        rtol = self.rtol
        if isinstance(rtol, bool) or not isinstance(rtol, int | float) or not 0 < rtol < np.inf:
            raise ValueError(f"quantize.rtol must be a positive finite number, got {rtol!r}")


@dataclass(frozen=True)
class QuantizeReport:
    """How the int8 model was made and checked (``ExportResult.quantization``).

    Attributes
    ----------
    calibration_images, check_images : int
        Inputs calibrated on; inputs of the check (the first calibration inputs).
    relative_error : float
        ``‖int8 − torch‖ / ‖torch‖`` over all outputs on the check inputs.
    top1_agreement : float or None
        Fraction of check inputs with the same arg-max class in both (for an output of
        shape ``(batch, classes)``; else ``None``).
    tolerance : float
        The bound ``relative_error`` was checked against.
    activation_type, weight_type, method : str
    per_channel, reduce_range : bool
    seconds : float
        Pre-processing, calibration, quantization and check.
    """

    calibration_images: int
    check_images: int
    relative_error: float
    top1_agreement: float | None
    tolerance: float
    activation_type: str
    weight_type: str
    per_channel: bool
    reduce_range: bool
    method: str
    seconds: float

    def __str__(self) -> str:
        bits = "7-bit " if self.reduce_range else ""
        scales = "per-channel" if self.per_channel else "per-tensor"
        agree = (
            "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.1%}"
        )
        return (
            f"int8 QDQ ({self.activation_type} activations, {scales} {bits}{self.weight_type} "
            f"weights, {self.method} calibration on {self.calibration_images} inputs, "
            f"{self.seconds:.2f} s): within {self.relative_error:.1e} relative of PyTorch on "
            f"{self.check_images} of them (tolerance {self.tolerance:g}){agree}"
        )


def prepare_calibration(
    options: QuantizeOptions | None, example: tuple, *, static_batch: int | None = None
) -> torch.Tensor | None:
    """The first ``options.calibration_images`` inputs as one float32 CPU batch (``None``
    without options); for a model with a fixed batch size ``static_batch``, whole batches
    of it only. :func:`slimfx.export_onnx` calls it before exporting, so that bad
    calibration data touches no file.

    Raises
    ------
    ValueError
        ``options`` is no :class:`QuantizeOptions`, the model takes several inputs, or the
        calibration data holds no input, one of another shape than the example's, or fewer
        than ``static_batch``.
    """
    if options is None:
        return None
    if not isinstance(options, QuantizeOptions):
        raise ValueError(f"quantize must be a QuantizeOptions, got {type(options).__name__}")
    if len(example) != 1:
        raise ValueError(f"int8 export needs a model with one input; this one takes {len(example)}")
    sample = tuple(example[0].shape[1:])
    data = options.calibration
    if isinstance(data, torch.Tensor | np.ndarray):
        data = [data]  # one batch
    wanted, taken, count = options.calibration_images, [], 0
    for item in data:
        value = item[0] if isinstance(item, tuple | list) and item else item
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"quantize.calibration yields {type(value).__name__}, not tensors")
        batch = value.unsqueeze(0) if tuple(value.shape) == sample else value
        if tuple(batch.shape[1:]) != sample:
            raise ValueError(
                f"quantize.calibration: an input of shape {tuple(value.shape)}; the model "
                f"takes {sample} per sample (the example input without its batch dimension)"
            )
        taken.append(batch[: wanted - count].detach().cpu().float())
        count += taken[-1].shape[0]
        if count >= wanted:
            break
    if count == 0:
        raise ValueError("quantize.calibration holds no input")
    if static_batch and count < static_batch:
        raise ValueError(
            f"quantize.calibration: {count} inputs, fewer than the model's static batch "
            f"size {static_batch}"
        )
    images = torch.cat(taken)
    return images[: count // static_batch * static_batch] if static_batch else images


def quantize_onnx(
    path: Path,
    module: torch.nn.Module,
    images: torch.Tensor,
    options: QuantizeOptions,
    *,
    static_batch: int | None = None,
) -> QuantizeReport:
    """Replace the float model at ``path`` by its int8 model, once that passed the check.

    ``images`` come from :func:`prepare_calibration` (given the same ``static_batch``, the
    model's fixed batch size, ``None`` when it is dynamic). ``module`` runs in eval mode.

    Raises
    ------
    SlimfxError
        onnxruntime cannot quantize the model, or writes a model it cannot load.
    EquivalenceError
        The int8 model differs from PyTorch beyond ``options.rtol``.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    start = time.perf_counter()
    batch = static_batch or options.batch_size
    check = (
        images[: max(CHECK_IMAGES // batch, 1) * batch] if static_batch else images[:CHECK_IMAGES]
    )
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    with tempfile.TemporaryDirectory(prefix="slimfx-int8-") as tmp, _quiet():
        source, int8 = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        try:
            if options.preprocess:
                from onnxruntime.quantization.shape_inference import quant_pre_process

                quant_pre_process(str(path), str(source))
            else:
                shutil.copyfile(path, source)
            quantize_static(
                str(source),
                str(int8),
                _Reader(_input_name(source), images, batch),
                quant_format=QuantFormat.QDQ,
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                activation_type=types[options.activation_type],
                weight_type=types[options.weight_type],
                calibrate_method=getattr(CalibrationMethod, _METHOD_NAMES[options.method]),
                calibration_providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # the quantizer raises many unrelated types
            message = f"onnxruntime cannot quantize the model: {first_line(exc, 300)}"
            raise SlimfxError(message) from exc
        error, agreement = _check(int8, module, check, batch, options.rtol)
        shutil.copyfile(int8, path)
    return QuantizeReport(
        calibration_images=len(images),
        check_images=len(check),
        relative_error=error,
        top1_agreement=agreement,
        tolerance=float(options.rtol),
        activation_type=options.activation_type,
        weight_type=options.weight_type,
        per_channel=options.per_channel,
        reduce_range=options.reduce_range,
        method=options.method,
        seconds=time.perf_counter() - start,
    )


def onnx_accuracy(
    path: str | os.PathLike, dataset, *, batch_size: int = 256, threads: int | None = None
) -> float:
    """Top-1 accuracy of an ONNX classifier in onnxruntime (CPU) on ``(image, label)`` pairs,
    in batches (a fixed-batch model gets its own size, the last batch padded)."""
    session = _session(path, threads)
    fixed = session.get_inputs()[0].shape[0]
    fixed = fixed if isinstance(fixed, int) and fixed > 0 else None
    loader = torch.utils.data.DataLoader(dataset, batch_size=fixed or batch_size, shuffle=False)
    correct = total = 0
    for x, y in loader:
        logits = _run(session, x.float(), fixed)[0]
        correct += int((logits.argmax(axis=1) == y.numpy()).sum())
        total += len(y)
    return correct / total if total else 0.0


_METHOD_NAMES = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


class _Reader:
    """onnxruntime's ``CalibrationDataReader`` protocol: the calibration inputs in batches."""

    def __init__(self, name: str, images: torch.Tensor, batch: int) -> None:
        self.feeds = [{name: images[k : k + batch].numpy()} for k in range(0, len(images), batch)]
        self.position = 0

    def get_next(self) -> dict | None:
        self.position += 1
        return self.feeds[self.position - 1] if self.position <= len(self.feeds) else None

    def rewind(self) -> None:
        self.position = 0


def _check(path: Path, module, images: torch.Tensor, batch: int, rtol: float):
    from slimfx.export.check import flatten_outputs

    try:
        import onnx

        onnx.checker.check_model(str(path), full_check=True)
        session = _session(path, None)
    except Exception as exc:  # onnx and onnxruntime raise their own types
        raise SlimfxError(f"the int8 model is invalid: {first_line(exc, 300)}") from exc
    parts = [_run(session, images[k : k + batch]) for k in range(0, len(images), batch)]
    got = [np.concatenate(outputs).astype(np.float64) for outputs in zip(*parts, strict=True)]
    device = next(iter(module.parameters()), images).device
    with torch.no_grad(), eval_mode(module):
        outputs = flatten_outputs(module(images.to(device)))
    want = [t.detach().cpu().double().numpy() for t in outputs]
    if [a.shape for a in got] != [b.shape for b in want]:
        raise EquivalenceError("the int8 model's outputs have other shapes", float("inf"), rtol)
    num = sum(float(np.sum((a - b) ** 2)) for a, b in zip(got, want, strict=True))
    den = sum(float(np.sum(b**2)) for b in want)
    error = float(np.sqrt(num / den)) if den > 0 else (0.0 if num == 0 else float("inf"))
    agreement = None
    if len(want) == 1 and want[0].ndim == 2 and want[0].shape[1] > 1:
        agreement = float(np.mean(got[0].argmax(1) == want[0].argmax(1)))
    if not error <= rtol:
        raise EquivalenceError(
            f"the int8 model differs from PyTorch by {error:.3g} relative on {len(images)} "
            f"calibration inputs (tolerance {rtol:g})",
            error,
            rtol,
        )
    return error, agreement


def _session(path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, x: torch.Tensor, fixed: int | None = None) -> list[np.ndarray]:
    n = len(x)
    if fixed and n < fixed:  # pad a fixed-batch model's last batch
        x = torch.cat([x, x[-1:].expand(fixed - n, *x.shape[1:])])
    return [out[:n] for out in session.run(None, {session.get_inputs()[0].name: x.numpy()})]


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


@contextlib.contextmanager
def _quiet():
    """The quantizer prints progress and logs hints to the root logger: both go to this
    module's debug log instead."""
    root = logging.getLogger()

    class _ToDebug(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.name != "root":
                return True
            logger.debug("onnxruntime quantizer: %s", record.getMessage())
            return False

    hook, out = _ToDebug(), io.StringIO()
    root.addFilter(hook)
    try:
        with contextlib.redirect_stdout(out):
            yield
    finally:
        root.removeFilter(hook)
        if out.getvalue().strip():
            logger.debug("onnxruntime quantizer: %s", out.getvalue().strip())
