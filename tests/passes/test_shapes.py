"""Shape propagation (passes/shapes.py): meta-device shapes equal a real run's, the model is
never touched, wrong inputs name the first layer, and ops without meta kernels run for real."""

import logging
import re

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

import slimfx
from slimfx.passes.shapes import propagate_shapes, tensor_metadata
from slimfx.rules.conv import Conv, Linear
from slimfx.rules.norm import BatchNorm
from slimfx.rules.pooling import AvgPool, MaxPool
from slimfx.testing import assert_model_unchanged, model_snapshot

SHAPES_LOGGER = "slimfx.passes.shapes"


class _Recorder(fx.Interpreter):
    """Runs a graph for real and keeps every node's output."""

    def __init__(self, gm):
        super().__init__(gm)
        self.outputs = {}

    def run_node(self, n):
        result = super().run_node(n)
        self.outputs[n.name] = result
        return result


def real_outputs(gm: fx.GraphModule, *inputs) -> dict:
    training = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            recorder = _Recorder(gm)
            recorder.run(*[t.clone() for t in inputs])
    finally:
        for m, flag in training.items():
            m.training = flag
    return recorder.outputs


def assert_recorded_as_run(gm: fx.GraphModule, *inputs) -> int:
    """Every node's ``tensor_meta`` has the shape and dtype of its output in a real run;
    nodes without tensors have none. Returns the number of tensors compared."""
    outputs = real_outputs(gm, *inputs)
    compared = 0
    for node in gm.graph.nodes:
        result = outputs[node.name]
        meta = node.meta.get("tensor_meta")
        if isinstance(result, torch.Tensor):
            assert isinstance(meta, TensorMetadata), node.format_node()
            assert (meta.shape, meta.dtype) == (result.shape, result.dtype), node.format_node()
            compared += 1
        elif isinstance(result, list | tuple) and any(isinstance(r, torch.Tensor) for r in result):
            assert isinstance(meta, list | tuple) and len(meta) == len(result), node.format_node()
            for m, r in zip(meta, result, strict=True):
                if isinstance(r, torch.Tensor):
                    assert (m.shape, m.dtype) == (r.shape, r.dtype), node.format_node()
                    compared += 1
        else:
            assert meta is None, node.format_node()
    return compared


def recorded_shapes(gm: fx.GraphModule) -> dict[str, tuple[int, ...]]:
    """Node name → recorded shape, for nodes with one tensor output."""
    return {
        n.name: tuple(n.meta["tensor_meta"].shape)
        for n in gm.graph.nodes
        if isinstance(n.meta.get("tensor_meta"), TensorMetadata)
    }


def spy_meta_output(monkeypatch, *rule_classes) -> list[tuple[str, bool]]:
    """(module class, whether its rule answered) for every ``meta_output`` call."""
    answers = []
    for cls in rule_classes:

        def spy(self, module, x, original=cls.meta_output):
            out = original(self, module, x)
            answers.append((type(module).__name__, out is not None))
            return out

        monkeypatch.setattr(cls, "meta_output", spy)
    return answers


# --- shapes equal a real run ------------------------------------------------------------------
def test_resnet18_at_64x64(monkeypatch):
    answers = spy_meta_output(monkeypatch, Conv, BatchNorm, Linear, MaxPool)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    gm = slimfx.trace(model, x)
    assert len(answers) == 20 + 20 + 1 + 1 and all(ok for _, ok in answers)  # rules' hooks
    assert assert_recorded_as_run(gm, x) > 60
    shapes = recorded_shapes(gm)
    assert shapes["maxpool"] == (2, 64, 16, 16)
    assert shapes["layer4_1_relu_1"] == (2, 512, 2, 2)
    assert shapes["fc"] == (2, 10)


