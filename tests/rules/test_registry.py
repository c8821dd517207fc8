"""The op-rule registry: registering rules, looking them up by node, layer input texts."""

import operator
import subprocess
import sys

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import slimfx
from slimfx.rules import registry
from slimfx.rules.activations import HomogeneousActivation
from slimfx.rules.base import Passthrough, Rule
from slimfx.rules.conv import Conv
from slimfx.rules.norm import BatchNorm
from slimfx.rules.registry import expected_input, module_rule, register, registered_keys, rule_for


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test go to copies of the tables, dropped after the test
    (copied after the rules of imported packages are in, which the copies would lose)."""
    registered_keys()
    for table in ("_MODULE_RULES", "_FUNCTION_RULES", "_METHOD_RULES"):
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))


class Probe(nn.Module):
    def forward(self, x):
        return x.clone()


def probe_function(x):
    return x.clone()


CONV_RULE = module_rule(nn.Conv2d(1, 1, 1))
BATCHNORM_RULE = module_rule(nn.BatchNorm2d(1))
RELU_RULE = module_rule(nn.ReLU())


# --- register ---


def test_register_puts_one_rule_under_module_types_method_names_and_functions(
    scratch_registry,
):
    @register(Probe, "probe_method", probe_function)
    class ProbeRule(Passthrough):
        name = "probe"

    rule = module_rule(Probe())
    assert isinstance(rule, ProbeRule)
    graph = fx.Graph()
    x = graph.placeholder("x")
    method = graph.call_method("probe_method", (x,))
    function = graph.call_function(probe_function, (x,))
    assert rule_for(method, {}) is rule  # one instance under every key
    assert rule_for(function, {}) is rule
    keys = registered_keys()
    assert "Probe" in keys["modules"]
    assert "probe_method" in keys["methods"]
    assert "probe_function" in keys["functions"]


def test_register_returns_the_class_itself(scratch_registry):
    class ProbeRule(Passthrough):
        pass

    assert register(Probe)(ProbeRule) is ProbeRule
    assert type(module_rule(Probe())) is ProbeRule


def test_a_later_registration_replaces_the_earlier_rule(scratch_registry):
    @register(Probe)
    class First(Passthrough):
        pass

    @register(Probe)
    class Second(Passthrough):
        pass

    assert type(module_rule(Probe())) is Second


def test_scratch_registrations_do_not_leak_into_the_global_tables():
    before = registered_keys()
    with pytest.MonkeyPatch.context() as monkeypatch:
        for table in ("_MODULE_RULES", "_FUNCTION_RULES", "_METHOD_RULES"):
            monkeypatch.setattr(registry, table, dict(getattr(registry, table)))

        @register(Probe, "probe_method", probe_function)
        class ProbeRule(Passthrough):
            pass

        assert registered_keys() != before
    assert registered_keys() == before
    assert module_rule(Probe()) is None


def test_a_registered_module_becomes_a_leaf_of_the_trace(scratch_registry):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.probe = Probe()

        def forward(self, x):
            return self.probe(x)

    traced = slimfx.trace(Net(), torch.randn(1, 3, 4, 4))
    assert [n.op for n in traced.graph.nodes] == ["placeholder", "call_method", "output"]

    @register(Probe)
    class ProbeRule(Passthrough):
        pass

    traced = slimfx.trace(Net(), torch.randn(1, 3, 4, 4))
    calls = [n for n in traced.graph.nodes if n.op == "call_module"]
    assert [n.target for n in calls] == ["probe"]


# --- module_rule ---


def test_module_rule_of_a_registered_class():
    assert isinstance(module_rule(nn.Conv2d(3, 4, 3)), Conv)
    assert isinstance(module_rule(nn.BatchNorm2d(4)), BatchNorm)
    assert isinstance(module_rule(nn.ReLU()), HomogeneousActivation)


def test_module_rule_of_an_unknown_module_is_none():
    assert module_rule(Probe()) is None
    assert module_rule(nn.Sequential(nn.ReLU())) is None


def test_subclass_without_its_own_forward_gets_the_base_rule():
    class MyConv(nn.Conv2d):
        extra = "setting"

    class MyConvAgain(MyConv):
        pass

    class MyBatchNorm(nn.BatchNorm2d):
        def extra_repr(self):
            return "custom"

    assert module_rule(MyConv(3, 4, 3)) is CONV_RULE
    assert module_rule(MyConvAgain(3, 4, 3)) is CONV_RULE
    assert module_rule(MyBatchNorm(4)) is BATCHNORM_RULE


def test_subclass_that_overrides_forward_gets_no_rule():
    class DoubledConv(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x)

    class DoubledConvChild(DoubledConv):
        pass

    class ShiftedReLU(nn.ReLU):
        def forward(self, x):
            return torch.relu(x - 1)

    assert module_rule(DoubledConv(3, 4, 3)) is None
    assert module_rule(DoubledConvChild(3, 4, 3)) is None
    assert module_rule(ShiftedReLU()) is None


def test_subclass_registered_itself_gets_its_own_rule(scratch_registry):
    class DoubledConv(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x)

    @register(DoubledConv)
    class DoubledConvRule(Conv):
        pass

    assert type(module_rule(DoubledConv(3, 4, 3))) is DoubledConvRule
    assert module_rule(nn.Conv2d(3, 4, 3)) is CONV_RULE


# --- rule_for ---


class _Ops(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.probe = Probe()

    def forward(self, x):
        y = F.relu(self.conv(x))
        y = y.relu()
        y = torch.roll(y, 1, dims=2)  # a function without a rule
        y = y.cumsum(1)  # a method without a rule
        return self.probe(y) + y


def _nodes_of(gm):
    return dict(gm.named_modules()), {n.name: n for n in gm.graph.nodes}


def test_rule_for_looks_up_modules_functions_and_methods():
    modules, nodes = _nodes_of(fx.symbolic_trace(_Ops()))
    assert rule_for(nodes["conv"], modules) is CONV_RULE
    assert nodes["relu"].op == "call_function"
    assert rule_for(nodes["relu"], modules) is RELU_RULE
    assert nodes["relu_1"].op == "call_method"
    assert rule_for(nodes["relu_1"], modules) is RELU_RULE
    assert nodes["add"].target is operator.add
    add_method = fx.Graph().call_method("add", (nodes["x"], 1.0))
    add_rule = rule_for(add_method, {})
    assert add_rule is not None and add_rule is not RELU_RULE
    assert rule_for(nodes["add"], modules) is add_rule  # one rule for ``+`` and ``Tensor.add``


def test_rule_for_ops_without_a_rule_is_none():
    modules, nodes = _nodes_of(fx.symbolic_trace(_Ops()))
    assert rule_for(nodes["roll"], modules) is None
    assert rule_for(nodes["cumsum"], modules) is None
    assert nodes["clone"].op == "call_method"  # Probe has no rule: traced through
    modules, nodes = _nodes_of(slimfx.trace(_Ops(), torch.randn(1, 3, 4, 4)))
    assert rule_for(nodes["x"], modules) is None  # graph nodes have no registered rule
    assert rule_for(nodes["output"], modules) is None


def test_rule_for_a_registered_function_method_and_module(scratch_registry):
    @register(Probe, probe_function, "cumsum")
    class ProbeRule(Rule):
        pass

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.probe = Probe()

        def forward(self, x):
            return self.probe(x) + probe_function(x).cumsum(1)

    graph = fx.Graph()
    x = graph.placeholder("x")
    calls = [
        graph.call_module("probe", (x,)),
        graph.call_function(probe_function, (x,)),
        graph.call_method("cumsum", (x, 1)),
    ]
    graph.output(calls[0])
    gm = fx.GraphModule(Net(), graph)
    modules = dict(gm.named_modules())
    for node in calls:
        assert isinstance(rule_for(node, modules), ProbeRule)


class _Unhashable:
    __hash__ = None

    def __call__(self, x):
        return x


def test_rule_for_an_unhashable_call_target_is_none():
    target = _Unhashable()
    with pytest.raises(TypeError):
        hash(target)
    graph = fx.Graph()
    x = graph.placeholder("x")
    # fx's own graph tables hash targets, so the node is built outside them
    node = fx.Node(graph, "unhashable", "call_function", target, (x,), {})
    assert rule_for(node, {}) is None


# --- expected_input ---


@pytest.mark.parametrize(
    "module, text",
    [
        (nn.Conv2d(3, 8, 3), "Conv2d takes (N, 3, H, W)"),
        (nn.Conv1d(5, 8, 3), "Conv1d takes (N, 5, L)"),
        (nn.Conv3d(2, 8, 3), "Conv3d takes (N, 2, D, H, W)"),
        (nn.Linear(7, 2), "Linear takes (N, ..., 7)"),
        (nn.BatchNorm2d(6), "BatchNorm2d takes (N, 6, H, W)"),
        (nn.BatchNorm1d(4), "BatchNorm1d takes (N, 4) or (N, 4, L)"),
        (nn.BatchNorm3d(9), "BatchNorm3d takes (N, 9, D, H, W)"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else None,
)
def test_expected_input_text(module, text):
    assert expected_input(module) == text


def test_expected_input_names_the_layer():
    assert expected_input(nn.Conv2d(3, 8, 3), "feature.0") == "Conv2d feature.0 takes (N, 3, H, W)"
    assert expected_input(nn.Linear(16, 10), "classifier") == "Linear classifier takes (N, ..., 16)"


def test_expected_input_of_a_subclass_uses_its_base_rule():
    class MyConv(nn.Conv2d):
        pass

    assert expected_input(MyConv(4, 8, 3), "c") == "MyConv c takes (N, 4, H, W)"


def test_expected_input_is_none_for_unknown_modules_and_rules_without_one():
    assert expected_input(Probe(), "probe") is None
    assert expected_input(nn.Sequential(nn.Conv2d(3, 4, 3))) is None
    assert expected_input(nn.ReLU(), "act") is None  # has a rule, but no input shape


# --- registered_keys ---


def test_registered_keys_lists_known_ops_sorted():
    import torchvision.ops  # noqa: F401  (its rules register once it is imported)

    keys = registered_keys()
    assert set(keys) == {"modules", "functions", "methods"}
    for names in keys.values():
        assert names == sorted(names)
    assert {"Conv2d", "Linear", "BatchNorm2d", "ReLU", "MaxPool2d", "StochasticDepth"} <= set(
        keys["modules"]
    )
    assert {"relu", "add", "cat", "flatten", "stochastic_depth"} <= set(keys["functions"])
    assert {"view", "relu_", "flatten", "mean"} <= set(keys["methods"])
    assert "Sequential" not in keys["modules"]
    assert "roll" not in keys["functions"]
    assert "cumsum" not in keys["methods"]


def test_package_rules_register_once_their_package_is_imported():
    """Importing slimfx imports no torchvision; a model that holds its ops has imported
    it, and then its rules are found (a fresh interpreter, so nothing is imported yet)."""
    code = """
import sys
import torch
import slimfx
from slimfx.rules.registry import module_rule, registered_keys
assert "torchvision" not in sys.modules, "importing slimfx imported torchvision"
assert "StochasticDepth" not in registered_keys()["modules"]
from torchvision.ops import StochasticDepth
rule = module_rule(StochasticDepth(0.2, "row"))
assert rule is not None and rule.name == "stochastic-depth", rule
assert "StochasticDepth" in registered_keys()["modules"]
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
