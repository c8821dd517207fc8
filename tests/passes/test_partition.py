"""Pass helper: dividing channel groups where the graph cuts them (passes/partition.py)."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx.ir.layout import Layout
from slimfx.passes.partition import matching_cuts
from slimfx.testing import randomize_batchnorm


def test_a_group_met_by_one_group_held_twice_is_cut_between_the_copies():
    twice = Layout.concat([Layout.plain(0, 3), Layout.plain(0, 3)])
    cuts = matching_cuts(twice, Layout.plain(1, 6), group_sizes=[3, 6])
    assert [(g, c.tolist()) for g, c in cuts] == [(1, [0, 1, 2]), (1, [3, 4, 5])]


def test_repeated_runs_that_hold_their_group_partly_cut_nothing():
    partly = Layout(np.zeros(4), np.array([0, 1, 0, 1]))  # channels 0, 1 of a group of 3
    assert matching_cuts(partly, Layout.plain(1, 4), group_sizes=[3, 4]) == []


class Ghost(nn.Module):
    """GhostNet's module: a primary convolution, a depthwise "cheap" copy of its output,
    both concatenated and cut to ``out`` channels."""

    def __init__(self, cin, out):
        super().__init__()
        half = out // 2
        self.primary = nn.Sequential(nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half))
        self.cheap = nn.Sequential(
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), nn.BatchNorm2d(half)
        )
        self.out = out

    def forward(self, x):
        x1 = torch.relu(self.primary(x))
        x2 = torch.relu(self.cheap(x1))
        return torch.cat([x1, x2], dim=1)[:, : self.out]


class GhostBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.ghost1 = Ghost(8, 12)
        self.shortcut = nn.Sequential(nn.Conv2d(8, 12, 1, bias=False), nn.BatchNorm2d(12))
        self.ghost2 = Ghost(12, 12)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.ghost1(x) + self.shortcut(x)  # a convolution shortcut
        x = self.ghost2(x) + x  # an identity shortcut
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("compensate", [True, False])
def test_ghost_modules_with_both_shortcuts_prune_exactly(compensate, oracle_check):
    model = randomize_batchnorm(GhostBlocks(), seed=2)
    with torch.no_grad():  # sparsity-trained: small gammas in each group
        for bn in (model.ghost1.primary[1], model.ghost1.cheap[1], model.ghost2.primary[1]):
            bn.weight[1] = 1e-3
        model.shortcut[1].weight[[1, 7]] = 1e-3
        model.ghost2.cheap[1].weight[1] = 1e-3
        model.stem[1].weight.abs_().add_(1.0)  # the stem's channels rank above
    x = torch.randn(2, 3, 5, 5)
    res = slimfx.slim(model, x, 0.2, compensate=compensate)
    cg = res.channel_graph
    # the ghost group, both halves of the shortcut and the second ghost's copies: one group
    group = cg.group_of("ghost1_primary_0")
    assert not group.frozen
    assert cg.layouts["shortcut_0"].group_ids() == [group.id]  # held twice: [G, G]
    assert res.plan.groups[group.name].width < group.size
    assert res.module.fc.in_features == 2 * res.plan.groups[group.name].width
    oracle_check(model, x, res)
