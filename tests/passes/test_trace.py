"""Pass 1, trace: real VGG code, untraceable submodules, errors that name the construct."""

import pytest
import torch
import torch.nn as nn
import torchvision
from torch.fx.passes.shape_prop import ShapeProp

import slimfx
from slimfx.models import VGG
from slimfx.testing import randomize_batchnorm


def test_records_shapes_of_every_tensor_node():
    gm = slimfx.trace(VGG(depth=11), torch.randn(2, 3, 32, 32))
    shapes = {
        n.name: tuple(n.meta["tensor_meta"].shape)
        for n in gm.graph.nodes
        if "tensor_meta" in n.meta
    }
    assert shapes["feature_0"] == (2, 64, 32, 32)
    assert shapes["avg_pool2d"] == (2, 512, 1, 1)
    assert shapes["classifier"] == (2, 10)


def test_module_built_inside_forward_is_traced_into_its_function():
    gm = slimfx.trace(VGG(depth=11), torch.randn(1, 3, 32, 32))
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.nn.functional.avg_pool2d in targets
    assert gm.meta["slimfx_trace_notes"].inlined == ["AvgPool2d constructed inside forward"]


def test_module_with_state_built_inside_forward_is_an_error():
    class Bad(nn.Module):
        def forward(self, x):
            return nn.Conv2d(3, 4, 1)(x)

    with pytest.raises(slimfx.TraceError, match="constructed inside forward"):
        slimfx.trace(Bad(), torch.randn(1, 3, 4, 4))


