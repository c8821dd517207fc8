"""Hardware-aware widths: choose ``round_to`` by measuring, not by guessing.

A slim model's layer widths are whatever the |gamma| ranking leaves (37, 66, 135 …). Runtimes
compute convolutions in blocks of channels: onnxruntime's CPU kernels in NCHWc blocks of the
SIMD width (8 floats with AVX2, 16 with AVX-512) and only for layers whose channel counts
are multiples of the block, cuDNN/TensorRT in tensor-core tiles of 8 or more. An odd width
falls off the fast path, so most of the MACs saved never show up as latency.

``slimfx.slim(..., round_to=k)`` rounds every structural width *up* to a multiple of ``k``
(restoring the largest pruned channels; a carrier channel counts inside the width).
:func:`auto_round_to` slims the model with each candidate ``k``, times the results in one
run with alternating rounds, and returns the fastest ``k`` (by each candidate's fastest
round: interference only adds time), preferring the smallest one among those within
``tolerance`` of the fastest (the smallest keeps closest to the requested pruning ratio).

Measured on a 2-core AVX-512 Xeon, onnxruntime 1.32 CPU, CIFAR VGG-19 with 50 % of its
channels pruned, batch 64, 2 threads: round_to 1 → 120 ms, 8 → 79 ms, 16 → 77 ms, 32 → 89 ms (the
original: 215 ms); see ``docs/deployment.md`` for the full tables.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from slimfx.bench.latency import measure_latency
from slimfx.bench.report import LatencyReport
from slimfx.errors import SlimfxError
from slimfx.ir.options import SlimOptions

logger = logging.getLogger(__name__)

#: Candidates of :func:`auto_round_to`.
DEFAULT_CANDIDATES = (1, 8, 16, 32)


@dataclass(frozen=True)
class RoundToTrial:
    """One candidate ``round_to``: the widths it gives and how fast they run.

    Attributes
    ----------
    round_to : int
    widths : tuple of int
        Structural width of every BatchNorm layer of the slim model, in graph order.
    params : int
    macs : int
        Conv+linear MACs per sample.
    median_ms, min_ms, max_ms : float
        Latency at the measured batch size (``nan`` for a candidate whose widths equal a
        smaller candidate's: it is not measured twice, and never chosen).
    """

    round_to: int
    widths: tuple[int, ...]
    params: int
    macs: int
    median_ms: float
    min_ms: float
    max_ms: float


@dataclass(frozen=True)
class RoundToChoice:
    """What :func:`measure_round_to` found: the chosen ``round_to`` and every trial."""

    round_to: int
    trials: list[RoundToTrial]
    backend: str
    batch: int
    report: LatencyReport

    def table(self) -> str:
        lines = [f"round_to on {self.backend}, batch {self.batch}:"]
        for t in self.trials:
            mark = "  <- chosen" if t.round_to == self.round_to else ""
            timing = (
                "same widths as a smaller round_to"
                if math.isnan(t.median_ms)
                else f"{t.median_ms:8.2f} ms ({t.min_ms:.2f}–{t.max_ms:.2f})"
            )
            lines.append(f"  {t.round_to:>3}: {t.macs / 1e6:8.1f} M MACs  {timing}{mark}")
        return "\n".join(lines)


def measure_round_to(
    model: torch.nn.Module,
    example_inputs: Any,
    percent: float | None = None,
    *,
    options: SlimOptions | None = None,
    candidates: Sequence[int] = DEFAULT_CANDIDATES,
    backend: str = "ort-cpu",
    batch: int = 8,
    rounds: int = 7,
    warmup: int = 2,
    threads: int | None = None,
    tolerance: float = 0.05,
    progress: bool = False,
    **settings: Any,
) -> RoundToChoice:
    """Slim ``model`` with each candidate ``round_to`` and time the results on ``backend``.

    Parameters
    ----------
    model : torch.nn.Module
        The model to be pruned (not modified).
    example_inputs : tensor or sequence of tensors
    percent : float, optional
        The pruning ratio that will be used (overrides ``options.percent``).
    options : SlimOptions, optional
        The other settings of the slimming that will be used; each candidate replaces its
        ``round_to``. Candidates are slimmed without verification: only their widths are
        timed (the chosen one is verified when it is used).
    candidates : sequence of int
        ``round_to`` values to try.
    backend : str
        Where the model will be deployed (a name of :data:`slimfx.bench.backends.BACKENDS`).
    batch : int
        Batch size of the measurement.
    rounds, warmup, threads
        As in :func:`slimfx.bench.latency.measure_latency`.
    tolerance : float
        Candidates whose fastest round is within this relative margin of the fastest one
        count as equally fast; the smallest of them is chosen.
    **settings
        Single settings of :class:`slimfx.SlimOptions` by name (``min_channels``,
        ``compensate`` …), overriding ``options``.

    Returns
    -------
    RoundToChoice
    """
    from slimfx.api import slim

    values = sorted({int(c) for c in candidates})
    if not values or values[0] < 1:
        raise ValueError(f"round_to candidates must be positive integers, got {candidates!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if percent is not None:
        settings["percent"] = percent
    options = SlimOptions.of(options, **settings).replace(verify=False)
    built: dict[tuple[int, ...], tuple[int, Any]] = {}
    shapes: dict[int, Any] = {}
    for value in values:
        result = slim(model, example_inputs, options=options.replace(round_to=value))
        widths = tuple(row.width for row in result.report.layers)
        shapes[value] = (widths, result.report)
        built.setdefault(widths, (value, result.module))
    models = {f"round_to={value}": module for value, module in built.values()}
    report = measure_latency(
        models,
        example_inputs,
        batches=(batch,),
        backends=(backend,),
        rounds=rounds,
        warmup=warmup,
        threads=threads,
        progress=progress,
        warn_noise=False,
    )
    if backend not in report.backends:
        reason = report.skipped.get(backend, "it failed")
        raise SlimfxError(f"cannot measure round_to on {backend}: {reason}")
    trials = []
    for value in values:
        widths, slim_report = shapes[value]
        first = built[widths][0]
        stats = report.stats(backend, batch, f"round_to={first}")
        duplicate = first != value
        nan = float("nan")
        trials.append(
            RoundToTrial(
                round_to=value,
                widths=widths,
                params=slim_report.params_after,
                macs=slim_report.macs_after,
                median_ms=nan if duplicate else stats.median_ms,
                min_ms=nan if duplicate else stats.min_ms,
                max_ms=nan if duplicate else stats.max_ms,
            )
        )
    # Interference from other processes only ever adds time: the fastest round of each
    # candidate is the most repeatable estimate of what its widths cost.
    timed = [t for t in trials if not math.isnan(t.min_ms)]
    best = min(t.min_ms for t in timed)
    chosen = min(t.round_to for t in timed if t.min_ms <= best * (1 + tolerance))
    choice = RoundToChoice(chosen, trials, backend, batch, report)
    logger.info("%s", choice.table())
    return choice


def auto_round_to(
    model: torch.nn.Module, example_inputs: Any, percent: float | None = None, **options: Any
) -> int:
    """The ``round_to`` that makes the slim model fastest on the target backend.

    A short measurement (:func:`measure_round_to`, a few seconds for a CIFAR VGG on a CPU):
    the model is slimmed with each candidate and the results are timed in alternating
    rounds. Used by ``slimfx prune --round-to auto``.

    Parameters
    ----------
    model : torch.nn.Module
    example_inputs : tensor or sequence of tensors
    percent : float, optional
        The pruning ratio that will be used.
    **options
        Keyword arguments of :func:`measure_round_to` (``options``, ``candidates``,
        ``backend``, ``batch``, ``rounds``, ``threads``, ``tolerance``) and single settings
        of :class:`slimfx.SlimOptions`.

    Returns
    -------
    int

    Examples
    --------
    >>> import torch, slimfx
    >>> from slimfx.models import VGG
    >>> model, x = VGG(depth=11), torch.randn(1, 3, 32, 32)
    >>> k = auto_round_to(model, x, 0.5)  # doctest: +SKIP
    >>> res = slimfx.slim(model, x, 0.5, round_to=k)  # doctest: +SKIP
    """
    return measure_round_to(model, example_inputs, percent, **options).round_to
