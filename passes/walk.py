"""The node walk every pass is made of (not a pass itself).

Analysis, constant propagation and rewrite all visit the traced graph's nodes in order and
ask each node's rule for one thing; :func:`walk` is that loop, written once. Which rule a
node gets is decided here too (:func:`rule_of`):

1. ``placeholder``, ``output`` and ``get_attr`` nodes get the graph's own rules;
2. a node whose output is no tensor (``x.size(0)``) gets :class:`PythonValue`;
3. every other node gets its registered rule (:mod:`slimfx.rules`), or :class:`Unknown`;
4. a rule that knows channels in dim 1 only, given a tensor whose layout holds them in
   another dim (tokens), is replaced by :class:`UnknownOnTokens`.

:class:`GraphReader` is the part of every pass's context that reads the traced graph
(the :class:`slimfx.ir.contexts.GraphView` protocol).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.fx as fx

import slimfx.rules  # noqa: F401  (registers every rule)
from slimfx.errors import SlimfxError, UnsupportedError, first_line
from slimfx.ir.layout import Layout
from slimfx.rules.base import Rule, node_shape
from slimfx.rules.graph_io import (
    GetAttr,
    Output,
    Placeholder,
    PythonValue,
    Unknown,
    UnknownOnTokens,
)
from slimfx.rules.registry import rule_for

T = TypeVar("T")

_GRAPH_RULES: dict[str, Rule] = {
    "placeholder": Placeholder(),
    "output": Output(),
    "get_attr": GetAttr(),
}
_PYTHON_VALUE = PythonValue()
_UNKNOWN = Unknown()
_UNKNOWN_ON_TOKENS = UnknownOnTokens()


def rule_of(
    node: fx.Node, modules: dict[str, torch.nn.Module], layouts: dict[str, Any] | None = None
) -> Rule:
    """The rule that speaks for ``node`` (see the module docstring); ``layouts`` (fx node
    name → layout) are the analysis' layouts of its inputs."""
    if node.op in _GRAPH_RULES:
        return _GRAPH_RULES[node.op]
    if "tensor_meta" not in node.meta:
        return _PYTHON_VALUE
    rule = rule_for(node, modules) or _UNKNOWN
    if not rule.any_channel_axis and layouts is not None and _has_moved_channels(node, layouts):
        return _UNKNOWN_ON_TOKENS
    return rule


def _has_moved_channels(node: fx.Node, layouts: dict[str, Any]) -> bool:
    """Whether an input of ``node`` has a layout whose channels are not in dim 1."""
    for inp in node.all_input_nodes:
        found = layouts.get(inp.name)
        parts = found if isinstance(found, tuple) else (found,)
        if any(isinstance(p, Layout) and p.axis != 1 for p in parts):
            return True
    return False


def walk(
    gm: fx.GraphModule,
    modules: dict[str, torch.nn.Module],
    step: Callable[[fx.Node, Rule], T],
    into: dict[str, T],
    layouts: dict[str, Any] | None = None,
) -> dict[str, T]:
    """``into[node.name] = step(node, rule_of(node, modules, layouts))`` for every node, in
    graph order.

    ``into`` is filled as the walk goes, so a step can read what the steps before it
    returned (the context of a pass holds the same dict).

    Raises
    ------
    UnsupportedError
        A step failed with an exception that is not a :class:`slimfx.SlimfxError`: it names
        the node and the rule (the original exception is its cause).
    """
    for node in gm.graph.nodes:
        rule = rule_of(node, modules, layouts)
        try:
            into[node.name] = step(node, rule)
        except SlimfxError:
            raise
        except Exception as exc:  # a rule meeting a case it does not know: name the node
            raise UnsupportedError(
                f"the {rule.name} rule cannot handle node {node.format_node()} "
                f"({type(exc).__name__}: {first_line(exc)})"
            ) from exc
    return into


class GraphReader:
    """Reads the traced graph for a pass (:class:`slimfx.ir.contexts.GraphView`).

    Parameters
    ----------
    gm : torch.fx.GraphModule
        The traced model.
    layouts : dict
        fx node name → layout (a :class:`Layout`, a tuple of them, or ``None``); the
        analysis fills it as it goes, the later passes read the channel graph's.
    """

    def __init__(self, gm: fx.GraphModule, layouts: dict[str, Any]):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.layouts = layouts

    def module(self, node: fx.Node) -> torch.nn.Module:
        return self.modules[str(node.target)]

    def shape(self, arg: Any) -> tuple[int, ...] | None:
        return node_shape(arg)

    def attr(self, node: fx.Node) -> Any:
        return fetch_attr(self.gm, str(node.target))

    def layout(self, arg: Any) -> Layout | None:
        if not isinstance(arg, fx.Node):
            return None
        layout = self.layouts.get(arg.name)
        return layout if isinstance(layout, Layout) else None

    def output_layouts(self, node: fx.Node) -> Layout | tuple | None:
        return self.layouts.get(node.name)


def fetch_attr(module: torch.nn.Module, target: str) -> Any:
    """The value a ``get_attr`` node's dotted ``target`` names in ``module``."""
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value
