"""``slim_loop``: passes toward a latency target, fine-tuning between, resumable.

One loop of a narrow VGG on digits (2 passes toward 2x on torch-cpu, 1 epoch each) is run
interrupted — Ctrl-C in the second pass's fine-tuning — then resumed, then run once more
after it finished; the tests read what the three runs did.
"""

from __future__ import annotations

import json
import math
import types

import pytest
import torch

from slimfx.errors import CheckpointError
from slimfx.ir.options import SlimOptions
from slimfx.models import VGG
from slimfx.train.config import TrainConfig
from slimfx.train.loop import TrainingInterrupted
from slimfx.workflow.slim_loop import STATE_NAME, TABLE_NAME, loop_table, slim_loop

CFG = [16, "M", 32, "M", 32, "M", 48, "M", 48]
OPTIONS = SlimOptions(speedup=2.0, backend="torch-cpu", batch=16, threads=1)
TRAIN = TrainConfig(epochs=1, lr=0.01, batch_size=16, device="cpu")
PASS_FILES = ("prune.txt", "pruned.pth", "prune.json", "checkpoint.pth.tar", "model_best.pth.tar")


def _model(wf, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return wf.sparse_trained_like(VGG(dataset="digits", cfg=CFG), seed=seed, zero_fraction=0.3)


def _stamps(save) -> dict[str, int]:
    return {str(p.relative_to(save)): p.stat().st_mtime_ns for p in save.glob("pass-*/*")}


@pytest.fixture(scope="module")
def loop(tmp_path_factory, small_train, small_test, wf):
    """Run the loop interrupted, resumed and again; return what each run did."""
    save = tmp_path_factory.mktemp("loop")
    cache = tmp_path_factory.mktemp("latency-cache")
    model = _model(wf)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def run(**callbacks):
        return slim_loop(
            model,
            small_train,
            small_test,
            OPTIONS,
            TRAIN,
            passes=2,
            save_dir=save,
            dataset="digits",
            latency_cache=cache,
            plots=False,
            **callbacks,
        )

    def stop_in_pass_2(k, step):
        if k == 2 and step.step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        run(on_step_end=stop_in_pass_2)
    interrupted = json.loads((save / STATE_NAME).read_text())
    stamps = _stamps(save)
    events: dict[str, list] = {"pruned": [], "steps": [], "done": []}
    resumed = run(
        on_pruned=lambda r: events["pruned"].append(r.index),
        on_step_end=lambda k, s: events["steps"].append((k, s.step)),
        on_pass_end=lambda r: events["done"].append(r.index),
    )
    resumed_stamps = _stamps(save)
    again = run(on_pruned=lambda r: events["pruned"].append(r.index))
    return types.SimpleNamespace(
        save=save,
        model=model,
        before=before,
        interrupted=interrupted,
        stamps=stamps,
        events=events,
        resumed=resumed,
        resumed_stamps=resumed_stamps,
        again=again,
        cache=cache,
    )


def test_every_pass_writes_its_files_and_they_load(loop, wf):
    for k, row in enumerate(loop.resumed.rows, 1):
        folder = loop.save / f"pass-{k}"
        for name in PASS_FILES:
            assert (folder / name).is_file(), f"pass-{k}/{name}"
        pruned = torch.load(folder / "pruned.pth", weights_only=True)
        assert pruned["cfg"] == row.cfg
        VGG(dataset="digits", cfg=pruned["cfg"]).load_state_dict(pruned["state_dict"])
        ckpt = torch.load(folder / row.checkpoint, weights_only=True)
        assert ckpt["epoch"] == 1 and ckpt["step"] == 0 and ckpt["cfg"] == row.cfg
        assert ckpt["prec1"] == pytest.approx(row.finetuned_accuracy)
        assert 0 <= ckpt["best_prec1"] <= 1
    assert json.loads((loop.save / "pass-1" / "prune.json").read_text())["report"]["latency"]
    assert wf.states_equal(loop.model.state_dict(), loop.before)  # the input is not modified


def test_the_second_pass_prunes_the_fine_tuned_first(loop):
    first, second = loop.resumed.rows
    assert second.params < first.params < loop.resumed.original["params"]
    assert second.macs < first.macs < loop.resumed.original["macs"]
    assert all(b <= a for a, b in zip(first.cfg, second.cfg, strict=True) if a != "M")
    pass_2_input = torch.load(loop.save / "pass-1" / first.checkpoint, weights_only=True)
    assert pass_2_input["cfg"] == first.cfg
    final = loop.resumed.model
    assert final.cfg == second.cfg and not final.training
    assert sum(p.numel() for p in final.parameters()) == second.params
    assert loop.resumed.checkpoint == loop.save / "pass-2" / second.checkpoint


def test_the_table_has_one_row_per_pass_with_measured_speedups(loop):
    rows = loop.resumed.rows
    assert [r.index for r in rows] == [1, 2] and all(r.stage == "done" for r in rows)
    assert rows[0].asked == pytest.approx(math.sqrt(2))  # the first of two passes
    assert rows[1].asked == pytest.approx(2 / rows[0].measured)  # re-aimed at what is missing
    for r in rows:
        assert r.measured > 1
        assert r.measured_ms == pytest.approx(r.budget_ms * r.asked / r.measured, rel=1e-6)
        assert r.predicted_ms > 0 and 0 <= r.pruned_accuracy <= 1
    assert rows[-1].asked_total == pytest.approx(2.0)
    assert rows[-1].measured_total == pytest.approx(rows[0].measured * rows[1].measured)
    original = loop.resumed.original
    assert original["ms"] > rows[0].measured_ms and 0 <= original["accuracy"] <= 1
    table = (loop.save / TABLE_NAME).read_text()
    assert table.strip() == loop_table(rows, original)
    assert len(table.strip().splitlines()) == 2 + 1 + 2  # head, rule, original, passes
    state = json.loads((loop.save / STATE_NAME).read_text())
    assert [p["stage"] for p in state["passes"]] == ["done", "done"]
    assert state["settings"]["passes"] == 2 and state["settings"]["speedup"] == 2.0


def test_an_interrupted_loop_resumes_where_it_stopped(loop):
    assert [p["stage"] for p in loop.interrupted["passes"]] == ["done", "pruned"]
    # pass 1 and pass 2's pruning are not done again; pass 2's fine-tuning continues at step 3
    assert loop.events["pruned"] == [] and loop.events["done"] == [2]
    assert loop.events["steps"][0] == (2, 3)
    assert {k for k, _ in loop.events["steps"]} == {2}
    for name in ("pass-1/pruned.pth", "pass-1/model_best.pth.tar", "pass-2/pruned.pth"):
        assert loop.resumed_stamps[name] == loop.stamps[name]
    assert loop.resumed.skipped == [1]
    assert loop.resumed.rows[1].cfg == loop.interrupted["passes"][1]["cfg"]


def test_a_finished_loop_is_not_run_again(loop, wf):
    assert loop.again.skipped == [1, 2] and loop.events["pruned"] == []
    assert loop.again.rows == loop.resumed.rows
    assert loop.again.original == loop.resumed.original
    assert _stamps(loop.save) == loop.resumed_stamps
    assert wf.states_equal(loop.again.model.state_dict(), loop.resumed.model.state_dict())


def test_other_settings_than_the_state_file_fail_before_any_work(loop, small_train, small_test, wf):
    state = (loop.save / STATE_NAME).read_bytes()
    common = dict(save_dir=loop.save, dataset="digits", latency_cache=loop.cache)
    with pytest.raises(ValueError, match=r"passes 2 \(this run: 3\)"):
        slim_loop(loop.model, small_train, small_test, OPTIONS, TRAIN, passes=3, **common)
    with pytest.raises(ValueError, match=r"backend \"torch-cpu\" \(this run: \"ort-cpu\"\)"):
        options = OPTIONS.replace(backend="ort-cpu")
        slim_loop(loop.model, small_train, small_test, options, TRAIN, passes=2, **common)
    with pytest.raises(ValueError, match="model with weights"):
        slim_loop(_model(wf, 1), small_train, small_test, OPTIONS, TRAIN, passes=2, **common)
    assert (loop.save / STATE_NAME).read_bytes() == state
    assert not (loop.save / "pass-3").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"options": SlimOptions(percent=0.5)}, "speedup target"),
        ({"passes": 0}, "passes must be a positive integer"),
        ({"continue_from": "worst"}, "continue_from"),
        ({"train": TrainConfig(epochs=0)}, "--epochs"),
        ({"train": TrainConfig(save_dir="x")}, "save_dir and resume"),
        ({"dataset": "cifar100"}, "does not fit|classifier"),
    ],
)
def test_invalid_inputs_fail_before_any_file_is_written(
    tmp_path, small_train, small_test, wf, change, message
):
    args = {"options": OPTIONS, "train": TRAIN, "passes": 2, "dataset": "digits", **change}
    with pytest.raises((ValueError, CheckpointError), match=message):
        slim_loop(_model(wf), small_train, small_test, save_dir=tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_a_corrupt_state_file_is_named(tmp_path, small_train, small_test, wf):
    (tmp_path / STATE_NAME).write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="not a slim-loop state file"):
        slim_loop(_model(wf), small_train, small_test, OPTIONS, TRAIN, passes=2, save_dir=tmp_path)
