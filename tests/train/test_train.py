"""The training loop: checkpoints, LR schedule, sparsity, exact resume, Ctrl-C, NaN losses.

Runs a narrow VGG on 256 digits (4 steps per epoch) on the CPU; "same weights" means
bit-for-bit equal tensors (same process, same thread count, deterministic CPU kernels).
"""

from __future__ import annotations

import copy
import os
import signal

import pytest
import torch
import torch.nn as nn

from slimfx import SlimfxError
from slimfx.models import VGG
from slimfx.train.loop import NonFiniteLossError, TrainConfig, TrainingInterrupted, fit
from slimfx.train.state import BEST_NAME, CHECKPOINT_NAME

KEYS = {"epoch", "best_prec1", "state_dict", "optimizer", "cfg", "step", "lr_scheduler", "rng"}


def make_model(wf, seed: int = 0) -> VGG:
    torch.manual_seed(seed)
    return VGG(dataset="digits", cfg=wf.TINY_CFG)


def config(tmp_path, name: str, **overrides) -> TrainConfig:
    settings = {
        "epochs": 3,
        "lr": 0.05,
        "sparsity": 0.01,
        "seed": 3,
        "device": "cpu",
        "save_dir": tmp_path / name,
    }
    settings.update(overrides)
    return TrainConfig(**settings)


def test_checkpoints_have_the_reference_layout(tmp_path, wf, small_train, small_test):
    epochs = []
    result = fit(
        make_model(wf),
        small_train,
        small_test,
        config(tmp_path, "run", epochs=4),
        on_epoch_end=epochs.append,
    )
    assert [e.epoch for e in epochs] == [1, 2, 3, 4]
    # the learning rate drops 10x at 50% and 75% of the epochs, as in the reference code
    assert [e.lr for e in result.history] == pytest.approx([0.05, 0.05, 0.005, 0.0005])
    for name in (CHECKPOINT_NAME, BEST_NAME):
        ckpt = torch.load(tmp_path / "run" / name, weights_only=True)
        assert ckpt.keys() >= KEYS
        assert ckpt["cfg"] == wf.TINY_CFG and ckpt["step"] == 0
        assert 0 <= ckpt["best_prec1"] <= 1
    last = torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=True)
    assert last["epoch"] == 4
    assert last["best_prec1"] == pytest.approx(max(e.test_accuracy for e in epochs))
    assert wf.states_equal(last["state_dict"], result.model.state_dict())
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT_NAME, BEST_NAME]


