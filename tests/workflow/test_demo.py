"""Acceptance: ``slimfx demo`` end to end on digits with the reference VGG-11.

The demo's own default schedule (6 sparsity epochs, 2 fine-tuning epochs; about two and a
half minutes on 2 CPU cores), so the numbers it checks are the ones the docs record.
Criteria, in test-accuracy points on the 450 digits test images: sparsity training >= 95%;
pruning 50% with compensation loses <= 2 points before fine-tuning; fine-tuning ends within
1 point of the sparsity-trained model (or above it); at least 2x fewer parameters.
"""

from __future__ import annotations

import json

import onnx
import pytest

from slimfx.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_demo_meets_the_acceptance_criteria(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    acc = results["accuracy"]
    sparse = acc["sparsity-trained"]
    report = f"accuracies {acc}; " + "; ".join(results["notes"])
    assert sparse >= 0.95, report
    assert sparse - acc["pruned (compensate)"] <= 0.02, report
    assert 0 <= acc["pruned (no-compensate)"] <= 1  # reported beside it
    assert acc["fine-tuned (compensate)"] >= sparse - 0.01, report
    rows = {(r["step"], r["compensation"]): r for r in results["rows"]}
    original = rows[("sparsity-trained VGG-11", "-")]
    slim = rows[("pruned and fine-tuned", "compensate")]
    assert original["params"] / slim["params"] >= 2
    assert original["macs"] > slim["macs"]
    assert {"torch-cpu b1", "torch-cpu b64"} <= set(slim["latency_ms"])
    # the printed table, and every artefact under the one output folder
    assert "| step | compensation | test accuracy | params | MACs |" in printed
    for name in (
        "results.md",
        "latency.md",
        "latency.json",
        "sparsity/model_best.pth.tar",
        "prune-compensate/pruned.pth",
        "prune-no-compensate/prune.txt",
        "finetune-compensate/checkpoint.pth.tar",
    ):
        assert (out / name).is_file(), name
    for name in (
        "training.png",
        "latency.png",
        "prune-compensate/gammas.png",
        "prune-compensate/channels.png",
    ):
        assert (out / name).read_bytes()[:8] == PNG, name
    for name in ("original.onnx", "slim.onnx"):
        onnx.checker.check_model(onnx.load(str(out / name)))
