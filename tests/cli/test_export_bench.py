"""``slimfx export`` and ``slimfx bench`` end to end."""

import json

import onnxruntime as ort
import pytest
import torch

import slimfx
from slimfx.cli import main
from slimfx.export.onnx import relative_error
from slimfx.models import VGG
from slimfx.tolerances import ONNX_RTOL


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, make_tiny_vgg):
    """A tiny 'original' checkpoint (cfg + weights) and its pruned.pth."""
    folder = tmp_path_factory.mktemp("ckpt")
    model = make_tiny_vgg()
    res = slimfx.slim(model, torch.randn(1, 3, 32, 32), 0.5)
    torch.save({"cfg": model.cfg, "state_dict": model.state_dict()}, folder / "model.pth")
    pruned = {"cfg": res.cfg, "state_dict": res.module.state_dict()}
    torch.save(pruned, folder / "pruned.pth")
    return folder, model, res


def onnx_matches(path, model):
    x = torch.randn(6, 3, 32, 32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        return relative_error(got, model(x).numpy()) <= ONNX_RTOL


def test_export_pruned_checkpoint_rebuilds_from_cfg(checkpoints, tmp_path, capsys):
    folder, _, res = checkpoints
    out = tmp_path / "slim.onnx"
    code = main(["export", "--model", str(folder / "pruned.pth"), "--onnx", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}") and "torchscript exporter" in printed
    assert onnx_matches(out, res.module)


def test_export_original_training_checkpoint(tmp_path):
    reference = VGG(depth=11).eval()
    ckpt = {"epoch": 3, "best_prec1": 0.5, "state_dict": reference.state_dict()}
    torch.save(ckpt, tmp_path / "train.pth")
    out = tmp_path / "vgg11.onnx"
    argv = ["export", "--model", str(tmp_path / "train.pth"), "--onnx", str(out), "--depth", "11"]
    assert main([*argv, "--static-batch", "--batch-size", "2"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 32, 32]
    x = torch.randn(2, 3, 32, 32)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert relative_error(got, reference(x).numpy()) <= ONNX_RTOL


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "missing.pth"], "no checkpoint found"),
        (["--model", "{folder}/pruned.pth", "--opset", "2"], "opset"),
        (["--model", "{folder}/model.pth", "--arch", "mobilenet"], "--arch"),
        (["--model", "{folder}/model.pth", "--arch", "resnet"], "--arch resnet --depth 19"),
    ],
)
def test_export_user_errors_are_one_line(checkpoints, tmp_path, capsys, args, message):
    folder = checkpoints[0]
    args = [a.format(folder=folder) for a in args]
    assert main(["export", *args, "--onnx", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimfx export: error:") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_bench_slims_the_model_and_writes_reports(checkpoints, tmp_path, capsys):
    folder = checkpoints[0]
    argv = [
        "bench", "--model", str(folder / "model.pth"), "--percent", "0.5",
        "--backends", "ort-cpu,torch-cpu", "--batches", "2", "--rounds", "2",
        "--warmup", "1", "--out", str(tmp_path / "b"), "--no-plot",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ort-cpu" in out and "torch-cpu" in out and "round_to=1" in out
    data = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert {row["backend"] for row in data["rows"]} == {"ort-cpu", "torch-cpu"}
    assert data["settings"]["slim"] == "slim: 50% pruned, round_to=1"
    assert (tmp_path / "b" / "bench.md").is_file()
    assert not (tmp_path / "b" / "bench.png").exists()


def test_bench_with_a_pruned_checkpoint(checkpoints, tmp_path, capsys):
    folder, _, res = checkpoints
    argv = [
        "bench", "--model", str(folder / "model.pth"), "--pruned", str(folder / "pruned.pth"),
        "--backends", "torch-cpu", "--batches", "1", "--rounds", "2", "--warmup", "0",
        "--out", str(tmp_path / "b"),
    ]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert data["models"]["slim"]["macs"] == res.report.macs_after
    assert data["models"]["original"]["macs"] == res.report.macs_before
    assert (tmp_path / "b" / "bench.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "tvm"], "--backends"),
        (["--batches", "0"], "--batches"),
        (["--round-to", "sixteen"], "--round-to"),
    ],
)
def test_bench_user_errors(tmp_path, capsys, args, message):
    assert main(["bench", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimfx bench: error:") and message in err
