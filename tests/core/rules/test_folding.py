"""Slicing and folding a consumer's weights: the fast copies equal the textbook formula."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from slimfx.passes.rewrite import SinkFold
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
@pytest.mark.parametrize("chunk_bytes", [1, 700, 1 << 19])
def test_fold_weights_equals_the_formula(kernel, with_carrier, chunk_bytes, monkeypatch):
    """Several chunk sizes, a partial last chunk included; float64 so the sums are exact."""
    monkeypatch.setattr(folding, "_CHUNK_BYTES", chunk_bytes)
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


@pytest.mark.parametrize("dtype", [None, torch.float64])
def test_folded_convolution_is_allocated_now_and_filled_later(dtype):
    rng = np.random.default_rng(3)
    weight = torch.randn(12, 10, 3, 3)
    bias = torch.randn(12)
    rows = np.array([0, 2, 3, 7, 11])
    fold = random_fold(rng, 10, with_carrier=True)
    layer = folding.folded_layer(weight, bias, rows, fold, dtype)
    assert layer.fill is not None
    assert layer.weight.shape == (5, len(fold.kept), 3, 3)
    assert layer.weight.dtype == (dtype or torch.float32)
    weight_tensor, bias_tensor = layer.weight, layer.bias
    layer.fill()
    assert layer.weight is weight_tensor and layer.bias is bias_tensor  # filled in place
    expected_weight, expected_bias = folding.fold_weights(weight, bias, rows, fold, dtype)
    assert torch.equal(layer.weight, expected_weight)
    assert torch.equal(layer.bias, expected_bias)


def test_layers_without_folds_or_kernels_are_computed_at_once():
    rng = np.random.default_rng(4)
    empty = np.zeros(0, dtype=np.int64)
    no_fold = SinkFold(np.array([0, 3]), empty, np.zeros(0), empty, np.zeros(0), empty)
    assert folding.folded_layer(torch.randn(4, 5, 3, 3), None, None, no_fold, None).fill is None
    fold = random_fold(rng, 6, with_carrier=False)
    linear_weight = torch.randn(4, 6, dtype=torch.float64)
    linear = folding.folded_layer(linear_weight, None, np.arange(4), fold, None)
    assert linear.fill is None
    expected_weight, expected_bias = reference_fold(linear_weight, None, np.arange(4), fold)
    torch.testing.assert_close(linear.weight, expected_weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(linear.bias, expected_bias, rtol=1e-12, atol=1e-12)
