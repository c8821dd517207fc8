"""Pass 2, analyze: the channel graph as networkx data, strict mode, frozen reasons."""

import networkx as nx
import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx.models import VGG


def test_vgg_groups_are_conv_bn_relu_pool_chains():
    cg = slimfx.analyze(slimfx.trace(VGG(depth=11), torch.randn(1, 3, 32, 32)))
    assert isinstance(cg.graph, nx.Graph)
    group = cg.group_of("feature_1")
    assert group.name == "feature_0" and group.size == 64
    assert {"feature_0", "feature_1", "feature_2", "feature_3"} <= set(group.members)
    assert nx.has_path(cg.graph, "feature_0", "feature_3")
    assert not nx.has_path(cg.graph, "feature_0", "feature_4")  # a conv starts a new group
    assert len(cg.prunable_groups) == 8
    assert cg.group_of("x").frozen == ["model input x"]
    assert cg.group_of("classifier").frozen == ["model output"]
    assert "prunable" in cg.summary() and "frozen: model output" in cg.summary()
    with pytest.raises(KeyError):
        cg.group_of("size")  # x.size(0) is a Python number: no channels


class Softmaxed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        x = torch.softmax(self.bn(self.conv(x)), dim=1)  # mixes channels: no rule
        return self.bn2(self.conv2(x)).mean((2, 3))


def test_op_without_rule_freezes_and_names_the_node():
    cg = slimfx.analyze(slimfx.trace(Softmaxed(), torch.randn(1, 3, 4, 4)))
    frozen = cg.group_of("conv").frozen
    assert len(frozen) == 1 and frozen[0].startswith("no rule for op: %softmax")
    assert any("softmax" in note for note in cg.notes)


def test_strict_mode_raises_instead():
    gm = slimfx.trace(Softmaxed(), torch.randn(1, 3, 4, 4))
    with pytest.raises(slimfx.UnsupportedError, match="strict mode: no rule for op: %softmax"):
        slimfx.analyze(gm, strict=True)


def test_analyze_needs_shapes():
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match=r"slimfx\.trace"):
        slimfx.analyze(gm)


def test_module_called_twice_with_weights_is_frozen():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.stem = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            x = torch.relu(self.bn(self.stem(x)))
            return self.conv(self.conv(x)).mean((2, 3))

    cg = slimfx.analyze(slimfx.trace(Shared(), torch.randn(1, 3, 4, 4)))
    reason = "module conv is called more than once (shared weights)"
    assert reason in cg.group_of("stem").frozen  # its input: both calls' channels stay
    assert reason in cg.group_of("conv").frozen
