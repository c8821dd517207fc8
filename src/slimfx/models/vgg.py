"""The CIFAR VGG of the network-slimming reference code, module names and all.

``feature`` is a Sequential of conv(3x3, no bias)-BN-ReLU triplets and 2x2 max pooling built
from a cfg list; ``forward`` ends with an ``AvgPool2d(2)`` constructed inside ``forward`` (as
the reference does), a ``view`` and the ``classifier`` Linear. Checkpoints move both ways
between this class and the reference ``vgg`` class; ``VGG(cfg=pruned["cfg"])`` loads a
``pruned.pth`` with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from slimfx.models.init import reference_init

DEFAULT_CFG: dict[int, list] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
    ],
}

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}


def _check_cfg(cfg: list) -> None:
    if not cfg or not all(v == "M" or (isinstance(v, int) and v > 0) for v in cfg):
        raise ValueError(f"cfg must be a list of positive ints and 'M', got {cfg!r}")
    if not isinstance(cfg[-1], int):
        raise ValueError(f"cfg must end with a layer width, got {cfg!r}")


class VGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs.

    Parameters
    ----------
    dataset : str
        ``"cifar10"``, ``"cifar100"`` or ``"digits"``; sets the number of classes.
    depth : int
        11, 13, 16 or 19 (ignored when ``cfg`` is given).
    init_weights : bool
        The reference initialisation (gamma 0.5, as the reference code).
    cfg : list, optional
        Layer widths and ``'M'`` for max pooling.
    num_classes : int, optional
        Overrides the dataset's class count.
    """

    def __init__(
        self,
        dataset: str = "cifar10",
        depth: int = 19,
        init_weights: bool = True,
        cfg: list | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        if cfg is None:
            if depth not in DEFAULT_CFG:
                raise ValueError(f"depth must be one of {sorted(DEFAULT_CFG)}, got {depth!r}")
            cfg = DEFAULT_CFG[depth]
        cfg = list(cfg)
        _check_cfg(cfg)
        if num_classes is None:
            if dataset not in NUM_CLASSES:
                raise ValueError(f"dataset must be one of {sorted(NUM_CLASSES)}, got {dataset!r}")
            num_classes = NUM_CLASSES[dataset]
        self.cfg = cfg
        self.feature = self.make_layers(cfg)
        self.classifier = nn.Linear(cfg[-1], num_classes)
        if init_weights:
            self._initialize_weights()

    @staticmethod
    def make_layers(cfg: list, in_channels: int = 3) -> nn.Sequential:
        layers: list[nn.Module] = []
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [
                    nn.Conv2d(in_channels, v, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                in_channels = v
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature(x)
        x = nn.AvgPool2d(2)(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)

    def _initialize_weights(self) -> None:
        reference_init(self, linear_std=0.01)


def vgg(dataset: str = "cifar10", depth: int = 19, init_weights: bool = True, cfg=None) -> VGG:
    """The reference code's constructor name (``vgg(cfg=cfg)``)."""
    return VGG(dataset=dataset, depth=depth, init_weights=init_weights, cfg=cfg)
