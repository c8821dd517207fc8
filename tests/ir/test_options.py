"""SlimOptions and Mode: validation, normalisation, copies, and the API's two spellings."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import slimfx
from slimfx import Mode, SlimOptions
from slimfx.ir.options import GROUP_SCORES
from slimfx.models import VGG
from slimfx.testing import randomize_batchnorm

FIELDS = (
    "percent",
    "min_channels",
    "round_to",
    "compensate",
    "group_score",
    "strict",
    "verify",
    "leaf_modules",
    "leaf_types",
    "keep_forward",
    "speedup",
    "latency_ms",
    "backend",
    "batch",
    "threads",
)


# --- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "percent",
    [
        -0.01,
        -1,
        1,
        1.0,
        1.5,
        math.inf,
        -math.inf,
        math.nan,
        np.float32("nan"),
        np.float64(1.0),
        True,
        False,
        np.True_,
        "0.5",
        [0.5],
        0.5j,
    ],
)
def test_percent_outside_zero_one_or_not_a_number_names_percent(percent):
    with pytest.raises(ValueError, match=r"^percent must be"):
        SlimOptions(percent=percent)


@pytest.mark.parametrize("name", ["min_channels", "round_to"])
@pytest.mark.parametrize(
    "value", [0, -1, -8, 1.0, 2.5, np.float64(4.0), True, False, np.True_, "8", None, math.nan]
)
def test_positive_integer_settings_reject_everything_else_by_name(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be a positive integer"):
        SlimOptions(**{name: value})


@pytest.mark.parametrize("score", ["MEAN", "median", "", "l1", None, 1, ["mean"]])
def test_unknown_group_score_lists_the_known_ones(score):
    with pytest.raises(ValueError, match=r"^group_score must be one of \('mean', 'sum', 'max'\)"):
        SlimOptions(group_score=score)


@pytest.mark.parametrize("score", GROUP_SCORES)
def test_every_known_group_score_is_accepted(score):
    assert SlimOptions(group_score=score).group_score == score


@pytest.mark.parametrize("percent", [0, 0.0, -0.0, 0.25, 0.999999, np.float32(0.5), 1 - 1e-12])
def test_percent_edges_inside_the_range_are_accepted(percent):
    options = SlimOptions(percent=percent)
    assert 0 <= options.percent < 1
    assert type(options.percent) is float


def test_the_message_shows_the_value_given():
    with pytest.raises(ValueError, match=r"got 1\.5$"):
        SlimOptions(percent=1.5)
    with pytest.raises(ValueError, match=r"got 0$"):
        SlimOptions(round_to=0)
    with pytest.raises(ValueError, match=r"got 'avg'$"):
        SlimOptions(group_score="avg")


def test_defaults():
    options = SlimOptions()
    assert options.to_dict() == {
        "percent": 0.5,
        "min_channels": 1,
        "round_to": 1,
        "compensate": True,
        "group_score": "mean",
        "strict": False,
        "verify": True,
        "leaf_modules": (),
        "leaf_types": (),
        "keep_forward": False,
        "speedup": None,
        "latency_ms": None,
        "backend": "ort-cpu",
        "batch": None,
        "threads": None,
    }


# --- normalisation ----------------------------------------------------------------------------
def test_numpy_numbers_become_python_numbers():
    options = SlimOptions(
        percent=np.float32(0.25),
        min_channels=np.int64(3),
        round_to=np.int32(8),
        compensate=np.bool_(False),
        strict=np.bool_(True),
        verify=np.bool_(False),
    )
    values = options.to_dict()
    assert {k: type(v) for k, v in values.items()} == {
        "percent": float,
        "min_channels": int,
        "round_to": int,
        "compensate": bool,
        "group_score": str,
        "strict": bool,
        "verify": bool,
        "leaf_modules": tuple,
        "leaf_types": tuple,
        "keep_forward": bool,
        "speedup": type(None),
        "latency_ms": type(None),
        "backend": str,
        "batch": type(None),
        "threads": type(None),
    }
    assert values["percent"] == 0.25  # exact in float32
    assert (values["min_channels"], values["round_to"]) == (3, 8)
    assert (values["compensate"], values["strict"], values["verify"]) == (False, True, False)
    json.dumps(values)  # plain Python values: JSON needs no converter


def test_a_float32_percent_keeps_its_float32_value():
    options = SlimOptions(percent=np.float32(0.3))
    assert options.percent == float(np.float32(0.3))
    assert abs(options.percent - 0.3) < 1e-7  # float32 rounding, not a re-rounding to 0.3


def test_an_integer_zero_percent_becomes_a_float():
    assert type(SlimOptions(percent=0).percent) is float


# --- copies -------------------------------------------------------------------------------
def test_options_are_frozen_and_hashable_values():
    options = SlimOptions(percent=0.3, round_to=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.percent = 0.4
    same = SlimOptions(percent=0.3, round_to=8)
    assert options == same and hash(options) == hash(same)
    assert options != SlimOptions(percent=0.3, round_to=4)
    assert len({options, same}) == 1


def test_replace_changes_only_what_it_is_told_and_returns_a_new_value():
    options = SlimOptions(percent=0.3, round_to=8, strict=True)
    changed = options.replace(compensate=False, min_channels=np.int64(2))
    assert changed is not options and options.compensate is True
    assert changed.to_dict() == {**options.to_dict(), "compensate": False, "min_channels": 2}
    assert type(changed.min_channels) is int


@pytest.mark.parametrize(
    "change",
    [
        {"percent": 1.0},
        {"percent": math.nan},
        {"min_channels": 0},
        {"round_to": True},
        {"group_score": "median"},
    ],
)
def test_replace_validates_like_construction(change):
    name = next(iter(change))
    with pytest.raises(ValueError, match=rf"^{name} "):
        SlimOptions().replace(**change)


def test_replace_with_an_unknown_name_is_a_type_error():
    with pytest.raises(TypeError):
        SlimOptions().replace(threshold=0.1)


def test_of_none_is_the_defaults_with_the_changes():
    assert SlimOptions.of(None) == SlimOptions()
    assert SlimOptions.of() == SlimOptions()
    assert SlimOptions.of(None, percent=0.2, round_to=4) == SlimOptions(percent=0.2, round_to=4)


def test_of_options_without_changes_is_the_same_object():
    options = SlimOptions(percent=0.2)
    assert SlimOptions.of(options) is options


def test_of_options_with_changes_overrides_single_settings():
    options = SlimOptions(percent=0.2, round_to=4, compensate=False)
    changed = SlimOptions.of(options, percent=0.6)
    assert changed == SlimOptions(percent=0.6, round_to=4, compensate=False)
    assert options.percent == 0.2


def test_of_validates_the_changes():
    with pytest.raises(ValueError, match="round_to"):
        SlimOptions.of(SlimOptions(), round_to=0)
    with pytest.raises(ValueError, match="percent"):
        SlimOptions.of(None, percent=2)


def test_of_unknown_names_are_a_type_error_listing_them_sorted():
    with pytest.raises(TypeError, match=r"^unknown slimming option\(s\): ratio, tolerance$"):
        SlimOptions.of(None, tolerance=1e-9, ratio=0.5)
    with pytest.raises(TypeError, match=r"^unknown slimming option\(s\): pecrent$"):
        SlimOptions.of(SlimOptions(), pecrent=0.5)


@pytest.mark.parametrize("bad", [{"percent": 0.5}, 0.5, "mean", [0.5], SlimOptions])
def test_of_something_else_than_options_is_a_type_error(bad):
    with pytest.raises(TypeError, match=r"^options must be a SlimOptions"):
        SlimOptions.of(bad)
    with pytest.raises(TypeError, match=r"^options must be a SlimOptions"):
        SlimOptions.of(bad, percent=0.1)


def test_to_dict_round_trips_and_is_a_copy():
    options = SlimOptions(
        percent=0.37, min_channels=2, round_to=8, compensate=False, group_score="max"
    )
    values = options.to_dict()
    assert tuple(values) == FIELDS
    assert SlimOptions(**values) == options
    assert SlimOptions(**json.loads(json.dumps(values))) == options
    values["percent"] = 0.9
    assert options.percent == 0.37


# --- Mode ------------------------------------------------------------------------------------
def test_mode_values_are_the_strings_of_a_plan():
    assert {m.name: m.value for m in Mode} == {
        "COMPENSATE": "compensate",
        "ZERO": "zero",
        "CARRIER": "carrier",
    }
    for mode in Mode:
        assert str(mode) == mode.value and f"{mode}" == mode.value
        assert mode == mode.value and Mode(mode.value) is mode
        assert json.dumps(mode) == f'"{mode.value}"'
    with pytest.raises(ValueError):
        Mode("zeroed")


# --- the API takes options or single settings -------------------------------------------------
TINY = [8, "M", 16, "M", 16, "M", 24, "M", 24]
X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def vgg():
    return randomize_batchnorm(VGG(cfg=TINY), seed=11).eval()


@pytest.mark.parametrize(
    ("options", "percent", "by_name"),
    [
        (
            SlimOptions(percent=0.2, round_to=4, min_channels=2),
            0.5,
            {"percent": 0.5, "round_to": 4, "min_channels": 2},
        ),
        (
            SlimOptions(compensate=False, group_score="max"),
            0.4,
            {"percent": 0.4, "compensate": False, "group_score": "max"},
        ),
    ],
)
def test_slim_with_options_equals_slim_with_the_settings_by_name(vgg, options, percent, by_name):
    given = slimfx.slim(vgg, X, options=options, percent=percent)
    named = slimfx.slim(vgg, X, **by_name)
    assert given.plan.options == named.plan.options == SlimOptions(**by_name)
    assert given.plan == named.plan
    assert given.cfg == named.cfg and given.cfg is not None
    assert given.cfg != TINY  # something was pruned
    given_state, named_state = given.module.state_dict(), named.module.state_dict()
    assert given_state.keys() == named_state.keys()
    assert all(torch.equal(given_state[k], named_state[k]) for k in given_state)


def test_slim_settings_by_name_override_options(vgg):
    options = SlimOptions(percent=0.2, round_to=8)
    res = slimfx.slim(vgg, X, options=options, round_to=1, verify=False)
    assert res.plan.options == SlimOptions(percent=0.2, round_to=1, verify=False)
    assert options.round_to == 8  # the caller's options are not changed


def test_slim_rejects_unknown_settings_and_bad_values(vgg):
    with pytest.raises(TypeError, match="unknown slimming option"):
        slimfx.slim(vgg, X, 0.5, rounding=8)
    with pytest.raises(ValueError, match="percent"):
        slimfx.slim(vgg, X, 1.0)
    with pytest.raises(TypeError, match="options must be a SlimOptions"):
        slimfx.slim(vgg, X, options={"percent": 0.5})


@pytest.mark.parametrize("name", ["compensate", "strict", "verify", "keep_forward"])
def test_bool_settings_reject_non_bools_by_name(name):
    with pytest.raises(ValueError, match=name):
        SlimOptions(**{name: "false"})


def test_percent_speedup_and_latency_ms_are_one_choice():
    assert SlimOptions().percent == 0.5 and not SlimOptions().latency_target
    fast = SlimOptions().replace(speedup=2)
    assert fast.percent is None and fast.speedup == 2.0 and fast.latency_target
    assert fast.replace(percent=0.3).speedup is None  # choosing one drops the others
    assert fast.replace(latency_ms=5).speedup is None
    for bad in ({"percent": 0.3, "speedup": 2}, {"speedup": 2, "latency_ms": 3}):
        with pytest.raises(ValueError, match="exclusive"):
            SlimOptions(**bad)
    with pytest.raises(ValueError, match="exclusive"):
        SlimOptions.of(None, percent=0.3, speedup=2)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("speedup", 1.0, "greater than 1"),
        ("speedup", float("nan"), "greater than 1"),
        ("latency_ms", 0, "positive"),
        ("latency_ms", "5", "a number"),
        ("batch", 0, "positive integer"),
        ("threads", 1.5, "positive integer"),
        ("backend", "tpu", "unknown backend"),
    ],
)
def test_latency_settings_are_checked(name, value, message):
    with pytest.raises(ValueError, match=message):
        SlimOptions(**{name: value})


def test_backend_aliases_become_backend_names():
    assert SlimOptions(backend="onnxruntime").backend == "ort-cpu"
    assert SlimOptions(backend="PyTorch").backend == "torch-cpu"
    assert SlimOptions(backend="ort-cuda").backend == "ort-cuda"
