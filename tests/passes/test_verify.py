"""Verification: the masked reference, its state, and the comparison in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx.models import VGG
from slimfx.passes.verify import float64_state, masked_state, random_inputs
from slimfx.testing import randomize_batchnorm

X = torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def pruned():
    model = randomize_batchnorm(VGG(depth=11), seed=9).eval()
    cg = slimfx.analyze(slimfx.trace(model, X))
    plan = slimfx.plan(cg, 0.5)
    return model, cg, plan


def test_the_reference_zeroes_exactly_the_pruned_gammas(pruned):
    model, cg, plan = pruned
    reference = slimfx.masked_reference(model, cg, plan)
    checked = 0
    for group in cg.groups:
        gp = plan.groups.get(group.name)
        for scorer in group.scorers if gp is not None else ():
            original, masked = (
                model.get_submodule(scorer.module),
                reference.get_submodule(scorer.module),
            )
            zero = masked.weight == 0
            assert int(zero.sum()) == gp.size - len(gp.kept)
            assert torch.equal(masked.weight[~zero], original.weight[~zero])
            assert torch.equal(masked.bias, original.bias)  # compensated: betas kept
            checked += 1
    assert checked == 8  # VGG-11's BatchNorms


def test_masked_state_is_the_reference_state_in_float64(pruned):
    model, cg, plan = pruned
    state = masked_state(model, cg, plan, dtype=torch.float64)
    reference = slimfx.masked_reference(model, cg, plan).double()
    for key, value in reference.state_dict().items():
        assert value.dtype == state[key].dtype
        assert torch.equal(value, state[key]), key


def test_zeroed_groups_zero_their_betas_too(pruned):
    model, cg, _ = pruned
    plan = slimfx.plan(cg, 0.5, compensate=False)
    reference = slimfx.masked_reference(model, cg, plan)
    bn = reference.feature[1]
    assert torch.equal(bn.weight == 0, bn.bias == 0)


def test_equal_modules_verify_and_a_perturbed_one_does_not(pruned):
    model, cg, plan = pruned
    exact = slimfx.rewrite(cg, plan, dtype=torch.float64)
    reference = slimfx.masked_reference(model, cg, plan)
    assert slimfx.verify(exact, reference, X) <= 1e-9
    with torch.no_grad():
        exact.classifier.bias.add_(1e-3)
    with pytest.raises(slimfx.EquivalenceError) as info:
        slimfx.verify(exact, reference, X)
    assert info.value.relative_error > 1e-9
    assert slimfx.verify(exact, reference, X, tolerance=1.0) == info.value.relative_error


def test_a_float64_module_is_run_on_its_own_tensors_and_left_unchanged(pruned):
    model, cg, plan = pruned
    exact = slimfx.rewrite(cg, plan, dtype=torch.float64).train()
    before = {k: v.clone() for k, v in exact.state_dict().items()}
    state = float64_state(exact)  # no copies: read-only
    for key, value in exact.state_dict().items():
        assert state[key].data_ptr() == value.data_ptr(), key
    slimfx.verify(exact, slimfx.masked_reference(model, cg, plan), X)
    assert exact.training  # run in eval mode: BatchNorm statistics untouched
    for key, value in exact.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_nan_outputs_never_verify():
    class NaNOut(nn.Module):
        def forward(self, x):
            return x * float("nan")

    with pytest.raises(slimfx.EquivalenceError, match="inf"):
        slimfx.verify(NaNOut(), nn.Identity(), X)


def test_verification_restores_training_flags_and_draws_by_seed():
    a, b = nn.Sequential(nn.BatchNorm2d(3)).train(), nn.Sequential(nn.BatchNorm2d(3)).train()
    slimfx.verify(a, b, X)
    assert a.training and a[0].training and b[0].training
    first, again = random_inputs(X, seed=3), random_inputs(X, seed=3)
    assert torch.equal(first[0], again[0]) and first[0].dtype == torch.float64
    assert not np.array_equal(random_inputs(X, seed=4)[0].numpy(), first[0].numpy())


def test_a_slim_model_that_fails_to_run_is_an_equivalence_error():
    class Broken(torch.nn.Module):
        def forward(self, x):
            return x.view(x.shape[0], 7, -1)

    with pytest.raises(slimfx.EquivalenceError, match="fails to run: RuntimeError"):
        slimfx.verify(Broken(), torch.nn.Identity(), torch.randn(2, 3, 4, 4))
