"""The paper's CIFAR DenseNet (DenseNet-40, growth rate 12).

Module names follow the network-slimming reference code (``conv1``, ``dense1.0.bn1``,
``trans1``, ``bn``, ``fc``) without its channel-selection layers. Each layer concatenates
its 12 new channels to its input; slimfx tracks every layer's channels through all later
concatenations.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimfx.models.init import reference_init


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 producing ``growth`` channels, concatenated to the input."""

    def __init__(self, inplanes: int, growth: int = 12, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, growth, kernel_size=3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return torch.cat((x, out), 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 then 2x2 average pooling."""

    def __init__(self, inplanes: int, outplanes: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, outplanes, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(self.relu(self.bn1(x))), 2)


def default_cfg(depth: int, growth: int = 12) -> list[int]:
    """Output widths of every convolution: stem, 3 x (n layers, transition or nothing)."""
    n = (depth - 4) // 3
    cfg, planes = [2 * growth], 2 * growth
    for stage in range(3):
        cfg += [growth] * n
        planes += growth * n
        if stage < 2:
            cfg.append(planes)
    return cfg


class DenseNet(nn.Module):
    """CIFAR DenseNet without bottlenecks or compression (depth = 3n + 4; 40 in the paper).

    Parameters
    ----------
    depth : int
        40 in the paper; any ``3n + 4``.
    dataset : str
        ``"cifar10"``, ``"cifar100"`` or ``"digits"``.
    growth : int
        Channels added by every layer (12 in the paper).
    cfg : list of int, optional
        Output width of every convolution in module order (stem, each layer, each
        transition); pruning makes layers add fewer channels.
    num_classes : int, optional
    """

    def __init__(
        self,
        depth: int = 40,
        dataset: str = "cifar10",
        growth: int = 12,
        cfg: list | None = None,
        num_classes: int | None = None,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if not isinstance(depth, int) or depth < 7 or (depth - 4) % 3:
            raise ValueError(f"depth must be 3n + 4 with n >= 1 (40 in the paper), got {depth}")
        from slimfx.models.vgg import NUM_CLASSES

        if num_classes is None:
            num_classes = NUM_CLASSES[dataset]
        n = (depth - 4) // 3
        cfg = default_cfg(depth, growth) if cfg is None else list(cfg)
        if len(cfg) != 3 * n + 3 or not all(isinstance(w, int) and w > 0 for w in cfg):
            raise ValueError(f"cfg must hold {3 * n + 3} positive widths for depth {depth}")
        self.cfg = cfg
        widths = iter(cfg)
        planes = next(widths)
        self.conv1 = nn.Conv2d(3, planes, kernel_size=3, padding=1, bias=False)
        for stage in range(1, 4):
            layers = []
            for _ in range(n):
                added = next(widths)
                layers.append(DenseLayer(planes, added, drop_rate))
                planes += added
            self.add_module(f"dense{stage}", nn.Sequential(*layers))
            if stage < 3:
                out = next(widths)
                self.add_module(f"trans{stage}", Transition(planes, out))
                planes = out
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(planes, num_classes)
        reference_init(self)

    @staticmethod
    def cfg_of(module: nn.Module) -> list[int]:
        """The cfg of a (slim) DenseNet: every convolution's output width in module order."""
        return [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.trans1(self.dense1(x))
        x = self.trans2(self.dense2(x))
        x = self.dense3(x)
        x = self.avgpool(self.relu(self.bn(x)))
        return self.fc(x.view(x.size(0), -1))
