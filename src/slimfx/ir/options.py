"""The settings of one slimming: :class:`SlimOptions`, and the pruning :class:`Mode`.

One value carries every setting from the command line or the API down to the plan, so
``slim``, ``plan``, ``prune_model``, ``measure_round_to`` and the CLI take the same object
instead of the same list of keyword arguments.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from slimfx.targets import canonical_backend

GROUP_SCORES = ("mean", "sum", "max")
#: ``percent`` when neither it nor a latency target is given.
DEFAULT_PERCENT = 0.5


class Mode(str, enum.Enum):
    """What a pruned channel's BatchNorm outputs, for the plan and the constant propagation.

    ``COMPENSATE``
        gamma zeroed, beta kept: the channel carries ``beta``, which is folded into the
        consumers (the default);
    ``ZERO``
        gamma and beta zeroed: the channel carries 0 (the reference code's masking);
    ``CARRIER``
        gamma 0 and beta 1: the channel carries 1 — the value of a carrier channel, which
        is never a group's mode in a plan, only a propagation of its own.

    The values are the strings a plan's JSON holds.
    """

    COMPENSATE = "compensate"
    ZERO = "zero"
    CARRIER = "carrier"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SlimOptions:
    """How to slim a model.

    Attributes
    ----------
    percent : float
        Fraction of prunable channels to remove, in ``[0, 1)`` (0.5 when neither it nor a
        latency target is given).
    speedup : float, optional
        Instead of ``percent``: prune until the model is predicted to run this many times
        faster on ``backend`` (:mod:`slimfx.latency`), keeping the most |gamma| mass.
    latency_ms : float, optional
        Instead of ``percent``: prune until the model is predicted to run within this many
        milliseconds per batch on ``backend``. ``percent``, ``speedup`` and ``latency_ms``
        are exclusive; :meth:`replace` with one of them drops the others.
    backend : str
        Where a latency target is measured: a name of :data:`slimfx.bench.backends.BACKENDS`
        (``"ort-cpu"``, ``"torch-cpu"``, ``"ort-cuda"`` …).
    batch : int, optional
        Batch size of a latency target (default: the example inputs').
    threads : int, optional
        Intra-op threads of a latency target (the runtime's default when ``None``).
    min_channels : int
        No layer keeps fewer channels (or all it has, if fewer).
    round_to : int
        Structural widths are rounded up to a multiple of this.
    compensate : bool
        Fold pruned channels' constant outputs (BatchNorm ``beta`` through the activation)
        into the next layers, so the slim model equals the original with pruned gammas
        zeroed. ``False`` reproduces the reference code (gammas and betas zeroed).
    group_score : {"mean", "sum", "max"}
        How the |gamma| of several BatchNorms tied to one channel (residual adds) combine.
    strict : bool
        Raise on ops without a rule instead of freezing the channels they touch.
    verify : bool
        Check the slim model against its masked original in float64 (used by
        :func:`slimfx.slim`; the passes ignore it).
    leaf_modules : tuple of str
        Qualified names of submodules to keep as opaque leaves of the trace (code you know
        does not trace): they are called as a whole and the channels they touch are frozen.
    leaf_types : tuple of type
        Module classes kept as opaque leaves wherever they occur.
    keep_forward : bool
        Plan so that the slim layers can replace the model's own and its own ``forward``
        runs them (:meth:`slimfx.SlimResult.into_model`): the pieces of a ``chunk`` keep
        equal widths (a stock module chunks into equal halves), at the cost of a few
        channels more.

    Raises
    ------
    ValueError
        On construction, for any setting out of range (named in the message).

    Examples
    --------
    >>> SlimOptions(percent=0.3, round_to=8).replace(compensate=False).compensate
    False
    """

    percent: float | None = None
    min_channels: int = 1
    round_to: int = 1
    compensate: bool = True
    group_score: str = "mean"
    strict: bool = False
    verify: bool = True
    leaf_modules: tuple[str, ...] = ()
    leaf_types: tuple[type, ...] = ()
    keep_forward: bool = False
    speedup: float | None = None
    latency_ms: float | None = None
    backend: str = "ort-cpu"
    batch: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        self._check_latency_target()
        if self.percent is None and not self.latency_target:
            object.__setattr__(self, "percent", DEFAULT_PERCENT)
        percent = DEFAULT_PERCENT if self.percent is None else self.percent
        if isinstance(percent, bool) or not isinstance(percent, int | float | np.floating):
            raise ValueError(f"percent must be a number in [0, 1), got {percent!r}")
        if math.isnan(percent) or not 0 <= percent < 1:
            raise ValueError(f"percent must be in [0, 1), got {percent!r}")
        for name in ("min_channels", "round_to"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("compensate", "strict", "verify", "keep_forward"):
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        names = (self.leaf_modules,) if isinstance(self.leaf_modules, str) else self.leaf_modules
        names = tuple(names)
        if not all(isinstance(n, str) for n in names):
            raise ValueError(f"leaf_modules must be module names, got {self.leaf_modules!r}")
        types = (self.leaf_types,) if isinstance(self.leaf_types, type) else self.leaf_types
        types = tuple(types)
        if not all(isinstance(t, type) and issubclass(t, torch.nn.Module) for t in types):
            raise ValueError(f"leaf_types must be nn.Module classes, got {self.leaf_types!r}")
        object.__setattr__(self, "leaf_modules", names)
        object.__setattr__(self, "leaf_types", types)
        if self.group_score not in GROUP_SCORES:
            raise ValueError(f"group_score must be one of {GROUP_SCORES}, got {self.group_score!r}")
        if self.percent is not None:
            object.__setattr__(self, "percent", float(percent))
        object.__setattr__(self, "min_channels", int(self.min_channels))
        object.__setattr__(self, "round_to", int(self.round_to))
        object.__setattr__(self, "compensate", bool(self.compensate))
        object.__setattr__(self, "strict", bool(self.strict))
        object.__setattr__(self, "verify", bool(self.verify))
        object.__setattr__(self, "keep_forward", bool(self.keep_forward))

    @property
    def latency_target(self) -> bool:
        """Whether the widths are planned for latency (``speedup`` or ``latency_ms``)."""
        return self.speedup is not None or self.latency_ms is not None

    def _check_latency_target(self) -> None:
        for name in ("speedup", "latency_ms"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= (1 if name == "speedup" else 0):
                bound = "greater than 1" if name == "speedup" else "positive"
                raise ValueError(f"{name} must be {bound}, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.speedup is not None and self.latency_ms is not None:
            raise ValueError("speedup and latency_ms are exclusive: give one of them")
        if self.latency_target and self.percent is not None:
            raise ValueError(
                "percent and a latency target (speedup, latency_ms) are exclusive: give one"
            )
        object.__setattr__(self, "backend", canonical_backend(self.backend))
        for name in ("batch", "threads"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))

    def replace(self, **changes: Any) -> SlimOptions:
        """A copy with some settings changed (validated like a new one).

        ``percent``, ``speedup`` and ``latency_ms`` are one choice: setting one of them
        drops the others.
        """
        objectives = ("percent", "speedup", "latency_ms")
        chosen = [k for k in objectives if changes.get(k) is not None]
        if len(chosen) == 1:
            changes = {**{k: None for k in objectives}, **changes}
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, options: SlimOptions | None = None, **changes: Any) -> SlimOptions:
        """``options`` (the defaults when ``None``) with some settings changed.

        ``changes`` override single settings; an unknown name raises ``TypeError`` as an
        unknown keyword argument does.
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown slimming option(s): {', '.join(unknown)}")
        if options is None:
            return cls(**changes)
        if not isinstance(options, SlimOptions):
            raise TypeError(f"options must be a SlimOptions, got {type(options).__name__}")
        return options.replace(**changes) if changes else options

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
