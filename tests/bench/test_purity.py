"""Measuring latency and choosing ``round_to`` never change the model they are given."""

from __future__ import annotations

import pytest
import torch

from slimfx.bench.latency import compare_latency, measure_latency
from slimfx.bench.round_to import measure_round_to
from slimfx.testing import assert_model_unchanged, model_snapshot

FAST = {"rounds": 2, "warmup": 1, "progress": False}


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def training_model(request, make_tiny_vgg):
    return make_tiny_vgg().to(request.param).train()


def _inputs(model):
    return torch.randn(2, 3, 32, 32, dtype=next(model.parameters()).dtype)


def _backends(model):
    """onnxruntime has no float64 convolution: float64 models are timed in PyTorch only."""
    float32 = next(model.parameters()).dtype == torch.float32
    return ("torch-cpu", "ort-cpu") if float32 else ("torch-cpu",)


def test_measure_latency_leaves_the_models_unchanged(training_model, make_tiny_vgg):
    other = make_tiny_vgg(seed=1).to(next(training_model.parameters()).dtype)
    before = [model_snapshot(training_model), model_snapshot(other)]
    report = measure_latency(
        {"a": training_model, "b": other},
        _inputs(training_model),
        batches=(1,),
        backends=_backends(training_model),
        min_round_seconds=0.0,
        **FAST,
    )
    assert len(report.measurements) == 2 * len(_backends(training_model))
    assert_model_unchanged(training_model, before[0])
    assert_model_unchanged(other, before[1])


def test_compare_latency_leaves_the_original_unchanged(training_model):
    import slimfx

    x = _inputs(training_model)
    slim = slimfx.slim(training_model, x, 0.5).module
    before = model_snapshot(training_model)
    compare_latency(
        training_model,
        slim,
        x,
        batches=(1,),
        backends=_backends(training_model),
        min_round_seconds=0.0,
        **FAST,
    )
    assert_model_unchanged(training_model, before)


def test_measure_round_to_leaves_the_model_unchanged(training_model):
    before = model_snapshot(training_model)
    choice = measure_round_to(
        training_model,
        _inputs(training_model),
        0.5,
        candidates=(1, 8),
        backend="torch-cpu",
        batch=1,
        rounds=2,
        warmup=1,
    )
    assert choice.round_to in (1, 8)
    assert_model_unchanged(training_model, before)
