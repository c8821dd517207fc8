"""Rule family: flatten/view/reshape (channel → features), spatial reductions, indexing."""

import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx.testing import randomize_batchnorm


class Head(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.flatten = nn.Flatten()
        features = {"gap": 8, "mean": 8, "mean-keepdim": 8, "sum": 8, "amax": 8}.get(kind, 8 * 16)
        self.fc = nn.Linear(features, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        k = self.kind
        if k == "view":
            x = x.view(x.size(0), -1)
        elif k == "view-literal":
            x = x.view(-1, 8 * 4 * 4)
        elif k == "reshape-tuple":
            x = x.reshape((x.shape[0], 128))
        elif k == "torch.flatten":
            x = torch.flatten(x, 1)
        elif k == "nn.Flatten":
            x = self.flatten(x)
        elif k == "flatten-then-view":
            x = x.view(x.size(0), 8, -1).flatten(1)
        elif k == "gap":
            x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        elif k == "mean":
            x = x.mean(dim=(2, 3))
        elif k == "mean-keepdim":
            x = x.mean(dim=(-1, -2), keepdim=True).squeeze(-1).squeeze(-1)
        elif k == "sum":
            x = x.sum(dim=(2, 3))
        elif k == "amax":
            x = torch.amax(x, dim=(2, 3))
        return self.fc(x)


KINDS = [
    "view",
    "view-literal",
    "reshape-tuple",
    "torch.flatten",
    "nn.Flatten",
    "flatten-then-view",
    "gap",
    "mean",
    "mean-keepdim",
    "sum",
    "amax",
]


@pytest.mark.parametrize("compensate", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_heads_map_channels_to_features(kind, compensate, oracle_check):
    model = randomize_batchnorm(Head(kind), seed=3)
    with torch.no_grad():
        model.bn.bias.abs_()
    x = torch.randn(2, 3, 4, 4)
    res = slimfx.slim(model, x, 0.5, compensate=compensate)
    width = res.plan.groups["conv"].width
    per_channel = 1 if kind in ("gap", "mean", "mean-keepdim", "sum", "amax") else 16
    assert width < 8
    assert res.module.fc.in_features == width * per_channel
    oracle_check(model, x, res)


def test_flatten_expands_channel_c_to_c_times_k():
    model = randomize_batchnorm(Head("view"), seed=4)
    res = slimfx.slim(model, torch.randn(1, 3, 4, 4), 0.5)
    kept = res.kept["bn"]
    assert res.module.fc.in_features == 16 * len(kept)
    layout = res.channel_graph.layout("view")
    assert len(layout) == 128 and list(layout.index[:17]) == [0] * 16 + [1]


def test_reshape_that_moves_channels_is_frozen():
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.bn = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 8, 1)
            self.bn2 = nn.BatchNorm2d(8)

        def forward(self, x):
            x = self.bn(self.conv(x))
            n, c, h, w = x.shape
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
            return self.bn2(self.conv2(x)).mean((2, 3))

    model = randomize_batchnorm(Shuffle())
    cg = slimfx.analyze(slimfx.trace(model, torch.randn(1, 3, 4, 4)))
    group = cg.group_of("conv")
    assert group.frozen and "reshape that moves the channel axis" in " ".join(group.frozen)
    assert cg.group_of("conv2").frozen == ["model output"]  # the shuffle does not leak


def test_spatial_crop_and_channel_slice(oracle_check):
    class Crop(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))[:, :, 1:-1, 1:-1]
            return self.fc(x.mean((2, 3)))

    model = randomize_batchnorm(Crop(), seed=5)
    x = torch.randn(2, 3, 6, 6)
    res = slimfx.slim(model, x, 0.5)
    oracle_check(model, x, res)


class _ScaledHeads(nn.Module):
    """An attention-style block: a BatchNorm output reshaped into heads, times a Python
    scalar, a softmax over tokens, and back."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16)
        self.proj = nn.Conv2d(16, 8, 1)
        self.scale = 0.25

    def forward(self, x):
        x = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        b, c, h, w = x.shape
        q = x.reshape(b, 2, c // 2, h * w) * self.scale
        return self.proj(q.softmax(-1).reshape(b, c, h, w))


def test_a_scalar_times_heads_of_a_frozen_reshape(oracle_check):
    model = randomize_batchnorm(_ScaledHeads(), seed=3).eval()
    x = torch.randn(2, 3, 6, 6)
    res = slimfx.slim(model, x, 0.3)
    assert set(res.kept) == {"b1"}  # b2's channels go through the heads: frozen
    assert any("reshape that moves the channel axis" in line for line in res.report.frozen)
    oracle_check(model, x, res)


class _SizedByAnother(nn.Module):
    """``y.view(B, C, H, W)`` with ``C`` read from another tensor ``x`` (YOLO11's C2PSA and
    timm's lambda layers): ``y`` passes an op without a rule, so it keeps its channels, and
    ``x``'s group must keep its width too."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(x)))
        b, c, h, w = x.shape
        tokens = torch.roll(y.flatten(2), 1, dims=2)  # no rule: y's channels are frozen
        return self.head(torch.cat([x, tokens.view(b, c, h, w)], 1))


def test_a_reshape_sized_by_another_tensors_channels_freezes_them():
    model = randomize_batchnorm(_SizedByAnother(), seed=4).eval()
    x = torch.randn(2, 3, 5, 5)
    cg = slimfx.analyze(slimfx.trace(model, x))
    assert any("sizes a reshape of another tensor" in why for why in cg.group_of("c1").frozen)
    with pytest.raises(slimfx.UnsupportedError):  # both groups frozen: nothing to prune
        slimfx.slim(model, x, 0.3)
