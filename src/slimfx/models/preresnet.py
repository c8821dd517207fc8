"""The paper's CIFAR ResNet: pre-activation, bottleneck blocks (ResNet-164 at depth 164).

Module names follow the network-slimming reference code (``conv1``, ``layer1.0.bn1``, …,
``bn``, ``fc``) without its hand-written channel-selection layers: slimfx works out the
channel dependencies itself. ``cfg`` lists the widths of every block's three BatchNorms
(``[bn1, bn2, bn3] * blocks`` then the final ``bn``); the default is the reference code's.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from slimfx.models.init import reference_init


class Bottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1, + skip."""

    def __init__(
        self,
        inplanes: int,
        outplanes: int,
        cfg: list[int],
        stride: int = 1,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(cfg[0], cfg[1], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cfg[1])
        self.conv2 = nn.Conv2d(cfg[1], cfg[2], kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cfg[2])
        self.conv3 = nn.Conv2d(cfg[2], outplanes, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.bn1(x))
        out = self.conv1(out)
        out = self.relu(self.bn2(out))
        out = self.conv2(out)
        out = self.relu(self.bn3(out))
        out = self.conv3(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        return out + residual


def default_cfg(depth: int) -> list[int]:
    n = (depth - 2) // 9
    groups = [
        [16, 16, 16],
        [64, 16, 16] * (n - 1),
        [64, 32, 32],
        [128, 32, 32] * (n - 1),
        [128, 64, 64],
        [256, 64, 64] * (n - 1),
        [256],
    ]
    return [w for g in groups for w in g]


class PreResNet(nn.Module):
    """CIFAR pre-activation ResNet with bottlenecks (depth = 9n + 2; 164 in the paper).

    Parameters
    ----------
    depth : int
        164 in the paper; any ``9n + 2``.
    dataset : str
        ``"cifar10"``, ``"cifar100"`` or ``"digits"``.
    cfg : list of int, optional
        Widths of every BatchNorm in module order: ``[bn1, bn2, bn3]`` of each block, then
        the final ``bn`` (the reference code's default cfg). A block's ``bn1`` width is the
        width of the residual stream entering it, so pruned streams are expressible too.
    num_classes : int, optional
    """

    def __init__(
        self,
        depth: int = 164,
        dataset: str = "cifar10",
        cfg: list | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        if not isinstance(depth, int) or depth < 11 or (depth - 2) % 9:
            raise ValueError(f"depth must be 9n + 2 with n >= 1 (164 in the paper), got {depth}")
        from slimfx.models.vgg import NUM_CLASSES

        n = (depth - 2) // 9
        cfg = default_cfg(depth) if cfg is None else list(cfg)
        if len(cfg) != 9 * n + 1 or not all(isinstance(w, int) and w > 0 for w in cfg):
            raise ValueError(f"cfg must hold {9 * n + 1} positive widths for depth {depth}")
        if num_classes is None:
            num_classes = NUM_CLASSES[dataset]
        self.cfg = cfg
        blocks = [cfg[3 * b : 3 * b + 3] for b in range(3 * n)]
        streams = [blocks[b + 1][0] for b in range(3 * n - 1)] + [cfg[-1]]
        self.conv1 = nn.Conv2d(3, blocks[0][0], kernel_size=3, padding=1, bias=False)
        for stage in range(3):
            layers = []
            for i in range(n):
                b = stage * n + i
                width_in, out = blocks[b][0], streams[b]
                stride = 2 if stage > 0 and i == 0 else 1
                downsample = None
                if i == 0:
                    downsample = nn.Sequential(
                        nn.Conv2d(width_in, out, kernel_size=1, stride=stride, bias=False)
                    )
                elif width_in != out:
                    raise ValueError(
                        f"cfg: block {b} adds its input ({width_in} channels) to its output "
                        f"({out} channels); they must match"
                    )
                layers.append(Bottleneck(width_in, out, blocks[b], stride, downsample))
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
        self.bn = nn.BatchNorm2d(cfg[-1])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(cfg[-1], num_classes)
        reference_init(self)

    @staticmethod
    def cfg_of(module: nn.Module) -> list[int]:
        """The cfg of a (slim) PreResNet: every BatchNorm's width in module order."""
        return [m.num_features for m in module.modules() if isinstance(m, nn.BatchNorm2d)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu(self.bn(x))
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)
