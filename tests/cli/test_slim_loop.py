"""``slimfx slim-loop``: the per-pass table, resuming by running the same command, errors."""

from __future__ import annotations

import json

import pytest
import torch

from slimfx.cli import main
from slimfx.models import VGG
from slimfx.train.loop import TrainingInterrupted

CFG = [16, "M", 32, "M", 32, "M", 48, "M", 48]


@pytest.fixture
def command(tmp_path, wf, monkeypatch):
    """The arguments of a 2-pass loop of a narrow digits VGG (latency cache in tmp_path)."""
    monkeypatch.setenv("SLIMFX_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = wf.sparse_trained_like(VGG(dataset="digits", cfg=CFG), zero_fraction=0.3)
    path = tmp_path / "trained.pth"
    torch.save({"cfg": model.cfg, "state_dict": model.state_dict()}, path)
    return [
        "slim-loop",
        "--model",
        str(path),
        "--dataset",
        "digits",
        "--speedup",
        "2",
        "--passes",
        "2",
        "--epochs",
        "1",
        "--backend",
        "torch",
        "--batch",
        "16",
        "--threads",
        "1",
        "--sr",
        "--s",
        "1e-4",
        "--no-cuda",
        "--no-plots",
        "--save",
        str(tmp_path / "run"),
    ]


def test_slim_loop_prints_the_table_and_resumes(command, tmp_path, capsys, monkeypatch):
    import slimfx.workflow.slim_loop as loop_module

    real_fit, calls = loop_module.fit, []

    def fit_stopping_in_pass_2(model, train_set, test_set, config, **callbacks):
        calls.append(config.save_dir)
        if len(calls) == 2:
            raise TrainingInterrupted("stopped", 1, 3, None)
        return real_fit(model, train_set, test_set, config, **callbacks)

    monkeypatch.setattr(loop_module, "fit", fit_stopping_in_pass_2)
    assert main(command) == 130
    first = capsys.readouterr()
    assert "pass 1/2: fine-tuned" in first.out and "pass 2/2: pruned to" in first.out
    assert "run the same command to resume" in first.err
    run = tmp_path / "run"
    assert [p["stage"] for p in json.loads((run / "loop.json").read_text())["passes"]] == [
        "done",
        "pruned",
    ]

    # the same command again: pass 2 is fine-tuned, not pruned again
    monkeypatch.setattr(loop_module, "fit", real_fit)
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "pruned to" not in out and "pass 2/2 epoch 1/1" in out
    assert "passes done before (from loop.json): 1" in out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 1 + 2  # head, original, 2 passes
    assert table[-2].startswith("| 1 | 1.414x | 1.414x |")  # the first of two passes: √2
    assert table[-1].startswith("| 2 |") and "| 2.000x |" in table[-1]  # re-aimed at 2x
    assert (run / "loop.md").read_text().strip() in out
    state = json.loads((run / "loop.json").read_text())
    assert state["settings"]["sparsity"] == 1e-4 and state["settings"]["backend"] == "torch-cpu"
    assert [p["stage"] for p in state["passes"]] == ["done", "done"]
    assert all(p["measured"] > 1 for p in state["passes"])
    for k in (1, 2):
        assert torch.load(run / f"pass-{k}" / "pruned.pth", weights_only=True)["cfg"]
        assert torch.load(run / f"pass-{k}" / "model_best.pth.tar", weights_only=True)["epoch"] == 1

    # once more: nothing to do, the same table
    assert main(command) == 0
    again = capsys.readouterr().out
    assert "passes done before (from loop.json): 1, 2" in again
    assert [line for line in again.splitlines() if line.startswith("| ")] == table

    # other settings: one line, exit status 2, nothing changed
    before = (run / "loop.json").read_bytes()
    assert main([*command, "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("slimfx slim-loop: error: ") and "epochs 1 (this run: 2)" in err
    assert (run / "loop.json").read_bytes() == before


@pytest.mark.parametrize(
    "flag, value", [("--speedup", "1"), ("--passes", "0"), ("--backend", "abacus")]
)
def test_bad_flags_are_one_line_errors(command, flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*command, flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]