class Functional(nn.Module):
    """Functional ops, views, chunk/split (tuples), concatenation, casts, indexing."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(4, 4, 1, stride=2)
        self.fc = nn.Linear(8 * 2 * 2 + 4, 5)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        a, b = torch.chunk(y, 2, dim=1)
        c = torch.cat([F.max_pool2d(a, 2), self.down(b)], dim=1)
        c = F.adaptive_avg_pool2d(c, 2)
        flat = c.view(c.size(0), -1)
        g = y.mean(dim=(2, 3))[:, :4]
        z = torch.cat([flat, g * torch.sigmoid(g)], 1).reshape(-1, 36)
        tokens = y.permute(0, 2, 3, 1).flatten(1, 2).transpose(1, 2)
        parts = torch.split(y, [3, 5], 1)
        return self.fc(z), tokens.double(), parts, y.argmax(1)


def test_functional_ops_views_and_concatenation():
    x = torch.randn(2, 3, 8, 8)
    gm = slimfx.trace(Functional().eval(), x)
    assert assert_recorded_as_run(gm, x) > 15
    meta = {n.name: n.meta.get("tensor_meta") for n in gm.graph.nodes}
    assert [tuple(m.shape) for m in meta["chunk"]] == [(2, 4, 8, 8), (2, 4, 8, 8)]
    assert [tuple(m.shape) for m in meta["split"]] == [(2, 3, 8, 8), (2, 5, 8, 8)]
    assert tuple(meta["cat"].shape) == (2, 8, 4, 4)
    assert tuple(meta["view"].shape) == (2, 32)
    assert meta["size"] is None  # a Python int
    assert meta["double"].dtype == torch.float64
    assert meta["argmax"].dtype == torch.int64
    assert tuple(meta["transpose"].shape) == (2, 8, 64)


POOLS = {
    "max_dilated_ceil": nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
    "max_ceil": nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
    "max_rect_ceil": nn.MaxPool2d((2, 3), stride=(2, 1), ceil_mode=True),
    "avg_ceil": nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    "avg_ceil_no_pad": nn.AvgPool2d(2, stride=3, ceil_mode=True),
}


class Pools(nn.Module):
    def __init__(self):
        super().__init__()
        self.pools = nn.ModuleDict(POOLS)
        self.max1d = nn.MaxPool1d(3, 2, ceil_mode=True, dilation=2)
        self.avg1d = nn.AvgPool1d(3, 2, 1, ceil_mode=True)
        self.avg3d = nn.AvgPool3d(2, 2, ceil_mode=True)

    def forward(self, x):
        out = [pool(x) for pool in self.pools.values()]
        out.append(F.max_pool2d(x, 3, 2, 1, 2, True))
        out.append(F.avg_pool2d(x, 2, 3, 1, True))
        line = x.flatten(2)
        out += [self.max1d(line), self.avg1d(line)]
        out.append(self.avg3d(torch.stack([x, x, x], 2)))
        return out


@pytest.mark.parametrize("hw", [(7, 9), (8, 8), (5, 11), (13, 6)])
def test_pooling_with_ceil_mode_and_dilation(hw, monkeypatch):
    answers = spy_meta_output(monkeypatch, MaxPool, AvgPool)
    x = torch.randn(2, 3, *hw)
    gm = slimfx.trace(Pools(), x)
    assert len(answers) == 8 and all(ok for _, ok in answers)  # the modules, by their rules
    assert assert_recorded_as_run(gm, x) >= 10


def test_ceil_mode_drops_a_last_window_that_starts_in_the_right_padding():
    """PyTorch's rule: with ``ceil_mode`` the last window must start inside the input or the
    left padding; here a naive ceil would give 4 instead of 3."""
    x = torch.randn(1, 2, 5, 5)
    gm = slimfx.trace(nn.Sequential(nn.MaxPool2d(2, stride=2, padding=1, ceil_mode=True)), x)
    assert recorded_shapes(gm)["_0"] == (1, 2, 3, 3)
    assert_recorded_as_run(gm, x)


class Tokens(nn.Module):
    """Linear layers on 3-D and 4-D inputs (features last), one of them non-contiguous."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)
        self.fc_rows = nn.Linear(5, 2)
        self.fc_seq = nn.Linear(7, 3)

    def forward(self, x, seq):
        y = torch.relu(self.bn(self.conv(x))).flatten(2).transpose(1, 2)  # (N, HW, C)
        return self.fc(y), self.fc_rows(x), self.fc_seq(seq)