class ShapeBranching(nn.Module):
    """A submodule whose Python code branches on the input's shape."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        if x.shape[-1] > 4:
            return self.conv(x)
        return x


class WithOpaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.block = ShapeBranching(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = self.block(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


def test_untraceable_submodule_becomes_an_opaque_leaf_with_frozen_channels():
    model = randomize_batchnorm(WithOpaque(), seed=1)
    x = torch.randn(2, 3, 8, 8)
    res = slimfx.slim(model, x, 0.5)
    notes = " ".join(res.report.notes)
    assert "opaque leaf block" in notes and "x.shape[-1] > 4" in notes
    assert "opaque leaf module" in " ".join(res.report.frozen)
    assert res.module.conv1.out_channels == 8  # frozen: it feeds the opaque leaf
    assert res.module.conv2.out_channels < 6  # the rest is still slimmed
    assert res.report.verification_error <= 1e-9


def test_data_dependent_control_flow_in_the_model_itself_names_the_construct():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            if x.sum() > 0:
                return self.conv(x)
            return x

    with pytest.raises(slimfx.TraceError) as info:
        slimfx.trace(Branchy(), torch.randn(1, 3, 4, 4))
    message = str(info.value)
    assert "test_trace.py" in message and "if x.sum() > 0:" in message
    assert "Data-dependent control flow" in message


def test_wrong_channel_count_says_what_the_model_expects():
    with pytest.raises(slimfx.TraceError, match=r"feature.0 takes \(N, 3, H, W\)"):
        slimfx.trace(VGG(depth=11), torch.randn(1, 4, 32, 32))


@pytest.mark.parametrize("bad", [None, 3.0, "x", [], [torch.randn(1), 2]])
def test_example_inputs_must_be_tensors(bad):
    with pytest.raises(ValueError, match="example_inputs"):
        slimfx.trace(VGG(depth=11), bad)


def test_tuple_inputs_and_input_count():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)

        def forward(self, x, y):
            return self.a(x) + self.a(y)

    gm = slimfx.trace(Two(), (torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)))
    assert len([n for n in gm.graph.nodes if n.op == "placeholder"]) == 2
    with pytest.raises(ValueError, match="takes 2 input"):
        slimfx.trace(Two(), torch.randn(1, 3, 2, 2))


def test_trace_leaves_the_model_untouched():
    model = randomize_batchnorm(VGG(depth=11), seed=2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    slimfx.trace(model, torch.randn(2, 3, 32, 32))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training


class PermutedHead(nn.Module):
    """Dropout, LayerNorm and a linear layer on permuted (non-contiguous) tensors."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.drop = nn.Dropout()
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        y = self.fc(self.norm(self.drop(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        return self.pool(x + self.fc(self.drop(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2) + y)


@pytest.mark.parametrize(
    ("make", "size"),
    [
        (lambda: VGG(depth=11), 32),
        (lambda: torchvision.models.resnet18(), 64),
        (lambda: torchvision.models.mobilenet_v2(), 64),
        (PermutedHead, 9),
        (lambda: VGG(depth=11).to(memory_format=torch.channels_last), 32),
    ],
)
def test_recorded_shapes_are_what_shape_prop_records_on_real_inputs(make, size):
    """Every node's tensor_meta (shape, dtype, strides, memory format) from the meta run is
    what torch.fx's ShapeProp records running the model for real."""
    model = make().eval()
    x = torch.randn(2, 3, size, size)
    ours = slimfx.trace(model, x)
    real = slimfx.trace(model, x)  # the same graph; ShapeProp overwrites its shapes
    with torch.no_grad():
        ShapeProp(real).propagate(x)
    pairs = list(zip(ours.graph.nodes, real.graph.nodes, strict=True))
    assert pairs
    # strides as the meta kernels lay them out; a channels-last model's differ from eager's
    channels_last = any(
        p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in model.parameters()
    )
    fields = ("shape", "dtype") if channels_last else ("shape", "dtype", "stride", "memory_format")
    for a, b in pairs:
        want = b.meta.get("tensor_meta")
        got = a.meta.get("tensor_meta")
        if want is None or not hasattr(want, "shape"):
            assert (got is None) == (want is None), a.name
            continue
        assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields], a.name


class _Pieces(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.how = how

    def forward(self, x):
        y = self.conv(x)
        if self.how == "list-chunk":
            pieces = list(y.chunk(2, 1))
        elif self.how == "unpack-split":
            a, b = y.split([3, 5], 1)
            pieces = [b, a]
        else:
            pieces = list(y.split(4, 1))  # the count depends on the channel count
        return torch.cat(pieces, 1)


@pytest.mark.parametrize("how", ["list-chunk", "unpack-split"])
def test_the_pieces_of_a_chunk_or_split_can_be_iterated(how):
    model = _Pieces(how)
    x = torch.randn(1, 3, 4, 4)
    gm = slimfx.trace(model, x)
    assert torch.equal(gm(x), model(x))


def test_pieces_whose_number_depends_on_the_shape_cannot_be_iterated():
    with pytest.raises(slimfx.TraceError, match="cannot be iterated"):
        slimfx.trace(_Pieces("split-by-size"), torch.randn(1, 3, 4, 4))


class _Caching(nn.Module):
    """Caches a per-device tensor in a plain dict as it runs (timm's attention_bias_cache)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)
        self.cache = {}
        self.calls = []

    def forward(self, x):
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = torch.full((1, 4, 1, 1), 2.0)
        self.calls.append(1)
        return self.head(torch.relu(self.bn(self.conv(x))) * self.cache[key])


def test_tracing_leaves_caches_in_plain_attributes_as_they_were():
    model = randomize_batchnorm(_Caching(), seed=0).eval()
    x = torch.randn(2, 3, 5, 5)
    slimfx.trace(model, x)
    assert model.cache == {} and model.calls == []
    first = slimfx.slim(model, x, 0.5)  # and a second slim on the same model works
    second = slimfx.slim(model, x, 0.5)
    assert first.kept == second.kept
    assert second.report.verification_error <= 1e-9
    assert model.cache == {} and model.calls == []


class _VariadicForward(nn.Module):
    """``forward(self, x, *args, **kwargs)`` as Ultralytics' DetectionModel writes it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)

    def forward(self, x, *args, **kwargs):
        return self.predict(x, *args, **kwargs)

    def predict(self, x, profile=False, augment=False):
        if augment:
            return x
        return self.head(torch.relu(self.bn(self.conv(x))))


def test_a_variadic_forward_is_traced_with_the_given_inputs(oracle_check):
    model = randomize_batchnorm(_VariadicForward(), seed=1).eval()
    x = torch.randn(2, 3, 5, 5)
    gm = slimfx.trace(model, x)
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    assert type(gm).__name__ == "_VariadicForward" and type(model) is _VariadicForward
    res = slimfx.slim(model, x, 0.5)
    assert res.report.verification_error <= 1e-9
    oracle_check(model, x, res)


def test_leaf_modules_and_leaf_types_are_kept_whole_and_frozen(oracle_check):
    model = randomize_batchnorm(torchvision.models.resnet18(), seed=2).eval()
    x = torch.randn(1, 3, 32, 32)
    by_name = slimfx.slim(model, x, 0.3, leaf_modules=["layer2.0"])
    assert "0" in by_name.module.layer2._modules
    assert type(by_name.module.layer2[0]).__name__ == "BasicBlock"
    assert any("layer2.0" in line and "marked as a leaf" in line for line in by_name.report.notes)
    assert "layer2.0.bn1" not in by_name.kept and "layer1.0.bn1" in by_name.kept
    oracle_check(model, x, by_name)
    block = type(model.layer1[0])  # every block a leaf: every group touches one
    with pytest.raises(slimfx.UnsupportedError, match="opaque leaf"):
        slimfx.slim(model, x, 0.3, leaf_types=[block])
    with pytest.raises(ValueError, match="no submodule 'layer9'"):
        slimfx.trace(model, x, leaf_modules=["layer9"])
    with pytest.raises(ValueError, match="leaf_types"):
        slimfx.SlimOptions(leaf_types=[int])


def test_detection_models_are_told_to_slim_their_backbone():
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None).eval()
    with pytest.raises(slimfx.TraceError, match=r"slim model\.backbone"):
        slimfx.trace(model, torch.randn(1, 3, 64, 64))


def test_frozen_batchnorm_backbones_say_what_to_do():
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    frozen = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(slimfx.UnsupportedError, match=r"FrozenBatchNorm2d.*norm_layer"):
        slimfx.slim(frozen.eval(), x)
    trainable = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, trainable_layers=5, norm_layer=nn.BatchNorm2d
    )
    res = slimfx.slim(randomize_batchnorm(trainable, seed=3).eval(), x, 0.3)
    assert res.report.verification_error <= 1e-9 and len(res.kept) == 20


class _DefaultedForward(nn.Module):
    """``forward(self, x, attn_mask=None, is_causal=False)``, as timm's VisionTransformer."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)

    def forward(self, x, attn_mask=None, is_causal=False):
        y = torch.relu(self.bn(self.conv(x)))
        if attn_mask is not None or is_causal:
            y = y * 0
        return self.head(y)


def test_parameters_with_defaults_beyond_the_inputs_are_traced_as_their_defaults():
    model = randomize_batchnorm(_DefaultedForward(), seed=2).eval()
    x = torch.randn(2, 3, 5, 5)
    gm = slimfx.trace(model, x)
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    assert torch.equal(gm(x), model(x))
    assert slimfx.slim(model, x, 0.5).report.verification_error <= 1e-9
