"""Nothing lost: a run that fails or is interrupted leaves the earlier outputs byte for byte.

Each test makes a complete set of outputs, runs again with a step that fails part-way
(disk full, Ctrl-C, an exporter error, a killed process), and compares every byte.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from slimfx.cli import main
from slimfx.files import OutputSet, atomic_path, save_torch, write_text

PRUNE_OUTPUTS = [
    "channels.png",
    "gammas.png",
    "prune.json",
    "prune.txt",
    "pruned.json",
    "pruned.pth",
    "pruned.safetensors",
]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (hidden ones too) → its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def prune_argv(checkpoints, save: Path, percent: str) -> list[str]:
    return [
        "prune", "--dataset", "digits", "--model", str(checkpoints.pruned),
        "--save", str(save), "--percent", percent, "--test-batch-size", "512",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def first_prune(tmp_path_factory, checkpoints):
    """A complete ``slimfx prune`` output folder (percent 0.3)."""
    save = tmp_path_factory.mktemp("first") / "out"
    assert main(prune_argv(checkpoints, save, "0.3")) == 0
    assert sorted(p.name for p in save.iterdir()) == PRUNE_OUTPUTS
    return save


@pytest.fixture
def earlier(tmp_path, first_prune):
    """A private copy of the first run's folder and its bytes."""
    save = tmp_path / "out"
    shutil.copytree(first_prune, save)
    return save, snapshot(save)


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def half_written_torch_save(obj, path, *args, **kwargs):
    """``torch.save`` that dies half-way, leaving a partial file where it wrote."""
    Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    ("target", "replacement", "status"),
    [
        ("slimfx.workflow.prune_files.plot_channels_kept", ctrl_c, 130),  # the very last step
        ("slimfx.workflow.prune_files.plot_gamma_distribution", disk_full, 2),
        ("slimfx.files.torch.save", half_written_torch_save, 2),  # pruned.pth itself
        ("slimfx.workflow.prune_files.prune_text", ctrl_c, 130),  # before the first file
    ],
)
def test_a_failed_prune_leaves_the_earlier_outputs_intact(
    capsys, checkpoints, earlier, monkeypatch, target, replacement, status
):
    save, before = earlier
    monkeypatch.setattr(target, replacement)
    assert main(prune_argv(checkpoints, save, "0.6")) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(save) == before  # same names (no temporary files left), same bytes


def test_a_successful_prune_replaces_the_whole_set(checkpoints, earlier):
    """And a run without plots removes the earlier run's plots: they describe another cut."""
    save, before = earlier
    assert main([*prune_argv(checkpoints, save, "0.6"), "--no-plots"]) == 0
    after = snapshot(save)
    assert sorted(after) == [n for n in PRUNE_OUTPUTS if not n.endswith(".png")]
    for name in after:
        assert after[name] != before[name], name
    old_cfg = torch.load(io.BytesIO(before["pruned.pth"]), weights_only=True)["cfg"]
    assert torch.load(save / "pruned.pth", weights_only=True)["cfg"] != old_cfg


