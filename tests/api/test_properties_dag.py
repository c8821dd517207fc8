"""Property tests beyond chains: residual adds, concatenation, depthwise, gates, many consumers.

Random networks built from blocks where one tensor feeds several consumers, groups merge
across adds and concatenations carry several groups at offsets — each result verified in
float64 by the pass and against the oracle masked model, in both compensation modes.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import slimfx
from slimfx.passes.shapes import propagate_shapes
from slimfx.testing import assert_matches_oracle, randomize_batchnorm

BLOCKS = [
    "plain",
    "residual",
    "residual-proj",
    "dense",
    "inception",
    "separable",
    "gate",
    "pool",
    "grouped",
]


def conv_bn(cin, cout, k=3, act=True, groups=1):
    layers = [
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)


class Block(nn.Module):
    def __init__(self, kind, cin, width, spatial):
        super().__init__()
        self.kind = kind
        self.pool = kind == "pool" and spatial >= 4
        if kind == "plain":
            self.a = conv_bn(cin, width)
            self.out = width
        elif kind == "residual":
            self.a = conv_bn(cin, width)
            self.b = conv_bn(width, cin, act=False)
            self.out = cin
        elif kind == "residual-proj":
            self.a = conv_bn(cin, width)
            self.b = conv_bn(width, width, act=False)
            self.proj = conv_bn(cin, width, k=1, act=False)
            self.out = width
        elif kind == "dense":
            self.bn = nn.BatchNorm2d(cin)
            self.a = nn.Conv2d(cin, width, 3, padding=1, bias=False)
            self.out = cin + width
        elif kind == "inception":
            self.a = conv_bn(cin, width, k=1)
            self.b = conv_bn(cin, width + 1, k=3)
            self.out = 2 * width + 1
        elif kind == "separable":
            self.dw = conv_bn(cin, cin, k=3, groups=cin)
            self.pw = conv_bn(cin, width, k=1)
            self.out = width
        elif kind == "grouped":  # a ResNeXt-style bottleneck with a grouped 3x3
            self.a = conv_bn(cin, 2 * width, k=1)
            self.b = conv_bn(2 * width, 2 * width, k=3, groups=2)
            self.c = conv_bn(2 * width, cin, k=1, act=False)
            self.out = cin
        elif kind == "gate":
            self.a = conv_bn(cin, width)
            self.fc1 = nn.Conv2d(width, 3, 1)
            self.fc2 = nn.Conv2d(3, width, 1)
            self.out = width
        else:
            self.out = cin

    def forward(self, x):
        k = self.kind
        if k == "plain":
            return self.a(x)
        if k == "residual":
            return F.relu(x + self.b(self.a(x)))
        if k == "residual-proj":
            return F.relu(self.proj(x) + self.b(self.a(x)))
        if k == "dense":
            return torch.cat([x, self.a(F.relu(self.bn(x)))], dim=1)
        if k == "inception":
            return torch.cat([self.a(x), self.b(x)], 1)
        if k == "separable":
            return self.pw(self.dw(x))
        if k == "grouped":
            return F.relu(x + self.c(self.b(self.a(x))))
        if k == "gate":
            y = self.a(x)
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
            return y * s
        return F.max_pool2d(x, 2) if self.pool else x


class Net(nn.Module):
    def __init__(self, kinds, widths, head, classes=3):
        super().__init__()
        self.stem = conv_bn(3, widths[0])
        blocks, c, spatial = [], widths[0], 8
        for kind, w in zip(kinds, widths[1:], strict=True):
            blocks.append(Block(kind, c, w, spatial))
            c = blocks[-1].out
            spatial //= 2 if blocks[-1].pool else 1
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c if head == "gap" else c * 4, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        if self.head == "gap":
            return self.fc(x.mean((2, 3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 2), 1))


@pytest.mark.slow
@given(
    kinds=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4),
    data=st.data(),
    head=st.sampled_from(["gap", "flatten"]),
    seed=st.integers(0, 2**16),
    percent=st.floats(0.0, 0.85),
    round_to=st.sampled_from([1, 1, 2, 4]),
    group_score=st.sampled_from(["mean", "sum", "max"]),
)
def test_random_dag_models_slim_exactly_in_both_modes(
    kinds, data, head, seed, percent, round_to, group_score
):
    widths = data.draw(
        st.lists(st.integers(2, 8), min_size=len(kinds) + 1, max_size=len(kinds) + 1)
    )
    model = randomize_batchnorm(Net(kinds, widths, head), seed=seed, sparse=0.3)
    x = torch.randn(2, 3, 8, 8)
    for compensate in (True, False):
        res = slimfx.slim(
            model, x, percent, round_to=round_to, compensate=compensate, group_score=group_score
        )
        assert res.report.verification_error <= 1e-9
        for gp in res.plan.groups.values():
            assert len(gp.kept) >= 1
        assert_matches_oracle(model, x, res)
        assert_recorded_shapes_are_real(res.module, x)


def assert_recorded_shapes_are_real(slim, x):
    """The shapes rewrite records (derived from the original's) equal a real run's."""
    recorded = {n.name: _shapes(n) for n in slim.graph.nodes if "tensor_meta" in n.meta}
    propagate_shapes(slim, (x,))
    real = {n.name: _shapes(n) for n in slim.graph.nodes if "tensor_meta" in n.meta}
    assert {k: v for k, v in recorded.items() if k in real} == real


def _shapes(node):
    meta = node.meta["tensor_meta"]
    return tuple(meta.shape) if hasattr(meta, "shape") else tuple(tuple(m.shape) for m in meta)
