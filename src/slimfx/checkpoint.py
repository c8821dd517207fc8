"""Reading checkpoints safely: ``weights_only=True`` always, clear errors always.

Accepted layouts:

1. the reference code's training checkpoints ``{'epoch', 'best_prec1', 'state_dict', ...}``;
2. ``pruned.pth`` files ``{'cfg', 'state_dict'}``;
3. plain state dicts ``{name: tensor}``.

Keys of models wrapped in ``DataParallel``/``DistributedDataParallel`` (``module.`` prefix)
are unwrapped. Nothing in a file is ever executed: ``torch.load(weights_only=True)`` builds
only tensors and plain containers, and a pickle that asks for anything else is refused.
A zip archive whose entries claim far more data than the file holds (a "zip bomb") is
refused before it is decompressed. Every other defect — empty, truncated, random or
corrupt bytes, a folder — is a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from slimfx.errors import CheckpointError, first_line
from slimfx.validation import first_few, nonfinite_tensors

#: Largest accepted ratio of a zip checkpoint's declared content to its size on disk.
#: ``torch.save`` stores entries uncompressed (ratio about 1); a re-zipped checkpoint
#: compresses float weights by a small factor. Deflate can reach about 1000.
MAX_EXPANSION = 64


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
    if not file.is_file():  # a device or a pipe: reading could block or never end
        raise CheckpointError(f"{file} is not a regular file")
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(f"{file} is empty")
    _check_archive(file, size)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": not the user's
            warnings.simplefilter("ignore")
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_refusal(file, str(exc))) from exc
    except Exception as exc:  # anything a corrupt file makes the reader raise
        raise CheckpointError(f"{file} is not a readable checkpoint ({_first_line(exc)})") from exc
    return normalize_checkpoint(obj, str(file))


def _check_archive(file: Path, size: int) -> None:
    """Refuse a zip checkpoint that would decompress to far more than its size."""
    try:
        with zipfile.ZipFile(file) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except Exception:  # not a zip (the legacy format) or a broken one: torch.load decides
        return
    if declared > MAX_EXPANSION * size + 2**20:
        raise CheckpointError(
            f"{file} was refused: its zip entries claim {declared} bytes in a file of {size} "
            f"bytes (more than {MAX_EXPANSION}x; a PyTorch checkpoint is not compressed)"
        )


def _refusal(file: Path, message: str) -> str:
    """The message for an ``UnpicklingError`` of the weights-only unpickler."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    detail = next(
        (
            line
            for line in lines
            if "GLOBAL" in line or "global" in line or "Unsupported" in line or "operand" in line
        ),
        lines[0] if lines else "unpickling failed",
    )[:200]
    if "GLOBAL" in detail or "global" in detail:
        return (
            f"{file} was refused: it asks to run code or build objects other than tensors and "
            f"containers ({detail}); slimfx loads only weights and ran nothing from it"
        )
    return (
        f"{file} was refused: it is not a weights-only checkpoint ({detail}); it is corrupt, "
        "or was written with plain pickle instead of torch.save; nothing in it was run"
    )


def _first_line(exc: BaseException) -> str:
    first = first_line(exc)
    if len(first) < 20 and str(exc).strip():  # KeyError('6') … say what kind of failure it was
        first = f"{type(exc).__name__}: {first}"
    return first


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


def check_shapes(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, hint: str | None = None
) -> None:
    """Raise :class:`CheckpointError` naming every key and shape where ``state`` and ``model``
    disagree (works on a model built on the ``meta`` device)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    for what, items in (
        ("shape mismatch (file vs model)", wrong),
        ("missing keys", missing),
        ("unexpected keys", unexpected),
    ):
        if items:
            parts.append(f"{what}: {first_few(items)}")
    raise CheckpointError(
        f"{source} does not fit {type(model).__name__}: "
        + "; ".join(parts)
        + f" ({hint or 'wrong --arch/--depth/--dataset, or a pruned model without its cfg?'})"
    )


def load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with errors that name the problem.

    Raises
    ------
    CheckpointError
        Missing, unexpected or wrongly shaped keys (each named with both shapes), or NaN or
        infinite values (the tensors named).
    """
    check_shapes(model, state, source)
    bad = nonfinite_tensors(state.items())
    if bad:
        listed = first_few(bad, "more tensors")
        raise CheckpointError(f"{source}: NaN or infinite values in {listed}")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # e.g. a sparse or complex tensor
        raise CheckpointError(f"{source}: cannot load its weights ({_first_line(exc)})") from exc
