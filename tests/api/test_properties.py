"""Property tests: random VGG-like architectures, random gammas and settings, both modes.

Every result is verified in float64 by the pass itself (``verify=True``) and, independently,
against a masked model built from ``res.kept`` alone.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import slimfx
from slimfx.testing import assert_matches_oracle, randomize_batchnorm

ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": nn.ReLU6,
    "leaky": lambda: nn.LeakyReLU(0.1),
    "elu": nn.ELU,
    "hardswish": nn.Hardswish,
    "silu": nn.SiLU,
    "F.relu": lambda: FunctionalReLU(),
}


class FunctionalReLU(nn.Module):
    """Stands for ``F.relu`` in a forward (the module itself is traced through)."""

    def forward(self, x):
        return F.relu(x)


@st.composite
def architectures(draw):
    in_ch = draw(st.integers(1, 3))
    size = draw(st.integers(6, 14))
    blocks = []
    spatial = size
    channels = in_ch
    for _ in range(draw(st.integers(1, 4))):
        width = draw(st.integers(2, 10))
        k = draw(st.sampled_from([1, 3, 5]))
        pad = draw(st.sampled_from([0, k // 2]))
        if spatial + 2 * pad - k + 1 < 2:
            pad = k // 2
        spatial = spatial + 2 * pad - k + 1
        pool = draw(st.sampled_from(["none", "max", "max-ceil", "avg", "avg-pad", "none"]))
        if spatial < 4:
            pool = "none"
        blocks.append(
            dict(
                width=width,
                k=k,
                pad=pad,
                bias=draw(st.booleans()),
                bn=draw(st.sampled_from(["before", "before", "after"])),
                act=draw(st.sampled_from(sorted(ACTIVATIONS))),
                pool=pool,
                dropout=draw(st.booleans()),
            )
        )
        if pool in ("max", "avg"):
            spatial //= 2
        elif pool == "max-ceil":
            spatial = -(-spatial // 2)
        elif pool == "avg-pad":
            spatial = (spatial - 1) // 2 + 1
        channels = width
    head = draw(st.sampled_from(["flatten", "view", "gap", "mean", "mlp"]))
    return dict(
        in_ch=in_ch,
        size=size,
        blocks=blocks,
        head=head,
        spatial=spatial,
        hidden=draw(st.integers(3, 12)),
        classes=draw(st.integers(2, 5)),
        last=channels,
    )


class RandomNet(nn.Module):
    def __init__(self, arch):
        super().__init__()
        self.arch = arch
        layers = []
        cin = arch["in_ch"]
        for b in arch["blocks"]:
            conv = nn.Conv2d(cin, b["width"], b["k"], padding=b["pad"], bias=b["bias"])
            bn, act = nn.BatchNorm2d(b["width"]), ACTIVATIONS[b["act"]]()
            layers += [conv, bn, act] if b["bn"] == "before" else [conv, act, bn]
            if b["dropout"]:
                layers.append(nn.Dropout2d(0.2))
            layers += {
                "none": [],
                "max": [nn.MaxPool2d(2)],
                "max-ceil": [nn.MaxPool2d(2, ceil_mode=True)],
                "avg": [nn.AvgPool2d(2)],
                "avg-pad": [nn.AvgPool2d(3, 2, padding=1)],
            }[b["pool"]]
            cin = b["width"]
        self.features = nn.Sequential(*layers)
        last, spatial = arch["last"], arch["spatial"]
        head = arch["head"]
        if head in ("flatten", "view"):
            self.classifier = nn.Linear(last * spatial * spatial, arch["classes"])
        elif head in ("gap", "mean"):
            self.classifier = nn.Linear(last, arch["classes"])
        else:
            self.classifier = nn.Sequential(
                nn.Linear(last * spatial * spatial, arch["hidden"]),
                nn.BatchNorm1d(arch["hidden"]),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                nn.Linear(arch["hidden"], arch["classes"]),
            )

    def forward(self, x):
        x = self.features(x)
        head = self.arch["head"]
        if head == "view":
            x = x.view(x.size(0), -1)
        elif head == "gap":
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        elif head == "mean":
            x = x.mean(dim=(2, 3))
        else:
            x = torch.flatten(x, 1)
        return self.classifier(x)


@pytest.mark.slow
@given(
    arch=architectures(),
    seed=st.integers(0, 2**16),
    percent=st.floats(0.0, 0.9),
    round_to=st.sampled_from([1, 1, 2, 3, 4]),
    min_channels=st.integers(1, 3),
    sparse=st.sampled_from([0.0, 0.5]),
)
def test_random_vgg_like_models_slim_exactly_in_both_modes(
    arch, seed, percent, round_to, min_channels, sparse
):
    model = randomize_batchnorm(RandomNet(arch), seed=seed, sparse=sparse)
    x = torch.randn(2, arch["in_ch"], arch["size"], arch["size"])
    for compensate in (True, False):
        res = slimfx.slim(
            model,
            x,
            percent,
            round_to=round_to,
            min_channels=min_channels,
            compensate=compensate,
        )
        assert res.report.verification_error <= 1e-9
        for gp in res.plan.groups.values():
            assert len(gp.kept) >= min(min_channels, gp.size)
            assert gp.width % round_to == 0 or gp.width == gp.size
        assert_matches_oracle(model, x, res)
