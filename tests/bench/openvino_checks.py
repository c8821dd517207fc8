"""OpenVINO checks, run by tests/bench/test_backends_extra.py in a process of their own.

With OpenVINO's runtime loaded, the checkpoint fuzzing in tests/safety (``torch.load`` of
mutated files under a ``SIGALRM`` time limit) crashes the interpreter (SIGSEGV); a
subprocess keeps the two apart. Each function raises ``AssertionError`` on failure.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

import slimfx
from slimfx.bench import backends as bench_backends
from slimfx.bench.latency import measure_latency
from slimfx.bench.models import synthetic_scales
from slimfx.latency.layers import LayerShape
from slimfx.latency.probes import time_probe
from slimfx.models import VGG
from slimfx.tolerances import ONNX_RTOL

CFG = [8, "M", 16, "M", 16, "M", 24, "M", 24]


def _model():
    torch.manual_seed(0)
    return synthetic_scales(VGG(cfg=CFG), 0).eval()


def runner_computes_its_model() -> None:
    model, x = _model(), torch.randn(1, 3, 32, 32)
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        runners = bench_backends.prepare_runners(
            "openvino-cpu", {"m": model}, (x,), Path(tmp), files, 1
        )
        assert files["m"].suffix == ".onnx"  # the checked export the ort backends share
        batch = torch.randn(3, 3, 32, 32)
        (out,) = runners["m"].bind((batch,))()
    with torch.no_grad():
        want = model(batch).numpy()
    assert out.data.shape == (3, 10)
    assert np.abs(out.data - want).max() <= ONNX_RTOL * np.abs(want).max()


def same_alternating_run() -> None:
    model = _model()
    slim = slimfx.slim(model, torch.randn(1, 3, 32, 32), 0.5).module
    report = measure_latency(
        {"original": model, "slim": slim},
        torch.randn(1, 3, 32, 32),
        batches=(2,),
        backends=["torch-cpu", "ort-cpu", "openvino-cpu"],
        rounds=2,
        warmup=1,
        min_round_seconds=0,
        progress=False,
        warn_noise=False,
    )
    assert report.skipped == {}, report.skipped
    assert [(r.backend, r.batch, r.model) for r in report.rows] == [
        ("torch-cpu", 2, "slim"),
        ("ort-cpu", 2, "slim"),
        ("openvino-cpu", 2, "slim"),
    ]
    assert all(r.slim_median_ms > 0 and r.original_median_ms > 0 for r in report.rows)
    assert report.machine["openvino"]


def a_probe_is_timed() -> None:
    shape = LayerShape("conv", 8, 16, (3, 3), (2, 2), (1, 1), (1, 1), (), 1, (9, 9))
    assert 0 < time_probe(shape, "openvino-cpu", batch=2, threads=1) < 1000
