"""SlimPlan and GroupPlan as pure data: JSON, keep tables, modes, group ids, frozen groups."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx import GroupPlan, Mode, PlanError, SlimOptions, SlimPlan
from slimfx.ir.layout import Layout
from slimfx.testing import randomize_batchnorm


class Chain(nn.Module):
    """conv-bn-relu twice, then a linear head; the padded conv2 needs a carrier."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class ZeroedThenCompensated(nn.Module):
    """conv1's group is zeroed (max pooling of a padded constant), conv2's compensated."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(2))
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(self.conv3(x).mean(dim=(2, 3)))


class RawSkip(nn.Module):
    """conv1's output is read raw by the skip conv: its BatchNorm group cannot be pruned."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.skip = nn.Conv2d(6, 6, 1)
        self.bn3 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        c = self.conv1(x)
        y = self.bn2(self.conv2(torch.relu(self.bn1(c))))
        return self.fc(torch.relu(y + self.bn3(self.skip(c))).mean((2, 3)))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bna = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(3, 5, 1)
        self.bnb = nn.BatchNorm2d(5)
        self.head = nn.Conv2d(9, 3, 1)
        self.bnh = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        y = torch.cat([torch.relu(self.bna(self.a(x))), torch.relu(self.bnb(self.b(x)))], dim=1)
        return self.fc(torch.relu(self.bnh(self.head(y))).mean((2, 3)))


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def planned(make, percent=0.5, seed=1, **settings):
    """(model, channel graph, constants, plan) of a real run; betas positive, so the
    constants of pruned channels matter."""
    model = randomize_batchnorm(make(), seed=seed).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.abs_()
    cg = slimfx.analyze(slimfx.trace(model, X))
    constants = slimfx.propagate_constants(cg)
    return model, cg, constants, slimfx.plan(cg, percent, constants=constants, **settings)


@pytest.fixture(scope="module")
def chain():
    return planned(Chain)


@pytest.fixture(scope="module")
def mixed():
    return planned(ZeroedThenCompensated)


@pytest.fixture(scope="module")
def raw_skip():
    return planned(RawSkip)


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa
    )


# --- GroupPlan --------------------------------------------------------------------------------
def test_group_plan_width_and_pruned_mask():
    gp = GroupPlan("conv", 6, [0, 2, 5], carrier=3)
    assert gp.width == 4 and gp.mode is Mode.COMPENSATE
    np.testing.assert_array_equal(gp.pruned_mask(), [False, True, False, True, True, False])
    assert gp.pruned_mask()[gp.carrier]  # the carrier does not stay as itself
    plain = GroupPlan("conv", 6, [1, 4])
    assert plain.width == 2 and plain.pruned_mask().sum() == 4


def test_group_plan_mode_from_its_string_and_carrier_is_not_a_mode():
    assert GroupPlan("g", 2, [0], mode="zero").mode is Mode.ZERO
    assert GroupPlan("g", 2, [0], mode="compensate").mode is Mode.COMPENSATE
    with pytest.raises(PlanError, match="group g: 'carrier' is not a pruning mode"):
        GroupPlan("g", 2, [0], mode=Mode.CARRIER)
    with pytest.raises(PlanError, match="carrier"):
        GroupPlan("g", 2, [0], mode="carrier")
    with pytest.raises(ValueError):
        GroupPlan("g", 2, [0], mode="prune")


# --- SlimPlan settings ------------------------------------------------------------------------
def test_plan_settings_are_its_options():
    options = SlimOptions(percent=0.3, min_channels=2, round_to=4, group_score="max")
    plan = SlimPlan(groups={}, options=options, total=10, pruned=4)
    assert (plan.percent, plan.min_channels, plan.round_to) == (0.3, 2, 4)
    assert (plan.compensate, plan.group_score) == (True, "max")
    assert plan.ratio == 0.4
    assert SlimPlan(groups={}).ratio == 0.0  # no prunable channel: nothing removed
    assert math.isnan(SlimPlan(groups={}).threshold)


