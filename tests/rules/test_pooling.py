"""Rule family: pooling, resampling and padding (constants, patterns, carriers)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import slimfx
from slimfx.rules.pooling import AvgPool, MaxPool
from slimfx.testing import randomize_batchnorm


class PoolNet(nn.Module):
    def __init__(self, pool, size_after):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(10)
        self.pool = pool
        self.conv2 = nn.Conv2d(10, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.head = nn.Linear(6 * size_after * size_after, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(x)
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.view(x.size(0), -1))


POOLS = {
    "max": (nn.MaxPool2d(2), 4),
    "max-ceil": (nn.MaxPool2d(3, 2, ceil_mode=True), 4),
    "max-padded": (nn.MaxPool2d(3, 2, padding=1), 4),
    "avg": (nn.AvgPool2d(2), 4),
    "avg-pad-count": (nn.AvgPool2d(3, 2, padding=1), 4),
    "avg-pad-nocount": (nn.AvgPool2d(3, 2, padding=1, count_include_pad=False), 4),
    "avg-ceil": (nn.AvgPool2d(3, 2, ceil_mode=True), 4),
    "adaptive-avg": (nn.AdaptiveAvgPool2d(3), 3),
    "adaptive-max": (nn.AdaptiveMaxPool2d(3), 3),
    "F.max_pool2d": (lambda x: F.max_pool2d(x, 2), 4),
    "F.avg_pool2d-pad": (lambda x: F.avg_pool2d(x, 3, 2, 1), 4),
    "upsample": (nn.Upsample(scale_factor=2, mode="nearest"), 16),
    "bilinear": (lambda x: F.interpolate(x, size=5, mode="bilinear"), 5),
    "zero-pad": (nn.ZeroPad2d(1), 10),
    "F.pad-reflect": (lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect"), 10),
    "inline-module": (lambda x: nn.AvgPool2d(2)(x), 4),
}


@pytest.mark.parametrize("compensate", [True, False])
@pytest.mark.parametrize("name", list(POOLS))
def test_pooling_keeps_channels_and_is_exact(name, compensate, oracle_check):
    pool, size_after = POOLS[name]
    model = randomize_batchnorm(PoolNet(pool, size_after), seed=len(name))
    with torch.no_grad():
        model.bn1.bias.abs_()  # relu(beta) > 0: the constants matter
    x = torch.randn(2, 3, 8, 8)
    res = slimfx.slim(model, x, 0.5, compensate=compensate)
    assert res.module.conv2.in_channels < 10
    oracle_check(model, x, res)


def test_count_include_pad_makes_a_pattern_that_the_carrier_follows():
    model = randomize_batchnorm(PoolNet(nn.AvgPool2d(3, 2, padding=1), 4), seed=1)
    with torch.no_grad():
        model.bn1.bias.abs_()
    res = slimfx.slim(model, torch.randn(1, 3, 8, 8), 0.5)
    gp = res.plan.groups["conv1"]
    assert gp.mode == "compensate" and gp.carrier is not None


def test_max_pool_of_a_pattern_falls_back_to_zeroing():
    pool = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(2))
    model = randomize_batchnorm(PoolNet(pool, 5), seed=2)
    with torch.no_grad():
        model.bn1.bias.abs_()
    res = slimfx.slim(model, torch.randn(1, 3, 8, 8), 0.5)
    assert res.plan.groups["conv1"].mode == "zero"


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["max", "avg"]),
    dims=st.sampled_from([1, 2, 3]),
    size=st.integers(1, 13),
    kernel=st.integers(1, 5),
    stride=st.one_of(st.none(), st.integers(1, 4)),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    ceil=st.booleans(),
)
def test_pooling_meta_output_is_the_shape_pytorch_returns(
    kind, dims, size, kernel, stride, padding, dilation, ceil
):
    if kind == "max":
        pool = [nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d][dims - 1](
            kernel, stride, padding, dilation=dilation, ceil_mode=ceil
        )
        rule = MaxPool()
    else:
        pool = [nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d][dims - 1](
            kernel, stride, padding, ceil_mode=ceil
        )
        rule = AvgPool()
    shape = (1, 2, *([size] * dims))
    computed = rule.meta_output(pool, torch.empty(shape, device="meta"))
    try:
        with torch.no_grad():
            real = pool(torch.zeros(shape))
    except RuntimeError:
        assert computed is None
        return
    if computed is not None:  # None is allowed: PyTorch's kernel runs
        assert computed.shape == real.shape
