"""Constant propagation: what pruned channels carry at every node, in every mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import slimfx
from slimfx import Mode
from slimfx.ir.values import EXACT, PATTERN, UNKNOWN
from slimfx.passes.constant_propagation import propagate
from slimfx.testing import randomize_batchnorm


class _Paths(nn.Module):
    """A BatchNorm gate, then ReLU, zero padding, max pooling and a residual add."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        a = torch.relu(self.bn1(self.conv1(x)))
        padded = F.pad(a, (1, 1, 1, 1))
        pooled = F.max_pool2d(padded, 2)
        b = self.bn2(self.conv2(a))
        return self.head(a + b), pooled


@pytest.fixture
def paths():
    model = randomize_batchnorm(_Paths(), seed=7).eval()
    cg = slimfx.analyze(slimfx.trace(model, torch.randn(1, 3, 6, 6)))
    return model, cg


def test_a_batchnorm_gate_outputs_beta_zero_or_one(paths):
    model, cg = paths
    tables = slimfx.propagate_constants(cg)
    beta = model.bn1.bias.detach().double().numpy()
    np.testing.assert_array_equal(tables.table(Mode.COMPENSATE)["bn1"].value, beta)
    np.testing.assert_array_equal(tables.table(Mode.ZERO)["bn1"].value, np.zeros(6))
    np.testing.assert_array_equal(tables.table(Mode.CARRIER)["bn1"].value, np.ones(6))
    for mode in Mode:
        assert np.all(tables.table(mode)["bn1"].kind == EXACT)
        assert np.all(tables.table(mode)["conv1"].kind == UNKNOWN)  # input dependent


def test_padding_makes_a_pattern_that_max_pooling_does_not_keep(paths):
    _, cg = paths
    table = slimfx.propagate_constants(cg, [Mode.CARRIER]).table(Mode.CARRIER)
    assert np.all(table["pad"].kind == PATTERN)  # 1 inside, 0 in the padding
    assert np.all(table["max_pool2d"].kind == UNKNOWN)
    zero = slimfx.propagate_constants(cg, [Mode.ZERO]).table(Mode.ZERO)
    assert np.all(zero["pad"].kind == EXACT) and np.all(zero["max_pool2d"].value == 0)


def test_a_residual_add_adds_the_constants(paths):
    model, cg = paths
    table = slimfx.propagate_constants(cg, [Mode.COMPENSATE]).table(Mode.COMPENSATE)
    relu = np.maximum(model.bn1.bias.detach().double().numpy(), 0)
    np.testing.assert_allclose(
        table["add"].value, relu + model.bn2.bias.detach().double().numpy(), rtol=0, atol=0
    )


def test_propagation_is_a_function_of_its_input(paths):
    _, cg = paths
    first, second = slimfx.propagate_constants(cg), slimfx.propagate_constants(cg)
    assert first is not second
    for mode in Mode:
        for name, values in first.table(mode).items():
            other = second.table(mode)[name]
            if values is None:
                assert other is None
            else:
                np.testing.assert_array_equal(values.value, other.value)
                np.testing.assert_array_equal(values.kind, other.kind)


def test_asking_for_a_mode_that_was_not_propagated_says_so(paths):
    _, cg = paths
    tables = slimfx.propagate_constants(cg, [Mode.ZERO])
    with pytest.raises(KeyError, match="carrier"):
        tables.table(Mode.CARRIER)


@pytest.mark.parametrize(
    "make", [torchvision.models.resnet18, torchvision.models.mobilenet_v3_small, _Paths]
)
def test_mixed_modes_assembled_from_single_mode_tables_equal_a_mixed_propagation(make):
    """A position's value depends only on its own group's mode (the rewrite relies on it)."""
    model = randomize_batchnorm(make(), seed=1).eval()
    size = 6 if make is _Paths else 32
    cg = slimfx.analyze(slimfx.trace(model, torch.randn(1, 3, size, size)))
    rng = np.random.default_rng(0)
    modes = {g.id: [Mode.COMPENSATE, Mode.ZERO][rng.integers(2)] for g in cg.groups}
    direct = propagate(cg, modes)
    tables = slimfx.propagate_constants(cg, [Mode.COMPENSATE, Mode.ZERO])
    checked = 0
    for name, values in direct.items():
        layout = cg.layout(name)
        if layout is None or values is None:
            continue
        assembled = tables.values_at(name, layout, modes)
        np.testing.assert_array_equal(assembled.kind, values.kind, err_msg=name)
        known = values.kind != UNKNOWN
        np.testing.assert_array_equal(assembled.value[known], values.value[known], err_msg=name)
        checked += 1
    assert checked >= 8
