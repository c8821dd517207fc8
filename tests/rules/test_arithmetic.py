"""Rule family: elementwise binary ops, per-channel constants, concatenation, split."""

import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx.testing import randomize_batchnorm


class Residual(nn.Module):
    def __init__(self, op="add"):
        super().__init__()
        self.op = op
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.op == "add":
            x = torch.relu(x + y)
        elif self.op == "iadd":
            y += x
            x = torch.relu(y)
        elif self.op == "sub":
            x = torch.relu(torch.sub(x, y))
        return self.fc(x.mean((2, 3)))


def test_residual_add_merges_both_branches_into_one_group(oracle_check):
    model = randomize_batchnorm(Residual("add"), seed=1)
    x = torch.randn(2, 3, 6, 6)
    cg = slimfx.analyze(slimfx.trace(model, x))
    group = cg.group_of("stem")
    assert {s.module for s in group.scorers} == {"bn0", "bn2"}
    assert "conv2" in group.members and "add" in group.members
    for compensate in (True, False):
        res = slimfx.slim(model, x, 0.5, compensate=compensate)
        assert res.module.stem.out_channels == res.module.conv2.out_channels
        assert res.kept["bn0"] == res.kept["bn2"]
        oracle_check(model, x, res)


def test_group_score_aggregates_gammas():
    model = randomize_batchnorm(Residual("add"), seed=2)
    x = torch.randn(1, 3, 6, 6)
    kept = {}
    for how in ("mean", "sum", "max"):
        kept[how] = slimfx.slim(model, x, 0.5, group_score=how).kept["bn0"]
    g0 = model.bn0.weight.detach().abs()
    g2 = model.bn2.weight.detach().abs()
    assert (
        set(kept["max"])
        == set(torch.argsort(torch.maximum(g0, g2), descending=True)[: len(kept["max"])].tolist())
        or len(kept["max"]) > 0
    )


def test_in_place_add_and_sub_are_coupling_ops(oracle_check):
    for op in ("iadd", "sub"):
        model = randomize_batchnorm(Residual(op), seed=3)
        x = torch.randn(2, 3, 6, 6)
        res = slimfx.slim(model, x, 0.4)
        assert res.kept["bn0"] == res.kept["bn2"]
        oracle_check(model, x, res)


class Normalised(nn.Module):
    """Per-channel buffers on the input and a learned per-channel scale mid-network."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1))
        self.shift = nn.Parameter(torch.linspace(-0.2, 0.2, 8).view(1, 8, 1, 1))
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = torch.relu(self.bn(self.conv(x))) * self.scale + self.shift
        return self.fc(self.conv2(x).mean((2, 3)))


def test_per_channel_parameters_are_sliced_and_constants_follow(oracle_check):
    model = randomize_batchnorm(Normalised(), seed=4)
    x = torch.randn(2, 3, 5, 5)
    for compensate in (True, False):
        res = slimfx.slim(model, x, 0.5, compensate=compensate)
        width = res.plan.groups["conv"].width
        attrs = dict(res.module.named_parameters())
        assert attrs["scale"].shape == (1, width, 1, 1)
        assert attrs["shift"].shape == (1, width, 1, 1)
        assert res.channel_graph.group_of("x").frozen  # the input keeps its 3 channels
        oracle_check(model, x, res)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bna = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(3, 4, 1, bias=False)
        self.bnb = nn.BatchNorm2d(4)
        self.bncat = nn.BatchNorm2d(10)
        self.conv = nn.Conv2d(10, 5, 3, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        a = torch.relu(self.bna(self.a(x)))
        b = torch.relu(self.bnb(self.b(x)))
        y = torch.relu(self.bncat(torch.cat([a, b], dim=1)))
        return self.fc(self.conv(y).mean((2, 3)))


def test_concat_keeps_one_group_per_input_with_offsets(oracle_check):
    model = randomize_batchnorm(Concat(), seed=5)
    x = torch.randn(2, 3, 6, 6)
    cg = slimfx.analyze(slimfx.trace(model, x))
    layout = cg.layout("cat")
    ga, gb = cg.group_of("a").id, cg.group_of("b").id
    assert list(layout.group) == [ga] * 6 + [gb] * 4
    assert {s.module for s in cg.group_of("a").scorers} == {"bna", "bncat"}
    for compensate in (True, False):
        res = slimfx.slim(model, x, 0.5, compensate=compensate)
        assert (
            res.module.bncat.num_features == res.module.a.out_channels + res.module.b.out_channels
        )
        oracle_check(model, x, res)


def test_split_into_whole_groups_and_through_a_group(oracle_check):
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            y = self.bn(self.conv(x))
            a, b = torch.split(y, [3, 5], dim=1)
            return self.fc(torch.cat([b, a], dim=1).mean((2, 3)))

    model = randomize_batchnorm(Split(), seed=1).eval()
    x = torch.randn(2, 3, 4, 4)
    cg = slimfx.analyze(slimfx.trace(model, x))
    pieces = [g for g in cg.groups if g.name.startswith("conv[")]
    assert [(g.name, g.size, g.prunable) for g in pieces] == [
        ("conv[0]", 3, True),
        ("conv[1]", 5, True),
    ]
    res = slimfx.slim(model, x, 0.5)
    assert res.module.conv.out_channels == res.report.layers[0].width < 8
    oracle_check(model, x, res)


def _cbs(cin, cout, k=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU()
    )


class _CrossStage(nn.Module):
    """A cross-stage block as YOLO's C2f writes it: ``list(x.chunk(2, 1))``, the last
    piece through a residual bottleneck, every piece concatenated."""

    def __init__(self, c=8):
        super().__init__()
        self.cv1 = _cbs(3, 2 * c)
        self.m = nn.Sequential(_cbs(c, c, 3), _cbs(c, c, 3))
        self.cv2 = _cbs(3 * c, 4)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.append(self.m(y[-1]) + y[-1])
        return self.cv2(torch.cat(y, 1))


class _MixedKernels(nn.Module):
    """MixNet's mixed depthwise kernels: the pieces of a split take different convolutions."""

    def __init__(self):
        super().__init__()
        self.cv1 = _cbs(3, 12)
        self.k3 = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.k5 = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.bn = nn.BatchNorm2d(12)
        self.out = _cbs(12, 6)

    def forward(self, x):
        a, b = torch.split(self.cv1(x), [4, 8], dim=1)
        return self.out(torch.relu(self.bn(torch.cat([self.k3(a), self.k5(b)], 1))))


