"""Atomic file output: every file slimfx writes appears whole or not at all.

Data goes to a temporary file in the destination's folder, is flushed to disk, and is then
renamed over the destination (``os.replace`` is atomic on POSIX and Windows). A failure or
an interruption leaves the previous file untouched and no temporary file behind (a process
killed outright, by SIGKILL or a power cut, can leave a hidden ``.NAME.*.tmp`` file next to
``NAME``, never a partial ``NAME``).

:class:`OutputSet` does the same for the several files of one run (``prune.txt``,
``pruned.pth``, plots …): all are staged first and renamed into place only once every one
was written, so a failed run leaves the previous run's files as they were, not a mix.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
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
    tmp = _temp_file(dest, suffix)
    try:
        yield tmp
        _flush(tmp)
        os.replace(tmp, dest)
    except BaseException:
        _discard(tmp)
        raise


def _temp_file(dest: Path, suffix: str | None) -> Path:
    """An empty temporary file in ``dest``'s folder, with the mode ``dest`` will have."""
    folder = dest.parent if str(dest.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"cannot write {dest}: {folder} is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if dest.is_dir():
            raise IsADirectoryError(f"cannot write {dest}: it is a folder")
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{dest.name}.",
            suffix=suffix if suffix is not None else dest.suffix + ".tmp",
            dir=folder,
        )
    except IsADirectoryError:
        raise
    except OSError as exc:
        raise type(exc)(f"cannot write {dest}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, _file_mode(dest))
    return tmp


def _flush(tmp: Path) -> None:
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


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


class OutputSet:
    """The files of one run, staged and then renamed into place together.

    Use it as a context manager. :meth:`path` gives a temporary path for a destination.
    When the ``with`` block ends normally, every staged file is flushed to disk and renamed
    over its destination, then the ``stale`` destinations this run did not write are
    removed (an earlier run's plots must not sit next to this run's results). When the
    block raises — ``KeyboardInterrupt`` included — every staged file is deleted and every
    destination keeps its previous content.

    Parameters
    ----------
    stale : iterable of path, optional
        Outputs of earlier runs to remove on success unless this run writes them.

    Examples
    --------
    >>> with OutputSet(stale=["logs/gammas.png"]) as out:  # doctest: +SKIP
    ...     out.write_text("logs/prune.txt", text)
    ...     torch.save(state, out.path("logs/pruned.pth"))
    """

    def __init__(self, stale: Iterable[str | os.PathLike] = ()) -> None:
        self._staged: dict[Path, Path] = {}
        self._stale = [Path(p) for p in stale]

    def __enter__(self) -> OutputSet:
        return self

    def path(self, dest: str | os.PathLike, suffix: str | None = None) -> Path:
        """A temporary path that becomes ``dest`` when the set is committed."""
        dest = Path(dest)
        if dest in self._staged:
            raise ValueError(f"{dest} is staged twice")
        self._staged[dest] = _temp_file(dest, suffix)
        return self._staged[dest]

    def write_text(self, dest: str | os.PathLike, text: str) -> Path:
        """Stage ``text`` (UTF-8) for ``dest``; returns ``dest``."""
        self.path(dest).write_bytes(text.encode("utf-8"))
        return Path(dest)

    def save_torch(self, obj: Any, dest: str | os.PathLike) -> Path:
        """Stage ``torch.save(obj)`` for ``dest``; returns ``dest``."""
        torch.save(obj, self.path(dest))
        return Path(dest)

    def __exit__(self, exc_type, exc, tb) -> None:
        pending = dict(self._staged)
        try:
            if exc_type is not None:
                return
            for tmp in pending.values():
                _flush(tmp)
            for dest in list(pending):
                os.replace(pending.pop(dest), dest)
            for dest in self._stale:
                if dest not in self._staged:
                    with contextlib.suppress(FileNotFoundError):
                        dest.unlink()
        finally:
            for tmp in pending.values():
                _discard(tmp)


def check_output_dir(path: str | os.PathLike, flag: str | None = None) -> Path:
    """Fail now, creating nothing, when ``path`` cannot become a writable output folder (it
    is a file, lies under a file, or its nearest existing folder is not writable); the
    messages are :func:`ensure_output_dir`'s, after ``flag`` (``"--save"``) when given.
    Call it before any work; :func:`ensure_output_dir` creates the folder afterwards."""
    folder = Path(path)
    prefix = f"{flag} {folder}: " if flag else ""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{prefix}output folder {folder} exists and is not a folder")
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise NotADirectoryError(
            f"{prefix}cannot create output folder {folder}: {existing} is not a folder"
        )
    try:  # permission bits do not stop root: create (and remove) a file to find out
        fd, probe = tempfile.mkstemp(prefix=".slimfx-write-test.", dir=existing)
    except OSError as exc:
        if existing == folder:
            raise PermissionError(f"{prefix}output folder {folder} is not writable") from exc
        raise PermissionError(
            f"{prefix}cannot create output folder {folder}: {existing} is not writable"
        ) from exc
    os.close(fd)
    os.unlink(probe)
    return folder


def ensure_output_dir(path: str | os.PathLike) -> Path:
    """Create an output folder, with a clear error when it cannot be one or is not writable."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"output folder {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise type(exc)(f"cannot create output folder {folder}: {exc.strerror or exc}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {folder} is not writable")
    try:  # permission bits do not stop root: create a file to find read-only places
        fd, probe = tempfile.mkstemp(prefix=".slimfx-write-test.", dir=folder)
    except OSError as exc:
        raise type(exc)(f"output folder {folder} is not writable: {exc.strerror or exc}") from exc
    os.close(fd)
    os.unlink(probe)
    return folder
