"""Graph rules: model inputs and outputs, attributes, Python values, ops without a rule and
opaque leaf modules."""

import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx.testing import randomize_batchnorm


def _reasons(group):
    return " | ".join(group.frozen)


class InputOutput(nn.Module):
    """``bn_a`` is added to the input; ``bn_c`` is the output; ``bn_b`` is neither."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 3, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(3)
        self.conv_b = nn.Conv2d(3, 8, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(8)
        self.conv_c = nn.Conv2d(8, 5, 3, padding=1)
        self.bn_c = nn.BatchNorm2d(5)

    def forward(self, x):
        y = torch.relu(x + self.bn_a(self.conv_a(x)))
        y = torch.relu(self.bn_b(self.conv_b(y)))
        return self.bn_c(self.conv_c(y))


def test_model_input_and_output_groups_are_frozen():
    model = randomize_batchnorm(InputOutput(), seed=1)
    x = torch.randn(2, 3, 5, 5)
    cg = slimfx.analyze(slimfx.trace(model, x))
    inp = cg.group_of("x")
    assert cg.group_of("bn_a") is inp  # coupled to the input by the residual add
    assert inp.scorers and not inp.prunable
    assert "model input x" in inp.frozen
    out = cg.group_of("bn_c")
    assert out.scorers and not out.prunable
    assert "model output" in out.frozen
    assert cg.group_of("bn_b").prunable


def test_input_and_output_channels_never_change_in_the_slim_model(oracle_check):
    model = randomize_batchnorm(InputOutput(), seed=1).eval()  # eval: calls keep statistics
    x = torch.randn(2, 3, 5, 5)
    res = slimfx.slim(model, x, 0.9)
    slim = res.module
    assert slim.conv_b.out_channels < 8  # the free group is pruned
    assert slim.conv_a.in_channels == slim.conv_b.in_channels == 3
    assert slim.conv_a.out_channels == slim.bn_a.num_features == 3
    assert slim.conv_c.out_channels == slim.bn_c.num_features == 5
    assert slim(x).shape == model(x).shape == (2, 5, 5, 5)
    assert res.report.verification_error <= 1e-9
    oracle_check(model, x, res)


class TwoInputsTwoOutputs(nn.Module):
    """A second input ``t`` of rank 1 (no channels); outputs a tuple with a dict in it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 7, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(7)
        self.head = nn.Linear(7, 3)

    def forward(self, x, t):
        y = torch.relu(self.bn1(self.conv1(x))) * t.view(-1, 1, 1, 1)
        features = torch.relu(self.bn2(self.conv2(y)))
        z = torch.relu(self.bn3(self.conv3(features)))
        return self.head(z.mean((2, 3))), {"features": features}


def test_every_tensor_output_is_frozen_and_a_rank_one_input_has_no_channels():
    model = randomize_batchnorm(TwoInputsTwoOutputs(), seed=2).eval()
    inputs = (torch.randn(2, 3, 5, 5), torch.rand(2) + 0.5)
    cg = slimfx.analyze(slimfx.trace(model, inputs))
    assert cg.layout("t") is None
    assert "model output" in cg.group_of("bn2").frozen  # in the dict
    assert "model output" in cg.group_of("head").frozen
    assert cg.group_of("bn1").prunable and cg.group_of("bn3").prunable
    res = slimfx.slim(model, inputs, 0.5)
    assert res.report.verification_error <= 1e-9
    logits, extra = res.module(*inputs)
    assert logits.shape == (2, 3)
    assert extra["features"].shape == (2, 6, 5, 5)
    assert res.module.conv1.out_channels < 8 and res.module.conv3.out_channels < 7


