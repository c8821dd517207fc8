"""The op rules, one small object per op kind (see :mod:`slimfx.rules.registry`).

Importing this package registers every rule family.
"""

from slimfx.rules import (  # noqa: F401
    activations,
    arithmetic,
    conv,
    norm,
    pooling,
    shape,
    torchvision_ops,
)
from slimfx.rules.registry import register, registered_keys, rule_for

__all__ = ["register", "registered_keys", "rule_for"]
