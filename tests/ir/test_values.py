"""The algebra of pruned channels' values (constants, patterns, unknowns)."""

import numpy as np

from slimfx.ir.values import EXACT, PATTERN, UNKNOWN, PrunedValues, combine_add, combine_mul


def pv(value, kind, pattern=None):
    value = np.array(value, dtype=float)
    return PrunedValues(
        value,
        np.array(kind, dtype=np.int8),
        np.zeros(len(value), np.int64) if pattern is None else np.array(pattern),
    )


def test_zero_pattern_is_exact_and_nan_is_unknown():
    v = pv([0.0, np.nan, 2.0], [PATTERN, EXACT, PATTERN], [7, 0, 7]).normalized()
    assert list(v.kind) == [EXACT, UNKNOWN, PATTERN]


def test_homogeneous_map_keeps_patterns_others_do_not():
    v = pv([1.0, 2.0], [EXACT, PATTERN], [0, 4])
    assert list(v.mapped(np.array([1.0, 2.0]), homogeneous=True).kind) == [EXACT, PATTERN]
    assert list(v.mapped(np.array([1.0, 2.0]), homogeneous=False).kind) == [EXACT, UNKNOWN]


def test_add_of_different_patterns_is_unknown():
    a = pv([1.0, 1.0, 1.0], [PATTERN, PATTERN, EXACT], [1, 1, 0])
    b = pv([1.0, 2.0, 3.0], [PATTERN, PATTERN, EXACT], [1, 2, 0])
    out = combine_add(a, b)
    assert list(out.kind) == [PATTERN, UNKNOWN, EXACT]
    assert out.value[2] == 4.0


def test_multiplying_by_an_exact_zero_is_exact_even_for_unknowns():
    a = pv([0.0, 1.0], [EXACT, EXACT])
    b = PrunedValues.unknown(2)
    out = combine_mul(a, b)
    assert list(out.kind) == [EXACT, UNKNOWN] and out.value[0] == 0.0
