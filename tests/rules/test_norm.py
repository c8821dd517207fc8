"""Rule family: BatchNorm as scorer, gate and carrier."""

import torch
import torch.nn as nn

import slimfx
from slimfx.testing import randomize_batchnorm


class BnAfterAct(nn.Module):
    def __init__(self, affine=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8, affine=affine)
        self.conv2 = nn.Conv2d(8, 5, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        x = self.bn1(torch.relu(self.conv1(x)))  # BatchNorm after the activation
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def test_batchnorm_after_activation_gates_channels(oracle_check):
    model = randomize_batchnorm(BnAfterAct(), seed=1)
    x = torch.randn(2, 3, 6, 6)
    for compensate in (True, False):
        res = slimfx.slim(model, x, 0.5, compensate=compensate)
        assert res.module.conv1.out_channels == res.module.bn1.num_features < 8
        oracle_check(model, x, res)


def test_carrier_channel_has_zero_gamma_and_unit_beta():
    model = randomize_batchnorm(BnAfterAct(), seed=2)
    with torch.no_grad():
        model.bn1.bias.fill_(0.7)
    res = slimfx.slim(model, torch.randn(1, 3, 6, 6), 0.5)
    gp = res.plan.groups["conv1"]
    assert gp.carrier is not None
    slot = sorted([*gp.kept, gp.carrier]).index(gp.carrier)
    bn = res.module.bn1
    assert bn.weight[slot] == 0 and bn.bias[slot] == 1
    assert torch.all(res.module.conv1.weight[slot] == 0)


def test_non_affine_batchnorm_scores_nothing():
    model = randomize_batchnorm(BnAfterAct(affine=False), seed=3)
    res = slimfx.slim(model, torch.randn(1, 3, 6, 6), 0.3)
    assert "conv1" not in res.plan.groups
    assert list(res.kept) == ["bn2"]


def test_running_statistics_are_sliced():
    model = randomize_batchnorm(BnAfterAct(), seed=4)
    res = slimfx.slim(model, torch.randn(1, 3, 6, 6), 0.5)
    kept = res.kept["bn2"]
    gp = res.plan.groups["conv2"]
    order = sorted([*kept] + ([gp.carrier] if gp.carrier is not None else []))
    real = [order.index(k) for k in kept]
    assert torch.equal(res.module.bn2.running_mean[real], model.bn2.running_mean[kept])
    assert torch.equal(res.module.bn2.running_var[real], model.bn2.running_var[kept])
