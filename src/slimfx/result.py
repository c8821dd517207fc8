"""What :func:`slimfx.slim` returns: the slim model, its plan, its reference and report."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from slimfx.cfg import slim_cfg
from slimfx.counting import count_macs, count_params
from slimfx.errors import EquivalenceError
from slimfx.ir.channel_graph import ChannelGraph
from slimfx.ir.constant_tables import ConstantTables
from slimfx.ir.options import Mode
from slimfx.ir.plan import SlimPlan
from slimfx.model_tree import into_model
from slimfx.passes.rewrite import rewrite
from slimfx.passes.verify import masked_reference, masked_state
from slimfx.passes.verify import verify as verify_modules
from slimfx.report import LayerRow, SlimReport
from slimfx.rules import is_batchnorm
from slimfx.tolerances import FLOAT32_RTOL, FLOAT64_RTOL


@dataclass
class SlimResult:
    """What :func:`slim` returns.

    Attributes
    ----------
    module : torch.fx.GraphModule
        The structurally slimmed model (a new module; the input model is not modified).
    plan : SlimPlan
    channel_graph : ChannelGraph
        Its ``gm`` is the analysed trace.
    kept : dict
        BatchNorm qualified name → sorted kept channel indices, for every BatchNorm of a
        prunable group.
    zeroed : dict
        BatchNorm qualified name → pruned channels whose shift (beta) is zeroed too: the
        channels of groups pruned without compensation.
    cfg : list or None
        For VGG-style models, the cfg list (``VGG(cfg=cfg)`` builds the slim architecture;
        a carrier channel counts in it).
    report : SlimReport

    ``kept``, ``zeroed``, ``cfg`` and ``report`` are derived from the plan and the modules
    on first access.
    """

    module: fx.GraphModule
    plan: SlimPlan
    channel_graph: ChannelGraph
    _model: torch.nn.Module = field(repr=False, default=None)
    _reference: torch.nn.Module | None = field(repr=False, default=None)
    _example_inputs: Any = field(repr=False, default=None)
    _constants: ConstantTables | None = field(repr=False, default=None)

    def verify(self, example_inputs: Any = None) -> float:
        """Check the slim model against :attr:`reference` and record the errors.

        Rebuilds the slim model in float64 and compares it with the masked original in
        float64 on random inputs of the example's shapes (relative error at most 1e-9), then
        compares the stored weights the same way (at most 1e-5, float32 rounding).

        Returns
        -------
        float
            The float64 relative error (also in ``report.verification_error``).

        Raises
        ------
        EquivalenceError
            Beyond either tolerance; the exception's ``result`` is this object.
        """
        example = self._example_inputs if example_inputs is None else example_inputs
        cg, slim_plan, model = self.channel_graph, self.plan, self._model
        state = masked_state(model, cg, slim_plan, dtype=torch.float64)
        exact = rewrite(cg, slim_plan, constants=self._constants, dtype=torch.float64)
        try:
            self.report.verification_error = verify_modules(
                exact, model, example, tolerance=FLOAT64_RTOL, reference_state=state
            )
            del exact
            self.report.weights_error = verify_modules(
                self.module, model, example, tolerance=FLOAT32_RTOL, reference_state=state
            )
        except EquivalenceError as exc:
            if self.report.verification_error is None:
                self.report.verification_error = exc.relative_error
            else:
                self.report.weights_error = exc.relative_error
            exc.result = self
            raise
        return self.report.verification_error

    def into_model(self, example_inputs: Any = None, *, verify: bool = True) -> torch.nn.Module:
        """The slim layers in a copy of the input model: its own class and ``forward``.

        A model of a framework stays that framework's model (see :mod:`slimfx.model_tree`).
        Plan with ``keep_forward=True`` where the model chunks channels (``chunk`` splits
        into equal parts).

        Parameters
        ----------
        example_inputs : optional
            Inputs to verify with (several sizes: call again); the slimming's by default.
        verify : bool, default True
            Check the copy against the masked original like :meth:`verify` (float64 within
            1e-9, then the stored weights within 1e-5).

        Raises
        ------
        UnsupportedError
            The slim graph changed an op's arguments, which the model's own ``forward``
            cannot follow (named in the message).
        EquivalenceError
            The copy differs from the masked original.
        """
        model = into_model(self._model, self.channel_graph.gm, self.module)
        if verify:
            example = self._example_inputs if example_inputs is None else example_inputs
            cg, slim_plan = self.channel_graph, self.plan
            state = masked_state(self._model, cg, slim_plan, dtype=torch.float64)
            exact = rewrite(cg, slim_plan, constants=self._constants, dtype=torch.float64)
            exact_model = into_model(self._model, cg.gm, exact)
            verify_modules(
                exact_model, self._model, example, tolerance=FLOAT64_RTOL, reference_state=state
            )
            verify_modules(
                model, self._model, example, tolerance=FLOAT32_RTOL, reference_state=state
            )
        return model

    @cached_property
    def kept(self) -> dict[str, list[int]]:
        return _kept_by_bn(self.channel_graph, self.plan)

    @cached_property
    def zeroed(self) -> dict[str, list[int]]:
        return _zeroed_by_bn(self.channel_graph, self.plan)

    @cached_property
    def cfg(self) -> list | None:
        return slim_cfg(self._model, self.module)

    @cached_property
    def report(self) -> SlimReport:
        report = _report(self._model, self.channel_graph, self.plan, self.module)
        report.cfg = self.cfg
        return report

    @property
    def reference(self) -> torch.nn.Module:
        """The masked original the slim model equals (built on first access).

        A copy of the input model with every pruned channel's BatchNorm scaling factor set to
        zero — and its shift too where the group is zeroed rather than compensated.
        """
        if self._reference is None:
            self._reference = masked_reference(self._model, self.channel_graph, self.plan)
        return self._reference


def _bn_nodes(cg: ChannelGraph) -> dict[str, fx.Node]:
    """BatchNorm name → the node applying it, in graph order: the scorers' nodes (a module
    call, or the ``F.batch_norm`` inside a BatchNorm subclass) and BatchNorm modules that
    score nothing (non-affine)."""
    scorer_of = {s.node: s.module for g in cg.groups for s in g.scorers}
    out: dict[str, fx.Node] = {}
    for node in cg.gm.graph.nodes:
        if node.name in scorer_of:
            out.setdefault(scorer_of[node.name], node)
        elif node.op == "call_module" and is_batchnorm(cg.gm.get_submodule(str(node.target))):
            out.setdefault(str(node.target), node)
    return out


def _kept_by_bn(cg: ChannelGraph, slim_plan: SlimPlan) -> dict[str, list[int]]:
    keep = slim_plan.keep_table(cg, carriers=False)
    planned = {g.id for g in cg.groups if g.name in slim_plan.groups}
    nodes = _bn_nodes(cg)
    kept: dict[str, list[int]] = {}
    for name, node in nodes.items():
        layout = cg.layout(node)
        if layout is None or not (set(layout.group_ids()) & planned):
            continue
        kept[name] = [int(i) for i in keep.positions(layout)]
    return kept


def _zeroed_by_bn(cg: ChannelGraph, slim_plan: SlimPlan) -> dict[str, list[int]]:
    zero_groups = {
        g.id
        for g in cg.groups
        if slim_plan.groups.get(g.name, None) is not None
        and slim_plan.groups[g.name].mode is Mode.ZERO
    }
    keep = slim_plan.keep_table(cg, carriers=False)
    zeroed: dict[str, list[int]] = {}
    for name, node in _bn_nodes(cg).items():
        layout = cg.layout(node)
        if layout is None:
            continue
        in_zero_group = np.isin(layout.group, list(zero_groups))
        channels = np.flatnonzero(in_zero_group & ~keep.mask(layout))
        if len(channels):
            zeroed[name] = [int(c) for c in channels]
    return zeroed


def _report(model, cg: ChannelGraph, slim_plan: SlimPlan, module: fx.GraphModule) -> SlimReport:
    keep = slim_plan.keep_table(cg, carriers=False)
    structural = slim_plan.keep_table(cg)
    index_of = {name: k for k, (name, _) in enumerate(model.named_modules())}
    mode_of = {
        g.id: "frozen" if g.frozen or g.name in slim_plan.frozen else "kept" for g in cg.groups
    }
    by_name = {g.name: g.id for g in cg.groups}
    for name, gp in slim_plan.groups.items():
        mode_of[by_name[name]] = gp.mode.value
    module_of = {n.name: str(n.target) for n in cg.gm.graph.nodes if n.op == "call_module"}
    rows = []
    for name, node in _bn_nodes(cg).items():
        layout = cg.layout(node)
        if layout is None:
            continue
        modes = {mode_of.get(g, "kept") for g in layout.group_ids()}
        group = "+".join(
            module_of.get(cg.groups[g].name, cg.groups[g].name) for g in layout.group_ids()
        )
        rows.append(
            LayerRow(
                index=index_of.get(name, -1),
                name=name,
                total=len(layout),
                remaining=int(keep.mask(layout).sum()),
                width=int(structural.mask(layout).sum()),
                mode="/".join(sorted(modes)),
                group=group,
            )
        )
    frozen = [f"{g.name}: {'; '.join(g.frozen)}" for g in cg.groups if g.frozen and g.scorers]
    frozen += [f"{name}: {why}" for name, why in slim_plan.frozen.items()]
    carriers = sum(1 for gp in slim_plan.groups.values() if gp.carrier is not None)
    return SlimReport(
        percent=slim_plan.percent,
        threshold=slim_plan.threshold,
        total_channels=slim_plan.total,
        pruned_channels=slim_plan.pruned,
        carriers=carriers,
        params_before=count_params(cg.gm),
        params_after=count_params(module),
        macs_before=count_macs(cg.gm),
        macs_after=count_macs(module),
        layers=rows,
        frozen=frozen,
        notes=list(cg.notes) + list(slim_plan.notes),
        latency=slim_plan.latency,
    )
