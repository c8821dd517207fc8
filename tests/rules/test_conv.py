"""Rule family: convolutions and linear layers (sinks and producers), carriers, folding."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import slimfx
from slimfx.models import VGG
from slimfx.rules.conv import Conv
from slimfx.testing import max_relative_error, randomize_batchnorm


def block(cin, cout, k=3, padding=1, bias=False, stride=1):
    return [
        nn.Conv2d(cin, cout, k, padding=padding, bias=bias, stride=stride),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class Chain(nn.Module):
    def __init__(self, layers, features, classes=5):
        super().__init__()
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(features, classes)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("compensate", [True, False])
def test_conv_consumer_exact_with_and_without_padding(bias, padding, compensate, oracle_check):
    k = 3 if padding < 2 else 5
    size = 9
    out = size + 2 * padding - k + 1
    model = Chain(
        block(3, 10, k, padding, bias) + block(10, 7, k, padding, bias),
        7 * (out + 2 * padding - k + 1) ** 2,
    )
    model = randomize_batchnorm(model, seed=padding)
    x = torch.randn(2, 3, size, size)
    res = slimfx.slim(model, x, 0.5, compensate=compensate)
    first = res.plan.groups["body_0"]
    if compensate and (padding > 0 or not bias):
        # a zero-padded consumer, or one without a bias, needs a carrier channel
        assert first.carrier is not None
    else:
        assert first.carrier is None
    assert (res.module.body[3].bias is None) == (not bias)  # structure kept
    oracle_check(model, x, res)


def test_carrier_is_exact_for_other_input_sizes():
    """A carrier reproduces the constant's border behaviour at any spatial size."""

    class GapNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*block(3, 12), *block(12, 9), *block(9, 8))
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            return self.head(self.body(x).mean(dim=(2, 3)))

    model = randomize_batchnorm(GapNet(), seed=4)
    res = slimfx.slim(model, torch.randn(1, 3, 8, 8), 0.5)
    assert res.report.carriers >= 1
    for size in (5, 8, 13, 21):
        x = torch.randn(3, 3, size, size)
        assert (
            max_relative_error(
                slimfx.rewrite(res.channel_graph, res.plan, dtype=torch.float64), res.reference, x
            )
            <= 1e-9
        )


def test_strided_and_dilated_convs():
    layers = [
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, dilation=2, padding=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
    ]
    model = randomize_batchnorm(Chain(layers, 6 * 5 * 5), seed=5)
    x = torch.randn(2, 3, 10, 10)
    for compensate in (True, False):
        res = slimfx.slim(model, x, 0.6, compensate=compensate)
        assert res.module.body[6].in_channels < 8


def test_linear_consumer_folds_into_its_bias_or_a_carrier(oracle_check):
    class Mlp(nn.Module):
        def __init__(self, bias):
            super().__init__()
            self.fc1 = nn.Linear(12, 16)
            self.bn = nn.BatchNorm1d(16)
            self.fc2 = nn.Linear(16, 3, bias=bias)

        def forward(self, x):
            return self.fc2(torch.relu(self.bn(self.fc1(x))))

    x = torch.randn(4, 12)
    for bias in (True, False):
        model = randomize_batchnorm(Mlp(bias), seed=6)
        with torch.no_grad():
            model.bn.bias.abs_()  # positive betas: relu(beta) > 0 must be folded
        res = slimfx.slim(model, x, 0.5)
        gp = res.plan.groups["fc1"]
        assert (gp.carrier is None) == bias  # no bias to fold into: a carrier instead
        assert (res.module.fc2.bias is None) == (not bias)
        assert res.module.fc1.out_features == res.module.fc2.in_features == gp.width
        oracle_check(model, x, res)


