"""``slimfx export --format pt2`` (and ``--out`` for ONNX) end to end."""

import pytest
import torch

import slimfx
from slimfx.cli import main
from slimfx.numerics import relative_error
from slimfx.tolerances import FLOAT32_RTOL


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, make_tiny_vgg):
    """A pruned.pth of the tiny VGG (cfg + weights) and its slim module."""
    folder = tmp_path_factory.mktemp("ckpt")
    res = slimfx.slim(make_tiny_vgg(), torch.randn(1, 3, 32, 32), 0.5)
    torch.save({"cfg": res.cfg, "state_dict": res.module.state_dict()}, folder / "pruned.pth")
    return folder / "pruned.pth", res.module


def test_export_pt2_writes_a_checked_archive(pruned, tmp_path, capsys):
    path, module = pruned
    out = tmp_path / "slim.pt2"
    assert main(["export", "--model", str(path), "--format", "pt2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out} (torch.export, dynamic batch")
    program = torch.export.load(out).module()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(program(x), module(x)) <= FLOAT32_RTOL


def test_onnx_is_the_default_format_and_out_names_its_file(pruned, tmp_path, capsys):
    out = tmp_path / "slim.onnx"
    assert main(["export", "--model", str(pruned[0]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (torchscript exporter")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "pt2"], "--out PATH is required"),
        (["--format", "pt2", "--onnx", "{tmp}/x.onnx"], "with --format pt2 give --out PATH"),
        (["--format", "pt2", "--out", "{tmp}/x.pt2", "--opset", "17"], "ONNX settings"),
        (["--format", "pt2", "--out", "{tmp}/x.onnx"], "must end in .pt2"),
        (["--out", "{tmp}/x.onnx", "--onnx", "{tmp}/y.onnx"], "give the file to write once"),
    ],
)
def test_export_format_errors_are_one_line(pruned, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["export", "--model", str(pruned[0]), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimfx export: error:") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_an_unknown_format_is_a_usage_error(pruned, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["export", "--model", str(pruned[0]), "--format", "tflite", "--out", "x.tflite"])
    assert info.value.code == 2
    assert "argument --format: invalid choice: 'tflite'" in capsys.readouterr().err
