"""Why training stops early, and what it says: Ctrl-C and non-finite losses.

While a :class:`StopSignal` is active, the first SIGINT (Ctrl-C) only sets
:attr:`StopSignal.requested`; the training loop checks it between steps, saves a resumable
checkpoint and raises :class:`TrainingInterrupted`. A second Ctrl-C raises
:class:`ForcedStop` at once. SIGINTs that arrive within :data:`DUPLICATE_WINDOW_S` of the
first count as the same Ctrl-C: under ``torchrun`` a worker gets the terminal's SIGINT and the
one ``torchrun`` forwards. The handler is installed only in the main thread and only over
Python's default, so an application's own handler is left alone.

A NaN or infinite loss raises :class:`NonFiniteLossError` before it reaches the weights.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import torch

from slimfx.errors import SlimfxError

logger = logging.getLogger(__name__)

#: Seconds during which further SIGINTs repeat the first one.
DUPLICATE_WINDOW_S = 1.0


class ForcedStop(KeyboardInterrupt):
    """A second Ctrl-C: stop now, wherever the loop is (nothing is saved)."""


class StopSignal:
    """Context manager turning SIGINT into a stop request (see the module doc)."""

    def __init__(self) -> None:
        self.requested = False
        self._first: float | None = None
        self._installed = False

    def __enter__(self) -> StopSignal:
        self.requested, self._first = False, None
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        """Put Python's default SIGINT handler back."""
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._installed = False

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self._first is not None:
            if now - self._first < DUPLICATE_WINDOW_S:
                return
            self.restore()
            raise ForcedStop
        self.requested, self._first = True, now
        logger.warning(
            "Ctrl-C: stopping after this step and saving a checkpoint "
            "(press Ctrl-C again to stop at once)"
        )


class NonFiniteLossError(SlimfxError):
    """The training loss became NaN or infinite; the weights were not updated with it."""

    def __init__(self, message: str, epoch: int, step: int, checkpoint: Path | None):
        super().__init__(message)
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C; ``checkpoint`` resumes it (``None`` when nothing was saved)."""

    def __init__(self, message: str, epoch: int, step: int, checkpoint: Path | None):
        super().__init__(message)
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint


def last_checkpoint_text(last: tuple[Path, int] | None) -> str:
    """``the last good checkpoint is PATH (N epochs done)``, or that there is none."""
    if last is None:
        return "no checkpoint was written"
    path, epoch = last
    return f"the last good checkpoint is {path} ({epoch} epochs done)"


def nonfinite_loss(
    loss: torch.Tensor, epoch: int, step: int, steps: int, last: tuple[Path, int] | None
) -> NonFiniteLossError:
    """The error for a non-finite loss at ``step`` (1-based) of ``epoch`` (1-based)."""
    if bool(torch.isnan(loss).any()):
        what = "NaN"
    elif bool(torch.isinf(loss).any()):
        what = "infinite"
    else:
        what = "NaN or infinite on another rank"
    return NonFiniteLossError(
        f"the loss became {what} at epoch {epoch}, step {step}/{steps}; training stopped "
        f"before updating the weights and {last_checkpoint_text(last)}; try a lower --lr or --s",
        epoch,
        step,
        last[0] if last else None,
    )


def interrupted_in_epoch(
    epoch: int, done: int, steps: int, saved: Path | None, last: tuple[Path, int] | None
) -> TrainingInterrupted:
    """Ctrl-C inside an epoch; ``saved`` is the checkpoint just written (``None``: at once)."""
    where = f"epoch {epoch}, step {done}/{steps}"
    if saved is not None:
        return TrainingInterrupted(
            f"interrupted at {where}; saved {saved}; continue with --resume {saved}",
            epoch,
            done,
            saved,
        )
    return TrainingInterrupted(
        f"stopped at {where}; {last_checkpoint_text(last)}",
        epoch,
        done,
        last[0] if last else None,
    )


def interrupted_between_epochs(what: str, last: tuple[Path, int] | None) -> TrainingInterrupted:
    """Ctrl-C outside the training steps: the last checkpoint written resumes the run."""
    path, epoch = last if last else (None, 0)
    where = f"continue with --resume {path}" if path is not None else last_checkpoint_text(last)
    return TrainingInterrupted(f"{what}; {where}", epoch, 0, path)