def test_a_real_plan_counts_what_its_groups_hold(mixed):
    plan = mixed[3]
    assert plan.pruned == sum(int(gp.pruned_mask().sum()) for gp in plan.groups.values())
    assert plan.total == sum(gp.size for gp in plan.groups.values())
    assert plan.ratio == plan.pruned / plan.total
    for gp in plan.groups.values():
        assert gp.kept == sorted(gp.kept) and len(set(gp.kept)) == len(gp.kept)
        assert all(type(k) is int for k in gp.kept)
        assert gp.carrier is None or (type(gp.carrier) is int and gp.carrier not in gp.kept)


# --- JSON ------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["chain", "mixed", "raw_skip"])
def test_json_round_trip_is_an_equal_plan_that_rewrites_to_the_same_model(request, which):
    _, cg, constants, plan = request.getfixturevalue(which)
    again = SlimPlan.from_json(plan.to_json())
    assert again == plan  # groups, options, counts, threshold, notes and frozen
    assert again.to_json() == plan.to_json()
    assert all(type(gp.mode) is Mode for gp in again.groups.values())
    assert states_equal(
        slimfx.rewrite(cg, again, constants=constants),
        slimfx.rewrite(cg, plan, constants=constants),
    )


def test_json_holds_the_plan_settings_flat_and_modes_as_strings(mixed):
    plan = mixed[3]
    data = json.loads(plan.to_json())
    assert list(data) == [
        "groups",
        "percent",
        "min_channels",
        "round_to",
        "compensate",
        "group_score",
        "speedup",
        "latency_ms",
        "backend",
        "batch",
        "threads",
        "total",
        "pruned",
        "threshold",
        "notes",
        "frozen",
        "latency",
    ]
    assert data["groups"]["conv1"]["mode"] == "zero"
    assert data["groups"]["conv2"]["mode"] == "compensate"
    assert data["groups"]["conv2"]["carrier"] == plan.groups["conv2"].carrier
    assert data["threshold"] == plan.threshold and data["notes"] == plan.notes


def test_json_of_a_plan_that_prunes_nothing_has_a_null_threshold(chain):
    _, cg, constants, _ = chain
    plan = slimfx.plan(cg, 0.0, constants=constants)
    text = plan.to_json()
    assert json.loads(text)["threshold"] is None and "NaN" not in text
    again = SlimPlan.from_json(text)
    assert math.isnan(again.threshold) and again.groups == plan.groups
    assert again.pruned == 0 and again.options == plan.options


def test_json_keeps_non_default_plan_settings(chain):
    _, cg, constants, _ = chain
    plan = slimfx.plan(cg, 0.4, constants=constants, round_to=2, min_channels=2, compensate=False)
    again = SlimPlan.from_json(plan.to_json())
    assert again.options == SlimOptions(percent=0.4, round_to=2, min_channels=2, compensate=False)
    assert all(gp.mode is Mode.ZERO for gp in again.groups.values())
    assert all(gp.width % 2 == 0 or gp.width == gp.size for gp in again.groups.values())


def test_json_of_a_plan_made_with_run_time_settings_rewrites_the_same(chain):
    """``strict`` and ``verify`` steer the run, not the plan: whatever the JSON keeps of
    them, the loaded plan has the plan settings and builds the same model."""
    _, cg, constants, _ = chain
    options = SlimOptions(percent=0.5, round_to=2, strict=True, verify=False)
    plan = slimfx.plan(cg, options, constants=constants)
    again = SlimPlan.from_json(plan.to_json())
    plan_settings = ("percent", "min_channels", "round_to", "compensate", "group_score")
    assert {k: getattr(again, k) for k in plan_settings} == {
        k: getattr(plan, k) for k in plan_settings
    }
    assert again.groups == plan.groups and again.frozen == plan.frozen
    assert states_equal(
        slimfx.rewrite(cg, again, constants=constants),
        slimfx.rewrite(cg, plan, constants=constants),
    )


