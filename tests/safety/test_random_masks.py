"""Property tests over random masks: any set of kept channels, in any prunable group.

The other property tests draw gammas and let the global threshold choose; here the kept
channels of every prunable group are drawn first — any non-empty subset, balanced across the
blocks of a grouped convolution — and the gammas are then set so that the plan keeps exactly
those. Each result is checked in float64 against the pass's masked reference and against the
independent oracle; then the carrier channel of every group that has one is moved to another
pruned channel at random, the plan rewritten and checked again.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import event, given
from hypothesis import strategies as st

import slimfx
from slimfx.testing import assert_matches_oracle, max_relative_error, oracle_masked_model
from slimfx.testing import randomize_batchnorm as randomize
from slimfx.tolerances import FLOAT32_RTOL, FLOAT64_RTOL

KINDS = ["conv", "conv-act-bn", "residual", "concat", "grouped", "gate", "pool"]


def conv_bn(cin, cout, *, k=3, pad=None, bias=False, groups=1, act=True, bn_after=False):
    conv = nn.Conv2d(cin, cout, k, padding=k // 2 if pad is None else pad, bias=bias, groups=groups)
    layers = [conv, nn.LeakyReLU(0.1), nn.BatchNorm2d(cout)] if bn_after else [conv]
    if not bn_after:
        layers += [nn.BatchNorm2d(cout)] + ([nn.ReLU()] if act else [])
    return nn.Sequential(*layers)


class Block(nn.Module):
    def __init__(self, kind: str, cin: int, width: int, bias: bool, pad: int):
        super().__init__()
        self.kind, self.out = kind, width
        if kind == "conv":
            self.a = conv_bn(cin, width, bias=bias, pad=pad)
        elif kind == "conv-act-bn":
            self.a = conv_bn(cin, width, bias=bias, bn_after=True)
        elif kind == "residual":
            self.a, self.b = conv_bn(cin, width), conv_bn(width, cin, act=False)
            self.out = cin
        elif kind == "concat":
            self.a, self.b = conv_bn(cin, width, k=1, bias=bias), conv_bn(cin, width + 1)
            self.out = 2 * width + 1
        elif kind == "grouped":
            self.a = conv_bn(cin, 2 * width, k=1)
            self.b = conv_bn(2 * width, 2 * width, groups=2)
            self.out = 2 * width
        elif kind == "gate":
            self.a = conv_bn(cin, width)
            self.squeeze, self.excite = nn.Conv2d(width, 2, 1), nn.Conv2d(2, width, 1)
        else:
            self.out = cin

    def forward(self, x):
        if self.kind in ("conv", "conv-act-bn"):
            return self.a(x)
        if self.kind == "residual":
            return F.relu(x + self.b(self.a(x)))
        if self.kind == "concat":
            return torch.cat([self.a(x), self.b(x)], dim=1)
        if self.kind == "grouped":
            return self.b(self.a(x))
        if self.kind == "gate":
            y = self.a(x)
            return y * torch.sigmoid(self.excite(F.relu(self.squeeze(y.mean((2, 3), True)))))
        return F.max_pool2d(x, 2)


class Net(nn.Module):
    def __init__(self, blocks, stem: int, head: str):
        super().__init__()
        self.stem = conv_bn(3, stem)
        layers, c = [], stem
        for kind, width, bias, pad in blocks:
            layers.append(Block(kind, c, width, bias, pad))
            c = layers[-1].out
        self.blocks = nn.Sequential(*layers)
        self.head = head
        if head == "mlp":
            self.fc = nn.Sequential(
                nn.Linear(c * 4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)
            )
        else:
            self.fc = nn.Linear(c if head == "gap" else c * 4, 3)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        if self.head == "gap":
            return self.fc(x.mean((2, 3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 2), 1))


@st.composite
def networks(draw):
    """1-4 random blocks on 8x8 inputs (spatial sizes tracked so every layer gets >= 2x2)."""
    blocks, spatial = [], 8
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(KINDS))
        pad = draw(st.sampled_from([0, 1]))
        if kind == "pool" and spatial < 4:
            kind = "conv"
        if kind == "conv" and spatial < 4:
            pad = 1
        if kind == "pool":
            spatial //= 2
        elif kind == "conv" and not pad:
            spatial -= 2
        blocks.append((kind, draw(st.integers(1, 6)), draw(st.booleans()), pad))
    return Net(blocks, draw(st.integers(2, 6)), draw(st.sampled_from(["gap", "flatten", "mlp"])))


def draw_masks(data, cg, planned) -> dict[str, np.ndarray]:
    """Group name → kept mask: any non-empty subset, the same count in every block."""
    masks = {}
    for name in planned:
        group = next(g for g in cg.groups if g.name == name)
        size = group.size // group.blocks
        k = data.draw(st.integers(1, size), label=f"{name} keeps per block")
        mask = np.zeros(group.size, dtype=bool)
        for b in range(group.blocks):
            chosen = data.draw(st.permutations(range(size)), label=f"{name} order")[:k]
            mask[b * size + np.array(chosen)] = True
        masks[name] = mask
    return masks


def set_gammas(model, cg, masks, rng) -> None:
    """Kept channels get |gamma| in [0.5, 1.5], pruned ones below 1e-3, signs at random."""
    with torch.no_grad():
        for group in cg.groups:
            if group.name not in masks:
                continue
            for scorer in group.scorers:
                bn = model.get_submodule(scorer.module)
                keep = masks[group.name][scorer.group_index]
                size = len(scorer.bn_channel)
                value = np.where(keep, rng.uniform(0.5, 1.5, size), rng.uniform(1e-5, 1e-3, size))
                value *= rng.choice([-1.0, 1.0], size)
                bn.weight[torch.as_tensor(scorer.bn_channel)] = torch.as_tensor(
                    value, dtype=bn.weight.dtype
                )


@pytest.mark.slow
@given(net=networks(), data=st.data(), seed=st.integers(0, 2**16), compensate=st.booleans())
def test_random_masks_slim_exactly(net, data, seed, compensate):
    model = randomize(net, seed=seed).eval()
    x = torch.randn(2, 3, 8, 8)
    cg = slimfx.analyze(slimfx.trace(model, x))
    planned = slimfx.plan(cg, 0.0, compensate=compensate).groups  # the prunable groups
    masks = draw_masks(data, cg, planned)
    set_gammas(model, cg, masks, np.random.default_rng(seed))
    total = sum(len(m) for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    res = slimfx.slim(model, x, (pruned + 0.5) / total, compensate=compensate)

    for name, mask in masks.items():  # the plan realised the drawn masks
        kept = res.plan.groups[name].kept
        # a single pruned channel that would become the carrier is not worth a carrier
        assert kept == np.flatnonzero(mask).tolist() or kept == list(range(len(mask)))
    assert res.report.verification_error <= FLOAT64_RTOL
    assert_matches_oracle(model, x, res)

    moved = copy.deepcopy(res.plan)
    event(f"carriers: {sum(gp.carrier is not None for gp in moved.groups.values())}")
    event(f"zeroed groups: {sum(gp.mode == 'zero' for gp in moved.groups.values())}")
    for name, gp in moved.groups.items():
        if gp.carrier is not None:
            others = sorted(set(range(gp.size)) - set(gp.kept))
            moved.groups[name] = dataclasses.replace(gp, carrier=data.draw(st.sampled_from(others)))
    exact = slimfx.rewrite(res.channel_graph, moved, dtype=torch.float64)
    oracle = oracle_masked_model(model, res.kept, res.zeroed)
    assert max_relative_error(exact, oracle, x) <= FLOAT64_RTOL
    reference = slimfx.masked_reference(model, res.channel_graph, moved)
    slimfx.verify(slimfx.rewrite(res.channel_graph, moved), reference, x, tolerance=FLOAT32_RTOL)