KILL_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import slimfx.workflow.prune_files
    from slimfx.cli import main

    def killed(*args, **kwargs):  # the process dies while drawing the last plot
        os.kill(os.getpid(), signal.SIGKILL)

    slimfx.workflow.prune_files.plot_channels_kept = killed
    sys.exit(main(sys.argv[1:]))
    """
)


def test_a_killed_prune_leaves_the_earlier_outputs_intact(tmp_path, checkpoints, earlier):
    """SIGKILL allows no clean-up: the outputs stay intact; at most hidden temporary files
    named after them remain (documented in the README's safety section)."""
    save, before = earlier
    driver = tmp_path / "driver.py"
    driver.write_text(KILL_DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(driver), *prune_argv(checkpoints, save, "0.6")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    after = snapshot(save)
    assert {name: after[name] for name in before} == before
    leftovers = sorted(set(after) - set(before))
    assert leftovers, "the kill came after the staged files were written"
    for name in leftovers:
        assert name.startswith(".") and ".tmp" in name, leftovers
        assert any(name.startswith(f".{output}.") for output in PRUNE_OUTPUTS), leftovers


@pytest.fixture
def exported(tmp_path, checkpoints):
    path = tmp_path / "model.onnx"
    argv = ["export", "--dataset", "digits", "--model", str(checkpoints.pruned), "--onnx", path]
    assert main([str(a) for a in argv]) == 0
    return argv, path, snapshot(tmp_path)


def test_a_failed_export_leaves_the_earlier_file_intact(
    tmp_path, capsys, checkpoints, exported, monkeypatch
):
    argv, path, before = exported
    assert path.stat().st_size > 1000  # a real model was written
    capsys.readouterr()
    monkeypatch.setattr("slimfx.export.onnx.check_onnx", ctrl_c)  # Ctrl-C while checking
    assert main([str(a) for a in argv]) == 130
    assert snapshot(tmp_path) == before

    def broken_exporter(module, inputs, path, *args):
        Path(path).write_bytes(b"half an onnx file")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(
        "slimfx.export.onnx._EXPORT", {"torchscript": broken_exporter, "dynamo": broken_exporter}
    )
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "cannot export" in err and "exporter crashed" in err
    assert snapshot(tmp_path) == before


def test_a_failed_bench_report_leaves_the_earlier_reports_intact(
    tmp_path, checkpoints, monkeypatch
):
    argv = [
        "bench", "--dataset", "digits", "--model", str(checkpoints.pruned),
        "--backends", "torch-cpu", "--batches", "1", "--rounds", "1", "--warmup", "0",
        "--out", str(tmp_path / "b"),
    ]  # fmt: skip
    assert main(argv) == 0
    before = snapshot(tmp_path / "b")
    assert sorted(before) == ["bench.json", "bench.md", "bench.png"]
    monkeypatch.setattr("slimfx.bench.report.LatencyReport.plot", disk_full)
    assert main([*argv, "--percent", "0.7"]) == 2
    assert snapshot(tmp_path / "b") == before


# --- slimfx.files itself -----------------------------------------------------------------------


def test_atomic_writers_leave_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.pth"
    write_text(target, "old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("new, but interrupted")
        raise KeyboardInterrupt
    monkeypatch.setattr("slimfx.files.torch.save", half_written_torch_save)
    with pytest.raises(OSError, match="No space left"):
        save_torch({"a": 1}, target)
    assert snapshot(tmp_path) == {"f.pth": b"old"}


def test_output_set_commits_all_or_nothing(tmp_path):
    write_text(tmp_path / "a.txt", "old a")
    write_text(tmp_path / "stale.png", "old plot")
    with pytest.raises(RuntimeError), OutputSet(stale=[tmp_path / "stale.png"]) as out:
        out.write_text(tmp_path / "a.txt", "new a")
        out.write_text(tmp_path / "b.txt", "new b")
        raise RuntimeError("the last step failed")
    assert snapshot(tmp_path) == {"a.txt": b"old a", "stale.png": b"old plot"}
    with OutputSet(stale=[tmp_path / "stale.png"]) as out:
        out.write_text(tmp_path / "a.txt", "new a")
        out.save_torch({"x": torch.ones(1)}, tmp_path / "b.pth")
        assert snapshot(tmp_path)["a.txt"] == b"old a"  # nothing replaced before the end
    after = snapshot(tmp_path)
    assert sorted(after) == ["a.txt", "b.pth"] and after["a.txt"] == b"new a"
    assert torch.load(tmp_path / "b.pth", weights_only=True)["x"].item() == 1.0


def test_output_files_keep_the_usual_permissions(tmp_path):
    write_text(tmp_path / "a.txt", "x")
    with OutputSet() as out:
        out.write_text(tmp_path / "b.txt", "y")
    umask = os.umask(0)
    os.umask(umask)
    for name in ("a.txt", "b.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
