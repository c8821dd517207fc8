"""The L1 subgradient on BatchNorm gammas, and which BatchNorms get it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from slimfx.models import MODEL_BUILDERS, VGG, build_model
from slimfx.train.sparsity import SparsityRegularizer, prunable_batchnorms


class HeadBN(nn.Module):
    """conv-BN-ReLU, then conv-BN whose output is the model output: that BN is not prunable."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))


def test_every_vgg_batchnorm_is_prunable():
    names = prunable_batchnorms(VGG(depth=11), torch.randn(1, 3, 32, 32))
    expected = [n for n, m in VGG(depth=11).named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert names == expected and len(names) == 8


def test_batchnorm_feeding_the_output_is_not_penalised():
    model = HeadBN()
    assert prunable_batchnorms(model, torch.randn(1, 3, 8, 8)) == ["b1"]
    reg = SparsityRegularizer(model, 0.1, example_inputs=torch.randn(1, 3, 8, 8))
    model.b2.weight.grad = torch.zeros(4)
    model.b1.weight.grad = torch.zeros(8)
    reg.apply()
    assert torch.count_nonzero(model.b2.weight.grad) == 0
    assert torch.count_nonzero(model.b1.weight.grad) == 8


def test_subgradient_equals_the_gradient_of_the_l1_penalty(tiny_model):
    s = 0.03
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    bns = [m for m in tiny_model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:  # mixed signs, none zero
            bn.weight.copy_(torch.randn(bn.num_features).clamp(-2, 2) + 0.05)
    reg = SparsityRegularizer(tiny_model, s, example_inputs=x[:1])
    tiny_model.zero_grad()
    nn.functional.cross_entropy(tiny_model(x), y).backward()
    reg.apply()
    ours = [bn.weight.grad.clone() for bn in bns]
    tiny_model.zero_grad()
    loss = nn.functional.cross_entropy(tiny_model(x), y)
    (loss + s * sum(bn.weight.abs().sum() for bn in bns)).backward()
    for got, bn in zip(ours, bns, strict=True):
        torch.testing.assert_close(got, bn.weight.grad, rtol=1e-6, atol=1e-7)


def test_penalty_moves_gammas_towards_zero(tiny_model):
    reg = SparsityRegularizer(tiny_model, 0.01, example_inputs=torch.randn(1, 3, 32, 32))
    before = reg.gammas().clone()
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=1.0)
    optimizer.zero_grad()
    reg.apply()  # no data gradient: the grad is the subgradient alone
    optimizer.step()
    torch.testing.assert_close(reg.gammas(), before - 0.01, rtol=0, atol=1e-7)
    assert reg.penalty() == pytest.approx(0.01 * float(reg.gammas().sum()), rel=1e-6)
    assert reg.fraction_below(1.0) == 1.0 and reg.fraction_below(0.0) == 0.0


def test_zero_strength_changes_nothing(tiny_model):
    reg = SparsityRegularizer(tiny_model, 0.0, example_inputs=torch.randn(1, 3, 32, 32))
    for m in reg.modules:
        m.weight.grad = torch.zeros_like(m.weight)
    reg.apply()
    assert all(torch.count_nonzero(m.weight.grad) == 0 for m in reg.modules)


def test_invalid_arguments(tiny_model):
    with pytest.raises(ValueError, match=">= 0"):
        SparsityRegularizer(tiny_model, -1.0, batchnorms=[])
    with pytest.raises(ValueError, match="example_inputs or batchnorms"):
        SparsityRegularizer(tiny_model, 1e-4)
    with pytest.raises(ValueError, match="not a BatchNorm"):
        SparsityRegularizer(tiny_model, 1e-4, batchnorms=["feature.0"])
    with pytest.raises(ValueError, match="not a submodule"):
        SparsityRegularizer(tiny_model, 1e-4, batchnorms=["nope"])


def test_build_model_registry():
    assert isinstance(MODEL_BUILDERS, dict) and "vgg" in MODEL_BUILDERS
    model = build_model("vgg", 13, "cifar100")
    assert model.classifier.out_features == 100 and model.cfg[:2] == [64, 64]
    cfg = [4, "M", 6]
    assert build_model("vgg", 19, "digits", cfg=cfg).cfg == cfg
    with pytest.raises(ValueError, match="--arch must be one of"):
        build_model("resnet-nope", 11, "cifar10")
    with pytest.raises(ValueError, match="--depth 12 is not available"):
        build_model("vgg", 12, "cifar10")


def test_batchnorms_of_streams_the_pruner_cannot_cut_are_not_penalised():
    from slimfx.models import PreResNet

    names = prunable_batchnorms(PreResNet(20), torch.randn(1, 3, 32, 32))
    assert "layer1.1.bn1" not in names and "layer2.1.bn1" not in names  # frozen streams
    assert "layer3.1.bn1" in names and "bn" in names  # the last stage's stream is cut
    assert "layer1.0.bn2" in names and "layer1.0.bn3" in names
