"""The op-rule registry: one rule object per op kind, looked up by the node's target.

Keys are module types (``call_module``), functions (``call_function``) and method names
(``call_method``). A module subclass matches its base class' rule only when it does not
override ``forward``: a subclass that computes something else must not be sliced as if it
were its parent.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx as fx

_MODULE_RULES: dict[type, Any] = {}
_FUNCTION_RULES: dict[Any, Any] = {}
_METHOD_RULES: dict[str, Any] = {}

#: Rules for a third-party package's ops, registered once that package has been imported: a
#: model that holds its ops has imported it, so importing slimfx imports none of them
#: (torchvision alone takes 1.7 s of every command's start on 2 cores).
PACKAGE_RULES: dict[str, str] = {"torchvision": "slimfx.rules.torchvision_ops"}


def register(*keys: Any) -> Callable[[Any], Any]:
    """Class decorator: instantiate the rule and register it under every key.

    A key is an ``nn.Module`` subclass, a method name (``str``) or a function.

    Examples
    --------
    >>> @register(torch.nn.Hardshrink, "hardshrink")
    ... class Hardshrink(ElementwiseUnary):
    ...     pass
    """

    def decorate(rule_cls: type) -> type:
        rule = rule_cls()
        for key in keys:
            if isinstance(key, type) and issubclass(key, torch.nn.Module):
                _MODULE_RULES[key] = rule
            elif isinstance(key, str):
                _METHOD_RULES[key] = rule
            else:
                _FUNCTION_RULES[key] = rule
        return rule_cls

    return decorate


def _register_imported_packages() -> None:
    """Import the rule modules of :data:`PACKAGE_RULES` whose package is imported now."""
    for package, rules in PACKAGE_RULES.items():
        if package in sys.modules and rules not in sys.modules:
            importlib.import_module(rules)


def module_rule(module: torch.nn.Module) -> Any | None:
    """The rule for a module instance, or ``None`` when no rule applies."""
    _register_imported_packages()
    cls = type(module)
    if cls in _MODULE_RULES:
        return _MODULE_RULES[cls]
    for base in cls.__mro__[1:]:
        if base in _MODULE_RULES and cls.forward is base.forward:
            return _MODULE_RULES[base]
    return None


def rule_for(node: fx.Node, modules: Mapping[str, torch.nn.Module]) -> Any | None:
    """The rule registered for ``node``'s op, or ``None``.

    ``modules`` is the traced module's ``dict(gm.named_modules())``.
    """
    if node.op == "call_module":
        return module_rule(modules[str(node.target)])
    _register_imported_packages()
    if node.op == "call_function":
        try:
            return _FUNCTION_RULES.get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        return _METHOD_RULES.get(str(node.target))
    return None


def expected_input(module: torch.nn.Module, name: str = "") -> str | None:
    """What a layer takes, e.g. ``"Conv2d feature.0 takes (N, 3, H, W)"``; ``None`` if unknown.

    The shape comes from the module's rule (:meth:`slimfx.rules.base.Rule.expected_input`).
    """
    rule = module_rule(module)
    shape = rule.expected_input(module) if rule is not None else None
    if shape is None:
        return None
    label = f"{type(module).__name__} {name}".strip()
    return f"{label} takes {shape}"


def registered_keys() -> dict[str, list[str]]:
    """Names of every registered op, by kind (for documentation and tests)."""
    _register_imported_packages()
    return {
        "modules": sorted(k.__name__ for k in _MODULE_RULES),
        "functions": sorted(getattr(k, "__name__", repr(k)) for k in _FUNCTION_RULES),
        "methods": sorted(_METHOD_RULES),
    }
