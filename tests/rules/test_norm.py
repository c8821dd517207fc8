"""Rule family: BatchNorm as scorer, gate and carrier."""

import copy

import torch
import torch.nn as nn

import slimfx
from slimfx.testing import randomize_batchnorm


class BnAfterAct(nn.Module):
    def __init__(self, affine=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8, affine=affine)
        self.conv2 = nn.Conv2d(8, 5, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        x = self.bn1(torch.relu(self.conv1(x)))  # BatchNorm after the activation
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def test_batchnorm_after_activation_gates_channels(oracle_check):
    model = randomize_batchnorm(BnAfterAct(), seed=1)
    x = torch.randn(2, 3, 6, 6)
    for compensate in (True, False):
        res = slimfx.slim(model, x, 0.5, compensate=compensate)
        assert res.module.conv1.out_channels == res.module.bn1.num_features < 8
        oracle_check(model, x, res)


def test_carrier_channel_has_zero_gamma_and_unit_beta():
    model = randomize_batchnorm(BnAfterAct(), seed=2)
    with torch.no_grad():
        model.bn1.bias.fill_(0.7)
    res = slimfx.slim(model, torch.randn(1, 3, 6, 6), 0.5)
    gp = res.plan.groups["conv1"]
    assert gp.carrier is not None
    slot = sorted([*gp.kept, gp.carrier]).index(gp.carrier)
    bn = res.module.bn1
    assert bn.weight[slot] == 0 and bn.bias[slot] == 1
    assert torch.all(res.module.conv1.weight[slot] == 0)


def test_non_affine_batchnorm_scores_nothing():
    model = randomize_batchnorm(BnAfterAct(affine=False), seed=3)
    res = slimfx.slim(model, torch.randn(1, 3, 6, 6), 0.3)
    assert "conv1" not in res.plan.groups
    assert list(res.kept) == ["bn2"]


def test_running_statistics_are_sliced():
    model = randomize_batchnorm(BnAfterAct(), seed=4)
    res = slimfx.slim(model, torch.randn(1, 3, 6, 6), 0.5)
    kept = res.kept["bn2"]
    gp = res.plan.groups["conv2"]
    order = sorted([*kept] + ([gp.carrier] if gp.carrier is not None else []))
    real = [order.index(k) for k in kept]
    assert torch.equal(res.module.bn2.running_mean[real], model.bn2.running_mean[kept])
    assert torch.equal(res.module.bn2.running_var[real], model.bn2.running_var[kept])


# --- BatchNorm subclasses with their own forward, and F.batch_norm ---


class BatchNormAct(nn.BatchNorm2d):
    """BatchNorm and an activation in one module, as timm's ``BatchNormAct2d`` is written."""

    def __init__(self, num_features, act=nn.ReLU):
        super().__init__(num_features)
        self.act = act()

    def forward(self, x):
        x = nn.functional.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
        )
        return self.act(x)


class WithBatchNormAct(nn.Module):
    def __init__(self, norm=BatchNormAct):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = norm(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = norm(8, act=nn.SiLU)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self.head(x.mean((2, 3)))


def test_a_batchnorm_subclass_with_its_own_forward_scores_and_prunes(oracle_check):
    model = randomize_batchnorm(WithBatchNormAct(), seed=5).eval()
    x = torch.randn(2, 3, 8, 8)
    for compensate in (True, False):
        res = slimfx.slim(model, x, 0.5, compensate=compensate)
        assert set(res.kept) == {"bn1", "bn2"}
        assert res.report.pruned_channels == 8
        oracle_check(model, x, res)
    exact = slimfx.slim(model.double(), x.double(), 0.5)
    assert exact.report.verification_error <= 1e-9


def test_the_slim_model_keeps_the_subclass_and_its_training_behaviour():
    """The traced-through module is one module of its class again, with num_features the
    kept count: in training mode it normalises with batch statistics like the original."""
    model = randomize_batchnorm(WithBatchNormAct(), seed=6).eval()
    x = torch.randn(4, 3, 8, 8)
    res = slimfx.slim(model, x, 0.5)
    bn1 = res.module.bn1
    assert type(bn1) is BatchNormAct and isinstance(bn1.act, nn.ReLU)
    assert bn1.num_features == bn1.weight.shape[0] == res.module.conv1.out_channels < 8
    assert [n.target for n in res.module.graph.nodes if n.op == "call_module"] == [
        "conv1",
        "bn1",
        "conv2",
        "bn2",
        "head",
    ]
    slim, reference = copy.deepcopy(res.module).train(), copy.deepcopy(res.reference).train()
    with torch.no_grad():
        error = (slim(x) - reference(x)).abs().max() / reference(x).abs().max()
    assert error <= 1e-5
    assert not torch.equal(slim.bn1.running_mean, res.module.bn1.running_mean)  # it trained


def test_timm_batchnorm_act(oracle_check):
    from timm.layers import BatchNormAct2d

    def norm(channels, act=nn.ReLU):
        return BatchNormAct2d(channels, act_layer=act)

    model = randomize_batchnorm(WithBatchNormAct(norm), seed=7).eval()
    x = torch.randn(2, 3, 8, 8)
    res = slimfx.slim(model, x, 0.5)
    assert type(res.module.bn2) is BatchNormAct2d and res.module.bn2.num_features < 8
    oracle_check(model, x, res)
    assert slimfx.slim(model.double(), x.double(), 0.5).report.verification_error <= 1e-9


class ComputedScale(nn.Module):
    """``F.batch_norm`` whose weight is computed in the graph: it cannot be sliced."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(8))
        self.register_buffer("mean", torch.zeros(8))
        self.register_buffer("var", torch.ones(8))

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        y = self.conv2(x)
        return nn.functional.batch_norm(y, self.mean, self.var, self.scale * 2, None)


def test_batch_norm_with_a_computed_weight_freezes_its_channels(oracle_check):
    model = randomize_batchnorm(ComputedScale(), seed=8).eval()
    x = torch.randn(2, 3, 6, 6)
    cg = slimfx.analyze(slimfx.trace(model, x))
    frozen = [g for g in cg.groups if g.name == "conv2"]
    assert frozen and any("weight computed in the graph" in why for why in frozen[0].frozen)
    res = slimfx.slim(model, x, 0.5)
    assert list(res.kept) == ["bn1"]
    oracle_check(model, x, res)


class _SkipsItsActivation(BatchNormAct):
    """A BatchNorm subclass whose forward never calls one of its children."""

    def __init__(self, num_features, act=nn.ReLU):
        super().__init__(num_features, act)
        self.unused = nn.Hardswish()

    def forward(self, x):
        return super().forward(x)


def test_a_refolded_subclass_keeps_children_its_forward_does_not_call(oracle_check):
    model = randomize_batchnorm(WithBatchNormAct(_SkipsItsActivation), seed=9).eval()
    x = torch.randn(2, 3, 8, 8)
    res = slimfx.slim(model, x, 0.5)
    assert isinstance(res.module.bn1.unused, nn.Hardswish)
    assert res.module.bn1.unused is not model.bn1.unused
    assert "num_batches_tracked" in dict(res.module.bn1.named_buffers())
    oracle_check(model, x, res)
