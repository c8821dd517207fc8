"""Pass 5 — rewrite: build the slim GraphModule from a channel graph and a plan.

Copies the graph node by node; each node's rule emits its slim counterpart (a sliced
module, adjusted arguments). Modules keep their qualified names (``feature.3`` stays
``feature.3``) and their classes. Nothing is shared with the input model: unchanged modules
are deep-copied, sliced ones hold new tensors.

Pruned channels' constants (:mod:`passes.constant_propagation`) are folded into every
consumer — into its weights on the group's carrier channel, or into its bias — so the slim
model computes exactly what the masked original computes.

The file runs a little over 300 lines: the rewrite context (what a rule may ask while it
emits its node) and the pass that drives it belong together.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from slimfx.errors import PlanError
from slimfx.ir.channel_graph import ChannelGraph
from slimfx.ir.constant_tables import ConstantTables
from slimfx.ir.contexts import SinkFold
from slimfx.ir.layout import Layout
from slimfx.ir.options import Mode
from slimfx.ir.plan import SlimPlan
from slimfx.ir.values import UNKNOWN, PrunedValues
from slimfx.passes.constant_propagation import with_modes
from slimfx.passes.refold import refold_modules
from slimfx.passes.shapes import tensor_metadata
from slimfx.passes.trace import restore_containers
from slimfx.passes.walk import GraphReader, fetch_attr, walk
from slimfx.rules.base import Rule
from slimfx.rules.registry import module_rule
from slimfx.rules.slicing import sliced_shell


class RewriteContext(GraphReader):
    """What rules see and do while the slim graph is built
    (:class:`slimfx.ir.contexts.RewriteContext`)."""

    def __init__(
        self,
        cg: ChannelGraph,
        plan: SlimPlan,
        constants: ConstantTables,
        dtype: torch.dtype | None,
    ):
        super().__init__(cg.gm, cg.layouts)
        self.cg = cg
        self.dtype = dtype
        self.keep = plan.keep_table(cg)
        self.keep_original = plan.keep_table(cg, carriers=False)
        self.carrier = plan.carrier_table(cg)
        self.group_modes = plan.modes(cg)
        self.constants = constants
        self.graph = fx.Graph()
        self.env: dict[str, fx.Node] = {}
        self.new_modules: dict[str, torch.nn.Module] = {}
        self.attrs: dict[str, torch.Tensor] = {}
        self.sinks = {(sink.node, sink.input) for sink in cg.sinks}

    # -- reading ---------------------------------------------------------------------
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

    def cast(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.dtype is None or not tensor.is_floating_point():
            return tensor
        return tensor.to(self.dtype)

    def unchanged(self, node: fx.Node) -> torch.nn.Module:
        """An independent copy of the node's module (in the target dtype).

        A layer a rule knows (``ReLU``, ``MaxPool2d`` …) holds only settings besides its
        tensors: :func:`sliced_shell` copies it with fresh tensors and hook tables, where
        ``copy.deepcopy`` takes about 250 µs per layer, a tenth of a CIFAR VGG-19's
        rewrite (``benchmarks/pass_time.py``). Other modules are deep-copied.
        """
        module = self.module(node)
        if module_rule(module) is not None and not module._modules:
            copied = sliced_shell(module)
        else:
            copied = copy.deepcopy(module)
        return copied if self.dtype is None else copied.to(self.dtype)

    def sink_fold(self, node: fx.Node, inp: fx.Node) -> SinkFold:
        """The slicing and folding of a consumer's input (see :class:`SinkFold`); nothing
        where the analysis recorded no sink (an input without channels we track)."""
        layout = self.layout(inp)
        if layout is None or (node.name, inp.name) not in self.sinks:
            empty = np.zeros(0, dtype=np.int64)
            return SinkFold(None, empty, np.zeros(0), empty, np.zeros(0), empty)
        kept = self.keep.positions(layout)
        values = self.constants.values_at(inp.name, layout, self.group_modes)
        dropped = np.flatnonzero(~self.keep_original.mask(layout))
        if np.any(values.kind[dropped] == UNKNOWN):
            bad = dropped[values.kind[dropped] == UNKNOWN][0]
            raise PlanError(
                f"pruned channel at position {bad} of {inp.name} has no exact value at "
                f"{node.format_node()}; the plan does not fit this channel graph"
            )
        contrib = dropped[values.value[dropped] != 0]
        partner, carrier_value = self._carrier_partners(layout, kept, inp, contrib)
        carrier_columns = np.flatnonzero(self.carrier.mask(layout)[kept])
        return SinkFold(
            kept, contrib, values.value[contrib], partner, carrier_value, carrier_columns
        )

    def _carrier_partners(self, layout, kept, inp, contrib) -> tuple[np.ndarray, np.ndarray]:
        """For each pruned position in ``contrib``: the column of its carrier (-1: fold into
        the bias) and the carrier's value there. The ``j``-th appearance of a pruned channel
        pairs with the ``j``-th appearance of its group's carrier (a flatten repeats both)."""
        partner = np.full(len(contrib), -1, dtype=np.int64)
        carrier_value = np.zeros(len(contrib))
        carriers = np.flatnonzero(self.carrier.mask(layout))
        if not len(carriers) or not len(contrib):
            return partner, carrier_value  # everything folds into the bias
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
        carrier_values: PrunedValues = self.constants.table(Mode.CARRIER)[inp.name]
        carrier_value[found] = carrier_values.value[slots]
        return partner, carrier_value

    # -- writing ---------------------------------------------------------------------
    def emit(
        self,
        node: fx.Node,
        *,
        module: torch.nn.Module | None = None,
        args: tuple | None = None,
        kwargs: dict | None = None,
    ) -> fx.Node:
        """Copy ``node`` into the slim graph (with a new module, args or kwargs).

        ``args`` and ``kwargs`` may hold nodes of the traced graph and nodes already in
        the slim graph (a sliced attribute).
        """
        if node.op == "call_module":
            target = str(node.target)
            if target not in self.new_modules:  # else called again; analysis froze it
                self.new_modules[target] = module if module is not None else self.unchanged(node)
        return self.graph.create_node(
            node.op,
            node.target,
            self._in_slim_graph(node.args if args is None else args),
            self._in_slim_graph(node.kwargs if kwargs is None else kwargs),
            name=node.name,
            type_expr=node.type,
        )

    def emit_function(self, node: fx.Node, fn, args: tuple, kwargs: dict) -> fx.Node:
        """Emit ``fn(*args, **kwargs)`` in place of ``node``."""
        return self.graph.create_node(
            "call_function",
            fn,
            self._in_slim_graph(args),
            self._in_slim_graph(kwargs),
            name=node.name,
        )

    def sliced_attr(
        self,
        attr_node: fx.Node,
        dim: int,
        positions: np.ndarray,
        fill: tuple[np.ndarray, float] | None = None,
    ) -> fx.Node:
        """A ``get_attr`` node holding ``positions`` of the attribute along ``dim``.

        ``fill = (where, value)`` sets the slice's entries ``where`` (positions in the slice,
        along ``dim``) to ``value``, as a BatchNorm's carrier channels are set. The slice
        keeps the attribute's name when the op slicing it is its only user.
        """
        value = fetch_attr(self.gm, str(attr_node.target))
        index = torch.as_tensor(positions, dtype=torch.long)
        sliced = value.detach().index_select(dim, index)
        if fill is not None and len(fill[0]):
            sliced.index_fill_(dim, torch.as_tensor(fill[0], dtype=torch.long), fill[1])
        return self.new_attr(attr_node, sliced)

    def new_attr(self, attr_node: fx.Node, value: torch.Tensor) -> fx.Node:
        """A ``get_attr`` node holding ``value`` (in the target dtype) in place of
        ``attr_node``'s tensor: a ``Parameter`` where that is one. It keeps the attribute's
        name when the op replacing it is its only user."""
        target = str(attr_node.target)
        original = fetch_attr(self.gm, target)
        value = self.cast(value.detach())
        if isinstance(original, torch.nn.Parameter):
            value = torch.nn.Parameter(value, requires_grad=original.requires_grad)
        name = target
        if len(attr_node.users) > 1 or name in self.attrs:
            n = 1
            while f"{target}_slim{n}" in self.attrs:
                n += 1
            name = f"{target}_slim{n}"
        self.attrs[name] = value
        return self.graph.get_attr(name)

    def copied_tensor(self, value: torch.Tensor) -> torch.Tensor:
        """A copy of a traced attribute for the slim module (in the target dtype)."""
        cloned = self.cast(value.detach().clone())
        if isinstance(value, torch.nn.Parameter):
            return torch.nn.Parameter(cloned, requires_grad=value.requires_grad)
        return cloned

    def _in_slim_graph(self, value: Any) -> Any:
        """``value`` with every traced node replaced by its slim counterpart."""
        return fx.node.map_arg(value, lambda n: n if n.graph is self.graph else self.env[n.name])


