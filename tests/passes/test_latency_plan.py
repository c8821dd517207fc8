"""The latency planner: the most |gamma| mass within a budget (and case 7 of the plan)."""

import numpy as np
import pytest
import torch

from slimfx.ir.layout import KeepTable
from slimfx.latency import table as table_module
from slimfx.latency.layers import timed_layers
from slimfx.latency.table import Target, measure_table
from slimfx.models import VGG
from slimfx.passes.analyze import analyze
from slimfx.passes.latency_plan import choose_widths
from slimfx.passes.plan import cuttable_groups, group_scores, plan
from slimfx.passes.trace import trace

CFG = [16, "M", 32, 32, "M", 64, "M", 64]


def _setup(tmp_path, monkeypatch, gammas=None):
    torch.manual_seed(0)
    model = VGG(cfg=CFG).eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    generator = torch.Generator().manual_seed(0)
    for k, bn in enumerate(bns):
        values = torch.rand(bn.num_features, generator=generator)
        if gammas is not None:
            values = gammas(k, bn.num_features, values)
        bn.weight.data = values
    x = torch.randn(2, 3, 16, 16)
    cg = analyze(trace(model, x))

    def fake(shape, backend, batch, threads, workdir=None):  # 1 ms per million MACs
        return shape.macs() * batch / 1e6

    monkeypatch.setattr(table_module, "time_probe", fake)
    table = measure_table(
        cg, x, Target("torch-cpu", 8, 1), step=8, cache_dir=tmp_path, progress=False, model_ms=0.0
    )
    table = table.__class__(**{**table.__dict__, "model_ms": table.layers_full_ms + 0.05})
    groups = cuttable_groups(cg)
    scores = {g.id: group_scores(cg, g) for g in groups}
    return cg, table, groups, scores, timed_layers(cg)


def _keep(cg, widths):
    slim_plan = plan(cg, 0.5, widths=widths)
    return slim_plan, slim_plan.keep_table(cg)


def test_widths_stay_within_the_budget_on_the_step(tmp_path, monkeypatch):
    cg, table, groups, scores, layers = _setup(tmp_path, monkeypatch)
    full = table.predict(layers, KeepTable({}))
    choice = choose_widths(cg, groups, scores, layers, table, full / 2, unit=8)
    assert choice.reached and choice.predicted_ms <= full / 2
    by_name = {g.name: g for g in groups}
    assert all(w % 8 == 0 or w == by_name[n].size for n, w in choice.widths.items())
    slim_plan, keep = _keep(cg, choice.widths)
    assert table.predict(layers, keep) == pytest.approx(choice.predicted_ms, rel=1e-9)
    # every group keeps its best channels
    for g in groups:
        kept = slim_plan.groups[g.name].kept
        if slim_plan.groups[g.name].carrier is None:
            assert set(kept) == set(np.argsort(-scores[g.id], kind="stable")[: len(kept)])


def test_more_gamma_mass_than_a_uniform_cut_at_the_same_latency(tmp_path, monkeypatch):
    cg, table, groups, scores, layers = _setup(tmp_path, monkeypatch)
    uniform = {g.name: max(8, g.size // 2 // 8 * 8) for g in groups}
    _, keep = _keep(cg, uniform)
    budget = table.predict(layers, keep)
    choice = choose_widths(cg, groups, scores, layers, table, budget, unit=8)

    def mass(widths):
        return sum(np.sort(scores[g.id])[::-1][: widths[g.name]].sum() for g in groups)

    assert choice.predicted_ms <= budget
    assert choice.kept_mass == pytest.approx(mass(choice.widths))
    assert choice.kept_mass > mass(uniform)


def test_zero_gamma_channels_go_first(tmp_path, monkeypatch):
    def sparse(k, size, values):  # the last layer: half its channels at zero
        if k == 4:
            values[size // 2 :] = 0.0
        return values

    cg, table, groups, scores, layers = _setup(tmp_path, monkeypatch, sparse)
    last = groups[-1]
    full = table.predict(layers, KeepTable({}))
    saving = full - table.predict(
        layers, KeepTable({last.id: np.arange(last.size) < last.size // 2})
    )
    choice = choose_widths(cg, groups, scores, layers, table, full - saving * 0.9, unit=8)
    assert choice.kept_mass == pytest.approx(choice.total_mass)
    assert choice.widths[last.name] == last.size // 2


def test_out_of_reach_budgets_and_min_channels(tmp_path, monkeypatch):
    cg, table, groups, scores, layers = _setup(tmp_path, monkeypatch)
    choice = choose_widths(cg, groups, scores, layers, table, 1e-9, unit=8, min_channels=16)
    assert not choice.reached
    assert all(w >= 16 for w in choice.widths.values())
    with pytest.raises(ValueError, match="budget"):
        choose_widths(cg, groups, scores, layers, table, 0.0, unit=8)


def test_given_widths_are_checked(tmp_path, monkeypatch):
    cg, *_ = _setup(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="cannot be pruned"):
        plan(cg, 0.5, widths={"nothing": 3})
    name = cg.prunable_groups[0].name
    with pytest.raises(ValueError, match="width 99"):
        plan(cg, 0.5, widths={name: 99})
    slim_plan = plan(cg, 0.5, widths={name: 5})
    assert slim_plan.groups[name].width == 5
    assert all(gp.width == gp.size for n, gp in slim_plan.groups.items() if n != name)
