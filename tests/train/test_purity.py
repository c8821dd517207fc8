"""Evaluation leaves the model as it found it (``fit`` trains its model in place by design)."""

from __future__ import annotations

import pytest
import torch

from slimfx.models import VGG
from slimfx.testing import assert_model_unchanged, model_snapshot
from slimfx.train.evaluation import evaluate


@pytest.mark.parametrize("training", [True, False], ids=["train-mode", "eval-mode"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_evaluate_leaves_the_model_unchanged(dtype, training, small_test, wf):
    model = VGG(dataset="digits", cfg=wf.TINY_CFG).to(dtype).train(training)
    data = [(x.to(dtype), y) for x, y in (small_test[i] for i in range(32))]
    before = model_snapshot(model)
    accuracy = evaluate(model, data, batch_size=8)
    assert 0.0 <= accuracy <= 1.0
    assert_model_unchanged(model, before)