# --- queries against a channel graph ------------------------------------------------------------
def test_group_ids_map_names_to_the_graph_ids(mixed):
    _, cg, _, plan = mixed
    ids = plan.group_ids(cg)
    assert set(ids) == set(plan.groups)
    for name, gid in ids.items():
        assert cg.groups[gid].name == name and cg.groups[gid].size == plan.groups[name].size
    assert ids == {"conv1": cg.group_of("conv1").id, "conv2": cg.group_of("conv2").id}


def test_group_ids_reject_a_missing_group_or_another_size(mixed):
    cg = mixed[1]
    missing = SlimPlan(groups={"nowhere": GroupPlan("nowhere", 8, [0])})
    with pytest.raises(PlanError, match="the plan's group 'nowhere' is not in this channel graph"):
        missing.group_ids(cg)
    resized = SlimPlan(groups={"conv1": GroupPlan("conv1", 9, [0])})
    with pytest.raises(PlanError, match="'conv1'"):
        resized.keep_table(cg)
    with pytest.raises(PlanError):
        resized.modes(cg)


def test_keep_table_keeps_the_kept_channels_and_the_carrier(chain):
    _, cg, _, plan = chain
    ids = plan.group_ids(cg)
    assert any(gp.carrier is not None for gp in plan.groups.values())
    with_carriers, without = plan.keep_table(cg), plan.keep_table(cg, carriers=False)
    carriers = plan.carrier_table(cg)
    for name, gp in plan.groups.items():
        layout = Layout.plain(ids[name], gp.size)
        extra = [] if gp.carrier is None else [gp.carrier]
        assert with_carriers.positions(layout).tolist() == sorted(gp.kept + extra)
        assert without.positions(layout).tolist() == gp.kept
        assert carriers.positions(layout).tolist() == extra
        assert len(with_carriers.positions(layout)) == gp.width


def test_unplanned_groups_keep_everything_and_carry_nothing(chain):
    _, cg, _, plan = chain
    planned_ids = set(plan.group_ids(cg).values())
    others = [g for g in cg.groups if g.id not in planned_ids]
    assert {g.name for g in others} == {"x", "fc"}  # the model's input and output
    for g in others:
        layout = Layout.plain(g.id, g.size)
        assert plan.keep_table(cg).mask(layout).all()
        assert plan.keep_table(cg, carriers=False).mask(layout).all()
        assert not plan.carrier_table(cg).mask(layout).any()


def test_keep_table_of_a_concatenation_keeps_each_part_by_its_own_group():
    _, cg, constants, plan = planned(Concat)
    layout = cg.layout("cat")
    kept_a = plan.groups["a"].kept
    kept_b = [4 + k for k in plan.groups["b"].kept]
    assert plan.groups["a"].carrier is None and plan.groups["b"].carrier is None
    assert plan.keep_table(cg).positions(layout).tolist() == kept_a + kept_b
    slim = slimfx.rewrite(cg, plan, constants=constants)
    assert slim.head.in_channels == len(kept_a) + len(kept_b)


def test_modes_by_group_id(mixed):
    _, cg, _, plan = mixed
    modes = plan.modes(cg)
    assert modes == {cg.group_of("conv1").id: Mode.ZERO, cg.group_of("conv2").id: Mode.COMPENSATE}
    assert all(type(m) is Mode for m in modes.values())


def test_frozen_groups_are_not_planned_and_keep_every_channel(raw_skip):
    _, cg, constants, plan = raw_skip
    assert set(plan.frozen) == {"conv1"}
    assert "depend on the input at skip" in plan.frozen["conv1"]
    assert "conv1" not in plan.groups and set(plan.groups) == {"conv2"}
    assert plan.total == 6  # frozen groups are not counted as prunable
    frozen = cg.group_of("conv1")
    assert frozen.prunable  # by the analysis; it is the plan that cannot prune it
    assert plan.keep_table(cg).mask(Layout.plain(frozen.id, frozen.size)).all()
    slim = slimfx.rewrite(cg, plan, constants=constants)
    assert slim.conv1.out_channels == slim.bn1.num_features == 6
    assert slim.conv2.in_channels == slim.skip.in_channels == 6
    assert slim.bn2.num_features == slim.bn3.num_features == plan.groups["conv2"].width < 6
