"""No public pass changes the model it is given: state, dtypes, flags and attributes.

Each entry point runs on a float32 and a float64 copy of a small model in training mode;
afterwards every parameter and buffer is bit for bit what it was (values, dtype, device),
every submodule keeps its training flag and its attribute names.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx.testing import assert_model_unchanged, model_snapshot, randomize_batchnorm

X = torch.randn(2, 3, 16, 16)


class _Small(nn.Module):
    """Conv-BN-ReLU twice, a residual add and a linear head: carriers and bias folds."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + y)
        return self.head(y.mean(dim=(2, 3)))


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def model(request):
    model = randomize_batchnorm(_Small(), seed=3).to(request.param)
    with torch.no_grad():
        model.bn1.bias.abs_()  # positive constants after the ReLU: folds and carriers
        model.bn2.bias.abs_()
    return model.train()


def _inputs(model):
    return X.to(next(model.parameters()).dtype)


ENTRY_POINTS = {
    "slim": lambda m, x: slimfx.slim(m, x, 0.5),
    "slim-zeroed": lambda m, x: slimfx.slim(m, x, 0.5, compensate=False),
    "result.verify and reference": lambda m, x: (
        (res := slimfx.slim(m, x, 0.5, verify=False)).verify(),
        res.reference,
    ),
    "trace": lambda m, x: slimfx.trace(m, x),
    "passes one by one": lambda m, x: _passes(m, x),
}


def _passes(model, x):
    cg = slimfx.analyze(slimfx.trace(model, x))
    constants = slimfx.propagate_constants(cg)
    plan = slimfx.plan(cg, 0.5, constants=constants)
    slimfx.rewrite(cg, plan, constants=constants)
    exact = slimfx.rewrite(cg, plan, dtype=torch.float64)
    slimfx.verify(exact, slimfx.masked_reference(model, cg, plan), x)
    state = slimfx.passes.masked_state(model, cg, plan, dtype=torch.float64)
    state = slimfx.passes.masked_state(model, cg, plan)
    for tensor in state.values():  # the reference state is the caller's to write
        tensor.add_(1)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_the_input_model_is_never_modified(model, entry):
    before = model_snapshot(model)
    ENTRY_POINTS[entry](model, _inputs(model))
    assert_model_unchanged(model, before)


def test_slimming_a_float64_model_keeps_its_pruned_gammas():
    """The reference state of a float64 model is a copy, not the model's own tensors."""
    model = randomize_batchnorm(_Small(), seed=4).double().eval()
    gammas = model.bn1.weight.detach().clone()
    res = slimfx.slim(model, X.double(), 0.5)
    assert res.report.verification_error <= 1e-9
    assert torch.equal(model.bn1.weight, gammas)
    assert bool((res.reference.bn1.weight == 0).any())  # the reference did mask some
