"""Model definitions of the network-slimming workflow.

:func:`build_model` builds a model by the reference code's ``--arch``/``--depth``/``--dataset``
flags (and a ``cfg`` for pruned models); :data:`MODEL_BUILDERS` is its registry.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from slimfx.models.densenet import DenseNet
from slimfx.models.preresnet import PreResNet
from slimfx.models.vgg import DEFAULT_CFG, VGG, vgg


def _build_vgg(depth: int, dataset: str, cfg: list | None) -> nn.Module:
    return VGG(dataset=dataset, depth=depth, cfg=cfg)


def _build_resnet(depth: int, dataset: str, cfg: list | None) -> nn.Module:
    return PreResNet(depth=depth, dataset=dataset, cfg=cfg)


def _build_densenet(depth: int, dataset: str, cfg: list | None) -> nn.Module:
    return DenseNet(depth=depth, dataset=dataset, cfg=cfg)


#: ``--arch`` name → ``builder(depth, dataset, cfg) -> nn.Module``.
MODEL_BUILDERS: dict[str, Callable[[int, str, list | None], nn.Module]] = {
    "vgg": _build_vgg,
    "resnet": _build_resnet,
    "densenet": _build_densenet,
}

#: ``--arch`` name → the depths it accepts, or a rule for them (validated by the model).
MODEL_DEPTHS: dict[str, tuple[int, ...] | str] = {
    "vgg": tuple(sorted(DEFAULT_CFG)),
    "resnet": "9n + 2 (164 in the paper)",
    "densenet": "3n + 4 (40 in the paper)",
}


def build_model(arch: str, depth: int, dataset: str, cfg: list | None = None) -> nn.Module:
    """Build a model as the reference code's ``models.__dict__[arch](dataset, depth, cfg)``.

    Parameters
    ----------
    arch : str
        A key of :data:`MODEL_BUILDERS`: ``"vgg"`` (the reference CIFAR VGG),
        ``"resnet"`` (pre-activation bottleneck ResNet, 164 layers in the paper) or
        ``"densenet"`` (DenseNet, 40 layers and growth 12 in the paper).
    depth : int
        Network depth (ignored by VGG when ``cfg`` is given).
    dataset : str
        ``"cifar10"``, ``"cifar100"`` or ``"digits"``; sets the number of classes.
    cfg : list, optional
        Layer widths of a pruned model (from ``pruned.pth``).

    Raises
    ------
    ValueError
        Unknown arch, depth, dataset or an invalid cfg.

    Examples
    --------
    >>> build_model("vgg", 11, "cifar10").cfg[:3]
    [64, 'M', 128]
    """
    if arch not in MODEL_BUILDERS:
        raise ValueError(f"--arch must be one of {', '.join(sorted(MODEL_BUILDERS))}, got {arch!r}")
    depths = MODEL_DEPTHS.get(arch)
    if cfg is None and isinstance(depths, tuple) and depth not in depths:
        raise ValueError(
            f"--depth {depth} is not available for {arch}; choose one of "
            f"{', '.join(map(str, depths))}"
        )
    try:
        return MODEL_BUILDERS[arch](depth, dataset, cfg)
    except ValueError as exc:
        raise ValueError(f"--arch {arch} --depth {depth}: {exc}") from exc


__all__ = [
    "DEFAULT_CFG",
    "MODEL_BUILDERS",
    "MODEL_DEPTHS",
    "VGG",
    "DenseNet",
    "PreResNet",
    "build_model",
    "vgg",
]
