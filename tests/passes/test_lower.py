"""Lowering for export: adaptive pooling over fixed windows equals PyTorch's op."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimfx.passes.lower import adaptive_pool_windows, lower_for_export, windows
from slimfx.passes.trace import trace

POOLS = {
    ("max", 1): F.adaptive_max_pool1d,
    ("max", 2): F.adaptive_max_pool2d,
    ("max", 3): F.adaptive_max_pool3d,
    ("avg", 1): F.adaptive_avg_pool1d,
    ("avg", 2): F.adaptive_avg_pool2d,
    ("avg", 3): F.adaptive_avg_pool3d,
}


@pytest.mark.parametrize(("mode", "ndim"), list(POOLS))
@pytest.mark.parametrize("seed", range(4))
def test_fixed_windows_equal_adaptive_pooling(mode, ndim, seed):
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(2, 10, (ndim,), generator=generator).tolist()
    outs = [int(torch.randint(1, s + 1, (1,), generator=generator)) for s in sizes]
    x = torch.randn(2, 3, *sizes, generator=generator, dtype=torch.float64)
    dims = tuple(range(2, 2 + ndim))
    cells = tuple(tuple(windows(s, o)) for s, o in zip(sizes, outs, strict=True))
    got = adaptive_pool_windows(x, mode, dims, cells)
    want = POOLS[(mode, ndim)](x, outs)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)  # float64: exact up to rounding


class _Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((3, 2))
        self.even = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return F.adaptive_max_pool2d(x, 2).sum() + self.pool(x).sum() + self.even(x).sum()


def test_only_pools_the_exporters_refuse_are_lowered():
    gm = trace(_Heads(), torch.randn(1, 3, 7, 6))
    lowered = lower_for_export(gm)
    calls = [n.target.__name__ for n in lowered.graph.nodes if n.op == "call_function"]
    assert calls.count("adaptive_pool_windows") == 2  # 7x6 -> 2x2 and -> 3x2 (7 % 3)
    assert any(n.op == "call_module" and n.target == "even" for n in lowered.graph.nodes)
    assert not hasattr(lowered, "pool") and hasattr(gm, "pool")  # the input is not modified
    x = torch.randn(4, 3, 7, 6)
    torch.testing.assert_close(lowered(x), gm(x))
    divisible = trace(_Heads(), torch.randn(1, 3, 6, 6))
    assert lower_for_export(divisible).graph is not None
    assert sum(n.op == "call_function" for n in lower_for_export(divisible).graph.nodes) == sum(
        n.op == "call_function" for n in divisible.graph.nodes
    )
