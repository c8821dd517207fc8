"""The slimfx exception hierarchy.

Every error slimfx raises on purpose derives from :class:`SlimfxError`; invalid
arguments raise :class:`ValueError` instead. Messages name the graph node or file
involved, say what was expected and what the user can do.
"""

from __future__ import annotations

import re


class SlimfxError(Exception):
    """Base class of every slimfx error."""


class TraceError(SlimfxError):
    """The model could not be traced or its shapes could not be propagated."""


class UnsupportedError(SlimfxError):
    """The model has a structure slimfx cannot slim (for example no BatchNorm layer)."""


class PlanError(SlimfxError):
    """A slimming plan is inconsistent with the channel graph it is applied to."""


class EquivalenceError(SlimfxError):
    """The slim model does not compute what its reference computes.

    Attributes
    ----------
    relative_error : float
        The measured relative error ``max|slim - reference| / max|reference|``.
    tolerance : float
        The tolerance it exceeded.
    """

    def __init__(self, message: str, relative_error: float, tolerance: float):
        super().__init__(message)
        self.relative_error = relative_error
        self.tolerance = tolerance


class CheckpointError(SlimfxError):
    """A checkpoint file is missing, unreadable, unsafe or does not fit the model."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message (its type name when it has none), cut to ``limit``.

    For messages that quote an error from deep inside torch or onnxruntime, whose full text
    can run to pages.
    """
    text = strip_ansi(str(exc)).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (colours some libraries put in messages)."""
    return _ANSI.sub("", text)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
