"""Slicing and folding a consumer's weights: the result equals the textbook formula."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from slimfx.ir.contexts import SinkFold
from slimfx.rules import folding


def reference_fold(weight, bias, rows, fold):
    """``W[rows][:, kept]`` plus the folds, written the obvious way in float64.

    A pruned input ``p`` with constant ``v`` adds ``W[:, p] * v / c`` to its carrier's
    column (whose channel carries ``c``), or ``sum(W[:, p]) * v`` to the bias.
    """
    w = weight.double()[torch.as_tensor(rows)]
    new = w[:, torch.as_tensor(fold.kept)].clone()
    new_bias = torch.zeros(len(rows), dtype=torch.float64) if bias is None else bias.double()[rows]
    extra = torch.zeros(len(rows), dtype=torch.float64)
    for column in fold.carrier_columns:
        new[:, column] = 0  # a carrier column carries only what is folded into it
    for p, v, partner, cv in zip(
        fold.contrib, fold.value, fold.partner, fold.carrier_value, strict=True
    ):
        if partner < 0:
            extra += w[:, p].reshape(len(rows), -1).sum(1) * v
        else:
            new[:, partner] += w[:, p] * (v / cv)
    has_direct = bool((fold.partner < 0).any())
    return new, (new_bias + extra) if (bias is not None or has_direct) else None


def random_fold(rng, in_size, with_carrier):
    kept = np.sort(rng.choice(in_size, in_size // 2, replace=False))
    pruned = np.setdiff1d(np.arange(in_size), kept)
    contrib = pruned[rng.random(len(pruned)) < 0.7]
    value = rng.normal(size=len(contrib))
    if with_carrier:
        carrier_column = int(rng.integers(len(kept)))
        partner = np.where(rng.random(len(contrib)) < 0.6, carrier_column, -1)
        carrier_value = np.where(partner >= 0, rng.uniform(0.5, 2.0, len(contrib)), 0.0)
        columns = np.array([carrier_column])
    else:
        partner = np.full(len(contrib), -1)
        carrier_value = np.zeros(len(contrib))
        columns = np.zeros(0, dtype=np.int64)
    return SinkFold(kept, contrib, value, partner, carrier_value, columns)


@pytest.mark.parametrize("kernel", [(3, 3), (1, 1), (), (5,)])
@pytest.mark.parametrize("with_carrier", [False, True])
def test_fold_weights_equals_the_formula(kernel, with_carrier):
    """Float64, so the sums are exact."""
    rng = np.random.default_rng(len(kernel) * 10 + with_carrier)
    out_size, in_size = 23, 17
    weight = torch.randn(out_size, in_size, *kernel, dtype=torch.float64)
    bias = torch.randn(out_size, dtype=torch.float64) if with_carrier else None
    rows = np.sort(rng.choice(out_size, 13, replace=False))
    fold = random_fold(rng, in_size, with_carrier)
    new_weight, new_bias = folding.fold_weights(weight, bias, rows, fold, torch.float64)
    expected_weight, expected_bias = reference_fold(weight, bias, rows, fold)
    torch.testing.assert_close(new_weight, expected_weight, rtol=1e-12, atol=1e-12)
    if expected_bias is None:
        assert new_bias is None
    else:
        torch.testing.assert_close(new_bias, expected_bias, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", [(3, 3), ()])
def test_slicing_without_folds_copies_and_never_aliases(kernel):
    weight = torch.randn(9, 8, *kernel)
    rows = np.array([0, 4, 5, 8])
    kept = np.array([1, 2, 7])
    empty = np.zeros(0, dtype=np.int64)
    fold = SinkFold(kept, empty, np.zeros(0), empty, np.zeros(0), empty)
    new_weight, _ = folding.fold_weights(weight, None, rows, fold, None)
    assert torch.equal(new_weight, weight[rows][:, kept])
    whole, _ = folding.fold_weights(weight, None, np.arange(9), replace(fold, kept=None), None)
    assert torch.equal(whole, weight)
    whole.add_(1.0)
    assert not torch.equal(whole, weight)
