"""Pass 4 — rewrite: build the slim GraphModule from a channel graph and a plan.

Copies the graph node by node; each node's rule emits its slim counterpart (a sliced
module, adjusted arguments). Modules keep their qualified names (``feature.3`` stays
``feature.3``) and their classes. Nothing is shared with the input model: unchanged modules
are deep-copied, sliced ones hold new tensors.

Pruned channels' constants (:mod:`passes.constant_propagation`) are folded into every consumer — into
its weights on the group's carrier channel, or into its bias — so the slim model computes
exactly what the masked original computes.

Rules build each new module at once; the copying of large weights is handed to
:meth:`RewriteContext.defer` and runs after the slim module is assembled, one layer after
another, before :func:`rewrite` returns.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import _extract_tensor_metadata

import slimfx.rules  # noqa: F401
from slimfx.ir.channel_graph import ChannelGraph
from slimfx.errors import PlanError
from slimfx.ir.layout import Layout
from slimfx.passes.constant_propagation import CARRIER, propagate
from slimfx.passes.plan import SlimPlan
from slimfx.passes.trace import fetch_attr, map_nodes, restore_containers
from slimfx.rules.base import node_shape
from slimfx.rules.graph_io import Output, Placeholder, Unknown
from slimfx.rules.registry import rule_for
from slimfx.rules.slicing import sliced_shell
from slimfx.ir.values import UNKNOWN


@dataclass
class SinkFold:
    """How a consumer's input axis is sliced and what is folded into it.

    Attributes
    ----------
    kept : numpy.ndarray
        Input positions that stay (kept channels and carriers), ascending.
    contrib : numpy.ndarray
        Positions of pruned channels whose constant is not zero.
    value : numpy.ndarray
        Their constants.
    partner : numpy.ndarray
        For each, the column (index into ``kept``) of its group's carrier, or -1 to fold
        into the bias.
    carrier_value : numpy.ndarray
        The carrier's value at that column (1 through the ops after its BatchNorm).
    carrier_columns : numpy.ndarray
        Every column (index into ``kept``) that holds a carrier; its weights are replaced by
        the folded sums, zero when nothing is folded into it here.
    """

    kept: np.ndarray
    contrib: np.ndarray
    value: np.ndarray
    partner: np.ndarray
    carrier_value: np.ndarray
    carrier_columns: np.ndarray

    @property
    def active(self) -> bool:
        return len(self.contrib) > 0 or len(self.carrier_columns) > 0


class RewriteContext:
    """What rules see and do while the slim graph is built."""

    def __init__(self, cg: ChannelGraph, plan: SlimPlan, dtype: torch.dtype | None):
        self.cg = cg
        self.gm = cg.gm
        self.submodules = dict(cg.gm.named_modules())
        self.layouts = cg.layouts
        self.dtype = dtype
        self.keep = plan.keep_table(cg)
        self.keep_original = plan.keep_table(cg, carriers=False)
        self.carrier = plan.carrier_table(cg)
        by_name = {g.name: g.id for g in cg.groups}
        self.carrier_index = {
            by_name[name]: gp.carrier for name, gp in plan.groups.items() if gp.carrier is not None
        }
        self.values = _pruned_values(cg, plan, by_name)
        self.carrier_values = propagate(cg, CARRIER) if self.carrier_index else {}
        self.graph = fx.Graph()
        self.env: dict[fx.Node, fx.Node] = {}
        self.modules: dict[str, torch.nn.Module] = {}
        self.attrs: dict[str, torch.Tensor] = {}
        self.deferred: list[Callable[[], None]] = []

    # -- reading ---------------------------------------------------------------------
    def module(self, node: fx.Node) -> torch.nn.Module:
        return self.submodules[str(node.target)]

    def layout(self, node: Any) -> Layout | None:
        return self.cg.layout(node) if isinstance(node, fx.Node) else None

    def shape(self, node: Any) -> tuple[int, ...] | None:
        return node_shape(node)

    def layout_any(self, node: fx.Node):
        return self.layouts.get(node.name)

    def kept(self, node: Any) -> np.ndarray | None:
        """Positions of ``node``'s output channel axis that stay (carriers included)."""
        layout = self.layout(node)
        return None if layout is None else self.keep.positions(layout)

    def kept_mask(self, node: Any) -> np.ndarray:
        return self.keep.mask(self.layout(node))

    def carriers(self, node: Any) -> np.ndarray:
        """Boolean over ``kept(node)``: which kept positions are carrier channels."""
        layout = self.layout(node)
        if layout is None:
            return np.zeros(0, dtype=bool)
        return self.carrier.mask(layout)[self.keep.positions(layout)]

    def defer(self, work: Callable[[], None]) -> None:
        """Run ``work`` (tensor copies) once every node is rewritten, before returning.

        The slicing of large layers streams their weights through the caches; done at the
        end, one after another, it neither evicts nor waits for the per-node work.
        """
        self.deferred.append(work)

    def cast(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.dtype is None or not tensor.is_floating_point():
            return tensor
        return tensor.to(self.dtype)

    def unchanged(self, node: fx.Node) -> torch.nn.Module:
        """An independent copy of the node's module (in the target dtype)."""
        module = self.module(node)
        if not module._parameters and not module._buffers and not module._modules:
            return sliced_shell(module)  # stateless: a shallow copy is independent
        module = copy.deepcopy(module)
        return module if self.dtype is None else module.to(self.dtype)

    def sink_fold(self, node: fx.Node, inp: fx.Node) -> SinkFold:
        """The slicing and folding of a consumer's input (see :class:`SinkFold`)."""
        layout = self.layout(inp)
        if layout is None:
            empty = np.zeros(0, dtype=np.int64)
            return SinkFold(None, empty, np.zeros(0), empty, np.zeros(0), empty)
        structural = self.keep.mask(layout)
        original = self.keep_original.mask(layout)
        kept = np.flatnonzero(structural)
        values = self.values[inp.name]
        dropped = np.flatnonzero(~original)
        if np.any(values.kind[dropped] == UNKNOWN):
            bad = dropped[values.kind[dropped] == UNKNOWN][0]
            raise PlanError(
                f"pruned channel at position {bad} of {inp.name} has no exact value at "
                f"{node.format_node()}; the plan does not fit this channel graph"
            )
        contrib = dropped[values.value[dropped] != 0]
        partner = np.full(len(contrib), -1, dtype=np.int64)
        carrier_value = np.zeros(len(contrib))
        if self.carrier_index and len(contrib):
            self._pair_with_carriers(layout, kept, inp, contrib, partner, carrier_value)
        carrier_columns = np.flatnonzero(self.carrier.mask(layout)[kept])
        return SinkFold(
            kept, contrib, values.value[contrib], partner, carrier_value, carrier_columns
        )

    def _pair_with_carriers(self, layout, kept, inp, contrib, partner, carrier_value) -> None:
        """Fill ``partner``/``carrier_value``: the ``j``-th appearance of a pruned channel
        pairs with the ``j``-th appearance of its group's carrier (flatten repeats them)."""
        carriers = np.flatnonzero(self.carrier.mask(layout))
        if not len(carriers):
            return  # no carrier in this consumer's input: everything folds into the bias
        if layout.plain_group() is not None:  # one group, each channel once: one carrier
            partner[:] = np.searchsorted(kept, carriers[0])
            carrier_value[:] = self.carrier_values[inp.name].value[carriers[0]]
            return
        occurrence = layout.occurrence()
        stride = int(occurrence.max()) + 1
        key = layout.group * stride + occurrence
        order = np.argsort(key[carriers], kind="stable")
        sorted_keys = key[carriers][order]
        wanted = key[contrib]
        at = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
        found = sorted_keys[at] == wanted
        slots = carriers[order[at[found]]]
        partner[found] = np.searchsorted(kept, slots)
        carrier_value[found] = self.carrier_values[inp.name].value[slots]

    # -- writing ---------------------------------------------------------------------
    def emit(
        self,
        node: fx.Node,
        *,
        module: torch.nn.Module | None = None,
        args: tuple | None = None,
        kwargs: dict | None = None,
        mapped: set | None = None,
    ) -> fx.Node:
        """Copy ``node`` into the slim graph (with a new module, args or kwargs)."""
        if node.op == "call_module":
            target = str(node.target)
            if target in self.modules:
                pass  # a module called more than once; analysis froze its channels
            else:
                self.modules[target] = module if module is not None else self.unchanged(node)
        env = self.env if not mapped else _Passing(self.env, mapped)
        new_args = map_nodes(node.args if args is None else args, env)
        new_kwargs = map_nodes(node.kwargs if kwargs is None else kwargs, env)
        new = self.graph.create_node(
            node.op, node.target, new_args, new_kwargs, name=node.name, type_expr=node.type
        )
        return new

    def emit_function(self, node: fx.Node, fn, args: tuple, kwargs: dict) -> fx.Node:
        """Emit ``fn(*args, **kwargs)`` in place of ``node``."""
        new_args = map_nodes(args, self.env)
        new_kwargs = map_nodes(kwargs, self.env)
        return self.graph.create_node("call_function", fn, new_args, new_kwargs, name=node.name)

    def emit_attr(self, node: fx.Node) -> fx.Node:
        """Copy a ``get_attr`` node; its value is cloned when the slim module is built."""
        return self.emit(node)

    def sliced_attr(self, attr_node: fx.Node, dim: int, positions: np.ndarray) -> fx.Node:
        """A ``get_attr`` node holding ``positions`` of the attribute along ``dim``.

        The slice keeps the attribute's name when the op slicing it is its only user.
        """
        target = str(attr_node.target)
        value = fetch_attr(self.gm, target)
        index = torch.as_tensor(positions, dtype=torch.long)
        sliced = self._clone_tensor(value).detach().index_select(dim, index)
        if isinstance(value, torch.nn.Parameter):
            sliced = torch.nn.Parameter(sliced, requires_grad=value.requires_grad)
        name = target
        if len(attr_node.users) > 1 or name in self.attrs:
            n = 1
            while f"{target}_slim{n}" in self.attrs:
                n += 1
            name = f"{target}_slim{n}"
        self.attrs[name] = sliced
        return self.graph.get_attr(name)

    def _clone_tensor(self, value: torch.Tensor) -> torch.Tensor:
        cloned = self.cast(value.detach().clone())
        if isinstance(value, torch.nn.Parameter):
            return torch.nn.Parameter(cloned, requires_grad=value.requires_grad)
        return cloned


def _pruned_values(cg: ChannelGraph, plan: SlimPlan, group_ids: dict[str, int]) -> dict:
    """The propagation table the folds read: each planned group in its own mode.

    Coupled operands share a group, so a position's value depends on its own group's mode
    only, and the folds read positions of planned groups only: when every planned group has
    the same mode, the table with that mode everywhere (which the plan propagated already)
    holds the same values.
    """
    modes = plan.modes(cg)
    used = {int(modes[group_ids[name]]) for name in plan.groups}
    if len(used) == 1:
        return propagate(cg, used.pop())
    return propagate(cg, modes)


class _Passing(dict):
    """``env`` that maps the nodes of ``mapped`` (already in the slim graph) to themselves."""

    def __init__(self, env: dict, mapped: set):
        super().__init__()
        self.env, self.mapped = env, mapped

    def __missing__(self, node: fx.Node) -> fx.Node:
        return node if node in self.mapped else self.env[node]


def rewrite(
    cg: ChannelGraph, plan: SlimPlan, *, dtype: torch.dtype | None = None
) -> fx.GraphModule:
    """Build the slim model.

    Parameters
    ----------
    cg : ChannelGraph
        From :func:`slimfx.passes.analyze`.
    plan : SlimPlan
        From :func:`slimfx.passes.plan` (or loaded from JSON).
    dtype : torch.dtype, optional
        Convert floating-point parameters and buffers (``torch.float64`` for verification).

    Returns
    -------
    torch.fx.GraphModule
        A new module; ``cg.gm`` and the model behind it are not modified. Its nodes carry
        shapes (``meta["tensor_meta"]``) for the example input shapes of the trace.
    """
    ctx = RewriteContext(cg, plan, dtype)
    special = {"placeholder": Placeholder(), "output": Output()}
    unknown = Unknown()
    with torch.no_grad():
        for node in cg.gm.graph.nodes:
            if node.op == "get_attr":
                ctx.env[node] = ctx.emit_attr(node)
                continue
            if node.op in special:
                rule = special[node.op]
            elif "tensor_meta" not in node.meta:
                ctx.env[node] = ctx.emit(node)
                continue
            else:
                rule = rule_for(node, cg.gm, ctx.submodules) or unknown
            ctx.env[node] = rule.rewrite(node, ctx)
    for node in list(ctx.graph.nodes):
        if node.op == "get_attr" and not node.users:
            ctx.graph.erase_node(node)
    used = {str(n.target) for n in ctx.graph.nodes if n.op in ("call_module", "get_attr")}
    order = [name for name, _ in cg.gm.named_modules()]
    root: dict[str, Any] = {}
    for name in order:
        if name in ctx.modules and name in used:
            root[name] = ctx.modules[name]
    for name, value in {**ctx.modules, **ctx.attrs}.items():
        if name in used and name not in root:
            root[name] = value
    for name in sorted(used - set(root)):
        original = fetch_attr(cg.gm, name)
        if isinstance(original, torch.Tensor):
            root[name] = ctx._clone_tensor(original)
        else:
            root[name] = copy.deepcopy(original)
    slim = fx.GraphModule(root, ctx.graph, class_name=f"Slim{type(cg.gm).__name__}")
    restore_containers(slim, cg.gm)
    slim.graph.lint()
    slim.training = cg.gm.training
    _record_shapes(ctx)
    with torch.no_grad():
        for work in ctx.deferred:
            work()
    return slim


def _record_shapes(ctx: RewriteContext) -> None:
    """Give every slim node the ``tensor_meta`` of its original, channel axis resized.

    A channel axis with a layout shrinks to its kept positions; every other axis, and every
    tensor without a layout, keeps its size: an op whose output size depends on channels in
    another way froze those channels in the analysis.
    """
    for node, new in ctx.env.items():
        meta = node.meta.get("tensor_meta")
        if meta is None:
            continue
        layout = ctx.layouts.get(node.name)
        if hasattr(meta, "shape"):
            new.meta["tensor_meta"] = _resized(meta, layout, ctx)
        elif isinstance(meta, tuple | list) and isinstance(layout, tuple):
            new.meta["tensor_meta"] = type(meta)(
                _resized(m, lay, ctx) for m, lay in zip(meta, layout, strict=True)
            )
    for new in ctx.graph.nodes:
        if new.op == "get_attr" and "tensor_meta" not in new.meta:
            value = ctx.attrs.get(str(new.target))
            if isinstance(value, torch.Tensor):
                new.meta["tensor_meta"] = _extract_tensor_metadata(value)


def _resized(meta, layout, ctx: RewriteContext):
    shape = list(meta.shape)
    if isinstance(layout, Layout) and len(shape) >= 2:
        shape[1] = int(ctx.keep.mask(layout).sum())
    dtype = ctx.dtype if ctx.dtype is not None and meta.dtype.is_floating_point else meta.dtype
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return meta._replace(
        shape=torch.Size(shape),
        dtype=dtype,
        stride=tuple(reversed(stride)),
        memory_format=torch.contiguous_format,
    )
