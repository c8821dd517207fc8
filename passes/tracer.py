"""The symbolic tracer of the trace pass (:mod:`passes.trace`) and what it notes.

:class:`SlimTracer` is ``torch.fx.Tracer`` with the workarounds the trace pass describes:
modules built inside ``forward`` are traced into their functions, untraceable submodules
become opaque leaves (as do the modules the caller names), and the pieces of a ``chunk`` or
``split`` can be iterated. :class:`TraceNotes` records what it had to work around.
"""

from __future__ import annotations

import itertools
import logging
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.fx as fx

import slimfx.rules  # noqa: F401  (registers the rules that decide leaves)
from slimfx.errors import TraceError
from slimfx.rules.registry import module_rule

logger = logging.getLogger("slimfx.passes.trace")

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_PASSES_DIR = os.path.dirname(os.path.abspath(__file__))
_SLIMFX_DIR = os.path.dirname(os.path.abspath(__import__("slimfx").__file__))


@dataclass
class TraceNotes:
    """What the tracer had to work around, for the report.

    Attributes
    ----------
    opaque : dict
        Qualified name of each submodule kept as an opaque leaf → why it could not be traced.
    inlined : list of str
        Modules constructed inside ``forward`` that were traced into their functional form.
    frozen_batchnorms : list of str
        torchvision ``FrozenBatchNorm2d`` modules of the model (fixed scales: they rank
        nothing; named when nothing else can be pruned).
    """

    opaque: dict[str, str] = field(default_factory=dict)
    inlined: list[str] = field(default_factory=list)
    frozen_batchnorms: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"opaque leaf {name}: {why}" for name, why in self.opaque.items()]
        out += [f"traced through {what}" for what in self.inlined]
        return out


def trace_notes(gm: fx.GraphModule) -> TraceNotes:
    """The :class:`TraceNotes` of a module from :func:`trace` (empty for any other)."""
    notes = gm.meta.get("slimfx_trace_notes")
    return notes if isinstance(notes, TraceNotes) else TraceNotes()


def user_frame(exc: BaseException) -> str:
    """``file:line: code`` of the innermost frame outside torch and slimfx."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        if not path.startswith((_TORCH_DIR + os.sep, _PASSES_DIR + os.sep, _SLIMFX_DIR + os.sep)):
            return f"{frame.filename}:{frame.lineno}: `{(frame.line or '').strip()}`"
    return "unknown location"


class SlimTracer(fx.Tracer):
    """A symbolic tracer that survives untraceable submodules (see the module docstring)."""

    def __init__(self, leaf_modules: Iterable[str] = (), leaf_types: Iterable[type] = ()) -> None:
        super().__init__()
        self.notes = TraceNotes()
        self._opaque_ids: set[int] = set()
        self.leaf_modules = set(leaf_modules)
        self.leaf_types = tuple(leaf_types)

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        """torch.nn modules, modules with a slimfx rule, opaque leaves, and the modules the
        caller marked as leaves (which count as opaque: their channels are frozen)."""
        if id(m) in self._opaque_ids or module_rule(m) is not None:
            return True
        if module_qualified_name in self.leaf_modules or isinstance(m, self.leaf_types):
            if module_qualified_name not in self.notes.opaque:
                self.notes.opaque[module_qualified_name] = "marked as a leaf by the caller"
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            qualname = self.path_of_module(m)
        except NameError:
            return self._call_unregistered(m, forward, args, kwargs)
        if qualname == "" or self.is_leaf_module(m, qualname):
            return super().call_module(m, forward, args, kwargs)
        count = len(self.graph.nodes)
        stack = self.module_stack.copy()
        calls = dict(self.num_calls)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:  # the submodule's code is not symbolically traceable
            self._erase_after(count)
            self.module_stack.clear()
            self.module_stack.update(stack)
            self.num_calls.clear()
            self.num_calls.update(calls)
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            reason += f" at {user_frame(exc)}"
            self.notes.opaque[qualname] = reason
            self._opaque_ids.add(id(m))
            logger.warning("keeping %s as an opaque leaf (%s)", qualname, reason)
            return super().call_module(m, forward, args, kwargs)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _PieceProxy(node, self)

    def iter(self, obj):
        """Iterate the pieces of a ``chunk`` or ``split`` (``a, b = x.chunk(2, 1)``,
        ``list(x.split([8, 8], 1))``): the call gives their number. Anything else cannot be
        iterated symbolically. A chunk count the tensor cannot give (fewer channels than
        chunks) fails when the shapes are propagated, naming the node."""
        count = _piece_count(obj.node)
        if count is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(count)])

    def _call_unregistered(self, m, forward, args, kwargs):
        state = list(m.parameters()) + list(m.buffers())
        if state:
            raise TraceError(
                f"{type(m).__name__} is constructed inside forward and holds parameters or "
                "buffers that are re-created on every call; register it in __init__ instead"
            )
        self.notes.inlined.append(f"{type(m).__name__} constructed inside forward")
        return forward(*args, **kwargs)

    def _erase_after(self, count: int) -> None:
        """Erase the nodes created after the first ``count`` (latest first: users first)."""
        extra = len(self.graph.nodes) - count
        for node in list(itertools.islice(reversed(self.graph.nodes), extra)):
            self.graph.erase_node(node)


class _PieceProxy(fx.Proxy):
    """A proxy whose ``len()`` is known for the pieces of a ``chunk``/``split``
    (``list(x.chunk(2, 1))`` asks for it)."""

    def __len__(self) -> int:
        count = _piece_count(self.node)
        return super().__len__() if count is None else count


_CHUNK = (torch.chunk, "chunk", torch.Tensor.chunk)
_SPLIT = (torch.split, "split", torch.Tensor.split)


def _piece_count(node: fx.Node) -> int | None:
    """How many tensors a ``chunk``/``split`` node returns, when its arguments say it."""
    if node.op not in ("call_function", "call_method"):
        return None
    if node.target in _CHUNK:
        chunks = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks")
        return chunks if isinstance(chunks, int) and not isinstance(chunks, bool) else None
    if node.target in _SPLIT:
        sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
        return len(sizes) if isinstance(sizes, list | tuple) else None
    return None
