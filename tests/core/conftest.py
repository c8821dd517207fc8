"""Shared fixtures of the core pass tests."""

import pytest
import torch

import slimfx
from slimfx.testing import max_relative_error, oracle_masked_model
from slimfx.tolerances import FLOAT32_RTOL, FLOAT64_RTOL


def check_against_oracle(model, example, res):
    """The slim model equals the masked model built from res.kept alone (both precisions)."""
    zero_beta = {row.name: row.mode == "zero" for row in res.report.layers}
    oracle = oracle_masked_model(model, res.kept, zero_beta)
    exact = slimfx.rewrite(res.channel_graph, res.plan, dtype=torch.float64)
    assert max_relative_error(exact, oracle, example) <= FLOAT64_RTOL
    assert max_relative_error(res.module, oracle, example) <= FLOAT32_RTOL


@pytest.fixture
def oracle_check():
    return check_against_oracle


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
