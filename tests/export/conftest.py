"""Small models shared by the export, benchmark and width tests."""

import pytest
import torch

import slimfx
from slimfx.bench.latency import synthetic_scales
from slimfx.models import VGG

#: A VGG small enough to export and time in well under a second (32x32 inputs).
TINY_CFG = [8, "M", 16, "M", 16, "M", 24, "M", 24]


def tiny_vgg(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return synthetic_scales(VGG(cfg=TINY_CFG), seed).eval()


@pytest.fixture(scope="session")
def make_tiny_vgg():
    return tiny_vgg


@pytest.fixture
def model():
    return tiny_vgg()


@pytest.fixture
def example():
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def slim_result():
    """The tiny VGG slimmed by half (shared: tests must not modify it)."""
    return slimfx.slim(tiny_vgg(), torch.randn(1, 3, 32, 32), 0.5)
