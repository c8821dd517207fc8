"""A file that is not a checkpoint is named as what it is; mismatched weights are summed up
in one short line."""

from __future__ import annotations

import gzip
import tarfile
import warnings
import zipfile

import numpy as np
import pytest
import torch

from slimfx import CheckpointError
from slimfx.checkpoint import check_shapes, load_checkpoint
from slimfx.models import VGG


def _zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")


def _tar(path):
    (path.parent / "inner.txt").write_text("x")
    with tarfile.open(path, "w") as archive:
        archive.add(path.parent / "inner.txt", arcname="inner.txt")


def _numpy(save):
    def write(path):
        with path.open("wb") as handle:  # np.save(path) would append .npy to the name
            save(handle)

    return write


def _torchscript(path):
    class AddOne(torch.nn.Module):
        def forward(self, x):
            return x + 1

    with warnings.catch_warnings():  # "torch.jit.trace is deprecated"
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(AddOne(), torch.ones(1)), path)


FILES = {
    "text": (lambda p: p.write_text("epoch,accuracy\n1,0.5\n"), "a text file (it starts 'epoch,"),
    "html": (lambda p: p.write_text("<!DOCTYPE html><html>404</html>"), "an HTML page"),
    "git lfs": (
        lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\n"),
        "a Git LFS pointer, not the file itself (run git lfs pull)",
    ),
    "png": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200)), "a PNG image"),
    "gzip": (lambda p: p.write_bytes(gzip.compress(bytes(300))), "a gzip-compressed file"),
    "onnx": (lambda p: p.write_bytes(b"\x08\x09\x12\x07pytorch\x1a\x032.0" + bytes(64)), "ONNX"),
    "npy": (_numpy(lambda f: np.save(f, np.ones(3))), "a NumPy .npy array"),
    "tar": (_tar, "a tar archive"),
    "zip": (_zip, "it is a zip archive that is not a torch.save file (it holds notes/readme.txt"),
    "npz": (_numpy(lambda f: np.savez(f, x=np.ones(3))), "it is a NumPy .npz archive"),
    "torchscript": (_torchscript, "it is a TorchScript archive (torch.jit.save)"),
}


@pytest.mark.parametrize("kind", list(FILES))
def test_a_file_of_another_kind_is_named(tmp_path, kind):
    make, what = FILES[kind]
    path = tmp_path / "model.pth"
    make(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a PyTorch checkpoint: it ") and what in message
    assert "\n" not in message and "KeyError" not in message


def test_damaged_checkpoints_keep_their_own_messages(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.ones(300)}}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:700])  # a zip whose central directory is gone
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_checkpoint(cut)
    assert load_checkpoint(good)["state_dict"]["w"].shape == (300,)


def test_mismatched_weights_are_one_short_line():
    state = VGG(dataset="digits", depth=11).state_dict()
    with torch.device("meta"):
        model = VGG(dataset="digits", depth=13)
    with pytest.raises(CheckpointError) as info:
        check_shapes(model, state, "f.pth")
    message = str(info.value)
    assert message.startswith("f.pth does not fit VGG: shape mismatch (file vs model): ")
    assert "feature.4.weight (128, 64, 3, 3) vs (64,) and 6 more" in message
    assert "missing keys: feature.3.weight and 46 more" in message
    assert "unexpected keys: feature.5.weight and 34 more" in message
    assert len(message) < 350 and "\n" not in message