def test_linear_layers_on_inputs_of_rank_three_and_four(monkeypatch):
    answers = spy_meta_output(monkeypatch, Linear)
    x, seq = torch.randn(2, 3, 4, 5), torch.randn(2, 9, 7)
    gm = slimfx.trace(Tokens().eval(), (x, seq))
    assert answers == [("Linear", True)] * 3
    assert_recorded_as_run(gm, x, seq)
    meta = {n.name: n.meta["tensor_meta"] for n in gm.graph.nodes if n.op == "call_module"}
    assert tuple(meta["fc"].shape) == (2, 20, 4)
    assert tuple(meta["fc_rows"].shape) == (2, 3, 4, 2)
    assert tuple(meta["fc_seq"].shape) == (2, 9, 3)


def test_float64_models_record_float64():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
    )
    model = model.double().eval()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    gm = slimfx.trace(model, x)
    assert_recorded_as_run(gm, x)
    assert {n.meta["tensor_meta"].dtype for n in gm.graph.nodes if n.op != "output"} == {
        torch.float64
    }


def test_agrees_with_torch_shape_prop_on_a_plain_symbolic_trace():
    model = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.randn(1, 3, 48, 48)
    ours, theirs = fx.symbolic_trace(model), fx.symbolic_trace(model)
    propagate_shapes(ours, (x,))
    with torch.no_grad():
        ShapeProp(theirs).propagate(x)
    for a, b in zip(ours.graph.nodes, theirs.graph.nodes, strict=True):
        ma, mb = a.meta.get("tensor_meta"), b.meta.get("tensor_meta")
        assert (ma is None) == (mb is None), a.name
        if ma is not None:
            assert (ma.shape, ma.dtype, ma.stride) == (mb.shape, mb.dtype, mb.stride), a.name
            assert ma.memory_format == mb.memory_format, a.name


def test_a_second_propagation_records_the_new_shapes():
    model = torchvision.models.resnet18(num_classes=3).eval()
    gm = slimfx.trace(model, torch.randn(1, 3, 32, 32))
    x = torch.randn(3, 3, 64, 64)
    propagate_shapes(gm, (x,))
    assert assert_recorded_as_run(gm, x) > 60
    assert recorded_shapes(gm)["maxpool"] == (3, 64, 16, 16)


def test_tensor_metadata_records_shape_dtype_strides_and_memory_format():
    x = torch.randn(2, 3, 4, 5)
    meta = tensor_metadata(x)
    assert (meta.shape, meta.dtype, meta.stride) == (x.shape, x.dtype, x.stride())
    assert meta.memory_format is torch.contiguous_format and meta.requires_grad is False
    last = tensor_metadata(x.to(memory_format=torch.channels_last))
    assert last.memory_format is torch.channels_last
    assert tensor_metadata(x.transpose(1, 3)).memory_format is None
    assert tensor_metadata(x.to("meta")).shape == x.shape


# --- rules' meta_output hooks -----------------------------------------------------------------
def test_a_rules_meta_output_is_recorded_without_running_the_module(monkeypatch):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    calls = []
    model[0].register_forward_hook(lambda m, i, o: calls.append(o.device))
    monkeypatch.setattr(
        Conv, "meta_output", lambda self, module, x: torch.empty(7, 4, 1, 1, device="meta")
    )
    gm = slimfx.trace(model, torch.randn(1, 3, 5, 5))
    shapes = recorded_shapes(gm)
    assert shapes["_0"] == (7, 4, 1, 1) and shapes["_1"] == (7, 4, 1, 1)
    assert calls == []  # the module itself never ran


def test_modules_without_an_answer_run_on_the_meta_device():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 3, 3]), nn.Softmax(1))
    devices = []
    for m in model:
        m.register_forward_hook(lambda m, i, o: devices.append((type(m).__name__, o.device.type)))
    x = torch.randn(2, 3, 5, 5)
    gm = slimfx.trace(model, x)
    assert devices == [("LayerNorm", "meta"), ("Softmax", "meta")]  # conv: by its rule
    assert_recorded_as_run(gm, x)