class PythonValues(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        # a batch size, a channel count and a shape entry: Python numbers
        y = y.view(x.size(0), y.size(1), x.shape[2] * x.shape[3])
        return self.head(y.mean(-1))


def test_python_values_carry_no_channels():
    model = randomize_batchnorm(PythonValues(), seed=3)
    x = torch.randn(2, 3, 4, 4)
    gm = slimfx.trace(model, x)
    cg = slimfx.analyze(gm)
    values = [n.name for n in gm.graph.nodes if n.op != "output" and "tensor_meta" not in n.meta]
    assert {"size", "size_1", "getattr_1", "getitem"} <= set(values)
    spaces = set(cg.graph.nodes)
    for name in values:
        assert cg.layouts[name] is None
        assert name not in spaces
    assert cg.group_of("bn1").prunable and cg.group_of("bn2").prunable


def test_shape_values_follow_the_slim_channel_count(oracle_check):
    model = randomize_batchnorm(PythonValues(), seed=3).eval()  # eval: calls keep statistics
    x = torch.randn(2, 3, 4, 4)
    res = slimfx.slim(model, x, 0.5)
    assert res.module.bn2.num_features < 6
    assert res.module.head.in_features == res.module.bn2.num_features
    assert res.report.verification_error <= 1e-9
    bigger = torch.randn(3, 3, 6, 7)  # other batch size and spatial size
    assert res.module(bigger).shape == (3, 2)
    oracle_check(model, x, res)


class ScaledByParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, 8).reshape(1, 8, 1, 1))
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn1(self.conv1(x))) * self.scale)


def test_an_attribute_has_no_channels_of_its_own_and_is_sliced_by_its_user(oracle_check):
    model = randomize_batchnorm(ScaledByParameter(), seed=4)
    x = torch.randn(2, 3, 5, 5)
    res = slimfx.slim(model, x, 0.5)
    assert res.channel_graph.layout("scale") is None
    assert res.channel_graph.group_of("mul") is res.channel_graph.group_of("bn1")
    gp = res.plan.groups["conv1"]
    kept = res.kept["bn1"]
    order = sorted([*kept] + ([gp.carrier] if gp.carrier is not None else []))
    assert len(kept) < 8
    assert res.module.scale.shape == (1, len(order), 1, 1) == (1, res.module.bn1.num_features, 1, 1)
    assert torch.equal(res.module.scale[0, :, 0, 0], model.scale[0, order, 0, 0])
    oracle_check(model, x, res)


class WithUnknownOp(nn.Module):
    """``torch.roll`` has no rule: ``bn2``'s group meets it; ``bn1`` and ``bn3`` do not."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 7, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(7)
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = torch.roll(y, 1, dims=2)
        y = torch.relu(self.bn3(self.conv3(y)))
        return self.head(y.mean((2, 3)))


def test_an_op_without_a_rule_freezes_the_groups_it_touches():
    model = randomize_batchnorm(WithUnknownOp(), seed=5)
    x = torch.randn(2, 3, 5, 5)
    cg = slimfx.analyze(slimfx.trace(model, x))
    touched = cg.group_of("bn2")
    assert touched.scorers and not touched.prunable
    assert len(touched.frozen) == 1
    assert "no rule for op" in touched.frozen[0] and "torch.roll" in touched.frozen[0]
    assert any("torch.roll" in note for note in cg.notes)
    assert cg.group_of("bn1").prunable  # before the op
    assert cg.group_of("bn3").prunable  # after it: a new group at conv3
    assert cg.layout("roll") is not None and cg.layout("roll").group_ids() == []


def test_slimming_around_an_op_without_a_rule_is_exact(oracle_check):
    model = randomize_batchnorm(WithUnknownOp(), seed=5)
    x = torch.randn(2, 3, 5, 5)
    res = slimfx.slim(model, x, 0.5)
    slim = res.module
    assert slim.conv1.out_channels < 8 and slim.conv3.out_channels < 7
    assert slim.conv2.out_channels == slim.bn2.num_features == slim.conv3.in_channels == 6
    assert any("torch.roll" in line for line in res.report.frozen)
    assert res.report.verification_error <= 1e-9
    oracle_check(model, x, res)


def test_strict_mode_refuses_an_op_without_a_rule():
    model = randomize_batchnorm(WithUnknownOp(), seed=5)
    with pytest.raises(slimfx.UnsupportedError, match=r"torch\.roll"):
        slimfx.slim(model, torch.randn(2, 3, 5, 5), 0.5, strict=True)


class SortChannels(nn.Module):
    """``torch.sort`` over channels: no rule, and it returns a tuple (values, indices)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        values, order = torch.sort(y, dim=1)
        return self.conv3(values + order.to(values.dtype))


