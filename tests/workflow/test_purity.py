"""``prune_model`` never changes the model it is given: not its state, dtype, device or mode,
whether it tests the original, writes files or chooses ``round_to``."""

from __future__ import annotations

import pytest
import torch

from slimfx.models import VGG
from slimfx.testing import assert_model_unchanged, model_snapshot
from slimfx.workflow.prune import prune_model


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def training_model(request, wf):
    model = wf.sparse_trained_like(VGG(dataset="digits", cfg=wf.TINY_CFG), seed=5)
    return model.to(request.param).train()


def test_prune_model_leaves_the_model_unchanged(training_model, small_test, tmp_path):
    dtype = next(training_model.parameters()).dtype
    test_set = [(x.to(dtype), y) for x, y in (small_test[i] for i in range(16))]
    before = model_snapshot(training_model)
    outcome = prune_model(
        training_model,
        percent=0.5,
        round_to=4,
        test_set=test_set,
        save_dir=tmp_path / "out",
        test_original=True,
        plots=False,
    )
    assert outcome.original_accuracy is not None
    assert not outcome.result.module.training and not outcome.result.reference.training
    assert_model_unchanged(training_model, before)
