"""The whole workflow on the paper's other models: --arch resnet and --arch densenet."""

from __future__ import annotations

import pytest
import torch

from slimfx.cli import main
from slimfx.models import build_model


@pytest.mark.parametrize("arch,depth", [("resnet", 11), ("densenet", 7)])
def test_train_prune_refine(tmp_path, arch, depth, capsys):
    common = ["--dataset", "digits", "--arch", arch, "--depth", str(depth), "--no-cuda"]
    assert (
        main(
            [
                "train",
                *common,
                "-sr",
                "--s",
                "0.01",
                "--epochs",
                "1",
                "--batch-size",
                "128",
                "--lr",
                "0.05",
                "--save",
                str(tmp_path / "sparse"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "prune",
                *common,
                "--percent",
                "0.4",
                "--model",
                str(tmp_path / "sparse" / "model_best.pth.tar"),
                "--save",
                str(tmp_path / "pruned"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "remaining channel" in out and "cfg" in out.lower()
    pruned = torch.load(tmp_path / "pruned" / "pruned.pth", weights_only=True)
    model = build_model(arch, depth, "digits", cfg=pruned["cfg"])
    model.load_state_dict(pruned["state_dict"], strict=True)
    full = build_model(arch, depth, "digits")
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())
    assert (
        main(
            [
                "train",
                *common,
                "--refine",
                str(tmp_path / "pruned" / "pruned.pth"),
                "--epochs",
                "1",
                "--batch-size",
                "128",
                "--lr",
                "0.01",
                "--save",
                str(tmp_path / "refined"),
            ]
        )
        == 0
    )
    refined = torch.load(tmp_path / "refined" / "checkpoint.pth.tar", weights_only=True)
    assert refined["cfg"] == pruned["cfg"] and refined["epoch"] == 1


def test_invalid_depth_for_an_arch_is_a_usage_error(capsys):
    assert (
        main(
            [
                "train",
                "--dataset",
                "digits",
                "--arch",
                "resnet",
                "--depth",
                "19",
                "--epochs",
                "1",
                "--no-cuda",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "depth" in err and len(err.strip().splitlines()) == 1
