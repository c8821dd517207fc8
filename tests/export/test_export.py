"""slimfx.export_onnx: checked, atomic ONNX export of slim and original models."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import slimfx
from slimfx.errors import EquivalenceError, SlimfxError
from slimfx.export import onnx as export_module
from slimfx.export.onnx import EXPORTERS, ExportResult, export_onnx, relative_error
from slimfx.tolerances import ONNX_RTOL


def run_onnx(path, *inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {arg.name: x.numpy() for arg, x in zip(session.get_inputs(), inputs, strict=True)}
    return session.run(None, feed)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_slim_graph_module_exports_and_matches_at_another_batch(slim_result, example, tmp_path):
    path = tmp_path / "slim.onnx"
    result = export_onnx(slim_result.module, example, path)
    assert isinstance(result, ExportResult)
    assert result.path == path and path.is_file()
    assert result.exporter == "torchscript"  # the fastest correct exporter comes first
    assert result.checked_batch_size != example.shape[0]
    assert 0 <= result.max_relative_error <= ONNX_RTOL
    assert result.export_seconds > 0 and result.check_seconds > 0
    onnx.checker.check_model(str(path), full_check=True)
    graph_input = onnx.load(str(path)).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    # independent check at a third batch size
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    (got,) = run_onnx(path, x)
    with torch.no_grad():
        want = slim_result.module(x).numpy()
    assert got.shape == (5, 10)
    assert relative_error(got, want) <= ONNX_RTOL
    assert leftovers(tmp_path) == []


def test_original_model_exports_and_keeps_its_mode(model, example, tmp_path):
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = export_onnx(model, example, tmp_path / "original.onnx")
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # BN statistics untouched by export
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    (got,) = run_onnx(result.path, x)
    with torch.no_grad():
        assert relative_error(got, model(x).numpy()) <= ONNX_RTOL


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_each_exporter_writes_a_correct_dynamic_batch_model(
    exporter, slim_result, example, tmp_path
):
    result = export_onnx(slim_result.module, example, tmp_path / "m.onnx", exporter=exporter)
    assert result.exporter == exporter
    x = torch.randn(4, 3, 32, 32)
    (got,) = run_onnx(result.path, x)
    with torch.no_grad():
        assert relative_error(got, slim_result.module(x).numpy()) <= ONNX_RTOL


def test_auto_falls_back_when_the_fast_exporter_fails(slim_result, example, tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("TorchScript exporter removed")

    monkeypatch.setitem(export_module._EXPORT, "dynamo", export_module._export_torchscript)
    monkeypatch.setitem(export_module._EXPORT, "torchscript", broken)
    result = export_onnx(slim_result.module, example, tmp_path / "m.onnx")
    assert result.exporter == "dynamo"
    assert result.max_relative_error <= ONNX_RTOL


def _writes_other_model(other):
    def export(module, inputs, path, opset, dynamic_batch, names):
        export_module._export_torchscript(other, inputs, path, opset, dynamic_batch, names)

    return export


def test_mismatch_is_an_error_and_leaves_the_old_file(model, example, tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    other = slimfx.slim(model, example, 0.5).module
    with torch.no_grad():
        other.classifier.bias.add_(1.0)  # a different model behind the exporter's back
    for name in EXPORTERS:
        monkeypatch.setitem(export_module._EXPORT, name, _writes_other_model(other))
    with pytest.raises(EquivalenceError, match="onnxruntime differs from PyTorch") as info:
        export_onnx(slimfx.slim(model, example, 0.5).module, example, path)
    assert info.value.relative_error > ONNX_RTOL
    assert path.read_bytes() == b"previous"
    assert leftovers(tmp_path) == []


def test_no_exporter_working_is_a_slimfx_error(slim_result, example, tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("unsupported operator")

    for name in EXPORTERS:
        monkeypatch.setitem(export_module._EXPORT, name, broken)
    with pytest.raises(SlimfxError, match="torchscript: unsupported operator; dynamo"):
        export_onnx(slim_result.module, example, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists() and leftovers(tmp_path) == []


def test_static_batch_and_opset(slim_result, example, tmp_path):
    batch = torch.cat([example, example])
    result = export_onnx(
        slim_result.module, batch, tmp_path / "m.onnx", opset=17, dynamic_batch=False
    )
    assert result.opset == 17 and result.checked_batch_size == 2
    model = onnx.load(str(result.path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


class TwoInTwoOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x, y):
        a = self.bn(self.conv(x))
        return a, (a * y).sum(dim=(2, 3))


def test_several_inputs_and_outputs(tmp_path):
    module = TwoInTwoOut().eval()
    x, y = torch.randn(1, 3, 8, 8), torch.randn(1, 4, 8, 8)
    result = export_onnx(module, (x, y), tmp_path / "m.onnx")
    graph = onnx.load(str(result.path)).graph
    assert [i.name for i in graph.input] == ["input_0", "input_1"]
    assert [o.name for o in graph.output] == ["output_0", "output_1"]
    x3, y3 = torch.randn(3, 3, 8, 8), torch.randn(3, 4, 8, 8)
    got = run_onnx(result.path, x3, y3)
    with torch.no_grad():
        want = module(x3, y3)
    for a, b in zip(got, want, strict=True):
        assert relative_error(a, b.numpy()) <= ONNX_RTOL


@pytest.mark.parametrize(
    ("inputs", "options", "message"),
    [
        ([], {}, "non-empty tuple of tensors"),
        (("x",), {}, "not a tensor"),
        ((torch.tensor(1.0),), {}, "scalar"),
        ((torch.randn(1, 3, 32, 32),), {"exporter": "tflite"}, "exporter must be"),
        ((torch.randn(1, 3, 32, 32),), {"opset": 3}, "opset"),
    ],
)
def test_invalid_arguments(model, tmp_path, inputs, options, message):
    with pytest.raises(ValueError, match=message):
        export_onnx(model, inputs, tmp_path / "m.onnx", **options)
    assert not (tmp_path / "m.onnx").exists()


def test_relative_error_definition():
    want = np.array([1.0, -4.0, 2.0])
    assert relative_error(want + np.array([0.0, 0.4, 0.0]), want) == pytest.approx(0.1)
    assert relative_error(np.array([np.nan]), np.array([1.0])) == float("inf")
    assert relative_error(np.zeros(2), np.zeros(2)) == 0.0


def test_exported_as_top_level_api():
    assert slimfx.export_onnx is export_onnx
    assert "export_onnx" in slimfx.__all__


class _AdaptiveHeadVGG(torch.nn.Module):
    """A hand-written VGG whose head max-pools a 7x7 map to 2x2 (7 is not a multiple of 2)."""

    def __init__(self, return_indices=False):
        super().__init__()
        conv = [torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1)]
        self.features = torch.nn.Sequential(
            conv[0], torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            conv[1], torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        )  # fmt: skip
        self.fc = torch.nn.Linear(64, 10)
        self.return_indices = return_indices

    def forward(self, x):
        x = self.features(x)
        if self.return_indices:
            x, _ = torch.nn.functional.adaptive_max_pool2d(x, 2, return_indices=True)
        else:
            x = torch.nn.functional.adaptive_max_pool2d(x, 2)
        return self.fc(x.flatten(1))


def test_adaptive_pooling_that_exporters_refuse_is_lowered_and_checked(tmp_path):
    import slimfx

    model, x = _AdaptiveHeadVGG().eval(), torch.randn(1, 3, 7, 7)
    for name, module in {"original": model, "slim": slimfx.slim(model, x, 0.5).module}.items():
        out = export_onnx(module, x, tmp_path / f"{name}.onnx")
        assert out.max_relative_error <= ONNX_RTOL  # onnxruntime against the unlowered module
        ops = {n.op_type for n in onnx.load(str(out.path)).graph.node}
        assert "MaxPool" not in ops and "ReduceMax" in ops


def test_an_op_no_exporter_takes_is_one_clean_line_naming_the_node(tmp_path):
    model, x = _AdaptiveHeadVGG(return_indices=True).eval(), torch.randn(1, 3, 7, 7)
    with pytest.raises(SlimfxError) as info:
        export_onnx(model, x, tmp_path / "m.onnx")
    message = str(info.value)
    assert "\x1b" not in message and "\n" not in message
    assert (
        "at node 'adaptive_max_pool2d_with_indices' (adaptive_max_pool2d_with_indices)" in message
    )
    assert not list(tmp_path.iterdir())
