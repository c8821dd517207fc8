"""The node walk: which rule speaks for each node, in order, and what the reader reads."""

from __future__ import annotations

import torch
import torch.nn as nn

import slimfx
from slimfx.ir.layout import Layout
from slimfx.passes.walk import GraphReader, rule_of, walk
from slimfx.rules.conv import Conv
from slimfx.rules.graph_io import GetAttr, Output, Placeholder, PythonValue, Unknown


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("shift", torch.ones(1, 4, 1, 1))

    def forward(self, x):
        y = self.conv(x) + self.shift
        y = torch.roll(y, 1, dims=2)  # no rule
        return y.reshape(y.size(0), -1)


def _traced():
    return slimfx.trace(_Mixed(), torch.randn(2, 3, 5, 5))


def test_every_node_gets_the_rule_that_speaks_for_it():
    gm = _traced()
    modules = dict(gm.named_modules())
    kinds = {node.name: type(rule_of(node, modules)) for node in gm.graph.nodes}
    assert kinds["x"] is Placeholder
    assert kinds["output"] is Output
    assert kinds["shift"] is GetAttr
    assert kinds["conv"] is Conv
    assert kinds["size"] is PythonValue  # y.size(0): a Python number
    assert kinds["roll"] is Unknown


def test_the_walk_goes_in_graph_order_and_steps_read_earlier_results():
    gm = _traced()
    seen = []

    def step(node, rule):
        earlier = [n.name for n in node.all_input_nodes]
        assert all(name in into for name in earlier)  # every input was visited before
        seen.append(node.name)
        return len(seen)

    into: dict = {}
    result = walk(gm, dict(gm.named_modules()), step, into)
    assert result is into
    assert seen == [n.name for n in gm.graph.nodes]
    assert list(result.values()) == list(range(1, len(seen) + 1))


def test_the_reader_reads_modules_shapes_attributes_and_layouts():
    gm = _traced()
    nodes = {n.name: n for n in gm.graph.nodes}
    layout = Layout.plain(0, 4)
    reader = GraphReader(gm, {"conv": layout, "split": (layout, layout)})
    assert reader.module(nodes["conv"]) is gm.conv
    assert reader.shape(nodes["conv"]) == (2, 4, 5, 5)
    assert reader.shape(3) is None and reader.shape(nodes["size"]) is None
    assert torch.equal(reader.attr(nodes["shift"]), gm.shift)
    assert reader.layout(nodes["conv"]) is layout
    assert reader.layout("conv") is None  # names are not nodes
    assert reader.layout(nodes["x"]) is None  # not recorded


def test_a_step_failing_names_the_node_and_the_rule():
    """A rule meeting a case it does not know is a SlimfxError naming the node, not a bare
    exception from deep inside the rule; SlimfxErrors pass unchanged."""
    from slimfx.errors import PlanError, UnsupportedError

    gm = _traced()

    def step(node, rule):
        if node.op == "call_module":
            raise ValueError("operands could not be broadcast")
        return None

    try:
        walk(gm, dict(gm.named_modules()), step, into={})
    except UnsupportedError as exc:
        assert "conv" in str(exc) and "call_module" in str(exc)
        assert "ValueError: operands could not be broadcast" in str(exc)
        assert isinstance(exc.__cause__, ValueError)
    else:
        raise AssertionError("the failure was not reported")

    def planned_failure(node, rule):
        raise PlanError("as it was")

    try:
        walk(gm, dict(gm.named_modules()), planned_failure, into={})
    except PlanError as exc:
        assert str(exc) == "as it was"
