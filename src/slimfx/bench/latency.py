"""Latency of the original and the slim model, side by side, in every available runtime.

How a measurement is made (:func:`measure_latency`):

1. Each backend (:mod:`slimfx.bench.backends`) gets every model once; ONNX backends use
   :func:`slimfx.export_onnx`, so a benchmarked ONNX file has passed the numerical check.
2. Per batch size, the same seeded random input goes to every model. Each model is warmed
   up, then timed once to choose how many calls make a round of at least
   ``min_round_seconds`` (short calls are averaged, long ones timed singly).
3. Rounds alternate the models (A B, then B A, …) so slow drifts of a shared machine hit
   all models alike; the speedup is the median of the per-round ratios.
4. Each model's median, p90 and min–max over the rounds are reported; when a model's
   spread (max - min) exceeds the difference of the medians, the row is flagged ``noisy``
   and a warning is logged and stored in the report.

A model entry of :func:`measure_latency` can also be the path of an ONNX file written
earlier (an int8 model from ``export_onnx(..., quantize=...)``): it runs as it is on the
backends that run ONNX files and is listed as not measured on the PyTorch ones; its size is
the element count of its initializers and its MACs are unknown.

MACs are conv+linear multiply-accumulates per sample (:func:`slimfx.counting.count_macs`),
so ``efficiency = speedup / MACs ratio`` says how much of the MACs reduction became latency.
The models' sizes and :func:`synthetic_scales` live in :mod:`slimfx.bench.models`; the
values of a report in :mod:`slimfx.bench.stats` and :mod:`slimfx.bench.report`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimfx.bench.backends import machine_info, prepare_runners, resolve_backends
from slimfx.bench.models import model_info, synthetic_scales
from slimfx.bench.report import LatencyReport
from slimfx.bench.stats import LatencyRow, Measurement, ModelInfo, TimingStats
from slimfx.bench.timing import progress_bar, time_rounds, torch_threads
from slimfx.errors import SlimfxError, first_line
from slimfx.export.onnx import as_input_tuple, eval_mode, resize_batch

logger = logging.getLogger(__name__)

__all__ = [
    "LatencyReport",
    "LatencyRow",
    "compare_latency",
    "measure_latency",
    "model_info",
    "synthetic_scales",
]


def compare_latency(
    original: torch.nn.Module,
    slim: torch.nn.Module,
    example_inputs: Any,
    *,
    batches: Sequence[int] = (1, 8, 64),
    backends: Sequence[str] | None = None,
    rounds: int = 15,
    warmup: int = 3,
    threads: int | None = None,
    min_round_seconds: float = 0.02,
    progress: bool = True,
) -> LatencyReport:
    """Measure the latency of ``original`` and ``slim`` in alternating rounds.

    Parameters
    ----------
    original, slim : torch.nn.Module
        The models; ``slim`` is typically ``slimfx.slim(...).module``. Neither is modified.
    example_inputs : tensor or sequence of tensors
        One input of the right shape; dimension 0 is replaced by each batch size.
    batches : sequence of int
        Batch sizes to measure.
    backends : sequence of str, optional
        Names from :data:`slimfx.bench.backends.BACKENDS`; default: every available one of
        :data:`~slimfx.bench.backends.DEFAULT_BACKENDS`. Unavailable ones are skipped and
        listed in :attr:`LatencyReport.skipped`.
    rounds : int
        Timed rounds per model, backend and batch size.
    warmup : int
        Untimed calls per model before timing.
    threads : int, optional
        Intra-op threads for PyTorch CPU and onnxruntime (their defaults when ``None``).
    min_round_seconds : float
        Calls are repeated within a round until it lasts about this long.
    progress : bool
        Show a tqdm progress bar (only on a terminal).

    Returns
    -------
    LatencyReport
        ``rows`` holds one :class:`~slimfx.bench.stats.LatencyRow` per backend and batch.

    Examples
    --------
    >>> import torch, slimfx
    >>> from slimfx.models import VGG
    >>> model, x = VGG(depth=11).eval(), torch.randn(1, 3, 32, 32)
    >>> res = slimfx.slim(model, x, 0.5, round_to=16)
    >>> report = compare_latency(model, res.module, x, batches=(8,))  # doctest: +SKIP
    >>> print(report.table())  # doctest: +SKIP
    """
    return measure_latency(
        {"original": original, "slim": slim},
        example_inputs,
        batches=batches,
        backends=backends,
        rounds=rounds,
        warmup=warmup,
        threads=threads,
        min_round_seconds=min_round_seconds,
        progress=progress,
    )


def measure_latency(
    models: Mapping[str, torch.nn.Module | str | os.PathLike],
    example_inputs: Any,
    *,
    baseline: str | None = None,
    batches: Sequence[int] = (1, 8, 64),
    backends: Sequence[str] | None = None,
    rounds: int = 15,
    warmup: int = 3,
    threads: int | None = None,
    min_round_seconds: float = 0.02,
    progress: bool = True,
    warn_noise: bool = True,
) -> LatencyReport:
    """Measure several models in one run (alternating); compare each with ``baseline``.

    Parameters are those of :func:`compare_latency`; ``models`` maps a display name to a
    model, or to an ONNX file (module docstring), and ``baseline`` names the reference
    (default: the first model). Noise warnings
    are logged at WARNING level, or at INFO with ``warn_noise=False``; either way they are
    stored in :attr:`LatencyReport.warnings`.
    """
    if not models:
        raise ValueError("no model to measure")
    baseline = next(iter(models)) if baseline is None else baseline
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not one of the models {list(models)}")
    batches = _check_settings(batches, rounds, warmup, threads, min_round_seconds)
    inputs = as_input_tuple(example_inputs)
    available, skipped = resolve_backends(backends)
    infos = {name: _info(name, module, inputs) for name, module in models.items()}
    measurements: list[Measurement] = []
    total = len(available) * len(batches) * rounds
    with (
        progress_bar(total, progress) as bar,
        tempfile.TemporaryDirectory(prefix="slimfx-bench-") as tmp,
        contextlib.ExitStack() as modes,
        torch_threads(threads),
    ):
        for module in models.values():
            if isinstance(module, torch.nn.Module):
                modes.enter_context(eval_mode(module))
        onnx_files: dict[str, Path] = {}
        for backend in available:
            try:
                runners = prepare_runners(
                    backend, dict(models), inputs, Path(tmp), onnx_files, threads
                )
            except SlimfxError:
                raise  # an export that fails its check is an error, not a skipped backend
            except Exception as exc:  # runtimes raise their own types (onnxruntime: Exception)
                skipped[backend] = f"could not be prepared: {first_line(exc)}"
                logger.warning("skipping backend %s: %s", backend, skipped[backend])
                bar.update(len(batches) * rounds)
                continue
            for name in [n for n in models if n not in runners]:  # ONNX files, torch backend
                skipped[f"{name} on {backend}"] = "an ONNX file runs on ONNX backends only"
            for batch in batches:
                bar.set_description(f"{backend} batch {batch}")
                batch_inputs = resize_batch(tuple(t.cpu() for t in inputs), batch, seed=batch)
                try:
                    calls = {name: runner.bind(batch_inputs) for name, runner in runners.items()}
                    timings = time_rounds(calls, rounds, warmup, min_round_seconds, bar.update)
                except Exception as exc:  # out of memory, a runtime's own error types
                    message = f"{backend} batch {batch} failed: {first_line(exc)}"
                    logger.warning(message)
                    skipped[f"{backend} batch {batch}"] = first_line(exc)
                    continue
                for name, (seconds, repeat) in timings.items():
                    measurements.append(
                        Measurement(
                            backend=backend,
                            batch=batch,
                            model=name,
                            stats=TimingStats.from_seconds(seconds, repeat),
                            rounds_ms=[s * 1e3 for s in seconds],
                        )
                    )
            del runners
    rows, warnings = _rows(measurements, infos, baseline)
    for message in warnings:
        logger.log(logging.WARNING if warn_noise else logging.INFO, message)
    settings = {
        "batches": list(batches),
        "rounds": rounds,
        "warmup": warmup,
        "min_round_seconds": min_round_seconds,
        "backends": list(available),
    }
    return LatencyReport(
        rows=rows,
        measurements=measurements,
        models=infos,
        baseline=baseline,
        machine=machine_info(threads),
        settings=settings,
        skipped=skipped,
        warnings=warnings,
    )


def _rows(measurements: list[Measurement], infos: dict[str, ModelInfo], baseline: str):
    by_key = {(m.backend, m.batch, m.model): m for m in measurements}
    rows, warnings = [], []
    for m in measurements:
        if m.model == baseline:
            continue
        base = by_key.get((m.backend, m.batch, baseline))
        if base is None:  # the baseline is an ONNX file, not run on this backend
            continue
        ratios = np.asarray(base.rounds_ms) / np.asarray(m.rounds_ms)
        speedup = float(np.median(ratios))
        macs_base, macs = infos[baseline].macs, infos[m.model].macs
        macs_ratio = macs_base / macs if macs_base and macs else None
        effect = abs(base.stats.median_ms - m.stats.median_ms)
        spread = max(base.stats.spread_ms, m.stats.spread_ms)
        noisy = spread > effect
        if noisy:
            warnings.append(
                f"{m.backend} batch {m.batch}, {m.model} vs {baseline}: latency spread "
                f"{spread:.3g} ms exceeds the effect {effect:.3g} ms; the speedup "
                f"{speedup:.2f}x is within noise (more rounds, or an idle machine, resolve it)"
            )
        rows.append(
            LatencyRow(
                backend=m.backend,
                batch=m.batch,
                model=m.model,
                original_median_ms=base.stats.median_ms,
                original_p90_ms=base.stats.p90_ms,
                original_min_ms=base.stats.min_ms,
                original_max_ms=base.stats.max_ms,
                slim_median_ms=m.stats.median_ms,
                slim_p90_ms=m.stats.p90_ms,
                slim_min_ms=m.stats.min_ms,
                slim_max_ms=m.stats.max_ms,
                speedup=speedup,
                speedup_min=float(ratios.min()),
                speedup_max=float(ratios.max()),
                macs_ratio=macs_ratio,
                efficiency=speedup / macs_ratio if macs_ratio else None,
                noisy=noisy,
            )
        )
    return rows, warnings


def _info(name: str, model, inputs: tuple) -> ModelInfo:
    """:func:`model_info` of a module; an ONNX file's initializer elements, MACs unknown."""
    if isinstance(model, torch.nn.Module):
        return model_info(name, model, inputs)
    if not isinstance(model, str | os.PathLike):
        raise ValueError(f"model {name!r} is a {type(model).__name__}, not a module or a path")
    if not Path(model).is_file():
        raise FileNotFoundError(f"model {name!r}: no ONNX file {model}")
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    params = sum(int(np.prod(t.dims)) for t in graph.initializer)
    return ModelInfo(name=name, params=params, macs=None)


def _check_settings(batches, rounds, warmup, threads, min_round_seconds) -> list[int]:
    batches = [int(b) for b in batches]
    if not batches or any(b < 1 for b in batches):
        raise ValueError(f"batch sizes must be positive integers, got {batches}")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds} and {warmup}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if min_round_seconds < 0:
        raise ValueError(f"min_round_seconds must be >= 0, got {min_round_seconds}")
    return list(dict.fromkeys(batches))
