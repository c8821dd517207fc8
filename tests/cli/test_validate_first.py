"""``slimfx train``/``prune`` check every input before any work: a bad input is one line on
stderr and exit status 2, with nothing printed on stdout and no file or folder created."""

from __future__ import annotations

import pytest
import torch

from slimfx.cli import main
from slimfx.models import VGG

TINY_CFG = [8, "M", 16, "M", 16, 16, "M", 32, 32, "M", 32, 32]


def files_under(folder) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def rejected(capsys, tmp_path, argv) -> str:
    """Run ``slimfx ARGV``: assert it failed first — exit 2, one line on stderr, nothing on
    stdout, nothing created under ``tmp_path`` — and return that line."""
    before = files_under(tmp_path)
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert status == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert captured.out == ""  # no banner, no "=> loaded"
    assert files_under(tmp_path) == before
    return lines[0]


@pytest.fixture
def pruned(tmp_path):
    torch.manual_seed(0)
    model = VGG(dataset="digits", cfg=TINY_CFG)
    torch.save({"cfg": TINY_CFG, "state_dict": model.state_dict()}, tmp_path / "pruned.pth")
    return tmp_path / "pruned.pth"


@pytest.fixture
def afile(tmp_path):
    (tmp_path / "afile").write_text("not a folder\n")
    return tmp_path / "afile"


def train(tmp_path, *extra):
    return ["train", "--dataset", "digits", "--epochs", "1", "--no-cuda", *extra]


def prune(model, save, *extra):
    return ["prune", "--dataset", "digits", "--model", model, "--save", save, *extra]


def test_train_resume_of_a_pruned_file_fails_before_the_banner(capsys, tmp_path, pruned):
    line = rejected(capsys, tmp_path, train(tmp_path, "--resume", pruned, "--save", tmp_path / "t"))
    assert line.startswith("slimfx train: error:") and "not a training checkpoint" in line
    assert "use --refine" in line and not (tmp_path / "t").exists()


def test_train_resume_whose_optimizer_does_not_fit_fails_first(capsys, tmp_path):
    model = VGG(dataset="digits", cfg=TINY_CFG)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = optimizer.state_dict()
    state["state"] = {0: {"momentum_buffer": torch.ones(3)}}  # conv weights are (8, 3, 3, 3)
    ckpt = {"epoch": 1, "cfg": TINY_CFG, "state_dict": model.state_dict(), "optimizer": state}
    torch.save(ckpt, tmp_path / "t.pth.tar")
    argv = train(tmp_path, "--resume", tmp_path / "t.pth.tar", "--save", tmp_path / "out")
    line = rejected(capsys, tmp_path, argv)
    assert "momentum_buffer of shape (3,) does not fit a parameter" in line


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--save", "AFILE"], "exists and is not a folder"),
        (["--save", "AFILE/sub"], "AFILE is not a folder"),
        (["--momentum", "1.5", "--save", "NEW"], "momentum has an invalid value"),
        (["--resume", "MISSING", "--save", "NEW"], "no checkpoint found"),
        (["--refine", "AFILE", "--save", "NEW"], "it looks like a text file"),
    ],
)
def test_train_rejects_bad_inputs_before_any_work(capsys, tmp_path, afile, flags, message):
    swap = {"AFILE": str(afile), "NEW": str(tmp_path / "new"), "MISSING": str(tmp_path / "x")}
    flags = [swap.get(f, f.replace("AFILE", str(afile))) for f in flags]
    line = rejected(capsys, tmp_path, train(tmp_path, *flags))
    assert message.replace("AFILE", str(afile)) in line, line


def test_prune_rejects_the_save_folder_before_loading(capsys, tmp_path, afile, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before --save was checked")

    monkeypatch.setattr("slimfx.cli.prune.load_trained_model", no_loading)
    line = rejected(capsys, tmp_path, prune(tmp_path / "missing.pth", afile))
    assert line == (
        f"slimfx prune: error: --save {afile}: output folder {afile} exists and is not a folder"
    )
    line = rejected(capsys, tmp_path, prune(tmp_path / "missing.pth", afile / "sub"))
    assert f"{afile} is not a folder" in line


def test_prune_rejects_a_bad_checkpoint_before_printing_or_creating(capsys, tmp_path, afile):
    line = rejected(capsys, tmp_path, prune(afile, tmp_path / "out"))
    assert "is not a PyTorch checkpoint: it looks like a text file" in line


def test_prune_rejects_an_unavailable_latency_backend_first(capsys, tmp_path, pruned, monkeypatch):
    monkeypatch.setattr(
        "slimfx.bench.backends.backend_status", lambda name: (False, f"no {name} here")
    )
    argv = prune(pruned, tmp_path / "out", "--speedup", "2", "--backend", "torch-cpu")
    line = rejected(capsys, tmp_path, argv)
    assert line == "slimfx prune: error: cannot measure latency on torch-cpu: no torch-cpu here"


def test_prune_rejects_an_unusable_latency_cache_first(capsys, tmp_path, pruned, afile):
    argv = prune(pruned, tmp_path / "out", "--speedup", "2", "--backend", "torch-cpu")
    line = rejected(capsys, tmp_path, [*argv, "--latency-cache", afile])
    assert line == (
        f"slimfx prune: error: --latency-cache {afile}: output folder {afile} exists and is "
        "not a folder"
    )
