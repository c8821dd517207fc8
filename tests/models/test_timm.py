"""Representative timm models (``pretrained=False``): each slims to a verified result, the
BatchNorms its idioms used to freeze are pruned, and the model comes out unchanged.

The whole timm list is ``benchmarks/timm_zoo.py``; these are the idioms one each:
``BatchNormAct2d`` and cross-stage splits (CSPNeXt), mixed-kernel splits with
squeeze-and-excitation gates (MixNet), and an attention model that caches its biases in a
plain dict (LeViT).
"""

from __future__ import annotations

import pytest
import timm
import torch

import slimfx
from slimfx.testing import assert_model_unchanged, model_snapshot, randomize_batchnorm

CASES = {
    # model: (input size, least share of BatchNorms pruned)
    "cspnext_tiny": (64, 1.0),
    "mixnet_s": (64, 1.0),
    "levit_128s": (224, 0.0),
}


def _share_pruned(res) -> float:
    rows = res.report.layers
    pruned = [r for r in rows if {"compensate", "zero"} & set(r.mode.split("/"))]
    return len(pruned) / len(rows)


@pytest.mark.parametrize("name", list(CASES))
def test_timm_model_slims_verified_and_unchanged(name):
    size, share = CASES[name]
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model(name, pretrained=False), seed=0).eval()
    x = torch.randn(1, 3, size, size)
    before = model_snapshot(model)
    res = slimfx.slim(model, x, 0.3)
    assert res.report.verification_error <= 1e-9
    assert res.report.weights_error <= 1e-5
    assert res.report.params_after < res.report.params_before
    assert _share_pruned(res) >= share
    assert_model_unchanged(model, before)
    again = slimfx.slim(model, x, 0.3)  # a second slim of the same model works the same
    assert again.kept == res.kept
