"""The pickle-free pair beside ``pruned.pth``: ``pruned.safetensors`` and ``pruned.json``."""

import json

import pytest
import torch

from slimfx.errors import CheckpointError
from slimfx.ir.plan import SlimPlan
from slimfx.models import VGG
from slimfx.workflow.prune import prune_model
from slimfx.workflow.prune_files import read_pruned


def test_safetensors_weights_and_json_cfg_read_back_as_pruned_pth(tmp_path, tiny_model):
    outcome = prune_model(tiny_model, percent=0.5, save_dir=tmp_path, plots=False)
    pickled = torch.load(tmp_path / "pruned.pth", weights_only=True)
    for name in ("pruned.safetensors", "pruned.json"):
        pair = read_pruned(tmp_path / name)
        assert pair["cfg"] == pickled["cfg"] == outcome.result.cfg
        assert pair["state_dict"].keys() == pickled["state_dict"].keys()
        assert all(torch.equal(pair["state_dict"][k], v) for k, v in pickled["state_dict"].items())
    plan = SlimPlan.from_json(json.dumps(pair["plan"]))
    assert plan.groups == outcome.result.plan.groups
    model = VGG(dataset="digits", cfg=pair["cfg"])
    model.load_state_dict(pair["state_dict"], strict=True)
    assert (tmp_path / "pruned.safetensors").read_bytes()[8:9] == b"{"  # a JSON header, no pickle


def test_a_broken_pair_is_a_checkpoint_error(tmp_path, tiny_model):
    prune_model(tiny_model, percent=0.5, save_dir=tmp_path, plots=False)
    (tmp_path / "pruned.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="safetensors"):
        read_pruned(tmp_path / "pruned.json")
    (tmp_path / "pruned.json").write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match=r"not a slimfx pruned\.json"):
        read_pruned(tmp_path / "pruned.json")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_pruned(tmp_path / "missing.json")


def test_the_pair_loads_as_a_model_like_pruned_pth(tmp_path, tiny_model):
    from slimfx.workflow.prune import load_trained_model

    prune_model(tiny_model, percent=0.5, save_dir=tmp_path, plots=False)
    pickled, _ = load_trained_model(tmp_path / "pruned.pth", dataset="digits")
    for name in ("pruned.safetensors", "pruned.json"):
        model, ckpt = load_trained_model(tmp_path / name, dataset="digits")
        assert model.cfg == pickled.cfg and set(ckpt) == {"cfg", "state_dict", "plan"}
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(model.eval()(x), pickled.eval()(x), rtol=0, atol=0)
