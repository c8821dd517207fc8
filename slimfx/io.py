"""Atomic file output: every file slimfx writes appears whole or not at all.

Data goes to a temporary file in the destination's folder, is flushed to disk, and is then
renamed over the destination (``os.replace`` is atomic on POSIX and Windows). A failure or
an interruption leaves the previous file untouched and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    For libraries that write to a path themselves (ONNX export, matplotlib).

    Examples
    --------
    >>> with atomic_path("plot.png") as tmp:  # doctest: +SKIP
    ...     figure.savefig(tmp)
    """
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"cannot write {dest}: {folder} is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if dest.is_dir():
        raise IsADirectoryError(f"cannot write {dest}: it is a folder")
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{dest.name}.",
        suffix=suffix if suffix is not None else dest.suffix + ".tmp",
        dir=folder,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, _file_mode(dest))
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _file_mode(dest: Path) -> int:
    """The mode a new file gets from ``open()`` (or the mode of the file it replaces)."""
    if dest.exists():
        return dest.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def ensure_output_dir(path: str | os.PathLike) -> Path:
    """Create an output folder, with a clear error when it cannot be one."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--save {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create output folder {folder}: {exc.strerror or exc}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {folder} is not writable")
    return folder
