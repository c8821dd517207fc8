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
corrupt bytes, a folder — is a :class:`CheckpointError` naming the file; a file of another
kind (text, an image, an archive, an ONNX model …) is named as what its first bytes say it is.
"""

from __future__ import annotations

import os
import pickle
import re
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
        kind = _not_a_checkpoint(file)
        raise CheckpointError(
            kind or f"{file} is not a readable checkpoint ({_first_line(exc)})"
        ) from exc
    return normalize_checkpoint(obj, str(file))


def _check_archive(file: Path, size: int) -> None:
    """Refuse a zip checkpoint that would decompress to far more than its size, and a zip
    archive that is not a ``torch.save`` file (its entries are never decompressed)."""
    try:
        with zipfile.ZipFile(file) as archive:
            infos = archive.infolist()
    except Exception:  # not a zip (the legacy format) or a broken one: torch.load decides
        return
    declared = sum(info.file_size for info in infos)
    if declared > MAX_EXPANSION * size + 2**20:
        raise CheckpointError(
            f"{file} was refused: its zip entries claim {declared} bytes in a file of {size} "
            f"bytes (more than {MAX_EXPANSION}x; a PyTorch checkpoint is not compressed)"
        )
    names = [info.filename for info in infos]
    if any(n.endswith(("/constants.pkl", "/code/__torch__.py")) for n in names):
        raise CheckpointError(
            f"{file} is not a PyTorch checkpoint: it is a TorchScript archive (torch.jit.save); "
            "torch.save its model's state_dict() and give slimfx that file"
        )
    if not any(re.fullmatch(r"[^/]+/data\.pkl", n) for n in names):
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        what = (
            "a NumPy .npz archive"
            if names and all(n.endswith(".npy") for n in names)
            else ("a zip archive that is not a torch.save file")
        )
        raise CheckpointError(
            f"{file} is not a PyTorch checkpoint: it is {what} "
            f"(it holds {listed or 'nothing'}; a checkpoint holds <name>/data.pkl)"
        )


#: First bytes of file kinds that are not checkpoints → what they are.
MAGIC = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"\x1f\x8b": "a gzip-compressed file (decompress it first)",
    b"BZh": "a bzip2-compressed file (decompress it first)",
    b"\xfd7zXZ\x00": "an xz-compressed file (decompress it first)",
    b"(\xb5/\xfd": "a zstd-compressed file (decompress it first)",
    b"7z\xbc\xaf'\x1c": "a 7-Zip archive (extract it first)",
    b"\x89HDF\r\n\x1a\n": "an HDF5 file (Keras or h5py weights?)",
    b"\x93NUMPY": "a NumPy .npy array",
    b"\x7fELF": "an executable (ELF)",
}


def _not_a_checkpoint(file: Path) -> str | None:
    """``"FILE is not a PyTorch checkpoint: it looks like …"`` when the file's first bytes
    say what else it is; ``None`` when they do not (then it is a damaged checkpoint)."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return None
    what = next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), None)
    if what is None and len(head) > 262 and head[257:262] == b"ustar":
        what = "a tar archive (extract it; the reference code's .pth.tar files are no tar archives)"
    header = int.from_bytes(head[:8], "little") if len(head) >= 10 else 0
    if what is None and 2 <= header < 2**27 and head[8:10] == b'{"':
        what = "a safetensors file (load it with safetensors and torch.save the state dict)"
    if what is None and re.match(rb"\x08[\x01-\x1f](\x12|\x1a|\x3a)", head):
        what = "an ONNX model (ONNX is what slimfx exports, not what it reads)"
    if what is None:
        what = _text_kind(head)
    return f"{file} is not a PyTorch checkpoint: it looks like {what}" if what else None


def _text_kind(head: bytes) -> str | None:
    """What a file whose first bytes are printable text is: a Git LFS pointer, a web page,
    or a text file (quoted); ``None`` for binary data (or a protocol-0 pickle)."""
    text = head.decode("utf-8", errors="ignore")
    if not text or b"\x00" in head or re.search(r"(^|\n)[^\n]{0,60}p0\n", text[:200]):
        return None
    printable = sum(c.isprintable() or c in "\t\n\r\f" for c in text)
    if printable < 0.97 * len(text) or len(text.encode("utf-8")) < 0.9 * len(head):
        return None
    if text.startswith("version https://git-lfs.github.com/spec/"):
        return "a Git LFS pointer, not the file itself (run git lfs pull)"
    if re.match(r"\s*<(!doctype html|html)", text, re.IGNORECASE):
        return "an HTML page (a failed or redirected download?)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    quoted = first[:40] + ("…" if len(first) > 40 else "")
    return f"a text file (it starts {quoted!r})" if quoted else "a text file"


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
    kind = _not_a_checkpoint(file)
    if kind:
        return kind
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


def shape_mismatches(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor]
) -> dict[str, list[str]]:
    """Where ``state`` and ``model``'s state dict disagree: ``{"shape mismatch (file vs
    model)": ["key (file shape) vs (model shape)", ...], "missing keys": [...],
    "unexpected keys": [...]}``, the empty lists left out (works on the ``meta`` device)."""
    own = model.state_dict()
    found = {
        "shape mismatch (file vs model)": [
            f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            for k in own
            if k in state and tuple(state[k].shape) != tuple(own[k].shape)
        ],
        "missing keys": [k for k in own if k not in state],
        "unexpected keys": [k for k in state if k not in own],
    }
    return {what: items for what, items in found.items() if items}


def check_shapes(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, hint: str | None = None
) -> None:
    """Raise :class:`CheckpointError` when ``state`` and ``model`` disagree: one line with
    the first key of each kind (shape mismatch, missing, unexpected) and how many more,
    then ``hint`` (by default: which flags may be wrong)."""
    found = shape_mismatches(model, state)
    if found:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: {mismatch_summary(found)}"
            f" ({hint or 'wrong --arch/--depth/--dataset, or a pruned model without its cfg?'})"
        )


def mismatch_summary(found: Mapping[str, list[str]]) -> str:
    """``"missing keys: a and 46 more; unexpected keys: b"``: the first of each kind of
    :func:`shape_mismatches`, and how many more."""
    return "; ".join(
        f"{what}: {items[0]}" + (f" and {len(items) - 1} more" if len(items) > 1 else "")
        for what, items in found.items()
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
