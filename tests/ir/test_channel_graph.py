"""ChannelGraph and ChannelGroup queries on small hand-built models."""

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx import ChannelGraph, ChannelGroup
from slimfx.ir.channel_graph import Scorer, Sink
from slimfx.ir.layout import Layout


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class Residual(nn.Module):
    """``bn0(stem(x)) + bn1(conv(...))``: the add ties both BatchNorms to one group."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(6)
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        a = self.bn0(self.stem(x))
        b = self.bn1(self.conv(torch.relu(a)))
        y = torch.relu(a + b)
        return self.fc(torch.relu(self.bn2(self.head(y))).mean((2, 3)))


class Concat(nn.Module):
    """Two branches concatenated, then pooled and flattened into a linear layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bna = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(3, 5, 1)
        self.bnb = nn.BatchNorm2d(5)
        self.head = nn.Conv2d(9, 3, 1)
        self.bnh = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        y = torch.cat([torch.relu(self.bna(self.a(x))), torch.relu(self.bnb(self.b(x)))], dim=1)
        z = torch.relu(self.bnh(self.head(y)))
        return self.fc(torch.flatten(nn.functional.max_pool2d(z, 2), 1))


class Mixed(nn.Module):
    """A grouped conv without bias, a depthwise conv, a group without BatchNorm and a
    BatchNorm behind a softmax (no rule)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, groups=6)
        self.plain = nn.Conv2d(6, 5, 1)
        self.soft = nn.Conv2d(5, 4, 1)
        self.bn4 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.dw(torch.relu(self.bn2(self.conv2(x))))
        x = torch.relu(self.plain(x))
        x = torch.softmax(self.bn4(self.soft(x)), 1)
        return self.fc(x.mean((2, 3)))


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def analyzed(make) -> ChannelGraph:
    return slimfx.analyze(slimfx.trace(make().eval(), X))


@pytest.fixture(scope="module")
def chain():
    return analyzed(Chain)


@pytest.fixture(scope="module")
def residual():
    return analyzed(Residual)


@pytest.fixture(scope="module")
def concat():
    return analyzed(Concat)


@pytest.fixture(scope="module")
def mixed():
    return analyzed(Mixed)


def by_name(cg: ChannelGraph) -> dict[str, ChannelGroup]:
    return {g.name: g for g in cg.groups}


# --- the plain chain ------------------------------------------------------------------------
def test_groups_are_numbered_in_graph_order_and_named_by_their_first_space(chain):
    assert [g.name for g in chain.groups] == ["x", "conv1", "conv2", "fc"]
    assert [g.id for g in chain.groups] == [0, 1, 2, 3]
    assert [g.size for g in chain.groups] == [3, 8, 6, 2]
    assert all(chain.groups[g.id] is g for g in chain.groups)


def test_a_conv_bn_relu_chain_is_one_plain_group(chain):
    group = chain.group_of("conv1")
    assert set(group.members) == {"conv1", "bn1", "relu"}
    for space in ("conv1", "bn1", "relu"):
        assert chain.group_of(space) is group
        assert chain.layout(space) == Layout.plain(group.id, 8)
    assert set(chain.group_of("conv2").members) == {"conv2", "bn2", "relu_1", "mean"}


def test_layout_takes_a_node_or_its_name(chain):
    nodes = {n.name: n for n in chain.gm.graph.nodes}
    for name, node in nodes.items():
        assert chain.layout(node) == chain.layout(name)
    assert chain.layout(nodes["output"]) is None  # not a tensor
    assert chain.layout("no_such_node") is None


@pytest.mark.parametrize("space", ["output", "no_such_node"])
def test_group_of_something_that_is_not_a_channel_space_is_a_key_error(chain, space):
    with pytest.raises(KeyError, match=space):
        chain.group_of(space)


def test_one_scorer_per_batchnorm_covering_every_channel(chain):
    (scorer,) = chain.group_of("conv1").scorers
    assert isinstance(scorer, Scorer)
    assert (scorer.module, scorer.node) == ("bn1", "bn1")
    np.testing.assert_array_equal(scorer.group_index, np.arange(8))
    np.testing.assert_array_equal(scorer.bn_channel, np.arange(8))
    assert [s.module for s in chain.group_of("conv2").scorers] == ["bn2"]


def test_inputs_and_outputs_are_frozen_the_rest_prunable(chain):
    groups = by_name(chain)
    assert groups["x"].frozen == ["model input x"] and not groups["x"].prunable
    assert groups["fc"].frozen == ["model output"] and not groups["fc"].prunable
    assert groups["conv1"].prunable and groups["conv2"].prunable
    assert [g.name for g in chain.prunable_groups] == ["conv1", "conv2"]
    assert [g.name for g in chain.frozen_groups] == ["x", "fc"]


def test_sinks_are_the_consumers_of_channels(chain):
    assert chain.sinks == [
        Sink("conv1", "x", padded=True, has_bias=True, groups=1),
        Sink("conv2", "relu", padded=True, has_bias=True, groups=1),
        Sink("fc", "mean", padded=False, has_bias=True, groups=1),
    ]


def test_the_networkx_graph_has_one_node_per_space_and_groups_are_its_components(chain):
    assert set(chain.graph.nodes) == {m for g in chain.groups for m in g.members}
    for g in chain.groups:
        assert set(nx.node_connected_component(chain.graph, g.name)) == set(g.members)
        assert all(chain.graph.nodes[m]["size"] == g.size for m in g.members)
    assert chain.graph.nodes["conv1"]["op"] == "Conv2d"
    assert chain.graph.nodes["bn1"]["op"] == "BatchNorm2d"
    assert {d["kind"] for _, _, d in chain.graph.edges(data=True)} == {"identity"}
    assert chain.graph.edges["conv1", "bn1"]["via"] == "bn1"


def test_summary_has_one_line_per_group(chain):
    lines = chain.summary().splitlines()
    assert lines == [
        "[0] x (3 ch) scorers: - — frozen: model input x",
        "[1] conv1 (8 ch) scorers: bn1 — prunable",
        "[2] conv2 (6 ch) scorers: bn2 — prunable",
        "[3] fc (2 ch) scorers: - — frozen: model output",
    ]
    assert chain.notes == []


def test_the_graph_module_is_the_traced_model(chain):
    assert isinstance(chain.gm, torch.fx.GraphModule)
    assert chain.gm.conv1.out_channels == 8
    assert all("tensor_meta" in n.meta for n in chain.gm.graph.nodes if n.op != "output")


# --- a residual add --------------------------------------------------------------------------
def test_a_residual_add_couples_two_batchnorms_into_one_group(residual):
    group = residual.group_of("add")
    assert group is residual.group_of("stem") is residual.group_of("conv")
    assert group.name == "stem" and group.size == 6
    assert {"stem", "bn0", "relu", "conv", "bn1", "add", "relu_1"} == set(group.members)
    assert [s.module for s in group.scorers] == ["bn0", "bn1"]
    for scorer in group.scorers:
        np.testing.assert_array_equal(scorer.group_index, np.arange(6))
        np.testing.assert_array_equal(scorer.bn_channel, np.arange(6))
    assert group.prunable
    assert residual.graph.edges["stem", "conv"]["via"] == "add"
    assert "[1] stem (6 ch) scorers: bn0, bn1 — prunable" in residual.summary()


def test_the_add_sink_and_the_head_group(residual):
    assert [(s.node, s.input) for s in residual.sinks] == [
        ("stem", "x"),
        ("conv", "relu"),
        ("head", "relu_1"),
        ("fc", "mean"),
    ]
    assert [g.name for g in residual.prunable_groups] == ["stem", "head"]


# --- a concatenation -------------------------------------------------------------------------
def test_a_concatenation_layout_is_the_union_of_its_parts_in_order(concat):
    a, b = concat.group_of("relu"), concat.group_of("relu_1")
    assert (a.name, b.name) == ("a", "b") and a is not b
    cat = concat.layout("cat")
    assert cat == Layout.concat([concat.layout("relu"), concat.layout("relu_1")])
    assert len(cat) == a.size + b.size == 9
    assert cat.group_ids() == [a.id, b.id]
    pairs = set(zip(cat.group.tolist(), cat.index.tolist(), strict=True))
    assert pairs == {(a.id, i) for i in range(4)} | {(b.id, i) for i in range(5)}
    assert cat.plain_group() is None


def test_a_concatenation_is_not_a_channel_space_of_its_own(concat):
    assert "cat" not in concat.graph
    with pytest.raises(KeyError, match="cat"):
        concat.group_of("cat")
    assert not concat.graph.has_edge("a", "b")  # concatenated, not coupled
    assert [s.input for s in concat.sinks if s.node == "head"] == ["cat"]


def test_a_flatten_repeats_each_channel_over_the_spatial_cells(concat):
    group = concat.group_of("max_pool2d")
    assert group.name == "head"
    flat = concat.layout("flatten")
    assert flat == concat.layout("max_pool2d").expand(16)
    assert len(flat) == 48 and flat.group_ids() == [group.id]
    assert "flatten" not in concat.graph
    assert [s.input for s in concat.sinks if s.node == "fc"] == ["flatten"]


# --- frozen reasons, blocks, groups without BatchNorm ----------------------------------------
def test_an_op_without_rule_freezes_a_group_that_has_a_scorer(mixed):
    group = mixed.group_of("bn4")
    assert [s.module for s in group.scorers] == ["bn4"]
    assert len(group.frozen) == 1 and group.frozen[0].startswith("no rule for op: %softmax")
    assert not group.prunable and group in mixed.frozen_groups
    assert group not in mixed.prunable_groups
    assert mixed.notes == group.frozen  # the note names the same node
    assert f"[{group.id}] soft (4 ch) scorers: bn4 — frozen: no rule for op" in mixed.summary()


def test_a_group_without_batchnorm_is_neither_prunable_nor_frozen(mixed):
    group = mixed.group_of("plain")
    assert group.scorers == [] and group.frozen == [] and not group.prunable
    assert group not in mixed.frozen_groups and group not in mixed.prunable_groups
    assert f"[{group.id}] plain (5 ch) scorers: - — no BatchNorm" in mixed.summary()


def test_grouped_and_depthwise_convolutions(mixed):
    conv1, conv2 = mixed.group_of("conv1"), mixed.group_of("conv2")
    assert conv1.blocks == 2 and conv2.blocks == 2  # the grouped conv's input and output
    assert mixed.group_of("dw") is conv2  # depthwise: channel-wise, same group
    assert [g.name for g in mixed.prunable_groups] == ["conv1", "conv2"]
    grouped = next(s for s in mixed.sinks if s.node == "conv2")
    assert grouped == Sink("conv2", "relu", padded=True, has_bias=False, groups=2)
    assert [s.node for s in mixed.sinks].count("dw") == 0  # depthwise is not a sink


def test_frozen_reasons_from_the_model_boundary_and_the_op_are_recorded_per_group(mixed):
    reasons = {g.name: g.frozen for g in mixed.frozen_groups}
    assert set(reasons) == {"x", "soft", "fc"}
    assert reasons["x"] == ["model input x"] and reasons["fc"] == ["model output"]