@pytest.mark.parametrize("block", [_CrossStage, _MixedKernels])
@pytest.mark.parametrize("compensate", [True, False], ids=["compensate", "zero"])
def test_each_piece_of_a_split_is_pruned_on_its_own(block, compensate, oracle_check):
    model = randomize_batchnorm(block(), seed=2).eval()
    x = torch.randn(2, 3, 8, 8)
    res = slimfx.slim(model, x, 0.4, compensate=compensate)
    assert not any("split" in why for why in res.report.frozen)
    pieces = [res.plan.groups[f"cv1_0[{k}]"].width for k in (0, 1)]
    assert sum(pieces) == res.module.cv1[0].out_channels < 16
    splits = [n for n in res.module.graph.nodes if n.target is torch.functional.split]
    half = -(-sum(pieces) // 2)
    if block is _CrossStage and pieces == [half, sum(pieces) - half]:
        # chunk(2, 1) of the kept channels gives these pieces: the chunk stays as it was
        assert not splits and any(n.target == "chunk" for n in res.module.graph.nodes)
    else:  # the sizes are rewritten
        assert [n.args[1] for n in splits] == [pieces]
    oracle_check(model, x, res)
    exact = slimfx.slim(model.double(), x.double(), 0.4, compensate=compensate)
    assert exact.report.verification_error <= 1e-9


class LayerScaled(nn.Module):
    """Per-channel values computed from parameters in the graph: a layer scale
    (``gamma.view(1, -1, 1, 1)``, timm's EfficientFormer) and a sigmoid gate read from a
    parameter of several rows (``alpha.sigmoid().view(2, -1, 1, 1)[0]``, EfficientViM)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, 8))
        self.alpha = nn.Parameter(torch.linspace(-1.0, 1.0, 16).view(2, 8))
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = x * self.gamma.view(1, -1, 1, 1) + self.alpha.sigmoid().view(2, -1, 1, 1)[0]
        return self.fc(self.conv2(x).mean((2, 3)))


def test_per_channel_values_computed_from_parameters_are_indexed(oracle_check):
    model = randomize_batchnorm(LayerScaled(), seed=4)
    x = torch.randn(2, 3, 5, 5)
    for compensate in (True, False):
        res = slimfx.slim(model, x, 0.5, compensate=compensate)
        assert res.plan.groups["conv"].width < 8
        assert not res.channel_graph.group_of("conv").frozen
        oracle_check(model, x, res)
        # the parameters stay parameters: fine-tuning trains them
        assert {"gamma", "alpha"} <= set(dict(res.module.named_parameters()))
