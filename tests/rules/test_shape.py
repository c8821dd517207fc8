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


class LinearNorm(nn.Module):
    """LeViT's linear layer + BatchNorm1d over the flattened tokens."""

    def __init__(self, cin, cout):
        super().__init__()
        self.linear = nn.Linear(cin, cout, bias=False)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x):
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class HybridAttention(nn.Module):
    """A conv stem, then tokens: attention (heads split from channels, ``q * scale``,
    ``softmax``, ``matmul``) and an MLP, both residual; a strided token subsample; mean over
    tokens into a classifier — the idioms of LeViT-style hybrids."""

    def __init__(self, dim=8, heads=2, key_dim=2, side=4):
        super().__init__()
        self.heads, self.key_dim, self.side = heads, key_dim, side
        self.stem = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=False),
            nn.BatchNorm2d(6),
            nn.Hardswish(),
            nn.Conv2d(6, dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(dim),
        )
        self.qkv = LinearNorm(dim, heads * key_dim * 3)
        self.proj = LinearNorm(heads * key_dim, dim)
        self.mlp1 = LinearNorm(dim, 2 * dim)
        self.mlp2 = LinearNorm(2 * dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)  # (B, N, C)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, self.heads, -1).split([self.key_dim] * 3, dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        attn = ((q * self.key_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        x = x + self.proj(nn.functional.hardswish(out))
        x = x + self.mlp2(nn.functional.hardswish(self.mlp1(x)))
        x = x.view(b, self.side, self.side, -1)[:, ::2, ::2].reshape(b, -1, x.shape[-1])
        return self.head(x.mean(1))


@pytest.mark.parametrize("compensate", [True, False])
def test_tokens_keep_their_channels_prunable_outside_the_heads(compensate, oracle_check):
    model = randomize_batchnorm(HybridAttention(), seed=3)
    with torch.no_grad():  # sparsity-trained: a few gammas near zero in each group
        for bn in (model.stem[4], model.proj.bn, model.mlp2.bn):
            bn.weight[[1, 5]] = 1e-3
        model.stem[1].weight[2] = 1e-3
        model.mlp1.bn.weight[[0, 3]] = 1e-3
    x = torch.randn(2, 3, 4, 4)
    res = slimfx.slim(model, x, 0.5, compensate=compensate)
    cg = res.channel_graph
    assert cg.layouts["transpose"].axis == 2 and cg.layouts["mean"].axis == 1
    # splitting channels into heads freezes the attention's q/k/v only
    assert cg.group_of("qkv_linear").frozen
    for name in ("stem_0", "stem_3", "mlp1_linear"):  # stem, residual stream, MLP
        assert not cg.group_of(name).frozen, name
        assert res.plan.groups[cg.group_of(name).name].width < cg.group_of(name).size
    assert res.module.head.in_features == res.module.mlp2.linear.out_features
    oracle_check(model, x, res)


def test_transpose_and_permute_move_the_channel_axis():
    class Moves(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            a = y.permute(0, 2, 3, 1)  # (N, H, W, C)
            b = torch.transpose(a, 1, 3)  # (N, C, W, H)
            return a.sum() + b.sum()

    gm = slimfx.trace(Moves(), torch.randn(1, 3, 2, 5))
    cg = slimfx.analyze(gm)
    assert [cg.layouts[n].axis for n in ("conv", "permute", "transpose")] == [1, 3, 1]


def test_ops_that_know_only_dim_1_freeze_token_channels():
    class NormOnTokens(nn.Module):  # a BatchNorm2d handed (N, H, W, C): not its channels
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.odd = nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.bn(self.conv(x)).permute(0, 2, 3, 1)
            return self.odd(y)

    model = randomize_batchnorm(NormOnTokens(), seed=1)
    cg = slimfx.analyze(slimfx.trace(model, torch.randn(1, 3, 2, 3)))
    frozen = cg.group_of("conv").frozen
    assert any("channels outside dim 1" in why and "odd" in why for why in frozen), frozen
