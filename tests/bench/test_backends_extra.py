"""The openvino-cpu and torch-compile benchmark backends."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slimfx.bench import backends as bench_backends
from slimfx.bench.latency import measure_latency
from slimfx.targets import canonical_backend
from slimfx.tolerances import FLOAT32_RTOL

HERE = Path(__file__).resolve().parent


def close(got, want, rtol):
    return np.abs(got - want).max() <= rtol * np.abs(want).max()


def test_names_aliases_and_defaults():
    assert canonical_backend("openvino") == "openvino-cpu"
    assert canonical_backend("inductor") == canonical_backend("compile") == "torch-compile"
    # optional or slow to prepare: measured only when named
    assert {"openvino-cpu", "torch-compile"}.isdisjoint(bench_backends.DEFAULT_BACKENDS)
    available, _ = bench_backends.resolve_backends(["torch", "ort", "torch-cpu"])
    assert available == ["torch-cpu", "ort-cpu"]


def test_unavailable_backends_say_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    ok, reason = bench_backends.backend_status("openvino-cpu")
    assert not ok and reason == "openvino is not installed (pip install 'slimfx[openvino]')"
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    ok, reason = bench_backends.backend_status("torch-compile")
    assert not ok and "no no-such-c++-compiler" in reason


def test_torch_compile_runner_computes_its_model(slim_result, tmp_path):
    module, x = slim_result.module, torch.randn(1, 3, 32, 32)
    runners = bench_backends.prepare_runners("torch-compile", {"m": module}, (x,), tmp_path, {}, 1)
    assert not list(tmp_path.iterdir())  # no ONNX export for it
    out = runners["m"].bind((x,))()
    with torch.no_grad():
        assert close(out.numpy(), module(x).numpy(), FLOAT32_RTOL)


@pytest.mark.parametrize(
    "check", ["runner_computes_its_model", "same_alternating_run", "a_probe_is_timed"]
)
def test_openvino_in_a_process_of_its_own(check):
    """The OpenVINO backend and probes (tests/bench/openvino_checks.py, whose docstring
    says why they run in a subprocess)."""
    pytest.importorskip("openvino")
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import openvino_checks; "
    code += f"openvino_checks.{check}()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_torch_compile_in_a_run(slim_result):
    # Compiling a model takes seconds (about 12 s per model and batch with a cold inductor
    # cache on 2 cores): both entries are the one slim model at the batch the other tests
    # compile, so this measures the backend's plumbing without compiling another graph.
    report = measure_latency(
        {"slim": slim_result.module, "again": slim_result.module},
        torch.randn(1, 3, 32, 32),
        batches=(1,),
        backends=["compile"],
        rounds=2,
        warmup=1,
        min_round_seconds=0,
        progress=False,
        warn_noise=False,
    )
    assert report.skipped == {}
    assert [(r.backend, r.batch, r.model) for r in report.rows] == [("torch-compile", 1, "again")]
