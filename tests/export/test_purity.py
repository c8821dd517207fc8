"""Exporting never changes the model it is given, float32 or float64, on success or error.

onnxruntime has no float64 convolution, so a float64 model's export ends in a
:class:`slimfx.SlimfxError`; the model must come out of that unchanged as well.
"""

from __future__ import annotations

import pytest
import torch

import slimfx
from slimfx.errors import SlimfxError
from slimfx.export.check import check_onnx
from slimfx.testing import assert_model_unchanged, model_snapshot


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def training_model(request, make_tiny_vgg):
    return make_tiny_vgg().to(request.param).train()


def _inputs(model):
    return torch.randn(2, 3, 32, 32, dtype=next(model.parameters()).dtype)


def test_export_onnx_leaves_the_model_unchanged(training_model, tmp_path):
    before = model_snapshot(training_model)
    try:
        slimfx.export_onnx(training_model, _inputs(training_model), tmp_path / "m.onnx")
    except SlimfxError:
        assert next(training_model.parameters()).dtype == torch.float64
    assert_model_unchanged(training_model, before)


def test_check_onnx_leaves_the_model_unchanged(make_tiny_vgg, tmp_path):
    model = make_tiny_vgg().eval()
    x = _inputs(model)
    slimfx.export_onnx(model, x, tmp_path / "m.onnx")
    model.train()
    before = model_snapshot(model)
    check_onnx(tmp_path / "m.onnx", model, (x,))
    assert_model_unchanged(model, before)
