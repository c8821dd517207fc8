"""Pass 6 — verify: the slim model computes what the masked original computes.

The *reference* is the original model with every pruned channel's BatchNorm scaling factor
zeroed — and its shift too in groups that are zeroed rather than compensated. Verification
runs both in float64 on fresh random inputs of the example's shapes, in inference mode, and
compares ``max|slim - reference| / max|reference|`` with a tolerance (1e-9 by default).
Neither module is modified: parameters are cast through ``torch.func.functional_call``, and
training flags are restored afterwards.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from slimfx.errors import EquivalenceError, first_line
from slimfx.ir.channel_graph import ChannelGraph
from slimfx.ir.options import Mode
from slimfx.ir.plan import SlimPlan
from slimfx.numerics import as_input_tuple, attributes_kept, eval_mode, relative_error
from slimfx.tolerances import FLOAT64_RTOL


def _pruned_bn_channels(cg: ChannelGraph, plan: SlimPlan) -> Iterator[tuple[str, np.ndarray, bool]]:
    """(BatchNorm name, channels to zero, zero beta too) for every scorer of a pruned group."""
    for name, gid in plan.group_ids(cg).items():
        gp = plan.groups[name]
        pruned = gp.pruned_mask()
        for scorer in cg.groups[gid].scorers:
            hit = pruned[scorer.group_index]
            if hit.any():
                yield scorer.module, scorer.bn_channel[hit], gp.mode is Mode.ZERO


def masked_state(
    model: torch.nn.Module, cg: ChannelGraph, plan: SlimPlan, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Parameters and buffers of the reference, for ``functional_call(model, state, x)``.

    Every tensor is a copy (in ``dtype`` when given): writing to the state never reaches
    ``model``.
    """
    state = _state(model, dtype)
    for bn, channels, zero_beta in _pruned_bn_channels(cg, plan):
        index = torch.as_tensor(channels, dtype=torch.long)
        names = [f"{bn}.weight"] + ([f"{bn}.bias"] if zero_beta else [])
        for key in names:
            state[key][index] = 0
    return state


def masked_reference(model: torch.nn.Module, cg: ChannelGraph, plan: SlimPlan) -> torch.nn.Module:
    """A copy of ``model`` with pruned gammas (and, in zeroed groups, betas) set to zero."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for bn, channels, zero_beta in _pruned_bn_channels(cg, plan):
            module = reference.get_submodule(bn)
            index = torch.as_tensor(channels, dtype=torch.long)
            module.weight[index] = 0
            if zero_beta:
                module.bias[index] = 0
    return reference


def _state(module: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer (floating ones in ``dtype`` when given).

    Always copies: ``tensor.to(dtype)`` returns the tensor itself when it has that dtype
    already, and a write to such a "copy" would reach the module.
    """
    out = {}
    for name, tensor in _named_tensors(module):
        cast = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        out[name] = tensor.detach().to(cast, copy=True)
    return out


def float64_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s parameters and buffers in float64, for :func:`run_float64`: made once and
    reused over trials (a copy of a large layer costs as much as running it).

    Read-only: a tensor that is float64 already is the module's own (detached), not a copy.
    """
    return {
        name: tensor.detach().to(torch.float64) if tensor.is_floating_point() else tensor.detach()
        for name, tensor in _named_tensors(module)
    }


def _named_tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer under every name it has (tied ones once per name)."""
    named = list(module.named_parameters(remove_duplicate=False))
    return named + list(module.named_buffers(remove_duplicate=False))


def random_inputs(example_inputs: Any, seed: int, dtype=torch.float64) -> tuple:
    """Fresh standard-normal inputs of the example's shapes (non-float inputs are reused)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for t in as_input_tuple(example_inputs):
        if t.is_floating_point():
            out.append(torch.randn(t.shape, generator=generator, dtype=dtype))
        else:
            out.append(t)
    return tuple(out)


def run_float64(module: torch.nn.Module, inputs: tuple, state: dict | None = None) -> Any:
    """``module(*inputs)`` with every floating parameter and buffer in float64."""
    state = float64_state(module) if state is None else state
    with torch.no_grad(), eval_mode(module), attributes_kept(module):
        return torch.func.functional_call(module, state, inputs)


def verify(
    slim: torch.nn.Module,
    reference: torch.nn.Module,
    example_inputs: Any,
    *,
    tolerance: float = FLOAT64_RTOL,
    trials: int = 2,
    seed: int = 0,
    reference_state: dict | None = None,
) -> float:
    """Compare two modules in float64 on random inputs; raise when they differ.

    Parameters
    ----------
    slim, reference : torch.nn.Module
    example_inputs : tensor or tuple of tensors
        Shapes (and dtypes of non-float inputs) of the inputs to draw.
    tolerance : float
        Largest accepted relative error.
    trials : int
        Number of random input draws.
    seed : int
    reference_state : dict, optional
        Float64 parameters and buffers to run ``reference`` with (see :func:`masked_state`).

    Returns
    -------
    float
        The largest relative error seen.

    Raises
    ------
    EquivalenceError
        When it exceeds ``tolerance``, or the slim model fails to run at all (PyTorch's
        message, which names the failing line of the slim model's code, is quoted).
    """
    worst = 0.0
    if reference_state is None:
        reference_state = float64_state(reference)
    slim_state = float64_state(slim)
    for trial in range(trials):
        inputs = random_inputs(example_inputs, seed + trial)
        expected = run_float64(reference, inputs, reference_state)
        try:
            actual = run_float64(slim, inputs, slim_state)
        except Exception as exc:  # a rewrite the slim model's own code does not accept
            raise EquivalenceError(
                f"the slim model fails to run: {type(exc).__name__}: {first_line(exc)}",
                float("inf"),
                tolerance,
            ) from exc
        worst = max(worst, relative_error(actual, expected))
    if not worst <= tolerance:
        raise EquivalenceError(
            f"the slim model differs from its reference: relative error {worst:.3g} > "
            f"{tolerance:g} (float64, {trials} random inputs)",
            worst,
            tolerance,
        )
    return worst
