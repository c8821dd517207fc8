"""cfg lists of VGG-style models: ``[64, 'M', 128, ...]`` as the reference code writes them."""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn as nn


def feature_container(model: nn.Module) -> tuple[str, nn.Sequential] | None:
    """The ``feature``/``features`` Sequential of a VGG-style model, if it has one."""
    for name in ("feature", "features"):
        container = getattr(model, name, None)
        if isinstance(container, nn.Sequential):
            return name, container
    return None


def vgg_cfg(model: nn.Module, widths: Mapping[str, int] | None = None) -> list | None:
    """The cfg list of a VGG built from conv-BN-ReLU triplets and max pooling, else ``None``.

    Parameters
    ----------
    model : torch.nn.Module
        Reference CIFAR VGG (``feature``) or torchvision VGG-BN (``features``).
    widths : mapping, optional
        BatchNorm qualified name → width to report instead of the model's own (the slim
        model's structural widths).

    Examples
    --------
    >>> from slimfx.models import vgg
    >>> vgg(depth=11).cfg == vgg_cfg(vgg(depth=11))
    True
    """
    found = feature_container(model)
    if found is None:
        return None
    prefix, container = found
    children = list(container.named_children())
    cfg: list = []
    i = 0
    while i < len(children):
        child = children[i][1]
        if isinstance(child, nn.MaxPool2d):
            cfg.append("M")
            i += 1
            continue
        triplet = [c for _, c in children[i : i + 3]]
        if len(triplet) < 3 or not (
            isinstance(triplet[0], nn.Conv2d)
            and isinstance(triplet[1], nn.BatchNorm2d)
            and isinstance(triplet[2], nn.ReLU)
        ):
            return None
        bn_name = f"{prefix}.{children[i + 1][0]}"
        width = triplet[1].num_features if widths is None else widths.get(bn_name)
        if width is None:
            return None
        cfg.append(int(width))
        i += 3
    return cfg or None


def slim_cfg(model: nn.Module, slim: nn.Module) -> list | None:
    """The cfg that rebuilds ``slim``'s architecture with ``model``'s class, if it has one.

    Classes define ``cfg_of(module)`` (a static method) to say how; VGG-style models with a
    ``feature``/``features`` Sequential of conv-BN-ReLU triplets get the reference cfg list.
    Returns ``None`` for other models.
    """
    hook = getattr(type(model), "cfg_of", None)
    if callable(hook):
        return hook(slim)
    if vgg_cfg(model) is None:
        return None
    widths = {
        name: m.num_features for name, m in slim.named_modules() if isinstance(m, nn.BatchNorm2d)
    }
    return vgg_cfg(model, widths)