def rewrite(
    cg: ChannelGraph,
    plan: SlimPlan,
    *,
    constants: ConstantTables | None = None,
    dtype: torch.dtype | None = None,
) -> fx.GraphModule:
    """Build the slim model.

    Parameters
    ----------
    cg : ChannelGraph
        From :func:`slimfx.passes.analyze`.
    plan : SlimPlan
        From :func:`slimfx.passes.plan` (or loaded from JSON).
    constants : ConstantTables, optional
        From :func:`slimfx.passes.propagate_constants` on ``cg`` — the value the plan read;
        the modes the plan uses and it lacks are propagated here.
    dtype : torch.dtype, optional
        Convert floating-point parameters and buffers (``torch.float64`` for verification).

    Returns
    -------
    torch.fx.GraphModule
        A new module; ``cg.gm`` and the model behind it are not modified. Its nodes carry
        shapes (``meta["tensor_meta"]``) for the example input shapes of the trace.
    """
    needed = {gp.mode for gp in plan.groups.values()}
    if any(gp.carrier is not None for gp in plan.groups.values()):
        needed.add(Mode.CARRIER)
    constants = with_modes(cg, constants, needed)
    ctx = RewriteContext(cg, plan, constants, dtype)

    def step(node: fx.Node, rule: Rule) -> fx.Node:
        return rule.rewrite(node, ctx)

    with torch.no_grad():
        walk(cg.gm, ctx.modules, step, into=ctx.env, layouts=cg.layouts)
        refold_modules(cg.gm, ctx)
    for node in list(ctx.graph.nodes):
        if node.op == "get_attr" and not node.users:
            ctx.graph.erase_node(node)
    used = {str(n.target) for n in ctx.graph.nodes if n.op in ("call_module", "get_attr")}
    root: dict[str, Any] = {}
    for name, _ in cg.gm.named_modules():  # the traced model's module order
        if name in ctx.new_modules and name in used:
            root[name] = ctx.new_modules[name]
    for name, value in {**ctx.new_modules, **ctx.attrs}.items():
        if name in used and name not in root:
            root[name] = value
    with torch.no_grad():
        for name in sorted(used - set(root)):
            original = fetch_attr(cg.gm, name)
            if isinstance(original, torch.Tensor):
                root[name] = ctx.copied_tensor(original)
            else:
                root[name] = copy.deepcopy(original)
    slim = fx.GraphModule(root, ctx.graph, class_name=f"Slim{type(cg.gm).__name__}")
    restore_containers(slim, cg.gm)
    slim.graph.lint()
    slim.training = cg.gm.training
    _record_shapes(ctx)
    return slim


