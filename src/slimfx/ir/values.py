"""What a pruned channel carries: the algebra of compensation.

With its BatchNorm scaling factor zeroed a channel no longer depends on the input: its
BatchNorm outputs a constant (``beta``, or ``0`` when beta is zeroed too) and every
channel-wise op after it maps that constant to another. :class:`PrunedValues` tracks, for
every position of a channel axis, the value the position would carry if its channel were
pruned:

``EXACT``
    the same value everywhere in the feature map (a constant field);
``PATTERN``
    ``value * P`` for a non-negative spatial pattern ``P`` shared by every position with the
    same pattern id (zero padding of a constant, average pooling that counts padding);
``UNKNOWN``
    input dependent, or not representable; a pruned channel in this state cannot be removed
    without changing the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXACT = 0
PATTERN = 1
UNKNOWN = 2


@dataclass(frozen=True)
class PrunedValues:
    """Per-position value of pruned channels (see the module docstring)."""

    value: np.ndarray
    kind: np.ndarray
    pattern: np.ndarray

    @classmethod
    def unknown(cls, size: int) -> PrunedValues:
        return cls(
            np.full(size, np.nan),
            np.full(size, UNKNOWN, dtype=np.int8),
            np.zeros(size, dtype=np.int64),
        )

    @classmethod
    def exact(cls, value: np.ndarray) -> PrunedValues:
        value = np.asarray(value, dtype=np.float64)
        return cls(value, np.zeros(value.shape, dtype=np.int8), np.zeros(value.shape, np.int64))

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def normalized(self) -> PrunedValues:
        """Zero is zero whatever its pattern; NaN or infinite values are unknown."""
        all_exact = not self.kind.any()  # the usual case: three checks instead of six
        if all_exact and not self.pattern.any() and np.isfinite(self.value).all():
            return self
        unknown = self.kind == UNKNOWN
        if (
            not np.any((self.value == 0) & (self.kind == PATTERN))
            and not np.any(self.pattern[self.kind == EXACT])
            and np.isfinite(self.value[~unknown]).all()
            and np.isnan(self.value[unknown]).all()
        ):
            return self  # already normal (values are never modified in place)
        kind = self.kind.copy()
        pattern = self.pattern.copy()
        value = self.value.copy()
        zero = (value == 0) & (kind == PATTERN)
        kind[zero] = EXACT
        pattern[kind == EXACT] = 0
        bad = ~np.isfinite(value)
        kind[bad] = UNKNOWN
        value[kind == UNKNOWN] = np.nan
        return PrunedValues(value, kind, pattern)

    def take(self, positions: np.ndarray) -> PrunedValues:
        return PrunedValues(self.value[positions], self.kind[positions], self.pattern[positions])

    def repeat(self, k: int) -> PrunedValues:
        return PrunedValues(
            np.repeat(self.value, k), np.repeat(self.kind, k), np.repeat(self.pattern, k)
        )

    @classmethod
    def concat(cls, parts: list[PrunedValues]) -> PrunedValues:
        return cls(
            np.concatenate([p.value for p in parts]),
            np.concatenate([p.kind for p in parts]),
            np.concatenate([p.pattern for p in parts]),
        )

    def mapped(self, fn_value: np.ndarray, homogeneous: bool) -> PrunedValues:
        """Apply an elementwise op whose results on the values are ``fn_value``.

        Exact constants map exactly. A pattern ``v*P`` maps to ``f(v)*P`` only when the op
        is positively homogeneous (``f(a*x) = a*f(x)`` for ``a >= 0``: ReLU, LeakyReLU,
        identity); otherwise it becomes unknown.
        """
        kind = self.kind.copy()
        if not homogeneous:
            kind[kind == PATTERN] = UNKNOWN
        return PrunedValues(np.asarray(fn_value, dtype=np.float64), kind, self.pattern).normalized()

    def to_pattern(self, new_pattern: np.ndarray) -> PrunedValues:
        """Values after a linear spatial op that turns constants into patterns (zero padding)."""
        kind = self.kind.copy()
        kind[kind == EXACT] = PATTERN
        return PrunedValues(self.value, kind, new_pattern.astype(np.int64)).normalized()

    def repattern(self, new_pattern: np.ndarray) -> PrunedValues:
        """Values after a linear spatial op that keeps constants (average pooling, resampling)."""
        pattern = np.where(self.kind == PATTERN, new_pattern, self.pattern)
        return PrunedValues(self.value, self.kind, pattern.astype(np.int64)).normalized()

    def as_unknown_unless_exact(self) -> PrunedValues:
        """Values after an op that keeps constants but cannot carry patterns."""
        kind = self.kind.copy()
        kind[kind == PATTERN] = UNKNOWN
        return PrunedValues(self.value, kind, self.pattern).normalized()


def combine_add(a: PrunedValues, b: PrunedValues, sign: float = 1.0) -> PrunedValues:
    """Values of ``a + sign * b`` position by position."""
    value = a.value + sign * b.value
    kind = np.maximum(a.kind, b.kind)
    pattern = np.where(a.kind == PATTERN, a.pattern, b.pattern)
    clash = (a.kind == PATTERN) & (b.kind == PATTERN) & (a.pattern != b.pattern)
    mixed = ((a.kind == PATTERN) & (b.kind == EXACT) & (b.value != 0)) | (
        (b.kind == PATTERN) & (a.kind == EXACT) & (a.value != 0)
    )
    kind = np.where(clash | mixed, UNKNOWN, kind).astype(np.int8)
    return PrunedValues(value, kind, pattern).normalized()


def combine_mul(a: PrunedValues, b: PrunedValues) -> PrunedValues:
    """Values of ``a * b``: a zero wins over anything, even an unknown factor."""
    a_zero = (a.kind != UNKNOWN) & (a.value == 0)
    b_zero = (b.kind != UNKNOWN) & (b.value == 0)
    value = np.where(a_zero | b_zero, 0.0, a.value * b.value)
    kind = np.maximum(a.kind, b.kind)
    both_pattern = (a.kind == PATTERN) & (b.kind == PATTERN)
    kind = np.where(both_pattern, UNKNOWN, kind)
    kind = np.where(a_zero | b_zero, EXACT, kind).astype(np.int8)
    pattern = np.where(a.kind == PATTERN, a.pattern, b.pattern)
    return PrunedValues(value, kind, pattern).normalized()


def combine_div(a: PrunedValues, b: PrunedValues) -> PrunedValues:
    """Values of ``a / b`` where ``b`` must be an exact non-zero constant."""
    ok = (b.kind == EXACT) & (b.value != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = a.value / np.where(ok, b.value, 1.0)
    kind = np.where(ok, a.kind, UNKNOWN).astype(np.int8)
    return PrunedValues(value, kind, a.pattern).normalized()
