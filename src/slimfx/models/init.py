"""The network-slimming reference code's weight initialisation, shared by its models."""

from __future__ import annotations

import math

import torch.nn as nn


def reference_init(model: nn.Module, *, linear_std: float | None = None) -> None:
    """Initialise in place as the reference code does.

    Convolutions ``N(0, sqrt(2 / (k*k*out)))`` with zero bias, BatchNorm ``gamma = 0.5``,
    ``beta = 0``, and, when ``linear_std`` is given, linear layers ``N(0, linear_std)`` with
    zero bias (the VGG; the ResNet and DenseNet keep PyTorch's default there).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / fan))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(0.5)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear) and linear_std is not None:
            m.weight.data.normal_(0, linear_std)
            m.bias.data.zero_()
