"""Rule family: channel-wise activations, dropout and identity-like methods."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import slimfx
from slimfx.testing import randomize_batchnorm


class ConvBnAct(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = act
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.head = nn.Linear(6 * 6 * 6, 4)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        x = self.act(x)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(torch.flatten(x, 1))


ACTIVATIONS = {
    "ReLU": nn.ReLU(),
    "ReLU-inplace": nn.ReLU(inplace=True),
    "ReLU6": nn.ReLU6(),
    "LeakyReLU": nn.LeakyReLU(0.2),
    "PReLU-1": nn.PReLU(),
    "PReLU-per-channel": nn.PReLU(8),
    "ELU": nn.ELU(),
    "GELU": nn.GELU(),
    "SiLU": nn.SiLU(),
    "Hardswish": nn.Hardswish(),
    "Sigmoid": nn.Sigmoid(),
    "Tanh": nn.Tanh(),
    "Dropout": nn.Dropout(0.3),
    "Dropout2d": nn.Dropout2d(0.3),
    "Identity": nn.Identity(),
    "F.relu": F.relu,
    "F.leaky_relu": lambda x: F.leaky_relu(x, 0.1),
    "torch.sigmoid": torch.sigmoid,
    "F.hardtanh": lambda x: F.hardtanh(x, -0.5, 0.5),
    "relu_ method": lambda x: x.relu_(),
    "clamp method": lambda x: x.clamp(min=0.1),
    "F.dropout": lambda x: F.dropout(x, 0.5, training=False),
}


@pytest.mark.parametrize("compensate", [True, False])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_is_channel_wise_and_exact(name, compensate, oracle_check):
    model = randomize_batchnorm(ConvBnAct(ACTIVATIONS[name]), seed=1)
    if name == "PReLU-per-channel":
        with torch.no_grad():
            model.act.weight.copy_(torch.linspace(-0.5, 0.5, 8))
    x = torch.randn(2, 3, 6, 6)
    res = slimfx.slim(model, x, 0.4, compensate=compensate)
    assert res.report.verification_error <= 1e-9
    group = res.channel_graph.group_of("conv1")
    assert group.prunable and [s.module for s in group.scorers] == ["bn1"]
    assert res.module.conv2.in_channels < 8
    oracle_check(model, x, res)


def test_per_channel_prelu_is_sliced_with_its_channels():
    model = randomize_batchnorm(ConvBnAct(nn.PReLU(8)), seed=2)
    res = slimfx.slim(model, torch.randn(1, 3, 6, 6), 0.5)
    width = res.module.bn1.num_features
    assert res.module.act.weight.shape == (width,)
    assert res.module.act.num_parameters == width


def test_nonhomogeneous_activation_after_padding_pattern_falls_back_to_zeroing():
    class PadThenSigmoid(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(6)
            self.conv2 = nn.Conv2d(6, 4, 3)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            x = F.pad(torch.relu(self.bn1(self.conv1(x))), (1, 1, 1, 1))
            x = torch.tanh(x)  # tanh(v * P) is not tanh(v) * P
            x = self.conv2(x)
            return self.head(x.mean(dim=(2, 3)))

    model = randomize_batchnorm(PadThenSigmoid(), seed=3)
    res = slimfx.slim(model, torch.randn(2, 3, 5, 5), 0.5)
    gp = res.plan.groups["conv1"]
    assert gp.mode == "zero"  # tanh(0) = 0: zeroing stays exact
    assert any("zeroing instead" in n for n in res.report.notes)


class _ThreeReLUs(nn.Module):
    """A ReLU module, ``F.relu`` and ``Tensor.relu_``, after zero padding (patterns too)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = F.pad(self.act(self.bn1(self.conv1(x))), (1, 1, 1, 1))
        x = F.relu(x)
        x = self.bn2(self.conv2(x)).relu_()
        return self.conv3(x)


@pytest.mark.parametrize("mode", list(slimfx.Mode))
def test_relu_of_a_constant_is_its_positive_part_in_every_form(mode):
    """The module, ``F.relu`` and ``Tensor.relu_`` all map a gate's constant ``v`` to
    ``max(v, 0)``; NaN stays unknown."""
    model = randomize_batchnorm(_ThreeReLUs(), seed=11)
    beta = torch.tensor([-1.0, 0.0, -0.0, 0.5, 2.0, -3.0, 1e-3, float("nan")])
    with torch.no_grad():
        model.bn1.bias.copy_(beta)
    cg = slimfx.analyze(slimfx.trace(model, torch.randn(1, 3, 6, 6)))
    table = slimfx.propagate_constants(cg, [mode]).table(mode)
    gate = {"compensate": beta.numpy(), "zero": np.zeros(8), "carrier": np.ones(8)}[mode.value]
    act = table["act"]
    finite = np.isfinite(gate)
    np.testing.assert_array_equal(act.value[finite], np.maximum(gate[finite], 0.0))
    assert np.all(act.kind[~finite] == 2)  # UNKNOWN
    relu = table["relu"]  # F.relu after zero padding: a pattern, still max(v, 0)
    np.testing.assert_array_equal(relu.value[finite], np.maximum(gate[finite], 0.0))