def test_an_op_without_a_rule_returning_a_tuple(oracle_check):
    model = randomize_batchnorm(SortChannels(), seed=6)
    x = torch.randn(2, 3, 5, 5)
    res = slimfx.slim(model, x, 0.5)
    cg = res.channel_graph
    assert "torch.sort" in _reasons(cg.group_of("bn2"))
    assert cg.group_of("bn1").prunable
    both = cg.layouts["sort"]
    assert isinstance(both, tuple) and [len(lay) for lay in both] == [6, 6]
    assert all(lay.group_ids() == [] for lay in both)
    assert res.module.conv1.out_channels < 8
    assert res.module.conv2.out_channels == res.module.conv3.in_channels == 6
    assert res.report.verification_error <= 1e-9
    oracle_check(model, x, res)


class DataDependent(nn.Module):
    """Branches on a tensor value: symbolic tracing cannot go through it."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(6, 6, 1)

    def forward(self, x):
        if x.mean() > 0:
            return self.mix(x)
        return -x


class WithOpaqueLeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.gate = DataDependent()
        self.conv3 = nn.Conv2d(6, 7, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(7)
        self.head = nn.Linear(7, 2)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.gate(self.bn2(self.conv2(y)))
        y = torch.relu(self.bn3(self.conv3(y)))
        return self.head(y.mean((2, 3)))


def test_an_opaque_leaf_module_freezes_what_it_touches(oracle_check):
    model = randomize_batchnorm(WithOpaqueLeaf(), seed=7)
    x = torch.randn(2, 3, 5, 5)
    res = slimfx.slim(model, x, 0.5)
    cg = res.channel_graph
    assert [n.op for n in cg.gm.graph.nodes if n.name == "gate"] == ["call_module"]
    touched = cg.group_of("bn2")
    assert not touched.prunable
    assert "opaque leaf module" in _reasons(touched) and "gate" in _reasons(touched)
    assert any(note.startswith("opaque leaf gate") for note in cg.notes)
    assert cg.group_of("bn1").prunable and cg.group_of("bn3").prunable
    slim = res.module
    assert type(slim.gate) is DataDependent and slim.gate is not model.gate
    assert slim.gate.mix.weight.shape == (6, 6, 1, 1)
    assert torch.equal(slim.gate.mix.weight, model.gate.mix.weight)
    assert slim.conv2.out_channels == slim.conv3.in_channels == 6
    assert slim.conv1.out_channels < 8 and slim.conv3.out_channels < 7
    assert res.report.verification_error <= 1e-9
    oracle_check(model, x, res)


def _dict_output(x):
    return {"out": x * 2, "aux": [x, (x,)]}


torch.fx.wrap("_dict_output")


class _BranchingLeaf(nn.Module):
    """Not symbolically traceable (branches on a value); returns a tuple of a dict and a list."""

    def forward(self, x):
        if x.sum() > 0:
            return {"a": x}, [x * 2]
        return {"a": x}, [x]


class _NestedOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.leaf = _BranchingLeaf()
        self.c3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = torch.relu(self.b0(self.c0(x)))
        y = self.c2(_dict_output(torch.relu(self.b1(self.c1(x))))["out"])
        y = self.leaf(torch.relu(self.b2(y)))
        return self.c3(y[0]["a"] + y[1][0])


def test_ops_returning_nested_dicts_and_lists_freeze_what_they_touch(oracle_check):
    """An op without a rule, or an opaque leaf, returning dicts inside tuples or lists:
    the channels it consumes are frozen, the rest is slimmed exactly."""
    model = randomize_batchnorm(_NestedOutputs(), seed=1).eval()
    x = torch.randn(2, 3, 6, 6)
    cg = slimfx.analyze(slimfx.trace(model, x))
    frozen = {s.module for g in cg.groups for s in g.scorers if g.frozen}
    assert frozen == {"b1", "b2"}
    res = slimfx.slim(model, x, 0.3)
    assert res.report.verification_error <= 1e-9
    assert set(res.kept) == {"b0"} and len(res.kept["b0"]) < 8
    oracle_check(model, x, res)
