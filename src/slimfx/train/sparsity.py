"""Sparsity training: the L1 penalty on BatchNorm scaling factors (network slimming, eq. 1).

The paper adds ``s * sum |gamma|`` to the loss; its gradient is the subgradient
``s * sign(gamma)``, added to ``gamma.grad`` after ``backward()`` and before the optimizer
step. Only the BatchNorms the pruner can cut are penalised: the scorers of the channel
groups :func:`slimfx.plan` can prune exactly (a BatchNorm whose channels feed the graph
output, an op slimfx cannot slice, or a layer that reads them without a BatchNorm in
between, is left alone — shrinking its gammas would only cost accuracy).

Use it in any training loop::

    reg = SparsityRegularizer(model, 1e-4, example_inputs=torch.randn(1, 3, 32, 32))
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        reg.apply()              # after backward, before step
        optimizer.step()
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from slimfx.passes.analyze import analyze
from slimfx.passes.plan import cuttable_groups
from slimfx.passes.trace import trace

logger = logging.getLogger(__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DataParallel``/``DistributedDataParallel`` wrapper."""
    return getattr(model, "module", model) if _is_wrapper(model) else model


def _is_wrapper(model: nn.Module) -> bool:
    return isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel)


def prunable_batchnorms(model: nn.Module, example_inputs: Any) -> list[str]:
    """Qualified names of the BatchNorms whose channels :func:`slimfx.slim` can remove.

    Parameters
    ----------
    model : torch.nn.Module
        The model (a DataParallel/DDP wrapper is looked through); it is not modified.
    example_inputs : tensor or tuple of tensors
        Inputs of the shape the model is used with.

    Returns
    -------
    list of str
        In ``model.named_modules()`` order.

    Examples
    --------
    >>> from slimfx.models import VGG
    >>> names = prunable_batchnorms(VGG(depth=11), torch.randn(1, 3, 32, 32))
    >>> names[:2]
    ['feature.1', 'feature.5']
    """
    inner = unwrap(model)
    cg = analyze(trace(inner, example_inputs))
    wanted = {s.module for g in cuttable_groups(cg) for s in g.scorers}
    return [name for name, _ in inner.named_modules() if name in wanted]


def sparsity_strength(value: Any) -> float:
    """``value`` as a sparsity strength ``s``: a finite number ``>= 0``, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"sparsity strength must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"sparsity strength must be finite and >= 0, got {value!r}")
    return float(value)


class SparsityRegularizer:
    """Apply the network-slimming L1 subgradient to a model's prunable BatchNorms.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained (a DataParallel/DDP wrapper is looked through).
    strength : float
        The penalty ``s`` (the reference code's ``--s``, ``1e-4`` by default there).
    example_inputs : tensor or tuple of tensors, optional
        Needed to find the prunable BatchNorms, unless ``batchnorms`` is given.
    batchnorms : iterable of str, optional
        Qualified names of the BatchNorms to penalise (instead of the analysis).

    Notes
    -----
    Under ``DistributedDataParallel`` call :meth:`apply` after ``backward()`` returns: the
    gradients are already averaged, the gammas are equal on every rank, so every rank adds
    the same subgradient and the replicas stay identical.
    """

    def __init__(
        self,
        model: nn.Module,
        strength: float,
        *,
        example_inputs: Any = None,
        batchnorms: Iterable[str] | None = None,
    ):
        strength = sparsity_strength(strength)
        inner = unwrap(model)
        if batchnorms is None:
            if example_inputs is None:
                raise ValueError("SparsityRegularizer needs example_inputs or batchnorms")
            batchnorms = prunable_batchnorms(inner, example_inputs)
        self.strength = strength
        self.names: list[str] = list(batchnorms)
        self.modules: list[nn.Module] = []
        for name in self.names:
            try:
                module = inner.get_submodule(name)
            except AttributeError as exc:
                raise ValueError(f"{name!r} is not a submodule of the model") from exc
            if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.weight is None:
                raise ValueError(f"{name} is not a BatchNorm with a scaling factor")
            self.modules.append(module)
        logger.info("sparsity s=%g on %d BatchNorm layers", self.strength, len(self.modules))

    @torch.no_grad()
    def apply(self) -> None:
        """Add ``s * sign(gamma)`` to every penalised gamma's gradient."""
        if self.strength == 0:
            return
        for bn in self.modules:
            weight = bn.weight
            if not weight.requires_grad:
                continue
            step = torch.sign(weight).mul_(self.strength)
            if weight.grad is None:
                weight.grad = step
            else:
                weight.grad.add_(step)

    @torch.no_grad()
    def penalty(self) -> float:
        """The penalty term ``s * sum |gamma|`` (for logging; it is not back-propagated)."""
        return self.strength * float(sum(bn.weight.abs().sum() for bn in self.modules))

    @torch.no_grad()
    def gammas(self) -> torch.Tensor:
        """All penalised ``|gamma|``, concatenated (on the CPU)."""
        if not self.modules:
            return torch.zeros(0)
        return torch.cat([bn.weight.detach().abs().float().cpu() for bn in self.modules])

    def fraction_below(self, threshold: float = 1e-2) -> float:
        """Fraction of penalised gammas with ``|gamma| < threshold``."""
        values = self.gammas()
        return float((values < threshold).float().mean()) if values.numel() else 0.0
