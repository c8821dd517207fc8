"""Golden models: torchvision's VGG-BN family and the reference CIFAR VGG of every depth."""

import numpy as np
import pytest
import torch
import torchvision

import slimfx
from slimfx.bench.timing import torch_threads
from slimfx.models import VGG
from slimfx.testing import assert_matches_oracle, randomize_batchnorm


def reference_widths(model, percent):
    """The reference pruning, re-derived with an exact count: widths per BatchNorm2d."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    gammas = np.concatenate([bn.weight.detach().abs().numpy() for bn in bns])
    order = np.argsort(gammas, kind="stable")
    pruned = np.zeros(len(gammas), dtype=bool)
    pruned[order[: int(percent * len(gammas))]] = True
    widths, start = [], 0
    for bn in bns:
        widths.append(int((~pruned[start : start + bn.num_features]).sum()))
        start += bn.num_features
    return widths


# these models are larger than the other graph tests' (two threads, not one)
@pytest.mark.parametrize("depth", [11, 13, 16, 19])
@torch_threads(2)
def test_reference_cifar_vgg(depth):
    model = randomize_batchnorm(VGG(depth=depth), seed=depth, sparse=0.4)
    x = torch.randn(2, 3, 32, 32)
    zero = slimfx.slim(model, x, 0.5, compensate=False)
    assert [w for w in zero.cfg if w != "M"] == reference_widths(model, 0.5)
    assert [v for v in zero.cfg if v == "M"] == [v for v in model.cfg if v == "M"]
    assert zero.report.params_after == sum(p.numel() for p in VGG(cfg=zero.cfg).parameters())
    comp = slimfx.slim(model, x, 0.5)
    for res in (zero, comp):
        assert res.report.verification_error <= 1e-9
        VGG(cfg=res.cfg).load_state_dict(res.module.state_dict(), strict=True)
        assert_matches_oracle(model, x, res)


# the shallowest and the deepest (13 and 16 have the same structure between them; every
# torchvision model is slimmed by benchmarks/zoo.py)
@pytest.mark.parametrize("name", ["vgg11_bn", "vgg19_bn"])
@torch_threads(2)
def test_torchvision_vgg_bn(name):
    model = randomize_batchnorm(getattr(torchvision.models, name)(num_classes=10), seed=1)
    x = torch.randn(1, 3, 32, 32)
    for compensate in (True, False):
        res = slimfx.slim(model, x, 0.5, compensate=compensate)
        assert res.report.verification_error <= 1e-9
        assert res.report.weights_error <= 1e-5
        assert len(res.kept) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert res.module.classifier[0].in_features == 49 * res.module.features[-3].num_features
        assert res.cfg is not None and len(res.cfg) == len(
            torchvision.models.vgg.cfgs[
                {"vgg11_bn": "A", "vgg13_bn": "B", "vgg16_bn": "D", "vgg19_bn": "E"}[name]
            ]
        )
    assert res.report.params_after < res.report.params_before
