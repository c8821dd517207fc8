"""Training checkpoints: what :func:`slimfx.train.fit` writes and how ``--resume`` reads it.

A checkpoint is the reference code's dictionary plus what an exact resume needs::

    {'epoch': completed epochs, 'best_prec1': best test accuracy (a fraction),
     'state_dict': ..., 'optimizer': ..., 'cfg': ... (models built from a cfg),
     'step': batches done in epoch 'epoch' (0 at an epoch boundary; > 0 after Ctrl-C),
     'lr_scheduler': ..., 'rng': {'torch': ..., 'cuda': [...]}, 'prec1', 'seed', 'sparsity'}

Every value is a tensor, number, string, list or dict, so ``torch.load(weights_only=True)``
reads it; the reference code's own checkpoints (no ``step``/``lr_scheduler``/``rng``) resume
too, at their epoch boundary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from slimfx.checkpoint import load_checkpoint, load_into
from slimfx.errors import CheckpointError
from slimfx.io import save_torch

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"


def rng_state(device: torch.device) -> dict[str, Any]:
    """The random generators' state (CPU, and the GPUs when training on one)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device.type == "cuda" and cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def model_cfg(model: nn.Module) -> list | None:
    """The cfg list a model was built from (VGG), if any."""
    cfg = getattr(model, "cfg", None)
    return list(cfg) if isinstance(cfg, list | tuple) else None


def write_checkpoint(
    folder: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    step: int,
    best_prec1: float,
    prec1: float | None,
    rng: dict[str, Any],
    extra: dict[str, Any],
    is_best: bool,
) -> Path:
    """Write ``checkpoint.pth.tar`` (and ``model_best.pth.tar`` when ``is_best``) atomically."""
    state: dict[str, Any] = {
        "epoch": int(epoch),
        "step": int(step),
        "best_prec1": float(best_prec1),
        "prec1": None if prec1 is None else float(prec1),
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "rng": rng,
        **extra,
    }
    cfg = model_cfg(model)
    if cfg is not None:
        state["cfg"] = cfg
    path = folder / CHECKPOINT_NAME
    save_torch(state, path)
    if is_best:
        save_torch(state, folder / BEST_NAME)
    logger.info("wrote %s (epoch %d, step %d)", path, epoch, step)
    return path


@dataclass
class ResumePoint:
    """Where a resumed run continues."""

    epoch: int
    step: int
    best_prec1: float
    sparsity: float | None
    rng_restored: bool


def restore_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
) -> ResumePoint:
    """Load weights, optimizer, LR schedule and random state from a training checkpoint.

    Raises
    ------
    CheckpointError
        The file is unreadable, does not fit the model, or is not a training checkpoint.
    """
    ckpt = load_checkpoint(path)
    load_into(model, ckpt["state_dict"], str(path))
    missing = [k for k in ("epoch", "optimizer") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint (no {' or '.join(map(repr, missing))}); "
            "to start training from its weights use --refine"
        )
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: its optimizer state does not fit this model ({exc})"
        ) from exc
    epoch = int(ckpt["epoch"])
    if "lr_scheduler" in ckpt:
        scheduler.load_state_dict(ckpt["lr_scheduler"])
    else:  # the reference code's checkpoints: the optimizer holds the decayed lr already
        scheduler.last_epoch = epoch
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    has_rng = isinstance(ckpt.get("rng"), dict) and "torch" in ckpt["rng"]
    if has_rng:
        set_rng_state(ckpt["rng"], device)
    best = ckpt.get("best_prec1", 0.0)
    sparsity = ckpt.get("sparsity")
    return ResumePoint(
        epoch=epoch,
        step=int(ckpt.get("step", 0) or 0),
        best_prec1=float(best) if best is not None else 0.0,
        sparsity=None if sparsity is None else float(sparsity),
        rng_restored=has_rng,
    )
