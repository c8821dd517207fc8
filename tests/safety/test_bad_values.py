"""Bad values: flags out of range, NaN weights, inputs that do not fit, outputs that cannot be
written. Each is one line and exit status 2 in the CLI, a named error in the library."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx import CheckpointError, EquivalenceError, TraceError
from slimfx.cli import main
from slimfx.export.onnx import export_onnx
from slimfx.models import VGG
from slimfx.validation import nonfinite_tensors


def prune_args(tmp_path, checkpoints) -> list:
    return ["prune", "--dataset", "digits", "--model", str(checkpoints.pruned)]


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--percent", "nan"),
        ("--percent", "inf"),
        ("--percent", "abc"),
        ("--percent", "-0.1"),
        ("--percent", "1"),
        ("--round-to", "-1"),
        ("--round-to", "2.5"),
        ("--min-channels", "0"),
        ("--min-channels", "-3"),
    ],
)
def test_prune_flags_out_of_range(tmp_path, cli, checkpoints, flag, value):
    line = cli.error([*prune_args(tmp_path, checkpoints), "--save", tmp_path / "o", flag, value])
    assert line.startswith("slimfx prune: error: argument") and flag in line and value in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--lr", "nan"], "--lr"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--batch-size", "-8"], "--batch-size"),
        (["demo", "--percent", "nan"], "--percent"),
        (["bench", "--percent", "nan"], "--percent"),
        (["bench", "--percent", "1.5"], "--percent"),
        (["export", "--model", "m.pth", "--onnx", "m.onnx", "--dataset", "imagenet"], "--dataset"),
    ],
)
def test_other_flags_out_of_range(cli, argv, message):
    line = cli.error(argv)
    assert "error: argument" in line and message in line


# --- NaN and infinity in the library --------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "index"),
    [("feature.1", 2), ("feature.0", (1, 0, 0, 0)), ("classifier", (0, 3))],
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_slim_names_the_layer_with_nan_or_inf_weights(tmp_path, safety, layer, index, bad):
    model = safety.tiny_vgg()
    with torch.no_grad():
        model.get_submodule(layer).weight[index] = bad
    with pytest.raises(ValueError, match=rf"NaN or infinite values in {layer}\.weight \(1 of"):
        slimfx.slim(model, torch.randn(1, 3, 32, 32), 0.5)
    with pytest.raises(ValueError, match=rf"{layer}\.weight"):
        export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_finite_weights_whose_sum_overflows_are_not_called_infinite():
    huge = torch.full((4,), 3e38)  # each finite in float32; their sum is inf
    assert not torch.isfinite(huge.sum())
    assert nonfinite_tensors([("huge", huge)]) == []
    huge[1], huge[2] = float("nan"), -float("inf")
    assert nonfinite_tensors([("huge", huge)]) == ["huge (2 of 4 values)"]
    # infinities of both signs sum to NaN, a single NaN to NaN: both counted
    assert nonfinite_tensors([("t", torch.tensor([float("inf"), -float("inf"), 1.0]))]) == [
        "t (2 of 3 values)"
    ]


def test_nan_in_running_statistics_is_named_too(safety):
    model = safety.tiny_vgg()
    model.feature[5].running_mean[0] = float("nan")
    with pytest.raises(ValueError, match=r"feature\.5\.running_mean"):
        slimfx.slim(model, torch.randn(1, 3, 32, 32), 0.5)


def test_verification_does_not_pass_a_slim_model_that_outputs_nan(safety):
    """NaN compares unequal to everything; a max() over differences must not drop it."""
    model = safety.tiny_vgg()
    x = torch.randn(1, 3, 32, 32)
    res = slimfx.slim(model, x, 0.5)
    with torch.no_grad():
        res.module.classifier.bias[0] = float("nan")  # only the slim model is broken
    with pytest.raises(EquivalenceError) as info:
        slimfx.verify(res.module, res.reference, x)
    assert info.value.relative_error == float("inf")


# --- inputs that do not fit the model -------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "problem"),
    [
        ((1, 4, 32, 32), "expected input[1, 4, 32, 32] to have 3 channels"),
        ((3, 32, 32), "expected 4D input (got 3D input)"),
        ((32, 32), "Expected 3D (unbatched) or 4D (batched) input"),
        ((1, 1, 3, 32, 32), "Expected 3D (unbatched) or 4D (batched) input"),
        ((1, 3, 8, 8), "Output size is too small"),
    ],
)
def test_slim_says_what_the_model_expects(shape, problem):
    with pytest.raises(TraceError) as info:
        slimfx.slim(VGG(depth=11).eval(), torch.randn(*shape), 0.5)
    message = str(info.value)
    assert problem in message
    assert f"got {shape}" in message
    assert "its first layer, Conv2d feature.0 takes (N, 3, H, W)" in message


def test_export_library_says_what_the_model_expects(tmp_path, safety):
    with pytest.raises(TraceError) as info:
        export_onnx(safety.tiny_vgg(), torch.randn(1, 4, 32, 32), tmp_path / "m.onnx")
    message = str(info.value)
    assert "an example input of shape (1, 4, 32, 32) does not fit VGG at feature.0 (Conv2d)" in (
        message
    )
    assert "its first layer, Conv2d feature.0 takes (N, 3, H, W)" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("module", "shape", "expected"),
    [
        (nn.Linear(6, 2), (2, 5), "Linear takes (N, ..., 6)"),
        (nn.Sequential(nn.BatchNorm1d(4), nn.ReLU()), (2, 3), "BatchNorm1d 0 takes (N, 4)"),
        (nn.Conv1d(2, 3, 3), (1, 5, 9), "Conv1d takes (N, 2, L)"),
    ],
)
def test_the_expectation_fits_the_layer_kind(tmp_path, module, shape, expected):
    with pytest.raises(TraceError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        export_onnx(module, torch.randn(*shape), tmp_path / "m.onnx")


def test_cli_input_sizes_that_do_not_fit(tmp_path, cli, checkpoints):
    pruned = str(checkpoints.pruned)
    export = ["export", "--dataset", "digits", "--model", pruned, "--onnx", tmp_path / "m.onnx"]
    line = cli.error([*export, "--input-size", "1"])
    assert line.startswith("slimfx export: error: --input-size 1: an input of shape (1, 3, 1, 1)")
    assert "MaxPool2d" in line and "Output size is too small" in line
    assert "its first layer, Conv2d feature.0 takes (N, 3, H, W)" in line
    assert "must be positive" in cli.error([*export, "--input-size", "0"])
    assert not (tmp_path / "m.onnx").exists()
    bench = [
        "bench", "--dataset", "digits", "--model", pruned, "--backends", "torch-cpu",
        "--batches", "1", "--rounds", "1", "--warmup", "0", "--out", tmp_path / "b",
    ]  # fmt: skip
    line = cli.error([*bench, "--input-size", "4"])
    assert line.startswith("slimfx bench: error: --input-size 4: an input of shape (1, 3, 4, 4)")
    line = cli.error([*bench, "--pruned", pruned, "--input-size", "2"])
    assert "--input-size 2" in line and "does not fit VGG" in line
    assert not (tmp_path / "b").exists()


# --- outputs that cannot be written ---------------------------------------------------------

# Tests run as root, whom permission bits do not stop; /proc refuses new files to everyone.
UNWRITABLE = Path("/proc/slimfx-test")


def test_save_pointing_at_a_file_or_an_unwritable_place(tmp_path, cli, checkpoints, monkeypatch):
    if not Path("/proc/self").is_dir():
        pytest.fail("this test needs Linux's /proc to find a place nobody can write to")
    monkeypatch.setattr(  # these checks must stop the run before the work
        "slimfx.cli.prune.prune_model", lambda *a, **k: pytest.fail("pruned anyway")
    )
    prune = prune_args(tmp_path, checkpoints)
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    line = cli.error([*prune, "--save", blocker])
    assert f"output folder {blocker} exists and is not a folder" in line
    assert blocker.read_text() == "keep me"
    line = cli.error([*prune, "--save", UNWRITABLE])
    assert f"cannot create output folder {UNWRITABLE}" in line
    line = cli.error([*prune, "--save", "/proc"])
    assert "output folder /proc is not writable" in line
    export = ["export", "--dataset", "digits", "--model", checkpoints.pruned]
    line = cli.error([*export, "--onnx", "/proc/m.onnx"])
    assert line.startswith("slimfx export: error: cannot write /proc/m.onnx")
    line = cli.error([*export, "--onnx", tmp_path])
    assert f"cannot write {tmp_path}: it is a folder" in line
    train = ["train", "--dataset", "digits", "--epochs", "1", "--no-cuda"]
    line = cli.error([*train, "--refine", checkpoints.pruned, "--save", blocker])
    assert "exists and is not a folder" in line
    bench = ["bench", "--dataset", "digits", "--model", checkpoints.pruned, "--backends"]
    line = cli.error([*bench, "torch-cpu", "--out", UNWRITABLE])
    assert f"cannot create output folder {UNWRITABLE}" in line


# --- --debug --------------------------------------------------------------------------------


def test_debug_shows_the_traceback_instead(tmp_path, cli, checkpoints, slimfx_cli):
    argv = ["prune", "--dataset", "digits", "--model", tmp_path / "missing.pth"]
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        main(["--debug", *map(str, argv)])
    proc = slimfx_cli("--debug", *map(str, argv), timeout=120)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "slimfx.errors.CheckpointError: no checkpoint found" in proc.stderr
