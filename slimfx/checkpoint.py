"""Reading checkpoints safely: ``weights_only=True`` always, clear errors always.

Accepted layouts:

1. the reference code's training checkpoints ``{'epoch', 'best_prec1', 'state_dict', ...}``;
2. ``pruned.pth`` files ``{'cfg', 'state_dict'}``;
3. plain state dicts ``{name: tensor}``.

Keys of models wrapped in ``DataParallel``/``DistributedDataParallel`` (``module.`` prefix)
are unwrapped. Nothing in a file is ever executed: a pickle that asks for code is refused.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from slimfx.errors import CheckpointError


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file without executing anything in it.

    Returns
    -------
    dict
        At least ``state_dict``; ``cfg``, ``epoch``, ``best_prec1``, ``optimizer`` … when the
        file has them.

    Raises
    ------
    CheckpointError
        Missing, empty, truncated, corrupt or unsafe file, or no state dict in it.
    """
    file = Path(path)
    if not file.exists():
        raise CheckpointError(f"no checkpoint found at {file}")
    if file.is_dir():
        raise CheckpointError(f"{file} is a folder, not a checkpoint file")
    if file.stat().st_size == 0:
        raise CheckpointError(f"{file} is empty")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling failed"
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{file} was refused: it asks to run code or build objects other than tensors "
                f"and containers ({_unsafe_global(str(exc))}); slimfx loads only weights"
            ) from exc
        raise CheckpointError(f"{file} is not a readable checkpoint: {first}") from exc
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        UnicodeDecodeError,
        OverflowError,
        MemoryError,
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{file} is not a readable checkpoint ({first[:200]})") from exc
    return normalize_checkpoint(obj, str(file))


def _unsafe_global(message: str) -> str:
    for line in message.splitlines():
        if "Unsupported global" in line or "GLOBAL" in line:
            return line.strip()[:160]
    return "unsupported content"


def normalize_checkpoint(obj: Any, source: str = "checkpoint") -> dict[str, Any]:
    """Turn any accepted layout into ``{'state_dict': ..., ...}`` (see the module doc)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a checkpoint dict")
    if "state_dict" in obj:
        out = dict(obj)
        state = obj["state_dict"]
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        out, state = {}, obj
    else:
        raise CheckpointError(
            f"{source} has no 'state_dict' and is not a state dict (keys: "
            f"{', '.join(map(str, list(obj)[:6]))})"
        )
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{source}: 'state_dict' is not a mapping of names to tensors")
    out["state_dict"] = unwrap_state_dict(state)
    return out


def unwrap_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a ``module.`` prefix left by (Distributed)DataParallel."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with an error that names the mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"shape mismatch (file vs model): {', '.join(wrong[:3])}")
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:3])}")
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: "
            + "; ".join(parts)
            + " (wrong --arch/--depth/--dataset, or a pruned model without its cfg?)"
        )
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{source}: {key} holds NaN or infinite values")
    model.load_state_dict(state, strict=True)
