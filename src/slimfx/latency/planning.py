"""Slimming to a latency target: measure, plan, check on the target, refine.

:func:`plan_for_latency` is what :func:`slimfx.slim` runs when ``speedup`` or
``latency_ms`` is set:

1. The latency table of the model on the target (:func:`slimfx.latency.measure_table`;
   cached points are not measured again) and the whole model's latency.
2. Calibration: a model with every prunable group at half width is built and timed against
   the original in alternating rounds, and the table's rest is fitted to it
   (:meth:`LatencyTable.calibrated`).
3. The widths that keep the most |gamma| mass within the budget
   (:func:`slimfx.passes.latency_plan.choose_widths`), planned (case 7 of
   :mod:`slimfx.passes.plan`) and rewritten.
4. The slim model is timed against the original on the target. Measured latencies are
   those of the same alternating run: the original's table latency divided by the measured
   speedup, so the drift of a shared machine between runs cancels. The search for a plan
   that measures within ``tolerance`` of the budget (at most ``refine`` re-plans, each with
   another goal for the prediction; an attempt within the tolerance is confirmed in a
   second run) is :func:`slimfx.latency.search.search_budget`. The kept attempt's recorded
   prediction is the one its plan was made with (the calibrated prediction scaled by budget
   over goal), before it was measured.

The plan records the target, the prediction per layer and the measurements
(``SlimPlan.latency``). On a backend that runs ONNX files every model timed (the original,
the calibration model, each attempt) is exported and checked once, into a temporary folder,
and each timing runs its file.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from slimfx.errors import UnsupportedError
from slimfx.ir.channel_graph import ChannelGraph
from slimfx.ir.constant_tables import ConstantTables
from slimfx.ir.layout import KeepTable
from slimfx.ir.options import SlimOptions
from slimfx.ir.plan import SlimPlan
from slimfx.latency.layers import timed_layers
from slimfx.latency.search import Attempt, search_budget
from slimfx.latency.table import (
    LatencyTable,
    Target,
    measure_model_ms,
    measure_table,
    time_on_target,
)
from slimfx.numerics import as_input_tuple

logger = logging.getLogger(__name__)

#: A measured latency this close to the budget (relative) needs no refinement.
DEFAULT_TOLERANCE = 0.05


def target_of(options: SlimOptions, example_inputs: Any) -> Target:
    """The :class:`Target` of ``options`` (its batch defaults to the example inputs')."""
    batch = options.batch or int(as_input_tuple(example_inputs)[0].shape[0])
    return Target(options.backend, batch, options.threads)


def plan_for_latency(
    cg: ChannelGraph,
    options: SlimOptions,
    example_inputs: Any,
    *,
    constants: ConstantTables | None = None,
    table: LatencyTable | None = None,
    cache_dir: str | os.PathLike | None = None,
    refine: int = 3,
    tolerance: float = DEFAULT_TOLERANCE,
    rounds: int = 7,
    progress: bool = True,
) -> tuple[SlimPlan, torch.fx.GraphModule]:
    """Plan ``cg`` to the latency target of ``options`` (see the module docstring).

    Parameters
    ----------
    cg : ChannelGraph
    options : SlimOptions
        With ``speedup`` or ``latency_ms`` set.
    example_inputs : tensor or tuple of tensors
    constants : ConstantTables, optional
        As for :func:`slimfx.passes.plan`.
    table : LatencyTable, optional
        A table measured before on the same model and target (else measured here).
    cache_dir : path, optional
        Where measured probes are cached (:class:`slimfx.latency.ProbeCache`).
    refine : int
        At most this many re-plans after measuring the slim model.
    tolerance : float
        A measured latency within this relative margin of the budget is accepted.
    rounds : int
        Alternating rounds of each whole-model measurement.
    progress : bool

    Returns
    -------
    tuple
        ``(plan, slim module)``; the module is not verified.
    """
    if not options.latency_target:
        raise ValueError("options have no latency target (speedup or latency_ms)")
    if refine < 0 or tolerance < 0:
        raise ValueError(f"need refine >= 0 and tolerance >= 0, got {refine} and {tolerance}")
    target = target_of(options, example_inputs)
    if table is not None and table.target != target:
        raise ValueError(f"the latency table is of {table.target}, not of {target}")
    with tempfile.TemporaryDirectory(prefix="slimfx-latency-") as folder:
        timer = _OnTarget(cg.gm, example_inputs, target, rounds, Path(folder))
        return _plan_for_latency(
            cg,
            options,
            example_inputs,
            target,
            timer,
            constants=constants,
            table=table,
            cache_dir=cache_dir,
            refine=refine,
            tolerance=tolerance,
            progress=progress,
        )


class _Built(NamedTuple):
    """What one attempt of the search built."""

    plan: SlimPlan
    module: torch.fx.GraphModule
    choice: Any  # slimfx.passes.latency_plan.WidthChoice
    runnable: torch.nn.Module | Path  # what a timing runs (_OnTarget.prepare)


class _OnTarget:
    """Whole-model timings against the original on the target.

    On a backend that runs ONNX files every model is exported (and checked) once, into
    ``folder``, and each timing of it runs that file; other backends run the modules.
    """

    def __init__(self, original, example_inputs, target: Target, rounds: int, folder: Path):
        self.example_inputs, self.target, self.rounds = example_inputs, target, rounds
        self.folder, self.count = folder, 0
        self.original = self.prepare(original)

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module | Path:
        """What a timing of ``module`` runs: the module, or its ONNX file."""
        from slimfx.bench.backends import runs_onnx
        from slimfx.export.onnx import export_onnx

        if not runs_onnx(self.target.backend):
            return module
        self.count += 1
        path = self.folder / f"model-{self.count}.onnx"
        export_onnx(module, self.example_inputs, path)
        return path

    def speedup(self, prepared: torch.nn.Module | Path) -> float:
        """Median per-round speedup of a prepared model over the original, in one run."""
        models = {"original": self.original, "slim": prepared}
        report = time_on_target(models, self.example_inputs, self.target, self.rounds)
        rows = [r for r in report.rows if r.model == "slim"]
        if not rows:
            reason = next(iter(report.skipped.values()), "it failed")
            raise UnsupportedError(f"cannot time the slim model on {self.target.backend}: {reason}")
        return float(np.median([r.speedup for r in rows]))


def _plan_for_latency(
    cg, options, example_inputs, target, timer, *, constants, table, cache_dir, **settings
):
    from slimfx.passes.latency_plan import choose_widths
    from slimfx.passes.plan import cuttable_groups, group_scores, plan
    from slimfx.passes.rewrite import rewrite

    refine, tolerance = settings["refine"], settings["tolerance"]
    step = options.round_to if options.round_to > 1 else None
    if table is None:
        table = measure_table(
            cg,
            example_inputs,
            target,
            step=step,
            cache_dir=cache_dir,
            progress=settings["progress"],
            model_ms=measure_model_ms(timer.original, example_inputs, target),
        )
    unit = options.round_to if options.round_to > 1 else table.step
    groups = cuttable_groups(cg, compensate=options.compensate, constants=constants)
    if not groups:
        plan(cg, options.replace(percent=0.5), constants=constants)  # raises with the reason
        raise UnsupportedError("network slimming found no group it can prune")
    scores = {g.id: group_scores(cg, g, options.group_score) for g in groups}
    layers = timed_layers(cg)
    budget = table.model_ms / options.speedup if options.speedup else options.latency_ms
    percent_free = options.replace(percent=0.5)  # plan() needs a plain option set

    def build(widths):
        slim_plan = plan(cg, percent_free, constants=constants, widths=widths)
        return slim_plan, rewrite(cg, slim_plan, constants=constants)

    def measure(prepared) -> float:
        return table.model_ms / timer.speedup(prepared)

    half = {g.name: _snap(g.size // 2, unit, g) for g in groups}
    half_plan, half_module = build(half)
    calibrated = table.calibrated(
        [table.point(layers, half_plan.keep_table(cg), measure(timer.prepare(half_module)))]
    )

    def make(goal: float) -> Attempt:
        choice = choose_widths(
            cg,
            groups,
            scores,
            layers,
            calibrated,
            goal,
            unit=unit,
            min_channels=options.min_channels,
        )
        slim_plan, module = build(choice.widths)
        # after keep_forward and carriers, in the terms of the measurements so far
        predicted = calibrated.predict(layers, slim_plan.keep_table(cg)) * budget / goal
        return Attempt(goal, predicted, _Built(slim_plan, module, choice, timer.prepare(module)))

    def measure_attempt(attempt: Attempt) -> float:
        measured = measure(attempt.payload.runnable)
        logger.info(
            "latency plan for goal %.2f ms: predicted %.2f ms, measured %.2f ms, budget %.2f ms",
            attempt.goal_ms,
            attempt.predicted_ms,
            measured,
            budget,
        )
        return measured

    best, attempts = search_budget(
        make,
        measure_attempt,
        budget,
        refine=refine,
        tolerance=tolerance,
        reachable=lambda attempt: attempt.payload.choice.reached,
    )
    slim_plan, module, choice, _ = best.payload
    predicted, measured = best.predicted_ms, best.measured_ms
    if not choice.reached:
        slim_plan.notes.append(
            f"the latency budget {budget:.2f} ms is out of reach: the slimmest model the "
            f"widths allow is predicted at {choice.predicted_ms:.2f} ms"
        )
    keep = slim_plan.keep_table(cg)
    layer_ms = calibrated.layer_ms(layers, keep)
    full = calibrated.layer_ms(layers, KeepTable({}))
    record = {
        "target": dataclasses.asdict(target),
        "speedup": options.speedup,
        "latency_ms": options.latency_ms,
        "budget_ms": budget,
        "original_ms": table.model_ms,
        "predicted_ms": predicted,
        "measured_ms": measured,
        "measured_speedup": table.model_ms / measured,
        "kept_mass": choice.kept_mass,
        "total_mass": choice.total_mass,
        "step": unit,
        "rest_fixed_ms": calibrated.rest_fixed_ms,
        "rest_per_activation": calibrated.rest_per_activation,
        "correction": predicted / calibrated.predict(layers, keep),
        "table_seconds": table.seconds,
        "probes": table.probes,
        "attempts": [attempt.record() for attempt in attempts],
        "layers": {
            layer.node: {
                "module": layer.module,
                "widths": list(layer.widths(keep)),
                "full_widths": [layer.shape.in_channels, layer.shape.out_channels],
                "original_ms": full[layer.node],
                "predicted_ms": layer_ms[layer.node],
            }
            for layer in layers
            if layer.node in layer_ms
        },
    }
    slim_plan = dataclasses.replace(slim_plan, options=options, latency=record)
    return slim_plan, module


def _snap(width: int, unit: int, group) -> int:
    """``width`` rounded up to the group's width unit (at most its size)."""
    unit = math.lcm(unit, group.blocks)
    return int(min(group.size, max(unit, -(-width // unit) * unit)))
