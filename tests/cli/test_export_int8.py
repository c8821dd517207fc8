"""``slimfx export --int8``: int8 file, float and int8 accuracy, latency side by side."""

import onnx
import pytest
import torch

from slimfx.cli import main
from slimfx.models import VGG


@pytest.fixture
def original(tmp_path):
    """An unpruned counterpart of ``tiny_pruned`` (wider layers), for ``--original``."""
    torch.manual_seed(1)
    model = VGG(dataset="digits", cfg=[16, "M", 32, "M", 32, 32, "M", 64, 64, "M", 64, 64])
    path = tmp_path / "original.pth"
    torch.save({"cfg": model.cfg, "state_dict": model.state_dict()}, path)
    return path


def export_args(model, out, *extra):
    return ["export", "--model", str(model), "--onnx", str(out), "--dataset", "digits", *extra]


def test_int8_export_prints_both_accuracies_and_the_latency_table(
    tiny_pruned, original, tmp_path, capsys
):
    out = tmp_path / "slim-int8.onnx"
    settings = ["--int8", "--calib-images", "32", "--original", str(original)]
    timing = ["--batches", "2", "--rounds", "1", "--threads", "1"]
    assert main(export_args(tiny_pruned, out, *settings, *timing)) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}") and "int8 QDQ" in printed
    assert "calibration on 32 inputs" in printed
    accuracy = next(line for line in printed.splitlines() if line.startswith("test accuracy"))
    assert "digits, 450 images" in accuracy
    assert "float " in accuracy and "(PyTorch)" in accuracy
    assert "int8 " in accuracy and "(onnxruntime)" in accuracy
    rows = [line.split() for line in printed.splitlines() if line.startswith("ort-cpu")]
    assert [(row[1], row[2]) for row in rows] == [("2", "slim"), ("2", "slim-int8")]
    assert "original median" in printed
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--int8", "--calib-images", "0"], "argument --calib-images: expected a positive integer"),
        (["--int8", "--calib-images", "many"], "argument --calib-images: expected a positive"),
        (["--calib-images", "16"], "--calib-images is an --int8 setting; add --int8"),
        (["--int8", "--batches", "1,x"], "--batches must be comma-separated positive integers"),
    ],
)
def test_bad_int8_arguments_are_one_line_errors(extra, message, tiny_pruned, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    try:
        code = main(export_args(tiny_pruned, out, *extra))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("slimfx export: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
