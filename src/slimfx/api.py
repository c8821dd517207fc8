"""``slimfx.slim``: the whole pass pipeline in one call."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from slimfx.bench.timing import progress_bar
from slimfx.ir.options import Mode, SlimOptions
from slimfx.latency.planning import plan_for_latency
from slimfx.passes.analyze import analyze
from slimfx.passes.constant_propagation import propagate_constants
from slimfx.passes.plan import plan
from slimfx.passes.rewrite import rewrite
from slimfx.passes.trace import trace
from slimfx.result import SlimResult
from slimfx.validation import check_finite_weights

logger = logging.getLogger(__name__)


def slim(
    model: torch.nn.Module,
    example_inputs: Any,
    percent: float | None = None,
    *,
    options: SlimOptions | None = None,
    latency_table: Any = None,
    latency_cache: str | os.PathLike | None = None,
    progress: bool = False,
    **settings: Any,
) -> SlimResult:
    """Prune a model's channels by their BatchNorm scaling factors (network slimming).

    The channels go by a global |gamma| ranking: a fraction ``percent`` of them, or — with
    ``speedup`` or ``latency_ms`` — as many as it takes to run that fast on ``backend``,
    keeping the most |gamma| mass (:mod:`slimfx.latency.planning`: the layers' latency is
    measured on the target, the plan checked there).

    Parameters
    ----------
    model : torch.nn.Module
        A CNN with BatchNorm layers; it is not modified.
    example_inputs : tensor or tuple of tensors
        Inputs of the shape the model is used with.
    percent : float, optional
        Fraction of prunable channels to remove, in ``[0, 1)`` (overrides
        ``options.percent``; 0.5 when neither it nor a latency target is given).
    options : SlimOptions, optional
        Every setting of the slimming (see :class:`slimfx.SlimOptions`).
    latency_table : LatencyTable, optional
        With a latency target: a table measured before for this model and target
        (:func:`slimfx.latency.measure_table`); measured here when not given.
    latency_cache : path, optional
        With a latency target: where measured layer latencies are cached (default
        ``$SLIMFX_CACHE_DIR`` or ``~/.cache/slimfx``).
    progress : bool
        Show the passes as they run: a tqdm bar on a terminal, a line every 10 s when
        stderr is a file (:func:`slimfx.bench.timing.progress_bar`).
    **settings
        Single settings of :class:`SlimOptions` by name (``speedup``, ``latency_ms``,
        ``backend``, ``batch``, ``threads``, ``min_channels``, ``round_to``,
        ``compensate``, ``verify``, ``group_score``, ``strict``, ``leaf_modules``,
        ``leaf_types``, ``keep_forward``), overriding ``options``.

    Returns
    -------
    SlimResult

    Raises
    ------
    TraceError
        The model cannot be traced, or the example inputs do not fit it (the message says
        what its first layer takes).
    ValueError
        Invalid settings, NaN/infinite gammas (the layer is named), or, with ``verify``,
        NaN/infinite weights anywhere (the tensors are named).
    UnsupportedError, EquivalenceError
        Nothing can be pruned; the slim model does not verify.

    Examples
    --------
    >>> import torch, slimfx
    >>> from slimfx.models import VGG
    >>> res = slimfx.slim(VGG(depth=11), torch.randn(2, 3, 32, 32), percent=0.5)
    >>> res.report.ratio
    0.5
    >>> fast = slimfx.slim(model, x, speedup=2.0, backend="onnxruntime")  # doctest: +SKIP
    >>> fast.report.latency["measured_speedup"]  # doctest: +SKIP
    2.03
    """
    if percent is not None:
        settings["percent"] = percent
    options = SlimOptions.of(options, **settings)
    verify = options.verify
    with progress_bar(6 if verify else 5, progress, unit="pass") as bar:

        def stage(name: str) -> None:
            bar.set_description(f"slimming {type(model).__name__}: {name}")

        stage("trace")
        gm = trace(
            model,
            example_inputs,
            leaf_modules=options.leaf_modules,
            leaf_types=options.leaf_types,
        )
        if verify:  # NaN compares unequal to everything: name the tensors before verifying
            check_finite_weights(model)
        bar.update(1)
        stage("analyze")
        cg = analyze(gm, strict=options.strict)
        bar.update(1)
        stage("constants")
        first_choice = Mode.COMPENSATE if options.compensate else Mode.ZERO
        constants = propagate_constants(cg, [first_choice, Mode.CARRIER])  # plan and rewrite
        bar.update(1)
        stage("plan")
        if options.latency_target:
            slim_plan, module = plan_for_latency(
                cg,
                options,
                example_inputs,
                constants=constants,
                table=latency_table,
                cache_dir=latency_cache,
                progress=progress,
            )
            bar.update(2)
        else:
            slim_plan = plan(cg, options, constants=constants)
            bar.update(1)
            stage("rewrite")
            module = rewrite(cg, slim_plan, constants=constants)
            bar.update(1)
        result = SlimResult(
            module=module,
            plan=slim_plan,
            channel_graph=cg,
            _model=model,
            _example_inputs=example_inputs,
            _constants=constants,
        )
        if verify:
            stage("verify")
            result.verify()
            bar.update(1)
    logger.info(
        "slimmed %s: %d of %d channels pruned",
        type(model).__name__,
        slim_plan.pruned,
        slim_plan.total,
    )
    return result
