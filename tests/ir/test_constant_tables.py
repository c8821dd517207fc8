"""ConstantTables: tables by mode, and values_at against the masked model's real outputs."""

import copy

import numpy as np
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import slimfx
from slimfx import ConstantTables, Mode
from slimfx.ir.layout import Layout
from slimfx.ir.values import EXACT, PATTERN, UNKNOWN, PrunedValues
from slimfx.testing import randomize_batchnorm

FLOAT64_RTOL = 1e-9


def values(value, kind, pattern=None) -> PrunedValues:
    value = np.asarray(value, dtype=np.float64)
    kind = np.asarray(kind, dtype=np.int8)
    pattern = np.zeros(len(value), np.int64) if pattern is None else np.asarray(pattern, np.int64)
    return PrunedValues(value, kind, pattern)


# layout of node "n": group 1 (3 channels), an untracked position, group 2 (2 channels)
LAYOUT = Layout.concat([Layout.plain(1, 3), Layout.untracked(1), Layout.plain(2, 2)])


@pytest.fixture
def hand_built() -> ConstantTables:
    return ConstantTables(
        {
            Mode.COMPENSATE: {
                "n": values(
                    [0.5, 1.5, 2.5, np.nan, 4.0, 5.0], [0, 0, 1, 2, 0, 1], [0, 0, 7, 0, 0, 9]
                ),
                "m": None,
            },
            Mode.ZERO: {"n": values([0, 0, 0, np.nan, 0, 0], [0, 0, 0, 2, 0, 0]), "m": None},
        }
    )


# --- hand-built tables --------------------------------------------------------------------------
def test_modes_are_the_modes_with_a_table(hand_built):
    assert hand_built.modes == frozenset({Mode.COMPENSATE, Mode.ZERO})
    assert isinstance(hand_built.modes, frozenset)


def test_table_is_the_table_of_that_mode(hand_built):
    assert hand_built.table(Mode.ZERO) is hand_built.tables[Mode.ZERO]
    assert hand_built.table(Mode.COMPENSATE)["m"] is None


def test_table_of_a_mode_not_propagated_is_a_key_error_naming_it_and_the_others(hand_built):
    with pytest.raises(
        KeyError, match=r"no constant table for mode 'carrier' \(have: compensate, zero\)"
    ):
        hand_built.table(Mode.CARRIER)
    with pytest.raises(KeyError, match=r"mode 'zero' \(have: \)"):
        ConstantTables({}).table(Mode.ZERO)


def test_values_at_with_one_mode_is_that_table_entry(hand_built):
    for mode in (Mode.ZERO, Mode.COMPENSATE):
        got = hand_built.values_at("n", LAYOUT, {1: mode, 2: mode})
        assert got is hand_built.table(mode)["n"]


def test_values_at_assembles_mixed_modes_position_by_position(hand_built):
    got = hand_built.values_at("n", LAYOUT, {1: Mode.ZERO, 2: Mode.COMPENSATE})
    zero, comp = hand_built.table(Mode.ZERO)["n"], hand_built.table(Mode.COMPENSATE)["n"]
    group1, group2 = [0, 1, 2], [4, 5]
    for field in ("value", "kind", "pattern"):
        np.testing.assert_array_equal(getattr(got, field)[group1], getattr(zero, field)[group1])
        np.testing.assert_array_equal(getattr(got, field)[group2], getattr(comp, field)[group2])
    assert got.kind[3] == UNKNOWN  # untracked: the same in every table here
    swapped = hand_built.values_at("n", LAYOUT, {1: Mode.COMPENSATE, 2: Mode.ZERO})
    np.testing.assert_array_equal(swapped.value[group1], comp.value[group1])
    np.testing.assert_array_equal(swapped.value[group2], zero.value[group2])


def test_values_at_does_not_write_to_the_tables(hand_built):
    before = {
        mode: tuple(a.copy() for a in (t["n"].value, t["n"].kind, t["n"].pattern))
        for mode, t in hand_built.tables.items()
    }
    hand_built.values_at("n", LAYOUT, {1: Mode.ZERO, 2: Mode.COMPENSATE})
    hand_built.values_at("n", LAYOUT, {1: Mode.COMPENSATE, 2: Mode.ZERO})
    for mode, arrays in before.items():
        now = hand_built.table(mode)["n"]
        for old, new in zip(arrays, (now.value, now.kind, now.pattern), strict=True):
            np.testing.assert_array_equal(old, new)


