"""Test accuracy, on one process or sharded over the ranks of a ``torchrun`` job."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from slimfx.train import distributed
from slimfx.train.distributed import DistContext
from slimfx.train.sparsity import unwrap


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    ctx: DistContext | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``, as a fraction (the reference ``prec1``).

    Under ``torchrun`` (``ctx`` with several ranks) each rank tests a disjoint share and the
    counts are summed, so every rank gets the same exact accuracy.
    """
    model = unwrap(model)
    ctx = ctx or DistContext()
    if device is None:
        device = next(iter(model.parameters()), torch.zeros(0)).device
    data = (
        Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size)) if ctx.enabled else dataset
    )
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
            pred = model(x.to(device)).argmax(dim=1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    correct, total = distributed.sum_over_ranks(ctx, correct, total)
    return correct / total if total else 0.0
