"""Training checkpoints: what :func:`slimfx.train.loop.fit` writes and how ``--resume`` reads it.

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
from slimfx.files import save_torch

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


def check_training_checkpoint(
    ckpt: dict[str, Any], path: str | Path, model: nn.Module | None = None
) -> None:
    """Everything :func:`restore_checkpoint` checks, changing nothing: that ``ckpt`` is a
    training checkpoint, its counts, numbers and random state, and — given the ``model``
    it resumes (its weights already loaded or not) — that its optimizer and learning-rate
    schedule fit. Run it before any work, so a file that cannot resume fails first.

    Raises
    ------
    CheckpointError
        Not a training checkpoint, or one of its entries is invalid.
    """
    missing = [k for k in ("epoch", "optimizer") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint (no {' or '.join(map(repr, missing))}); "
            "to start training from its weights use --refine"
        )
    _count(ckpt, "epoch", path)
    _count(ckpt, "step", path)
    _numbers(ckpt, path)
    rng = ckpt.get("rng")
    if isinstance(rng, dict) and "torch" in rng:
        current = torch.get_rng_state()
        try:
            torch.set_rng_state(rng["torch"])
        except (TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: its 'rng' state is invalid ({exc})") from exc
        finally:
            torch.set_rng_state(current)
    if model is not None:  # on a scratch optimizer and schedule: the model is not touched
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        _load_optimizer(optimizer, ckpt["optimizer"], str(path))
        if "lr_scheduler" in ckpt:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1])
            _check_scheduler(scheduler, ckpt["lr_scheduler"], str(path))


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
    check_training_checkpoint(ckpt, path)
    load_into(model, ckpt["state_dict"], str(path))
    _load_optimizer(optimizer, ckpt["optimizer"], str(path))
    epoch = _count(ckpt, "epoch", path)
    if "lr_scheduler" in ckpt:
        _check_scheduler(scheduler, ckpt["lr_scheduler"], str(path))
        scheduler.load_state_dict(ckpt["lr_scheduler"])
    else:  # the reference code's checkpoints: the optimizer holds the decayed lr already
        scheduler.last_epoch = epoch
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    has_rng = isinstance(ckpt.get("rng"), dict) and "torch" in ckpt["rng"]
    if has_rng:
        try:
            set_rng_state(ckpt["rng"], device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: its 'rng' state is invalid ({exc})") from exc
    best, sparsity = _numbers(ckpt, path)
    return ResumePoint(
        epoch=epoch,
        step=_count(ckpt, "step", path),
        best_prec1=best,
        sparsity=sparsity,
        rng_restored=has_rng,
    )


def _numbers(ckpt: dict[str, Any], path) -> tuple[float, float | None]:
    """``best_prec1`` (0 when absent) and ``sparsity`` (``None`` when absent) as floats."""
    best = ckpt.get("best_prec1", 0.0)
    sparsity = ckpt.get("sparsity")
    try:
        best = float(best) if best is not None else 0.0
        sparsity = None if sparsity is None else float(sparsity)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: 'best_prec1' or 'sparsity' is not a number") from exc
    return best, sparsity


def _load_optimizer(optimizer: torch.optim.Optimizer, state: Any, source: str) -> None:
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError, IndexError) as exc:
        raise CheckpointError(
            f"{source}: its optimizer state does not fit this model ({exc})"
        ) from exc
    _check_optimizer_state(optimizer, source)


def _count(ckpt: dict[str, Any], key: str, path) -> int:
    """``ckpt[key]`` as an int >= 0 (0 when absent)."""
    value = ckpt.get(key, 0) or 0
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{path}: {key!r} must be a count >= 0, got {value!r:.60}")
    return value


def _check_optimizer_state(optimizer: torch.optim.Optimizer, source: str) -> None:
    """Momentum buffers must have their parameter's shape and finite values."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if not isinstance(value, torch.Tensor) or value.dim() == 0:
                    continue
                if value.shape != p.shape:
                    raise CheckpointError(
                        f"{source}: optimizer {name} of shape {tuple(value.shape)} does not fit "
                        f"a parameter of shape {tuple(p.shape)}"
                    )
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise CheckpointError(
                        f"{source}: optimizer {name} holds NaN or infinite values"
                    )


def _check_scheduler(scheduler: Any, state: Any, source: str) -> None:
    """``state`` has only the entries, of the types, that ``scheduler``'s state has.

    Schedulers load by updating their ``__dict__``, so unchecked entries could replace any
    attribute.
    """
    own = scheduler.state_dict()
    if not isinstance(state, dict) or not set(state) <= set(own):
        keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{source}: 'lr_scheduler' is not a learning-rate schedule ({keys})")
    for key, value in state.items():
        expected = own[key]
        numbers = (int, float)
        same = isinstance(value, type(expected)) or (
            isinstance(expected, numbers) and isinstance(value, numbers)
        )
        if expected is not None and value is not None and not same:
            raise CheckpointError(
                f"{source}: 'lr_scheduler' entry {key!r} is a {type(value).__name__}, "
                f"expected a {type(expected).__name__}"
            )