@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.parametrize("compensate", [True, False])
def test_grouped_convolution_keeps_its_group_count(groups, compensate, oracle_check):
    grouped = [
        nn.Conv2d(8, 12, 3, padding=1, groups=groups, bias=False),
        nn.BatchNorm2d(12),
        nn.ReLU(),
    ]
    model = randomize_batchnorm(Chain(block(3, 8) + grouped + block(12, 6), 6 * 4 * 4), seed=7)
    x = torch.randn(2, 3, 4, 4)
    res = slimfx.slim(model, x, 0.5, compensate=compensate)
    conv = res.module.body[3]
    assert conv.groups == groups
    assert conv.in_channels % groups == 0 and conv.out_channels % groups == 0
    assert conv.in_channels < 8 or conv.out_channels < 12
    for name, size in (("body_0", 8), ("body_3", 12)):
        kept = np.array(res.plan.groups[name].kept)
        per_block = np.bincount(kept // (size // groups), minlength=groups)
        assert len(set(per_block)) == 1, per_block  # every block keeps as many channels
    oracle_check(model, x, res)


def test_depthwise_with_channel_multiplier_keeps_inputs_and_balances_outputs(oracle_check):
    layers = [
        *block(3, 4),
        nn.Conv2d(4, 8, 3, padding=1, groups=4, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        *block(8, 5, 1, 0),
    ]
    model = randomize_batchnorm(Chain(layers, 5 * 16), seed=9)
    x = torch.randn(2, 3, 4, 4)
    res = slimfx.slim(model, x, 0.4)
    conv = res.module.body[3]
    assert conv.groups == 4 and conv.in_channels == 4  # one input per group: all kept
    oracle_check(model, x, res)


def test_depthwise_convolution_is_channel_wise(oracle_check):
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    layers = [*block(3, 8), depthwise, nn.BatchNorm2d(8), nn.ReLU(), *block(8, 6, 1, 0)]
    model = randomize_batchnorm(Chain(layers, 6 * 16), seed=8)
    x = torch.randn(2, 3, 4, 4)
    res = slimfx.slim(model, x, 0.5)
    group = res.channel_graph.group_of("body_0")
    assert {s.module for s in group.scorers} == {"body.1", "body.4"}
    dw = res.module.body[3]
    assert dw.groups == dw.in_channels == dw.out_channels == res.module.body[1].num_features
    oracle_check(model, x, res)


def test_conv1d_and_batchnorm1d(oracle_check):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 10, 3, padding=1)
            self.bn = nn.BatchNorm1d(10)
            self.conv2 = nn.Conv1d(10, 4, 3, padding=1)

        def forward(self, x):
            return self.conv2(torch.relu(self.bn(self.conv(x)))).mean(2)

    model = randomize_batchnorm(Net(), seed=9)
    x = torch.randn(2, 2, 11)
    res = slimfx.slim(model, x, 0.5)
    assert res.module.conv.out_channels == res.plan.groups["conv"].width
    oracle_check(model, x, res)


class TokenMLP(nn.Module):
    """A transformer-style MLP on tokens ``(N, H*W, C)`` between conv blocks, its hidden
    layer normalised by a BatchNorm1d over the flattened tokens (LeViT's ``LinearNorm``)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 12)
        self.bn1 = nn.BatchNorm1d(12)
        self.fc2 = nn.Linear(12, 8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, H*W, C)
        hidden = self.fc1(tokens)
        hidden = self.bn1(hidden.flatten(0, 1)).reshape_as(hidden)
        tokens = tokens + self.fc2(torch.nn.functional.gelu(hidden))
        x = tokens.transpose(1, 2).reshape(n, c, h, w)
        return self.fc(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


@pytest.mark.parametrize("compensate", [True, False])
def test_linear_on_tokens_is_a_sink_and_a_producer_on_the_last_axis(compensate, oracle_check):
    model = randomize_batchnorm(TokenMLP(), seed=10)
    x = torch.randn(2, 3, 4, 4)
    res = slimfx.slim(model, x, 0.5, compensate=compensate)
    assert res.channel_graph.layouts["fc1"].axis == 2  # (N, L, C): channels last
    assert res.module.fc1.out_features < 12  # the hidden tokens' BatchNorm prunes them
    assert res.module.fc2.in_features == res.module.fc1.out_features
    # the residual stream is fed by fc2, whose outputs no BatchNorm follows: a pruned
    # channel would still depend on the input, so the plan keeps the stream whole
    assert res.module.conv.out_channels == 8
    assert "conv" in res.plan.frozen
    assert res.module.conv2.out_channels < 6
    oracle_check(model, x, res)


def test_channels_last_model_slims_exactly_and_stays_channels_last():
    model = randomize_batchnorm(VGG(depth=11), seed=1).eval()
    model = model.to(memory_format=torch.channels_last)
    res = slimfx.slim(model, torch.randn(2, 3, 32, 32), 0.5)
    assert res.report.verification_error <= 1e-9
    convs = [m for m in res.module.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


@settings(max_examples=300, deadline=None)
@given(
    dims=st.sampled_from([1, 2, 3]),
    size=st.integers(1, 12),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 3),
    padding=st.integers(0, 3),
    dilation=st.integers(1, 3),
)
def test_convolution_meta_output_is_the_shape_pytorch_returns(
    dims, size, kernel, stride, padding, dilation
):
    """The rule's output on the meta device has the real output's shape, or is ``None``
    (PyTorch's kernel runs) for an input the layer refuses."""
    conv = [nn.Conv1d, nn.Conv2d, nn.Conv3d][dims - 1](
        2, 3, kernel, stride=stride, padding=padding, dilation=dilation
    )
    shape = (2, 2, *([size] * dims))
    computed = Conv().meta_output(conv, torch.empty(shape, device="meta"))
    try:
        with torch.no_grad():
            real = conv(torch.zeros(shape))
    except RuntimeError:
        assert computed is None
        return
    assert computed is not None and computed.shape == real.shape
    assert computed.stride() == real.stride() and computed.dtype == real.dtype


@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (nn.Conv2d(3, 5, 3), (1, 4, 8, 8)),  # wrong channel count
        (nn.Conv2d(3, 5, 3), (3, 8, 8)),  # unbatched: left to PyTorch
        (nn.Conv2d(3, 5, 5), (1, 3, 2, 2)),  # kernel larger than the input
    ],
)
def test_inputs_a_convolution_refuses_are_left_to_pytorch(conv, shape):
    assert Conv().meta_output(conv, torch.empty(shape, device="meta")) is None


