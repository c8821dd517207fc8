"""Rule base: the default rule, ``Passthrough`` and the helpers every rule family uses."""

import itertools

import numpy as np
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import slimfx
from slimfx.ir.layout import Layout
from slimfx.ir.values import PrunedValues
from slimfx.rules import registry
from slimfx.rules.base import (
    Passthrough,
    Rule,
    arg_value,
    first_input,
    int_tuple,
    meta_like,
    module_arg_tensor,
    node_shape,
    window_output,
)
from slimfx.testing import randomize_batchnorm

# --- meta_like ---


@pytest.mark.parametrize(
    "x",
    [
        torch.randn(2, 3, 4),
        torch.randn(4, 3).t(),  # strides (1, 4)
        torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        torch.randn(2, 6, 5)[:, ::2],  # a strided view
        torch.zeros(3, 2, dtype=torch.float64),
        torch.zeros(3, dtype=torch.int64),
        torch.empty(2, 3, device="meta", dtype=torch.float16),
    ],
    ids=["contiguous", "transposed", "channels-last", "strided", "float64", "int64", "meta"],
)
def test_meta_like_keeps_dtype_shape_and_strides(x):
    out = meta_like(x)
    assert out.device.type == "meta"
    assert out.dtype == x.dtype
    assert out.shape == x.shape
    assert out.stride() == x.stride()


@pytest.mark.parametrize("shape", [(2, 3, 4), (5,), (), (1, 1, 7), (2, 0, 3), (0,), (3, 1, 0, 2)])
def test_meta_like_with_a_shape_is_contiguous(shape):
    x = torch.randn(4, 3).t()  # not contiguous: its strides must not carry over
    out = meta_like(x, shape)
    assert out.device.type == "meta" and out.dtype == x.dtype
    assert out.shape == shape
    assert out.stride() == torch.empty(shape).stride()
    assert out.is_contiguous()


def test_meta_like_requires_grad_as_an_op_on_x_would():
    leaf = torch.randn(2, 3, requires_grad=True)
    plain = torch.randn(2, 3)
    assert meta_like(leaf).requires_grad
    assert meta_like(leaf, (3,)).requires_grad
    assert not meta_like(plain).requires_grad
    with torch.no_grad():
        assert not meta_like(leaf).requires_grad
        assert meta_like(plain, requires_grad=True).requires_grad
    assert not meta_like(leaf, requires_grad=False).requires_grad
    assert meta_like(plain, requires_grad=True).requires_grad
    assert (leaf * 2).requires_grad == meta_like(leaf).requires_grad  # what an op gives


# --- window_output ---


def _pytorch_window(size, kernel, stride, pad, dilation, ceil):
    """Output length PyTorch gives, or ``None`` where it refuses (no window fits)."""
    x = torch.zeros(1, 1, size)
    try:
        return F.max_pool1d(x, kernel, stride, pad, dilation, ceil_mode=ceil).shape[-1]
    except RuntimeError:
        return None