def test_sparsity_shrinks_the_gammas(tmp_path, wf, small_train, small_test):
    def gamma_sum(model):
        return sum(
            float(m.weight.detach().abs().sum())
            for m in model.modules()
            if isinstance(m, nn.BatchNorm2d)
        )

    plain = fit(
        make_model(wf), small_train, small_test, config(tmp_path, "plain", epochs=1, sparsity=0.0)
    )
    sparse = fit(
        make_model(wf), small_train, small_test, config(tmp_path, "sparse", epochs=1, sparsity=0.05)
    )
    # 4 steps of lr 0.05, momentum 0.9 and s 0.05 move every gamma by about -0.02
    assert gamma_sum(plain.model) - gamma_sum(sparse.model) > 0.01 * 184
    assert sparse.history[-1].sparse_fraction is not None
    assert plain.history[-1].sparse_fraction is None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, wf, small_train, small_test):
    """Three epochs without interruption (shared by the resume tests)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    return fit(make_model(wf), small_train, small_test, config(folder, "full")), folder


def test_resume_after_ctrl_c_reaches_the_same_weights(
    tmp_path, wf, small_train, small_test, uninterrupted
):
    def interrupt(info):
        if info.epoch == 2 and info.step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as stop:
        fit(make_model(wf), small_train, small_test, config(tmp_path, "cut"), on_step_end=interrupt)
    path = tmp_path / "cut" / CHECKPOINT_NAME
    assert stop.value.checkpoint == path and f"--resume {path}" in str(stop.value)
    saved = torch.load(path, weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 2)  # one epoch and two steps done
    resumed = fit(
        make_model(wf, seed=99), small_train, small_test, config(tmp_path, "cut", resume=path)
    )
    assert [e.epoch for e in resumed.history] == [2, 3]
    full_run, folder = uninterrupted
    assert wf.states_equal(resumed.model.state_dict(), full_run.model.state_dict())
    assert [e.lr for e in resumed.history] == [e.lr for e in full_run.history[1:]]
    final = torch.load(path, weights_only=True)
    full = torch.load(folder / "full" / CHECKPOINT_NAME, weights_only=True)
    assert final["optimizer"]["param_groups"][0]["lr"] == full["optimizer"]["param_groups"][0]["lr"]
    for k, state in full["optimizer"]["state"].items():
        assert torch.equal(
            state["momentum_buffer"], final["optimizer"]["state"][k]["momentum_buffer"]
        )


def test_sigint_stops_after_the_step_and_resumes_exactly(
    tmp_path, wf, small_train, small_test, uninterrupted
):
    def ctrl_c(info):
        if info.epoch == 1 and info.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    # Python's own Ctrl-C handler, as in a terminal (a shell's background job starts with
    # SIGINT ignored, and Python then leaves it ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(TrainingInterrupted):
            fit(
                make_model(wf),
                small_train,
                small_test,
                config(tmp_path, "sig"),
                on_step_end=ctrl_c,
            )
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)
    saved = torch.load(tmp_path / "sig" / CHECKPOINT_NAME, weights_only=True)
    assert saved["epoch"] == 0 and saved["step"] == 3  # the signalled step completed
    resumed = fit(
        make_model(wf, seed=5),
        small_train,
        small_test,
        config(tmp_path, "sig", resume=tmp_path / "sig" / CHECKPOINT_NAME),
    )
    assert wf.states_equal(resumed.model.state_dict(), uninterrupted[0].model.state_dict())


def test_ctrl_c_at_an_epoch_boundary_resumes_exactly(
    tmp_path, wf, small_train, small_test, uninterrupted
):
    def ctrl_c(result):
        if result.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as stop:
        fit(make_model(wf), small_train, small_test, config(tmp_path, "edge"), on_epoch_end=ctrl_c)
    assert stop.value.epoch == 1
    resumed = fit(
        make_model(wf, seed=7),
        small_train,
        small_test,
        config(tmp_path, "edge", resume=stop.value.checkpoint),
    )
    assert wf.states_equal(resumed.model.state_dict(), uninterrupted[0].model.state_dict())


class NaNAt(nn.Module):
    """Wraps a model; its output becomes NaN at the ``at``-th training forward."""

    def __init__(self, model: nn.Module, at: int):
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                return out * float("nan")
        return out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, wf, small_train, small_test):
    model = NaNAt(make_model(wf), at=6)  # epoch 2, step 2
    after_epoch_1 = {}

    def remember(result):
        after_epoch_1.update(copy.deepcopy(model.state_dict()))

    with pytest.raises(NonFiniteLossError) as err:
        fit(
            model,
            small_train,
            small_test,
            config(tmp_path, "nan", sparsity=0.0),
            on_epoch_end=remember,
        )
    assert isinstance(err.value, SlimfxError)
    message = str(err.value)
    assert "NaN at epoch 2, step 2/4" in message and "last good checkpoint" in message
    assert (err.value.epoch, err.value.step) == (2, 2)
    kept = torch.load(tmp_path / "nan" / CHECKPOINT_NAME, weights_only=True)
    assert kept["epoch"] == 1 and wf.states_equal(kept["state_dict"], after_epoch_1)
    # the NaN never reached the weights
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_refuses_a_file_without_optimizer_state(tmp_path, wf, small_train, small_test):
    plain = tmp_path / "weights.pth"
    torch.save(make_model(wf).state_dict(), plain)
    with pytest.raises(SlimfxError, match=r"not a training checkpoint.*--refine"):
        fit(make_model(wf), small_train, small_test, config(tmp_path, "x", resume=plain))


def test_invalid_settings_are_value_errors(wf, small_train, small_test):
    for bad in ({"epochs": 0}, {"lr": -1.0}, {"momentum": 1.5}, {"sparsity": float("nan")}):
        with pytest.raises(ValueError):
            fit(make_model(wf), small_train, small_test, TrainConfig(device="cpu", **bad))