class _LinearWithOwnForward(nn.Linear):
    """A Linear subclass calling ``F.linear`` itself, as timm's ``Linear`` does."""

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


class _Head(nn.Module):
    def __init__(self, linear=_LinearWithOwnForward):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc, self.bn1 = linear(8, 6), nn.BatchNorm1d(6)
        self.out = linear(6, 3, bias=False)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.out(torch.relu(self.bn1(self.fc(y))))


def test_functional_linear_of_a_linear_subclass_is_sliced_and_folded(oracle_check):
    model = randomize_batchnorm(_Head(), seed=4).eval()
    x = torch.randn(3, 3, 6, 6)
    for compensate in (True, False):
        res = slimfx.slim(model, x, 0.5, compensate=compensate)
        assert set(res.kept) == {"bn", "bn1"}
        fc = res.module.fc
        assert type(fc) is _LinearWithOwnForward  # a module of its class again, resized
        assert (
            (fc.out_features, fc.in_features)
            == tuple(fc.weight.shape)
            == (
                res.module.bn1.num_features,
                res.module.conv.out_channels,
            )
        )
        assert res.module.out.bias is None and res.module.out.in_features < 6
        oracle_check(model, x, res)
    assert slimfx.slim(model.double(), x.double(), 0.5).report.verification_error <= 1e-9


def test_timm_linear(oracle_check):
    from timm.layers import Linear

    model = randomize_batchnorm(_Head(Linear), seed=5).eval()
    x = torch.randn(3, 3, 6, 6)
    res = slimfx.slim(model, x, 0.5)
    assert type(res.module.fc) is Linear and res.module.fc.in_features < 8
    oracle_check(model, x, res)


class Upsampling(nn.Module):
    """A transposed convolution between BatchNorm'd convolutions (Ultralytics' mask
    prototypes, YOLOv6's upsampling)."""

    def __init__(self, kernel=2, stride=2, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 6, kernel, stride, padding)
        self.bn2 = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        x = torch.nn.functional.silu(self.bn(self.conv(x)))
        return self.head(torch.relu(self.bn2(self.up(x))))


@pytest.mark.parametrize("settings", [(2, 2, 0), (3, 2, 1), (4, 2, 1)])
@pytest.mark.parametrize("compensate", [True, False])
def test_transposed_convolution_is_a_sink_with_a_carrier_and_a_producer(
    settings, compensate, oracle_check
):
    model = randomize_batchnorm(Upsampling(*settings), seed=3)
    x = torch.randn(2, 3, 5, 4)
    res = slimfx.slim(model, x, 0.4, compensate=compensate)
    assert res.module.up.in_channels < 8 and res.module.up.out_channels < 6
    assert res.module.up.weight.shape[:2] == (res.module.up.in_channels, res.module.up.out_channels)
    if compensate:  # the constants need a carrier: no bias can hold a per-phase pattern
        assert res.plan.groups["conv"].carrier is not None
    oracle_check(model, x, res)
    res.verify(torch.randn(1, 3, 7, 6))  # exact at another size too