def test_groups_without_a_mode_take_the_values_of_some_table(hand_built):
    """Unpruned groups' positions are never pruned: any table's values will do."""
    for modes in ({}, {7: Mode.ZERO}):  # no mode, or only for a group not in the layout
        got = hand_built.values_at("n", LAYOUT, modes)
        assert any(got is t["n"] for t in hand_built.tables.values())
    only_first = hand_built.values_at("n", LAYOUT, {1: Mode.ZERO})
    np.testing.assert_array_equal(only_first.value[:3], 0.0)


def test_values_at_with_a_mode_not_propagated_is_a_key_error(hand_built):
    with pytest.raises(KeyError, match="carrier"):
        hand_built.values_at("n", LAYOUT, {1: Mode.ZERO, 2: Mode.CARRIER})
    with pytest.raises(KeyError, match="carrier"):
        hand_built.values_at("n", LAYOUT, {1: Mode.CARRIER})


def test_propagate_constants_makes_a_table_for_each_mode_asked():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    cg = slimfx.analyze(slimfx.trace(model, torch.randn(1, 3, 4, 4)))
    assert slimfx.propagate_constants(cg).modes == frozenset(Mode)
    zero_only = slimfx.propagate_constants(cg, [Mode.ZERO])
    assert zero_only.modes == {Mode.ZERO}
    assert set(zero_only.table(Mode.ZERO)) == {n.name for n in cg.gm.graph.nodes}
    with pytest.raises(KeyError, match="compensate"):
        zero_only.table(Mode.COMPENSATE)


# --- values_at against a real run of the masked model --------------------------------------------
class Paths(nn.Module):
    """A branch (group a), a residual add of two BatchNorms (group b), their concatenation,
    zero padding and average pooling (patterns), max pooling, a flatten into a linear layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bna = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(3, 4, 1)
        self.bnb = nn.BatchNorm2d(4)
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.bnc = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(8, 3, 3, padding=1)
        self.fc = nn.Linear(8 * 5 * 5, 2)

    def forward(self, x):
        ya = torch.relu(self.bna(self.a(x)))
        yb = torch.relu(self.bnb(self.b(x)) + self.bnc(self.c(x)))
        cat = torch.cat([ya, yb], 1)
        avg = F.avg_pool2d(F.pad(cat, (1, 1, 1, 1)), 2)
        return self.head(F.max_pool2d(cat, 2)), self.fc(torch.flatten(avg, 1))


class _Recorder(fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.outputs = {}

    def run_node(self, n):
        result = super().run_node(n)
        self.outputs[n.name] = result
        return result


def masked_outputs(cg, modes: dict[int, Mode], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node's output in float64 with every channel of the groups in ``modes`` pruned:
    gamma 0, beta kept (compensate), 0 (zero) or 1 (carrier)."""
    gm = copy.deepcopy(cg.gm).double().eval()
    with torch.no_grad():
        for gid, mode in modes.items():
            for scorer in cg.groups[gid].scorers:
                bn = gm.get_submodule(scorer.module)
                index = torch.as_tensor(scorer.bn_channel)
                bn.weight[index] = 0
                if mode is Mode.ZERO:
                    bn.bias[index] = 0
                elif mode is Mode.CARRIER:
                    bn.bias[index] = 1
        recorder = _Recorder(gm)
        recorder.run(x.double())
    return recorder.outputs


@pytest.fixture(scope="module")
def paths():
    model = randomize_batchnorm(Paths(), seed=3).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cg = slimfx.analyze(slimfx.trace(model, x))
    return cg, slimfx.propagate_constants(cg), x


def test_the_paths_model_has_two_prunable_groups(paths):
    cg, _, _ = paths
    assert [g.name for g in cg.prunable_groups] == ["a", "b"]
    assert [s.module for s in cg.group_of("add").scorers] == ["bnb", "bnc"]


