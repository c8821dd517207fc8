"""The ``slimfx train``/``prune`` command lines: flags, output, errors, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from slimfx.cli import main
from slimfx.models import VGG
from slimfx.train.state import BEST_NAME, CHECKPOINT_NAME


def test_train_and_refine_from_the_command_line(tmp_path, tiny_pruned, wf):
    proc = wf.run_slimfx(
        "train",
        "--dataset",
        "digits",
        "--refine",
        str(tiny_pruned),
        "-sr",
        "--s",
        "0.01",
        "--epochs",
        "2",
        "--lr",
        "0.05",
        "--batch-size",
        "128",
        "--save",
        str(tmp_path / "run"),
        "--no-cuda",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "sparsity training" in out or "with sparsity (s=0.01)" in out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "test accuracy" in out
    assert "|gamma|<0.01" in out
    assert "Traceback" not in proc.stderr and "epoch" not in proc.stderr  # no tqdm without a TTY
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["cfg"] == wf.TINY_CFG and ckpt["sparsity"] == 0.01
    assert (tmp_path / "run" / BEST_NAME).is_file()


def _ctrl_c_as_in_a_terminal():
    """A shell's background job starts with SIGINT ignored; a terminal's does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_saves_and_resume_finishes(tmp_path, tiny_pruned, wf):
    args = [
        "train",
        "--dataset",
        "digits",
        "--refine",
        str(tiny_pruned),
        "--epochs",
        "400",
        "--lr",
        "0.05",
        "--save",
        str(tmp_path / "run"),
        "--no-cuda",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "slimfx", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # see each epoch as it ends
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    try:
        for line in proc.stdout:  # wait until training runs
            if "epoch 1/400" in line:
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and f"--resume {tmp_path / 'run' / CHECKPOINT_NAME}" in err
    assert "Traceback" not in err
    saved = torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=True)
    assert 1 <= saved["epoch"] < 400
    epochs = str(saved["epoch"] + 1)
    resume = [
        "train",
        "--dataset",
        "digits",
        "--epochs",
        epochs,
        "--lr",
        "0.05",
        "--resume",
        str(tmp_path / "run" / CHECKPOINT_NAME),
        "--save",
        str(tmp_path / "run"),
    ]
    done = wf.run_slimfx(*resume)
    assert done.returncode == 0, done.stderr
    assert f"epoch {saved['epoch'] + 1}/" in done.stdout


def one_line_error(capsys, argv, code=2) -> str:
    assert main(argv) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.fixture
def vgg11_checkpoint(tmp_path):
    path = tmp_path / "vgg11.pth.tar"
    torch.save(
        {"epoch": 1, "best_prec1": 0.1, "state_dict": VGG(dataset="digits", depth=11).state_dict()},
        path,
    )
    return path


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, vgg11_checkpoint, tiny_pruned):
    prune = ["prune", "--dataset", "digits", "--save", str(tmp_path / "out")]
    line = one_line_error(capsys, [*prune, "--model", str(tmp_path / "missing.pth")])
    assert line.startswith("slimfx prune: error:") and "no checkpoint found" in line
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(vgg11_checkpoint.read_bytes()[:100_000])  # a truncated download
    assert "not a readable checkpoint" in one_line_error(capsys, [*prune, "--model", str(corrupt)])
    wrong_depth = one_line_error(
        capsys, [*prune, "--model", str(vgg11_checkpoint), "--depth", "13"]
    )
    assert "does not fit VGG-13" in wrong_depth
    assert "the file is a VGG-11 checkpoint: use --depth 11" in wrong_depth
    for flag, value in (
        ("--percent", "1.5"),
        ("--round-to", "0"),
        ("--min-channels", "x"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*prune, "--model", str(vgg11_checkpoint), flag, value])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0]
    line = one_line_error(capsys, [*prune, "--model", str(vgg11_checkpoint), "--depth", "12"])
    assert "--depth 12" in line and "11, 13, 16, 19" in line and "use --depth 11" in line
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--s", "-1"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    train = ["train", "--dataset", "digits", "--epochs", "1", "--save", str(tmp_path / "t")]
    line = one_line_error(capsys, [*train, "--resume", str(tmp_path / "nope.pth.tar")])
    assert line.startswith("slimfx train: error:") and "nope.pth.tar" in line
    line = one_line_error(
        capsys, [*train, "--refine", str(tiny_pruned), "--resume", str(tiny_pruned)]
    )
    assert "not a training checkpoint" in line
    line = one_line_error(
        capsys, ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nodata")]
    )
    assert "CIFAR-10 not found" in line and str(tmp_path / "nodata") in line
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_line_error(
        capsys,
        [*prune, "--model", str(vgg11_checkpoint), "--depth", "11", "--save", str(blocker / "sub")],
    )
    assert str(blocker) in line


def test_errors_in_a_real_process_have_no_traceback(tmp_path, wf):
    proc = wf.run_slimfx(
        "prune", "--dataset", "digits", "--model", str(tmp_path / "x.pth"), cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no checkpoint found" in proc.stderr
    assert not (tmp_path / "logs").exists()  # a failed run leaves no output folder behind