def _record_shapes(ctx: RewriteContext) -> None:
    """Give every slim node the ``tensor_meta`` of its original, channel axis resized.

    A channel axis with a layout shrinks to its kept positions; every other axis, and every
    tensor without a layout, keeps its size: an op whose output size depends on channels in
    another way froze those channels in the analysis.
    """
    for node in ctx.gm.graph.nodes:
        new = ctx.env[node.name]
        meta = node.meta.get("tensor_meta")
        if meta is None:
            continue
        new.meta["tensor_meta"] = _resized_tree(meta, ctx.layouts.get(node.name), ctx)
    for new in ctx.graph.nodes:
        if new.op == "get_attr" and "tensor_meta" not in new.meta:
            value = ctx.attrs.get(str(new.target))
            if isinstance(value, torch.Tensor):
                new.meta["tensor_meta"] = tensor_metadata(value)


def _resized_tree(meta, layout, ctx: RewriteContext):
    """:func:`_resized` through the tuples, lists and dicts of a recorded output."""
    if hasattr(meta, "shape"):  # a TensorMetadata (itself a named tuple)
        return _resized(meta, layout, ctx)
    if isinstance(meta, tuple | list):
        parts = layout if isinstance(layout, tuple) else (None,) * len(meta)
        return type(meta)(_resized_tree(m, lay, ctx) for m, lay in zip(meta, parts, strict=True))
    if isinstance(meta, dict):
        parts = layout if isinstance(layout, dict) else {}
        return {key: _resized_tree(m, parts.get(key), ctx) for key, m in meta.items()}
    return meta


def _resized(meta, layout, ctx: RewriteContext):
    shape = list(meta.shape)
    if isinstance(layout, Layout) and len(shape) > layout.axis:
        shape[layout.axis] = int(ctx.keep.mask(layout).sum())
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
