"""``slimfx.slim``: the whole pass pipeline in one call."""

from __future__ import annotations

import logging
from typing import Any

import torch

from slimfx.ir.options import Mode, SlimOptions
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
    **settings: Any,
) -> SlimResult:
    """Prune a model's channels by their BatchNorm scaling factors (network slimming).

    Parameters
    ----------
    model : torch.nn.Module
        A CNN with BatchNorm layers; it is not modified.
    example_inputs : tensor or tuple of tensors
        Inputs of the shape the model is used with.
    percent : float, optional
        Fraction of prunable channels to remove, in ``[0, 1)`` (overrides
        ``options.percent``; 0.5 when neither is given).
    options : SlimOptions, optional
        Every setting of the slimming (see :class:`slimfx.SlimOptions`).
    **settings
        Single settings of :class:`SlimOptions` by name (``min_channels``, ``round_to``,
        ``compensate``, ``verify``, ``group_score``, ``strict``, ``leaf_modules``,
        ``leaf_types``), overriding ``options``.

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
    """
    if percent is not None:
        settings["percent"] = percent
    options = SlimOptions.of(options, **settings)
    verify = options.verify
    gm = trace(
        model,
        example_inputs,
        leaf_modules=options.leaf_modules,
        leaf_types=options.leaf_types,
    )
    if verify:  # NaN compares unequal to everything: name the tensors before verifying
        check_finite_weights(model)
    cg = analyze(gm, strict=options.strict)
    first_choice = Mode.COMPENSATE if options.compensate else Mode.ZERO
    constants = propagate_constants(cg, [first_choice, Mode.CARRIER])  # plan and rewrite
    slim_plan = plan(cg, options, constants=constants)
    module = rewrite(cg, slim_plan, constants=constants)
    result = SlimResult(
        module=module,
        plan=slim_plan,
        channel_graph=cg,
        _model=model,
        _example_inputs=example_inputs,
        _constants=constants,
    )
    if verify:
        result.verify()
    logger.info(
        "slimmed %s: %d of %d channels pruned",
        type(model).__name__,
        slim_plan.pruned,
        slim_plan.total,
    )
    return result
