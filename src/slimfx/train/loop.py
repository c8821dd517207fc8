"""The network-slimming training loop: sparsity training, fine-tuning, resume, multi-process.

:func:`fit` is the reference code's ``train.py`` as a function: SGD with momentum and weight
decay, the learning rate divided by 10 at 50% and 75% of the epochs, the L1 subgradient on
the prunable BatchNorms' gammas after ``backward()``
(:class:`slimfx.train.sparsity.SparsityRegularizer`), a test pass and a checkpoint every epoch.
On top of it:

1. Resume is exact: the shuffling order of an epoch depends only on ``(seed, epoch)``; the
   checkpoint holds the optimizer, LR schedule and random state, and after Ctrl-C also the
   batches already done, so a resumed run reaches the weights an uninterrupted run reaches.
2. Ctrl-C (SIGINT) finishes the current step, saves a resumable checkpoint and raises
   :class:`TrainingInterrupted` (a ``KeyboardInterrupt``); a second Ctrl-C stops at once,
   keeping the previous checkpoint. Other signals keep their default effect; every file is
   written atomically, so the last checkpoint is whole whenever the process dies.
3. A NaN or infinite loss stops before it reaches the weights and raises
   :class:`NonFiniteLossError` naming the epoch and step; the last good checkpoint is kept.
4. Under ``torchrun`` it trains with ``DistributedDataParallel`` and ``DistributedSampler``;
   ranks agree on stopping and on NaNs every step, average BatchNorm statistics every epoch,
   and only rank 0 writes files (see :mod:`slimfx.train.distributed`).

This module holds :func:`fit`, which sets up and tears down the process group and names a
lost worker; the run itself (optimizer, resume, epochs, steps, checkpoints) is
:class:`slimfx.train.trainer.Trainer`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
from torch.utils.data import Dataset

from slimfx.train import distributed
from slimfx.train.config import EpochResult, StepInfo, TrainConfig, TrainResult
from slimfx.train.distributed import DistributedError
from slimfx.train.evaluation import evaluate
from slimfx.train.stop import NonFiniteLossError, TrainingInterrupted
from slimfx.train.trainer import Trainer

__all__ = [
    "DistributedError",
    "EpochResult",
    "NonFiniteLossError",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "evaluate",
    "fit",
]


def fit(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    config: TrainConfig | None = None,
    *,
    on_step_end: Callable[[StepInfo], None] | None = None,
    on_epoch_end: Callable[[EpochResult], None] | None = None,
) -> TrainResult:
    """Train ``model`` (with sparsity when ``config.sparsity > 0``), testing every epoch.

    Parameters
    ----------
    model : torch.nn.Module
        Trained in place (moved to the device).
    train_set, test_set : Dataset
        ``(image, label)`` pairs, e.g. from :func:`slimfx.data.load_dataset`.
    config : TrainConfig
    on_step_end, on_epoch_end : callable, optional
        Called with a :class:`StepInfo` / :class:`EpochResult` (on every rank).

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingInterrupted
        On Ctrl-C, after saving a resumable checkpoint in ``config.save_dir``.
    NonFiniteLossError
        When the loss becomes NaN or infinite.
    DistributedError
        When another worker dies or stops answering (after ``config.dist_timeout_s``).

    Examples
    --------
    >>> from slimfx.data import load_dataset
    >>> from slimfx.models import build_model
    >>> model = build_model("vgg", 11, "digits")
    >>> cfg = TrainConfig(epochs=12, lr=0.1, sparsity=0.02, save_dir="runs/sparse")
    >>> result = fit(model, load_dataset("digits", True), load_dataset("digits", False), cfg)
    ... # doctest: +SKIP
    """
    config = config or TrainConfig()
    config.validate()
    ctx = distributed.setup(config.device, config.dist_timeout_s)
    try:
        return Trainer(model, train_set, test_set, config, ctx, on_step_end, on_epoch_end).run()
    except RuntimeError as exc:
        if ctx.enabled and distributed.is_collective_failure(exc):
            first = " ".join(str(exc).split())[:200]
            raise DistributedError(
                f"rank {ctx.rank}: lost the other workers ({first}); the last checkpoint is kept"
            ) from exc
        raise
    finally:
        distributed.teardown(ctx)
