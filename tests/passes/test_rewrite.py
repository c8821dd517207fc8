"""Pass 4, rewrite: new modules, original names and classes, nothing shared."""

import torch
import torch.nn as nn
import torchvision

import slimfx
from slimfx.models import VGG
from slimfx.testing import randomize_batchnorm

X = torch.randn(2, 3, 32, 32)


def test_module_names_and_classes_are_kept():
    model = randomize_batchnorm(VGG(depth=11), seed=1)
    res = slimfx.slim(model, X, 0.5)
    names = [n for n, _ in res.module.named_modules() if n]
    assert names[:3] == ["feature", "feature.0", "feature.1"]
    assert "classifier" in names
    assert type(res.module.feature) is torch.nn.Sequential
    assert isinstance(res.module.feature[3], torch.nn.MaxPool2d)
    assert res.module.feature[4].in_channels == res.module.feature[1].num_features


def test_no_tensor_is_shared_with_the_input_model():
    model = randomize_batchnorm(VGG(depth=11), seed=2)
    res = slimfx.slim(model, X, 0.0, verify=False)
    original = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    slim = [t for t in list(res.module.parameters()) + list(res.module.buffers()) if t.numel()]
    assert not {t.data_ptr() for t in slim} & original
    with torch.no_grad():
        res.module.feature[0].weight.add_(1.0)
    assert not torch.equal(res.module.feature[0].weight, model.feature[0].weight)


def test_purity_input_model_state_and_graph_unchanged():
    model = randomize_batchnorm(VGG(depth=11), seed=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = slimfx.trace(model, X)
    code = gm.code
    cg = slimfx.analyze(gm)
    plan = slimfx.plan(cg, 0.5)
    slimfx.rewrite(cg, plan)
    slimfx.rewrite(cg, plan, dtype=torch.float64)
    res = slimfx.slim(model, X, 0.5)
    _ = res.reference
    assert gm.code == code
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(m.training for m in model.modules())


def test_float64_rewrite_converts_every_floating_tensor():
    model = randomize_batchnorm(VGG(depth=11), seed=4)
    cg = slimfx.analyze(slimfx.trace(model, X))
    slim = slimfx.rewrite(cg, slimfx.plan(cg, 0.3), dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in slim.parameters())
    assert slim.feature[1].running_mean.dtype == torch.float64


def test_rewrite_folds_the_constants_it_is_given():
    """The plan and the rewrite read one value of constant tables; a rewrite that
    propagates its own builds the same module."""
    model = randomize_batchnorm(VGG(depth=11), seed=5)  # nonzero betas: carriers too
    cg = slimfx.analyze(slimfx.trace(model, X))
    constants = slimfx.propagate_constants(cg)
    plan = slimfx.plan(cg, 0.5, constants=constants)
    assert any(gp.carrier is not None for gp in plan.groups.values())
    given = slimfx.rewrite(cg, plan, constants=constants)
    own = slimfx.rewrite(cg, plan)
    assert given.state_dict().keys() == own.state_dict().keys()
    for key, value in given.state_dict().items():
        assert torch.equal(value, own.state_dict()[key]), key


class _ZeroedThenCompensated(nn.Module):
    """conv1's group falls back to zeroing (max pooling of a padded constant), conv2's
    is compensated with a carrier (a zero-padded consumer)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(2))
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(self.conv3(x).mean(dim=(2, 3)))


def test_groups_in_different_modes_fold_each_in_its_own():
    model = randomize_batchnorm(_ZeroedThenCompensated(), seed=6)
    with torch.no_grad():
        model.bn1.bias.abs_()  # relu(beta) > 0: the constants matter
        model.bn2.bias.abs_()
    x = torch.randn(2, 3, 8, 8)
    res = slimfx.slim(model, x, 0.5)  # verifies in float64 (relative error <= 1e-9)
    assert res.plan.groups["conv1"].mode == "zero"
    assert res.plan.groups["conv2"].mode == "compensate"
    assert res.plan.groups["conv2"].carrier is not None
    assert res.report.verification_error <= 1e-9


def test_nested_containers_keep_their_classes_and_child_order():
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10), seed=7).eval()
    res = slimfx.slim(model, torch.randn(1, 3, 32, 32), 0.3, verify=False)
    slim = res.module
    assert type(slim.layer1) is nn.Sequential
    assert type(slim.layer2[0]) is torchvision.models.resnet.BasicBlock
    assert type(slim.layer2[0].downsample) is nn.Sequential
    assert list(slim._modules) == [k for k in model._modules if k in slim._modules]
    assert list(slim.layer2[0]._modules) == [
        k for k in model.layer2[0]._modules if k in slim.layer2[0]._modules
    ]
    traced = res.channel_graph.gm  # the trace's containers are restored the same way
    assert type(traced.layer3[1]) is torchvision.models.resnet.BasicBlock
