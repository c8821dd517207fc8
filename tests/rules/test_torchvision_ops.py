"""torchvision blocks: ``StochasticDepth`` is channel-wise, and stays itself in the slim model."""

import pytest
import torch
import torch.fx
import torch.nn as nn
from torchvision.ops import StochasticDepth, stochastic_depth

import slimfx
from slimfx.testing import max_relative_error, randomize_batchnorm

# calls of ``stochastic_depth`` in this file become graph nodes instead of being traced through
torch.fx.wrap("stochastic_depth")


class ResidualCNN(nn.Module):
    """Stem, one residual block whose branch ends in stochastic depth, a linear head."""

    def __init__(self, p=0.3, mode="row", functional=False):
        super().__init__()
        self.functional = functional
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.sd = StochasticDepth(p, mode)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        y = stochastic_depth(y, self.sd.p, self.sd.mode, False) if self.functional else self.sd(y)
        x = torch.relu(x + y)
        return self.head(x.mean((2, 3)))


def _model(**kwargs):
    return randomize_batchnorm(ResidualCNN(**kwargs), seed=1).eval()


@pytest.mark.parametrize("compensate", [True, False])
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_stochastic_depth_in_a_residual_block_is_slimmed_exactly(mode, compensate, oracle_check):
    model = _model(p=0.3, mode=mode)
    x = torch.randn(4, 3, 6, 6)
    res = slimfx.slim(model, x, 0.5, compensate=compensate)
    cg = res.channel_graph
    residual = cg.group_of("sd")
    assert residual is cg.group_of("bn2") is cg.group_of("bn0")  # one to one, coupled by add
    assert residual.prunable
    assert sorted(s.module for s in residual.scorers) == ["bn0", "bn2"]
    slim = res.module
    assert slim.stem.out_channels == slim.conv2.out_channels == slim.head.in_features < 8
    assert slim.conv1.out_channels < 6
    assert res.report.verification_error <= 1e-9
    exact = slimfx.rewrite(cg, res.plan, dtype=torch.float64)
    assert max_relative_error(exact, res.reference, x) <= 1e-9
    oracle_check(model, x, res)


def test_the_slim_model_keeps_a_stochastic_depth_module_with_its_settings():
    model = _model(p=0.3, mode="batch")
    res = slimfx.slim(model, torch.randn(2, 3, 6, 6), 0.5)
    sd = res.module.sd
    assert type(sd) is StochasticDepth
    assert sd is not model.sd
    assert (sd.p, sd.mode) == (0.3, "batch")
    assert [n.op for n in res.module.graph.nodes if n.name == "sd"] == ["call_module"]
    res.module.train()
    assert sd.training and not model.sd.training


def test_the_slim_stochastic_depth_drops_rows_in_training():
    model = _model(p=0.5, mode="row")
    res = slimfx.slim(model, torch.randn(2, 3, 6, 6), 0.5)
    sd = res.module.sd
    t = torch.randn(16, res.module.bn2.num_features, 3, 3)
    assert torch.equal(sd(t), t)  # eval: the identity
    sd.train()
    torch.manual_seed(3)
    dropped = sd(t)
    torch.manual_seed(3)
    assert torch.equal(dropped, stochastic_depth(t, 0.5, "row", True))
    zero_rows = (dropped == 0).flatten(1).all(1)
    assert 0 < int(zero_rows.sum()) < 16  # some rows dropped, the others scaled by 1/(1-p)
    torch.testing.assert_close(dropped[~zero_rows], 2 * t[~zero_rows], rtol=1e-6, atol=0)


def test_a_slim_model_trains_like_its_reference():
    """Without compensation pruned channels are exact zeros, in training mode too: with the
    same random draws the slim model and the masked original agree."""
    model = _model(p=0.5, mode="row")
    x = torch.randn(8, 3, 6, 6)
    res = slimfx.slim(model, x, 0.5, compensate=False)
    reference = res.reference
    slim = res.module
    slim.train()
    reference.train()
    xb = torch.randn(8, 3, 6, 6)
    torch.manual_seed(5)
    a = slim(xb)
    torch.manual_seed(5)
    b = reference(xb)
    assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-5
    torch.manual_seed(6)
    assert not torch.allclose(slim(xb), a, rtol=1e-3, atol=0)  # other draws, other rows


def test_the_functional_form_is_channel_wise(oracle_check):
    model = _model(p=0.3, mode="row", functional=True)
    x = torch.randn(4, 3, 6, 6)
    res = slimfx.slim(model, x, 0.5)
    nodes = [n for n in res.channel_graph.gm.graph.nodes if n.target is stochastic_depth]
    assert [n.op for n in nodes] == ["call_function"]
    residual = res.channel_graph.group_of(nodes[0].name)
    assert residual is res.channel_graph.group_of("bn0") and residual.prunable
    assert res.module.stem.out_channels < 8
    assert res.report.verification_error <= 1e-9
    oracle_check(model, x, res)
