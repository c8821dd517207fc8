"""Shared fixtures of the core pass tests."""

import pytest
import torch

from slimfx.bench.timing import torch_threads
from slimfx.testing import assert_matches_oracle


@pytest.fixture
def oracle_check():
    return assert_matches_oracle


@pytest.fixture(autouse=True)
def _deterministic_single_thread():
    """Tiny models: one thread avoids thread start-up costs dominating every op."""
    torch.manual_seed(0)
    with torch_threads(1):
        yield
