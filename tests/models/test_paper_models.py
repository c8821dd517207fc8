"""The paper's CIFAR models: pre-activation ResNet-164 and DenseNet-40 (growth 12)."""

import pytest
import torch

import slimfx
from slimfx.bench.timing import torch_threads
from slimfx.models import VGG
from slimfx.models.densenet import DenseNet
from slimfx.models.densenet import default_cfg as densenet_cfg
from slimfx.models.preresnet import PreResNet
from slimfx.models.preresnet import default_cfg as preresnet_cfg
from slimfx.testing import assert_matches_oracle, randomize_batchnorm


@pytest.fixture(autouse=True)
def _threads():
    with torch_threads(2):
        yield


def test_architectures_match_the_paper():
    resnet = PreResNet(164)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in resnet.modules()) == 164 - 1 + 3
    assert resnet.cfg == preresnet_cfg(164) and len(resnet.cfg) == 9 * 18 + 1
    assert 1.6e6 < sum(p.numel() for p in resnet.parameters()) < 1.8e6  # 1.7M in the paper
    densenet = DenseNet(40)
    assert densenet.bn.num_features == 24 + 3 * 12 * 12
    assert 1.0e6 < sum(p.numel() for p in densenet.parameters()) < 1.1e6  # 1.0M in the paper
    assert DenseNet.cfg_of(densenet) == densenet_cfg(40)
    assert PreResNet.cfg_of(resnet) == preresnet_cfg(164)


@pytest.mark.parametrize("bad", [0, 12, 165, "164"])
def test_invalid_depths_are_value_errors(bad):
    with pytest.raises(ValueError, match="depth"):
        PreResNet(bad)
    with pytest.raises(ValueError, match="depth"):
        DenseNet(bad if bad != 12 else 41)


@pytest.mark.parametrize("cls,depth", [(PreResNet, 164), (DenseNet, 40)])
@pytest.mark.parametrize("percent", [0.4, 0.6])
def test_paper_models_slim_verified_without_emptied_layers(cls, depth, percent):
    model = randomize_batchnorm(cls(depth), seed=depth, sparse=0.3).eval()
    x = torch.randn(2, 3, 32, 32)
    res = slimfx.slim(model, x, percent)
    assert res.report.verification_error <= 1e-9
    assert abs(res.report.ratio - percent) < 0.02
    assert all(len(g.kept) >= 1 for g in res.plan.groups.values())
    assert all(row.remaining >= 1 for row in res.report.layers)
    rebuilt = cls(depth, cfg=res.cfg)
    rebuilt.load_state_dict(res.module.state_dict(), strict=True)
    assert sum(p.numel() for p in rebuilt.parameters()) == res.report.params_after
    assert res.report.params_after < res.report.params_before
    assert_matches_oracle(model, x, res)


def test_inconsistent_cfg_is_rejected():
    cfg = preresnet_cfg(20)
    cfg[3 * 1] = cfg[3 * 1] - 1  # second block: input width no longer its stream width
    with pytest.raises(ValueError, match="must match"):
        PreResNet(20, cfg=cfg)
    with pytest.raises(ValueError, match="cfg must hold"):
        DenseNet(10, cfg=[4, 4])
    with pytest.raises(ValueError):
        VGG(cfg=[64, "M", 0])
