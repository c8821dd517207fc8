"""slimfx.bench.round_to: round_to chosen from a measurement."""

import math

import pytest
import torch

from slimfx.bench.round_to import auto_round_to, measure_round_to
from slimfx.errors import SlimfxError

FAST = {"backend": "ort-cpu", "batch": 2, "rounds": 3, "warmup": 1}


@pytest.fixture(scope="module")
def choice(make_tiny_vgg):
    # 32 and 64 both give the original widths (rounding is capped there): measured once.
    return measure_round_to(
        make_tiny_vgg(), torch.randn(1, 3, 32, 32), 0.5, candidates=(1, 8, 32, 64), **FAST
    )


def test_each_candidate_rounds_the_widths(choice):
    original = (8, 16, 16, 24, 24)
    assert [t.round_to for t in choice.trials] == [1, 8, 32, 64]
    for trial in choice.trials:
        for width, full in zip(trial.widths, original, strict=True):
            assert width % trial.round_to == 0 or width == full
    assert choice.trials[2].widths == original == choice.trials[3].widths
    macs = [t.macs for t in choice.trials]
    assert macs == sorted(macs) and macs[0] < macs[-1]


def test_identical_widths_are_measured_once_and_never_chosen_twice(choice):
    assert sorted(choice.report.models) == ["round_to=1", "round_to=32", "round_to=8"]
    assert math.isnan(choice.trials[3].median_ms)
    assert choice.round_to != 64


def test_the_choice_is_the_fastest_within_tolerance(choice):
    measured = [t for t in choice.trials if not math.isnan(t.min_ms)]
    best = min(t.min_ms for t in measured)
    chosen = next(t for t in choice.trials if t.round_to == choice.round_to)
    assert chosen.min_ms <= best * 1.05
    assert all(t.round_to >= chosen.round_to for t in measured if t.min_ms <= best * 1.05)
    assert "<- chosen" in choice.table()


def test_auto_round_to_returns_a_candidate(make_tiny_vgg):
    # With a huge tolerance every candidate is "as fast": the smallest wins.
    value = auto_round_to(
        make_tiny_vgg(), torch.randn(1, 3, 32, 32), 0.5, candidates=(16, 8), tolerance=100.0, **FAST
    )
    assert value == 8 and isinstance(value, int)


def test_invalid_arguments(make_tiny_vgg):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="candidates"):
        measure_round_to(make_tiny_vgg(), x, candidates=(0, 8))
    with pytest.raises(ValueError, match="tolerance"):
        measure_round_to(make_tiny_vgg(), x, tolerance=-1)


def test_unavailable_backend_is_an_error(make_tiny_vgg, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SlimfxError, match="torch-cuda"):
        measure_round_to(
            make_tiny_vgg(), torch.randn(1, 3, 32, 32), candidates=(1,), backend="torch-cuda"
        )
