"""Pass 3, plan: the numbered cases of slimfx.passes.plan."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx.ir.plan import SlimPlan
from slimfx.models import VGG
from slimfx.passes.plan import _rank, group_scores
from slimfx.testing import randomize_batchnorm

X = torch.randn(1, 3, 32, 32)


@pytest.fixture(scope="module")
def vgg_graph():
    model = randomize_batchnorm(VGG(depth=11), seed=7)
    return model, slimfx.analyze(slimfx.trace(model, X))


# 1. validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("percent", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_percent_outside_range_is_a_value_error(vgg_graph, percent):
    with pytest.raises(ValueError, match="percent"):
        slimfx.plan(vgg_graph[1], percent)


@pytest.mark.parametrize("name", ["min_channels", "round_to"])
@pytest.mark.parametrize("value", [0, -3, 1.5, True])
def test_non_positive_integers_are_value_errors(vgg_graph, name, value):
    with pytest.raises(ValueError, match=name):
        slimfx.plan(vgg_graph[1], 0.5, **{name: value})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gamma_names_the_layer(bad):
    model = VGG(depth=11)
    with torch.no_grad():
        model.feature[5].weight[3] = bad
    cg = slimfx.analyze(slimfx.trace(model, X))
    with pytest.raises(ValueError, match=r"BatchNorm feature\.5 has 1 NaN or infinite"):
        slimfx.plan(cg, 0.5)


def test_model_without_batchnorm_is_unsupported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(X)
    cg = slimfx.analyze(slimfx.trace(model, X))
    with pytest.raises(slimfx.UnsupportedError, match="network slimming needs BatchNorm"):
        slimfx.plan(cg, 0.5)


# 3. ranking ---------------------------------------------------------------------------------
@pytest.mark.parametrize("percent", [0.0, 0.1, 0.37, 0.5, 0.9])
def test_exactly_int_percent_total_channels_are_pruned_globally(vgg_graph, percent):
    _, cg = vgg_graph
    plan = slimfx.plan(cg, percent, compensate=False)
    total = sum(g.size for g in cg.prunable_groups)
    assert plan.total == total and plan.pruned == int(percent * total)
    gammas = np.concatenate([group_scores(cg, g) for g in cg.prunable_groups])
    kept = np.concatenate(
        [group_scores(cg, g)[plan.groups[g.name].kept] for g in cg.prunable_groups]
    )
    pruned_max = plan.threshold if plan.pruned else -np.inf
    assert np.all(kept >= pruned_max)  # global ranking: every kept |gamma| >= every pruned
    assert len(gammas) == total


def ranked_by_hand(sizes, scores, percent, min_channels):
    """The pruned (group, index) pairs: protect each group's ``min_channels`` largest (ties:
    lower index), then prune the smallest scores, ties by group order, then index."""
    protected = set()
    for k, size in enumerate(sizes):
        order = sorted(range(size), key=lambda i: (-scores[k][i], i))
        protected |= {(k, i) for i in order[:min_channels]}
    free = [(scores[k][i], k, i) for k, size in enumerate(sizes) for i in range(size)]
    free = sorted(entry for entry in free if (entry[1], entry[2]) not in protected)
    count = min(int(percent * sum(sizes)), len(free))
    return {(k, i) for _, k, i in free[:count]}


@pytest.mark.parametrize("seed", range(40))
def test_ranking_breaks_ties_by_graph_order_then_channel_index(seed):
    rng = np.random.default_rng(seed)
    sizes = [int(n) for n in rng.integers(1, 9, size=rng.integers(1, 5))]
    scores = [np.round(rng.random(n) * 3) / 3 for n in sizes]  # many ties
    groups = [(SimpleNamespace(id=10 + k, size=n), None) for k, n in enumerate(sizes)]
    percent, min_channels = float(rng.random()), int(rng.integers(1, 4))
    pruned = _rank(
        groups,
        {10 + k: s for k, s in enumerate(scores)},
        percent,
        min_channels,
        sum(sizes),
        [],
    )
    got = {(k, int(i)) for k in range(len(sizes)) for i in np.flatnonzero(pruned[10 + k])}
    assert got == ranked_by_hand(sizes, scores, percent, min_channels)


def test_floor_keeps_the_largest_gammas_of_an_emptied_layer():
    model = randomize_batchnorm(VGG(depth=11), seed=3)
    with torch.no_grad():
        model.feature[1].weight.mul_(1e-4)  # the first layer would be emptied
    cg = slimfx.analyze(slimfx.trace(model, X))
    plan = slimfx.plan(cg, 0.5, min_channels=3, compensate=False)
    first = plan.groups["feature_0"]
    gamma = model.feature[1].weight.detach().abs().numpy()
    assert first.kept == sorted(np.argsort(-gamma)[:3].tolist())
    assert plan.pruned == int(0.5 * plan.total)  # still exact: the floor is protected


def test_percent_that_would_empty_layers_prunes_what_the_floor_allows(vgg_graph):
    plan = slimfx.plan(vgg_graph[1], 0.999, min_channels=2, compensate=False)
    assert all(len(g.kept) >= 2 for g in plan.groups.values())
    assert any("min_channels" in n for n in plan.notes)


# 4. rounding ------------------------------------------------------------------------------
@pytest.mark.parametrize("round_to", [2, 8, 16, 24])
@pytest.mark.parametrize("compensate", [True, False])
def test_widths_are_rounded_up_to_multiples(vgg_graph, round_to, compensate):
    _, cg = vgg_graph
    base = slimfx.plan(cg, 0.5, compensate=compensate)
    plan = slimfx.plan(cg, 0.5, round_to=round_to, compensate=compensate)
    for name, gp in plan.groups.items():
        assert gp.width % round_to == 0 or gp.width == gp.size
        assert len(gp.kept) >= len(base.groups[name].kept)
        scores = group_scores(cg, next(g for g in cg.groups if g.name == name))
        restored = set(gp.kept) - set(base.groups[name].kept)
        dropped = set(range(gp.size)) - set(gp.kept)
        if restored and dropped:  # restored by |gamma| order
            assert min(scores[list(restored)]) >= max(scores[list(dropped)]) - 1e-12


# 5. carrier -------------------------------------------------------------------------------
def test_carrier_only_when_a_padded_consumer_sees_a_nonzero_constant():
    model = randomize_batchnorm(VGG(depth=11), seed=5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.fill_(-1.0)  # relu(beta) == 0: nothing to carry
        model.feature[5].bias.fill_(0.5)
    cg = slimfx.analyze(slimfx.trace(model, X))
    plan = slimfx.plan(cg, 0.5)
    carriers = {name for name, gp in plan.groups.items() if gp.carrier is not None}
    assert carriers == {"feature_4"}
    assert plan.groups["feature_4"].carrier not in plan.groups["feature_4"].kept


def test_plan_round_trips_through_json(vgg_graph):
    plan = slimfx.plan(vgg_graph[1], 0.4, round_to=4)
    again = SlimPlan.from_json(plan.to_json())
    assert again == plan or (math.isnan(plan.threshold) and again.groups == plan.groups)
    assert again.groups == plan.groups and again.threshold == plan.threshold


def test_plan_of_another_graph_is_rejected(vgg_graph):
    other = slimfx.analyze(slimfx.trace(VGG(depth=13), X))
    plan = slimfx.plan(vgg_graph[1], 0.4)
    with pytest.raises(slimfx.PlanError):
        slimfx.rewrite(other, plan)


def test_plan_is_pure_and_reports_groups_it_cannot_prune():
    from slimfx.models import PreResNet
    from slimfx.passes.plan import cuttable_groups

    cg = slimfx.analyze(slimfx.trace(PreResNet(20), torch.randn(1, 3, 32, 32)))
    before = [list(g.frozen) for g in cg.groups]
    plan = slimfx.plan(cg, 0.5)
    assert [list(g.frozen) for g in cg.groups] == before  # the channel graph is not touched
    # the stage streams read raw by the next stage's downsampling conv cannot be pruned
    assert set(plan.frozen) == {"conv1", "layer1_0_conv3", "layer2_0_conv3"}
    assert all("_downsample_0" in why for why in plan.frozen.values())
    cuttable = {g.name for g in cuttable_groups(cg)}
    assert cuttable == set(plan.groups) and not cuttable & set(plan.frozen)