# --- the model is never touched ---------------------------------------------------------------
class WithStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)
        self.bn1d = nn.BatchNorm1d(2)
        self.register_buffer("scale", torch.full((1, 6, 1, 1), 2.0))

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x))) * self.scale
        return self.bn1d(self.fc(y.mean((2, 3))))


class WithStatsRampFallback(WithStats):
    """The same, times a ramp built on the CPU inside forward: the meta run cannot mix it
    with meta tensors, so the graph runs for real."""

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x))) * self.scale
        y = y * torch.linspace(0.5, 1.5, y.shape[1]).view(1, -1, 1, 1)
        return self.bn1d(self.fc(y.mean((2, 3))))


@pytest.mark.parametrize("make", [WithStats, WithStatsRampFallback])
def test_parameters_buffers_and_flags_are_not_touched(make, caplog):
    model = make().train()
    with torch.no_grad():
        model.bn.running_mean.normal_()
    snapshot = model_snapshot(model)
    tensors = {k: (v, v.data_ptr()) for k, v in model.state_dict(keep_vars=True).items()}
    x = torch.randn(1, 3, 6, 6)  # batch 1: BatchNorm1d would refuse it in training mode
    before = x.clone()
    with caplog.at_level(logging.INFO, logger=SHAPES_LOGGER):
        gm = slimfx.trace(model, x)
    ran_for_real = "running the graph for real" in caplog.text
    assert ran_for_real == (make is WithStatsRampFallback)
    assert_model_unchanged(model, snapshot)
    after = model.state_dict(keep_vars=True)
    for key, (tensor, ptr) in tensors.items():
        assert after[key] is tensor and tensor.data_ptr() == ptr, key
        assert tensor.device.type == "cpu", key
    assert all(p.grad is None for p in model.parameters())
    assert model.bn.num_batches_tracked.item() == 0
    assert model.training and gm.training and gm.bn.training
    assert torch.equal(x, before)
    assert recorded_shapes(gm)["bn1d"] == (1, 2)


# --- inputs that do not fit -----------------------------------------------------------------
class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 2)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize(
    ("model", "shape", "node", "first", "message"),
    [
        (
            Chain(),
            (1, 4, 8, 8),
            "%conv1",
            "Conv2d conv1 takes (N, 3, H, W)",
            r"expected input\[1, 4, 8, 8\] to have 3 channels",
        ),
        (
            Chain(),
            (1, 3, 10, 10),
            "%fc",
            "Conv2d conv1 takes (N, 3, H, W)",
            r"\(Linear fc takes \(N, \.\.\., 128\)\): mat1 and mat2 shapes cannot be multiplied",
        ),
        (
            nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU()),
            (1, 3, 3, 3),
            "%_0",
            "Conv2d 0 takes (N, 3, H, W)",
            "Kernel size can't be greater than actual input size",
        ),
        (
            nn.Sequential(nn.Flatten(), nn.Linear(12, 3)),
            (2, 3, 5),
            "%_1",
            "Linear 1 takes (N, ..., 12)",  # the flatten says nothing of its input
            "mat1 and mat2 shapes cannot be multiplied",
        ),
        (
            nn.Sequential(nn.BatchNorm1d(5)),
            (2, 4),
            "%_0",
            "BatchNorm1d 0 takes (N, 5) or (N, 5, L)",
            "running_mean should contain 4 elements not 5",
        ),
    ],
)
def test_inputs_that_do_not_fit_name_the_node_and_the_first_layer(
    model, shape, node, first, message
):
    with pytest.raises(slimfx.TraceError) as info:
        slimfx.trace(model, torch.randn(*shape))
    text = str(info.value)
    assert text.startswith(f"the example inputs do not fit the model at node {node} ")
    assert text.endswith(f"; got {shape} and its first layer, {first}")
    assert re.search(message, text)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_first_layer_with_the_wrong_channel_count_says_what_it_takes():
    with pytest.raises(slimfx.TraceError, match=r"first layer, Conv2d conv1 takes \(N, 3, H, W\)$"):
        slimfx.trace(Chain(), torch.randn(2, 4, 8, 8))


