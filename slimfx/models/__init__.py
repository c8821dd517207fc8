"""Model definitions of the network-slimming workflow."""

from slimfx.models.vgg import DEFAULT_CFG, VGG, vgg

__all__ = ["DEFAULT_CFG", "VGG", "vgg"]
