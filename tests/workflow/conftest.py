"""Shared fixtures of the workflow tests: digits subsets, a tiny VGG, the reference classes.

Most tests train a narrow VGG (``TINY_CFG``) on a subset of digits so that an epoch takes
about a second; the acceptance test trains the full VGG-11.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Subset

from slimfx.data import load_dataset
from slimfx.models import VGG

TINY_CFG = [8, "M", 16, "M", 16, 16, "M", 32, 32, "M", 32, 32]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def digits_train():
    return load_dataset("digits", True)


@pytest.fixture(scope="session")
def digits_test():
    return load_dataset("digits", False)


@pytest.fixture(scope="session")
def small_train(digits_train):
    """256 training images: 4 steps of 64 per epoch."""
    return Subset(digits_train, range(256))


@pytest.fixture(scope="session")
def small_test(digits_test):
    return Subset(digits_test, range(128))


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return VGG(dataset="digits", cfg=TINY_CFG)


@pytest.fixture
def tiny_pruned(tmp_path) -> Path:
    """A ``pruned.pth`` of the tiny VGG, for ``slimfx train --refine`` in CLI tests."""
    torch.manual_seed(0)
    model = VGG(dataset="digits", cfg=TINY_CFG)
    path = tmp_path / "tiny.pth"
    torch.save({"cfg": model.cfg, "state_dict": model.state_dict()}, path)
    return path


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the reference code's model (network-slimming, models/vgg.py), verbatim in substance ---

defaultcfg = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
    ],
}


class reference_vgg(nn.Module):  # the reference code's class name
    def __init__(self, dataset="cifar10", depth=19, init_weights=True, cfg=None):
        super().__init__()
        if cfg is None:
            cfg = defaultcfg[depth]
        self.feature = self.make_layers(cfg, True)
        if dataset == "cifar100":
            num_classes = 100
        elif dataset == "cifar10":
            num_classes = 10
        self.classifier = nn.Linear(cfg[-1], num_classes)
        if init_weights:
            self._initialize_weights()

    def make_layers(self, cfg, batch_norm=False):
        layers = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1, bias=False)
                if batch_norm:
                    layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                else:
                    layers += [conv2d, nn.ReLU(inplace=True)]
                in_channels = v
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.feature(x)
        x = nn.AvgPool2d(2)(x)
        x = x.view(x.size(0), -1)
        y = self.classifier(x)
        return y

    def _initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(0.5)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()


def sparse_trained_like(model: nn.Module, seed: int = 0, zero_fraction: float = 0.6) -> nn.Module:
    """Give a model what sparsity training leaves: many tiny gammas, nonzero betas, real
    BatchNorm statistics. All |gamma| are distinct, so thresholds have no ties."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                gamma = torch.rand(n, generator=g) * 0.9 + 0.1
                small = torch.rand(n, generator=g) < zero_fraction
                gamma[small] = torch.rand(int(small.sum()), generator=g) * 1e-3
                sign = torch.where(torch.rand(n, generator=g) < 0.1, -1.0, 1.0)
                m.weight.copy_(gamma * sign)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="session")
def wf(slimfx_cli):
    """Helpers of the workflow tests (tests cannot import conftest under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        TINY_CFG=TINY_CFG,
        REPO=REPO,
        run_slimfx=slimfx_cli,
        states_equal=states_equal,
        sparse_trained_like=sparse_trained_like,
        reference_vgg=reference_vgg,
    )
