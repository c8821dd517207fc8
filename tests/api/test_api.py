"""slimfx.slim: result, report, cfg, reference, verification."""

import pytest
import torch

import slimfx
from slimfx.models import VGG
from slimfx.testing import randomize_batchnorm

X = torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def model():
    return randomize_batchnorm(VGG(depth=11), seed=11)


@pytest.mark.parametrize("compensate", [True, False])
def test_cfg_builds_the_slim_architecture_and_loads_strictly(model, compensate):
    res = slimfx.slim(model, X, 0.5, compensate=compensate)
    rebuilt = VGG(cfg=res.cfg)
    rebuilt.load_state_dict(res.module.state_dict(), strict=True)
    rebuilt.eval()
    res.module.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(X), res.module(X))
    widths = [w for w in res.cfg if w != "M"]
    bns = [m for m in res.module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert widths == [bn.num_features for bn in bns]


def test_kept_has_one_entry_per_prunable_batchnorm(model):
    res = slimfx.slim(model, X, 0.5)
    assert set(res.kept) == {f"feature.{i}" for i in (1, 5, 9, 12, 16, 19, 23, 26)}
    for name, kept in res.kept.items():
        assert kept == sorted(kept) and len(set(kept)) == len(kept)
        assert len(kept) <= model.get_submodule(name).num_features


def test_report_has_the_reference_table_and_counts(model):
    res = slimfx.slim(model, X, 0.5)
    rep = res.report
    head, first = rep.table().splitlines()[:2]
    assert head == rep.table().splitlines()[0]
    assert head.startswith("BatchNorm") and "group" in head and "remaining channel" in head
    assert first.split()[:3] == ["feature.1", "feature.0", "64"]  # named, with its group
    assert rep.params_before == sum(p.numel() for p in model.parameters())
    assert rep.params_after == sum(p.numel() for p in res.module.parameters())
    assert rep.macs_after < rep.macs_before
    assert rep.ratio == pytest.approx(0.5, abs=1 / rep.total_channels)
    assert rep.verification_error <= 1e-9 and rep.weights_error <= 1e-5
    assert "cfg:" in str(rep) and "Verified" in str(rep)
    assert rep.to_dict()["layers"][0]["name"] == "feature.1"


def test_reference_is_the_masked_original(model):
    res = slimfx.slim(model, X, 0.5, compensate=False)
    ref = res.reference
    for name, kept in res.kept.items():
        gamma = ref.get_submodule(name).weight.detach()
        pruned = [i for i in range(len(gamma)) if i not in kept]
        assert torch.all(gamma[pruned] == 0) and torch.all(gamma[kept] != 0)
        assert torch.all(ref.get_submodule(name).bias.detach()[pruned] == 0)
    assert ref is res.reference  # built once


def test_verify_catches_a_wrong_slim_model(model):
    res = slimfx.slim(model, X, 0.5)
    with torch.no_grad():
        res.module.feature[4].weight[0, 0, 0, 0] += 0.1
    with pytest.raises(slimfx.EquivalenceError) as info:
        slimfx.verify(res.module, res.reference, X)
    assert info.value.relative_error > 1e-9


def test_compensation_beats_zeroing_before_any_fine_tuning(model):
    """With betas kept, the slim model stays close to the original; zeroing does not."""
    from slimfx.testing import max_relative_error

    comp = slimfx.slim(model, X, 0.3)
    zero = slimfx.slim(model, X, 0.3, compensate=False)
    assert max_relative_error(comp.module, model, X) < max_relative_error(zero.module, model, X)
