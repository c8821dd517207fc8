"""The layers a latency table times, and their widths under a plan."""

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from slimfx.ir.layout import KeepTable
from slimfx.latency.layers import LayerShape, timed_layers
from slimfx.latency.probes import torch_probe
from slimfx.passes.analyze import analyze
from slimfx.passes.trace import trace


class _Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.bn2 = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 8, 1, groups=4)
        self.bn3 = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.bn(self.conv(x)).relu()
        x = self.bn2(self.dw(x)).relu()
        x = self.bn3(self.grouped(x)).relu()
        x = self.up(x)
        return self.fc(x.mean((2, 3)))


def _layers():
    x = torch.randn(2, 3, 8, 8)
    cg = analyze(trace(_Blocks().eval(), x))
    return cg, {layer.module: layer for layer in timed_layers(cg)}


def test_every_conv_and_linear_layer_is_timed_with_its_shapes():
    _, layers = _layers()
    assert list(layers) == ["conv", "dw", "grouped", "up", "fc"]
    assert layers["conv"].shape.spatial == (8, 8) and layers["conv"].out_area == 64
    assert layers["dw"].shape.depthwise and not layers["grouped"].shape.depthwise
    assert layers["up"].shape.kind == "conv_transpose" and layers["up"].out_area == 256
    assert layers["fc"].shape.kind == "linear" and layers["fc"].shape.spatial == ()
    for layer in layers.values():  # per-sample MACs as PyTorch's FLOP counter counts them
        shape = layer.shape
        size = (1, *shape.spatial, shape.in_channels) if shape.kind == "linear" else None
        x = torch.randn(size or (1, shape.in_channels, *shape.spatial))
        with FlopCounterMode(display=False) as counter:
            torch_probe(shape)(x)
        assert shape.macs() * 2 == counter.get_total_flops(), layer.module


def test_widths_follow_the_kept_channels_depthwise_and_grouped():
    cg, layers = _layers()
    first = cg.group_of("bn").id
    keep = np.zeros(16, dtype=bool)
    keep[:6] = True  # 6 of the 16 channels the first conv, the depthwise and the grouped share
    table = KeepTable({first: keep})
    assert layers["conv"].widths(table) == (3, 6)
    assert layers["dw"].widths(table) == (6, 6)  # a depthwise layer stays depthwise
    assert layers["grouped"].widths(table) == (4, 8)  # 4 groups keep as many inputs each
    assert layers["fc"].widths(table) == (4, 5)
    assert layers["dw"].shape.at(6, 6).groups == 6
    assert layers["grouped"].shape.at(8, 8).groups == 4


def test_shape_keys_differ_by_every_field():
    base = LayerShape("conv", 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), (), 1, (4, 4))
    keys = {
        base.key(),
        base.at(8, 16).key(),
        LayerShape("conv", 8, 8, (3, 3), (2, 2), (1, 1), (1, 1), (), 1, (4, 4)).key(),
        LayerShape("conv", 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), (), 1, (8, 8)).key(),
        LayerShape("conv", 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), (), 1, (4, 4), False).key(),
    }
    assert len(keys) == 5