@pytest.mark.parametrize(
    ("mode_a", "mode_b"),
    [
        (Mode.COMPENSATE, Mode.COMPENSATE),
        (Mode.ZERO, Mode.ZERO),
        (Mode.CARRIER, Mode.CARRIER),
        (Mode.ZERO, Mode.COMPENSATE),
        (Mode.COMPENSATE, Mode.CARRIER),
    ],
)
def test_values_at_are_what_the_masked_model_computes(paths, mode_a, mode_b):
    """Exact positions carry their value everywhere; pattern positions carry ``value * P``
    with one spatial map ``P >= 0`` per pattern id (float64, relative 1e-9)."""
    cg, constants, x = paths
    modes = {cg.group_of("a").id: mode_a, cg.group_of("b").id: mode_b}
    outputs = masked_outputs(cg, modes, x)
    seen = {EXACT: 0, PATTERN: 0}
    for name in constants.table(Mode.ZERO):
        layout = cg.layout(name)
        if layout is None:
            continue
        got = constants.values_at(name, layout, modes)
        actual = outputs[name].numpy()
        assert actual.shape[1] == len(layout) == len(got), name
        pruned = np.isin(layout.group, list(modes))
        maps: dict[int, np.ndarray] = {}
        for p in np.flatnonzero(pruned):
            here = actual[:, p]
            if got.kind[p] == EXACT:
                np.testing.assert_allclose(
                    here,
                    np.full_like(here, got.value[p]),
                    rtol=FLOAT64_RTOL,
                    atol=1e-12,
                    err_msg=f"{name}[{p}]",
                )
                seen[EXACT] += 1
            elif got.kind[p] == PATTERN:
                assert got.value[p] != 0  # a zero pattern is normalised to an exact zero
                shape = here / got.value[p]
                assert np.all(shape >= -1e-12), f"{name}[{p}]"
                reference = maps.setdefault(int(got.pattern[p]), shape)
                np.testing.assert_allclose(
                    shape, reference, rtol=FLOAT64_RTOL, atol=1e-12, err_msg=f"{name}[{p}]"
                )
                seen[PATTERN] += 1
    assert seen[EXACT] >= 40
    if (mode_a, mode_b) != (Mode.ZERO, Mode.ZERO):
        assert seen[PATTERN] > 0  # zero padding of a nonzero constant


def test_exact_values_follow_the_residual_add_and_the_concatenation(paths):
    cg, constants, _ = paths
    model = cg.gm
    a, b = cg.group_of("a").id, cg.group_of("b").id
    got = constants.values_at("cat", cg.layout("cat"), {a: Mode.ZERO, b: Mode.COMPENSATE})
    beta_b = model.bnb.bias.detach().double().numpy()
    beta_c = model.bnc.bias.detach().double().numpy()
    np.testing.assert_array_equal(got.kind, EXACT)
    np.testing.assert_array_equal(got.value[:4], 0.0)
    np.testing.assert_allclose(got.value[4:], np.maximum(beta_b + beta_c, 0), rtol=0, atol=0)
    carrier = constants.values_at("cat", cg.layout("cat"), {a: Mode.CARRIER, b: Mode.CARRIER})
    np.testing.assert_array_equal(carrier.value, [1, 1, 1, 1, 2, 2, 2, 2])  # relu(1 + 1)


def test_positions_of_the_padded_constant_are_patterns_and_the_linear_input_is_unknown(paths):
    cg, constants, _ = paths
    a, b = cg.group_of("a").id, cg.group_of("b").id
    modes = {a: Mode.CARRIER, b: Mode.CARRIER}
    pad = constants.values_at("pad", cg.layout("pad"), modes)
    np.testing.assert_array_equal(pad.kind, PATTERN)
    assert len(np.unique(pad.pattern)) == 1  # one padding: one pattern
    avg = constants.values_at("avg_pool2d", cg.layout("avg_pool2d"), modes)
    np.testing.assert_array_equal(avg.kind, PATTERN)
    assert set(avg.pattern) != set(pad.pattern)  # pooling changed the spatial map
    flat = constants.values_at("flatten", cg.layout("flatten"), modes)
    np.testing.assert_array_equal(flat.kind, UNKNOWN)  # a flatten does not carry patterns
    assert len(flat) == 8 * 25