def test_a_dtype_mismatch_is_a_trace_error_too():
    with pytest.raises(slimfx.TraceError, match="Conv2d conv1 takes"):
        slimfx.trace(Chain(), torch.randn(1, 3, 8, 8, dtype=torch.float64))


# --- the real-run fallback ------------------------------------------------------------------
def meta_refusing(x):
    """An op with no meta kernel: it refuses meta tensors as PyTorch's do."""
    if x.device.type == "meta":
        raise NotImplementedError("no meta kernel for meta_refusing")
    return x[:, :, ::2] * 2


fx.wrap("meta_refusing")


class RefusesMeta(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = meta_refusing(torch.relu(self.bn(self.conv(x))))
        return self.fc(y.mean((2, 3))), y


class DataDependent(nn.Module):
    """``torch.nonzero``: the output's length depends on the values (no meta kernel)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return y, torch.nonzero(y[0, 0] > 0)


@pytest.mark.parametrize(
    ("make", "failed_at"),
    [(RefusesMeta, "%meta_refusing"), (DataDependent, "%nonzero"), (WithStatsRampFallback, "%mul")],
)
def test_an_op_without_meta_kernel_runs_the_graph_for_real(make, failed_at, caplog):
    model = make().eval()
    x = torch.randn(2, 3, 6, 6)
    with caplog.at_level(logging.INFO, logger=SHAPES_LOGGER):
        gm = slimfx.trace(model, x)
    (record,) = [r for r in caplog.records if r.name == SHAPES_LOGGER]
    assert "meta shape propagation failed" in record.getMessage()
    assert failed_at in record.getMessage() and "running the graph for real" in record.getMessage()
    assert assert_recorded_as_run(gm, x) >= 4


def test_the_fallback_records_data_dependent_shapes_of_the_example():
    x = torch.randn(1, 3, 5, 5)
    model = DataDependent().eval()
    gm = slimfx.trace(model, x)
    with torch.no_grad():
        count = int((model.conv(x)[0, 0] > 0).sum())
    (nonzero,) = gm.graph.find_nodes(op="call_function", target=torch.nonzero)
    assert tuple(nonzero.meta["tensor_meta"].shape) == (count, 2)


def test_the_fallback_keeps_shapes_recorded_by_every_node():
    x = torch.randn(2, 3, 6, 6)
    gm = slimfx.trace(RefusesMeta().eval(), x)
    meta = {n.name: n.meta.get("tensor_meta") for n in gm.graph.nodes}
    assert tuple(meta["meta_refusing"].shape) == (2, 4, 3, 6)
    assert tuple(meta["fc"].shape) == (2, 2)  # after the refusing op as well
    assert all(meta[n.name] is not None for n in gm.graph.nodes if n.op != "output")


def test_a_failure_in_the_real_run_too_is_a_trace_error_naming_the_node():
    with pytest.raises(
        slimfx.TraceError, match=r"at node %conv .*Conv2d conv takes \(N, 3, H, W\)"
    ):
        slimfx.trace(RefusesMeta(), torch.randn(2, 5, 6, 6))


# --- known gaps -------------------------------------------------------------------------------
class InPlaceAtInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        x = F.relu(x, inplace=True)
        y = self.conv(x)
        return y * torch.ones(y.shape[1]).view(1, -1, 1, 1)  # a CPU tensor: runs for real


def test_the_fallback_leaves_the_example_inputs_alone():
    x = torch.randn(1, 3, 4, 4)
    before = x.clone()
    slimfx.trace(InPlaceAtInput(), x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("padding_mode", ["reflect", "circular"])
def test_a_padding_the_input_cannot_give_is_a_trace_error(padding_mode):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=3, padding_mode=padding_mode), nn.ReLU())
    x = torch.randn(1, 3, 2, 2)
    with pytest.raises(RuntimeError):
        model(x)  # PyTorch refuses the input
    with pytest.raises(slimfx.TraceError, match="Conv2d 0 takes"):
        slimfx.trace(model, x)
