"""Settings and results of :func:`slimfx.train.loop.fit`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn


@dataclass
class TrainConfig:
    """Settings of :func:`fit`; the defaults are the reference code's.

    ``sparsity`` is the reference ``--s`` when ``-sr`` is given, 0 (off) otherwise;
    ``batch_size`` is per process under ``torchrun``; ``device`` is ``"auto"``, ``"cpu"``
    or ``"cuda"``; ``resume`` is a checkpoint to continue from.
    """

    epochs: int = 160
    batch_size: int = 64
    test_batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    sparsity: float = 0.0
    milestones: tuple[float, ...] = (0.5, 0.75)
    lr_decay: float = 0.1
    seed: int = 1
    save_dir: str | Path | None = None
    resume: str | Path | None = None
    device: str | torch.device = "auto"
    num_workers: int = 0
    progress: bool = False
    dist_timeout_s: float = 300.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid setting."""
        for name in ("epochs", "batch_size", "test_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be a positive integer, got {value!r}"
                )
        checks = {
            "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "sparsity": self.sparsity >= 0,
            "lr_decay": 0 < self.lr_decay <= 1,
            "dist_timeout_s": self.dist_timeout_s > 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and ok):
                raise ValueError(f"{name} has an invalid value: {value!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers!r}")

    def milestone_epochs(self) -> list[int]:
        """Epochs after which the learning rate is multiplied by ``lr_decay``."""
        return sorted({int(self.epochs * f) for f in self.milestones if int(self.epochs * f) > 0})


@dataclass
class StepInfo:
    """Passed to ``on_step_end`` after each optimizer step (``step`` counts from 1)."""

    epoch: int
    step: int
    steps: int
    loss: float
    rank: int = 0


@dataclass
class EpochResult:
    """One epoch: ``epoch`` counts from 1; accuracies are fractions (the reference prec1)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    best_accuracy: float
    lr: float
    seconds: float
    sparse_fraction: float | None = None
    checkpoint: Path | None = None


@dataclass
class TrainResult:
    """What :func:`fit` returns: the trained model (unwrapped) and the epochs it ran."""

    model: nn.Module
    history: list[EpochResult] = field(default_factory=list)
    best_accuracy: float = 0.0
    checkpoint: Path | None = None
    start_epoch: int = 0

    @property
    def final_accuracy(self) -> float | None:
        return self.history[-1].test_accuracy if self.history else None
