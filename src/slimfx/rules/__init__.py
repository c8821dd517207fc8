"""The op rules, one small object per op kind (see :mod:`slimfx.rules.registry`).

Importing this package registers every rule family of PyTorch's own ops; the rules of a
third-party package's ops (torchvision's) are registered once that package is imported
(:data:`slimfx.rules.registry.PACKAGE_RULES`).
"""

from slimfx.rules import (  # noqa: F401
    activations,
    arithmetic,
    conv,
    norm,
    pooling,
    shape,
)
from slimfx.rules.norm import is_batchnorm
from slimfx.rules.registry import expected_input, register, registered_keys, rule_for

__all__ = ["expected_input", "is_batchnorm", "register", "registered_keys", "rule_for"]
