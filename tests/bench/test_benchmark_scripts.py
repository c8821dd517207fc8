"""The helpers of benchmarks/: Torch-Pruning as the peer."""

from pathlib import Path

import pytest
import torch

import slimfx
from slimfx.counting import count_macs

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"


@pytest.fixture
def peer(monkeypatch):
    import torch_pruning  # noqa: F401  (the peer tool: installed with the test extra)

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import torch_pruning_peer

    return torch_pruning_peer


def test_torch_pruning_removes_the_same_channels(peer, make_tiny_vgg):
    model, x = make_tiny_vgg(), torch.randn(1, 3, 32, 32)
    res = slimfx.slim(model, x, 0.5)
    theirs = peer.prune_same_channels(model, x, res)
    widths = [m.num_features for m in theirs.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert widths == [row.width for row in res.report.layers]
    assert count_macs(slimfx.trace(theirs, x)) == res.report.macs_after
    assert [m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == [
        8,
        16,
        16,
        24,
        24,
    ]


def test_torch_pruning_native_rounds_down(peer, make_tiny_vgg):
    model, x = make_tiny_vgg(), torch.randn(1, 3, 32, 32)
    theirs = peer.prune_native(model, x, 0.5, round_to=8)
    widths = [m.num_features for m in theirs.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(w > 0 and w % 8 == 0 for w in widths) and sum(widths) < 88