def test_window_output_matches_pytorch():
    checked = 0
    for size, kernel, stride, dilation, ceil in itertools.product(
        range(1, 11), range(1, 5), range(1, 4), range(1, 4), (False, True)
    ):
        for pad in range(kernel // 2 + 1):  # PyTorch's limit on pooling padding
            expected = _pytorch_window(size, kernel, stride, pad, dilation, ceil)
            got = window_output(size, kernel, stride, pad, dilation, ceil)
            args = (size, kernel, stride, pad, dilation, ceil)
            if expected is None:
                assert got <= 0, args
            else:
                assert got == expected, args
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize(
    "size, kernel, stride, pad, dilation, ceil, expected",
    [
        (32, 3, 1, 1, 1, False, 32),  # a same-padded convolution
        (32, 2, 2, 0, 1, False, 16),  # VGG's pooling
        (7, 2, 2, 0, 1, False, 3),
        (7, 2, 2, 0, 1, True, 4),  # ceil mode: the last, partial window counts
        (5, 2, 2, 1, 1, True, 3),  # ceil mode: a 4th window would start in the right padding
        (10, 3, 1, 0, 2, False, 6),  # dilation
    ],
)
def test_window_output_examples(size, kernel, stride, pad, dilation, ceil, expected):
    assert window_output(size, kernel, stride, pad, dilation, ceil) == expected


def test_window_output_matches_convolutions():
    for size, kernel, stride, pad, dilation in itertools.product(
        range(5, 10), range(1, 4), range(1, 3), range(3), range(1, 3)
    ):
        x, weight = torch.zeros(1, 1, size), torch.zeros(1, 1, kernel)
        out = F.conv1d(x, weight, None, stride, pad, dilation)
        assert window_output(size, kernel, stride, pad, dilation) == out.shape[-1]


# --- int_tuple ---


@pytest.mark.parametrize(
    "value, n, expected",
    [
        (3, 2, (3, 3)),
        (3, 1, (3,)),
        ((3, 5), 2, (3, 5)),
        ([3, 5], 2, (3, 5)),
        ([4], 3, (4, 4, 4)),
        ((4,), 2, (4, 4)),
        ((1, 2, 3), 3, (1, 2, 3)),
        ((1, 2, 3), 2, None),  # wrong length
        ((1, 2), 3, None),
        ((), 2, None),
        ((3, 3.0), 2, None),  # not all ints
        (3.0, 2, None),
        ("3", 2, None),
        (None, 2, None),
    ],
)
def test_int_tuple(value, n, expected):
    got = int_tuple(value, n)
    assert got == expected
    if expected is not None:
        assert type(got) is tuple


# --- first_input, node_shape, arg_value ---


def _graph():
    graph = fx.Graph()
    return graph, graph.placeholder("x")


def test_first_input_is_the_first_argument_when_it_is_a_node():
    graph, x = _graph()
    assert first_input(graph.call_function(torch.relu, (x,))) is x
    assert first_input(graph.call_function(torch.add, (x, 1.0))) is x
    assert first_input(graph.call_method("view", (x, -1))) is x


def test_first_input_falls_back_to_the_first_keyword():
    graph, x = _graph()
    assert first_input(graph.call_function(torch.relu, (), {"input": x})) is x
    assert first_input(graph.call_function(F.softmax, (), {"input": x, "dim": 1})) is x


def test_first_input_is_none_when_the_first_argument_is_no_node():
    graph, x = _graph()
    assert first_input(graph.call_function(torch.mul, (2.0, x))) is None
    assert first_input(graph.call_function(torch.cat, ([x, x], 1))) is None  # a list
    assert first_input(graph.call_function(torch.zeros, ())) is None
    assert first_input(graph.call_function(torch.zeros, (), {"size": (2,), "input": x})) is None


class _Shapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        values, _ = torch.sort(y, dim=1)
        return values.flatten(x.size(0) - 1)


def test_node_shape_is_the_recorded_shape_of_one_tensor():
    gm = slimfx.trace(_Shapes(), torch.randn(2, 3, 6, 5))
    nodes = {n.name: n for n in gm.graph.nodes}
    assert node_shape(nodes["x"]) == (2, 3, 6, 5)
    assert node_shape(nodes["conv"]) == (2, 4, 4, 3)
    assert type(node_shape(nodes["conv"])) is tuple
    assert node_shape(nodes["getitem"]) == (2, 4, 4, 3)
    assert node_shape(nodes["flatten"]) == (2, 48)


def test_node_shape_is_none_without_one_tensor():
    gm = slimfx.trace(_Shapes(), torch.randn(2, 3, 6, 5))
    nodes = {n.name: n for n in gm.graph.nodes}
    assert node_shape(nodes["sort"]) is None  # two tensors
    assert node_shape(nodes["size"]) is None  # a Python number
    assert node_shape(fx.symbolic_trace(_Shapes()).graph.find_nodes(op="placeholder")[0]) is None
    for value in (3, None, (2, 3), torch.zeros(2, 3)):
        assert node_shape(value) is None


def test_arg_value_by_position_keyword_or_default():
    graph, x = _graph()
    positional = graph.call_function(torch.flatten, (x, 1))
    keyword = graph.call_function(torch.flatten, (x,), {"start_dim": 2})
    neither = graph.call_function(torch.flatten, (x,))
    given_none = graph.call_function(F.interpolate, (x, None, 2.0))
    assert arg_value(positional, 1, "start_dim", 0) == 1
    assert arg_value(keyword, 1, "start_dim", 0) == 2
    assert arg_value(neither, 1, "start_dim", 0) == 0
    assert arg_value(neither, 0, "input", None) is x
    assert arg_value(given_none, 1, "size", (4, 4)) is None  # given: not the default
    assert arg_value(given_none, 2, "scale_factor", 1.0) == 2.0
    assert arg_value(given_none, 3, "mode", "nearest") == "nearest"


# --- module_arg_tensor ---


def test_module_arg_tensor_shapes_values_for_an_op_of_the_rank():
    values = PrunedValues.exact(np.array([1.5, -2.0, 0.25]))
    t4 = module_arg_tensor(values, 4)
    assert t4.dtype == torch.float64 and t4.shape == (1, 3, 1, 1)
    assert t4.flatten().tolist() == [1.5, -2.0, 0.25]
    assert module_arg_tensor(values, 2).shape == (1, 3)
    assert module_arg_tensor(values, 3).shape == (1, 3, 1)
    t4.mul_(0)
    assert values.value.tolist() == [1.5, -2.0, 0.25]  # a copy


# --- Rule defaults ---


class _Context:
    """The part of the pass contexts that the rules under test read."""

    def __init__(self, layouts=None, values=None):
        self.layouts = layouts or {}
        self.pruned = values or {}
        self.spaces = []

    def layout(self, arg):
        return self.layouts.get(arg.name) if isinstance(arg, fx.Node) else None

    def output_layouts(self, node):
        return self.layouts.get(node.name)

    def space(self, node, layout):
        self.spaces.append((node.name, layout))

    def values(self, arg):
        return self.pruned.get(arg.name) if isinstance(arg, fx.Node) else None


def test_rule_defaults():
    rule = Rule()
    assert rule.name == "op"
    assert rule.meta_output(nn.Conv2d(3, 4, 3), torch.empty(1, 3, 5, 5, device="meta")) is None
    assert rule.expected_input(nn.Conv2d(3, 4, 3)) is None
    graph, x = _graph()
    node = graph.call_function(torch.relu, (x,))
    with pytest.raises(NotImplementedError):
        rule.analyze(node, _Context())


def test_rule_default_propagation_is_input_dependent():
    graph, x = _graph()
    node = graph.call_function(torch.relu, (x,))
    ctx = _Context(layouts={"relu": Layout.plain(0, 4)})
    values = Rule().propagate(node, ctx)
    assert len(values) == 4
    assert np.isnan(values.value).all()
    assert Rule().propagate(node, _Context()) is None  # no channels


# --- Passthrough ---


def test_passthrough_keeps_the_input_layout_and_values():
    graph, x = _graph()
    node = graph.call_function(torch.relu, (x,))
    layout = Layout.plain(2, 5)
    values = PrunedValues.exact(np.arange(5.0))
    ctx = _Context(layouts={"x": layout}, values={"x": values})
    rule = Passthrough()
    assert rule.name == "channel-wise"
    assert rule.analyze(node, ctx) is layout
    assert ctx.spaces == [("relu", layout)]  # its output is a member of the group
    assert rule.propagate(node, ctx) is values


def test_passthrough_of_an_input_without_channels_is_none():
    graph, x = _graph()
    node = graph.call_function(torch.relu, (x,))
    ctx = _Context()
    rule = Passthrough()
    assert rule.analyze(node, ctx) is None
    assert ctx.spaces == []
    assert rule.propagate(node, ctx) is None


class Copy(nn.Module):
    """Channel-wise and value preserving: what a Passthrough rule describes."""

    def forward(self, x):
        return x.clone()


class WithCopy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.copy = Copy()
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.copy(torch.relu(self.bn1(self.conv1(x)))))


def test_a_module_with_a_passthrough_rule_is_slimmed_through(monkeypatch, oracle_check):
    registry.registered_keys()  # the rules of imported packages in before the copy
    monkeypatch.setattr(registry, "_MODULE_RULES", dict(registry._MODULE_RULES))
    registry.register(Copy)(type("CopyRule", (Passthrough,), {}))
    model = randomize_batchnorm(WithCopy(), seed=1)
    x = torch.randn(2, 3, 5, 5)
    res = slimfx.slim(model, x, 0.5)
    cg = res.channel_graph
    assert [n.op for n in cg.gm.graph.nodes if n.name == "copy"] == ["call_module"]
    assert cg.group_of("copy") is cg.group_of("bn1")
    assert cg.group_of("copy").prunable
    assert type(res.module.copy) is Copy
    assert res.module.conv2.in_channels < 8
    assert res.report.verification_error <= 1e-9
    oracle_check(model, x, res)
