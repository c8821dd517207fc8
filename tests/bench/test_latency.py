"""slimfx.bench.latency: alternating rounds, statistics, efficiency, noise flags, reports."""

import json

import numpy as np
import pytest
import torch

from slimfx.bench import backends as bench_backends
from slimfx.bench.latency import _rows, compare_latency, measure_latency
from slimfx.bench.report import LatencyReport, Measurement, ModelInfo, TimingStats
from slimfx.bench.timing import time_rounds
from slimfx.tolerances import ONNX_RTOL


@pytest.fixture(scope="module")
def report(make_tiny_vgg):
    import slimfx

    model = make_tiny_vgg()
    x = torch.randn(1, 3, 32, 32)
    slim = slimfx.slim(model, x, 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rep = compare_latency(
        model,
        slim.module,
        x,
        batches=(1, 3),
        backends=("torch-cpu", "ort-cpu"),
        rounds=4,
        warmup=1,
        min_round_seconds=0.0,
        progress=False,
    )
    rep.test_context = {"model": model, "slim": slim, "state": state}
    return rep


def test_one_row_per_backend_and_batch(report):
    keys = [(r.backend, r.batch, r.model) for r in report.rows]
    assert keys == [
        ("torch-cpu", 1, "slim"),
        ("torch-cpu", 3, "slim"),
        ("ort-cpu", 1, "slim"),
        ("ort-cpu", 3, "slim"),
    ]
    assert len(report.measurements) == 8
    assert all(m.stats.rounds == 4 and len(m.rounds_ms) == 4 for m in report.measurements)


def test_statistics_speedup_and_efficiency_are_consistent(report):
    slim = report.test_context["slim"]
    for row in report.rows:
        base = report.stats(row.backend, row.batch, "original")
        cand = report.stats(row.backend, row.batch, "slim")
        assert row.original_median_ms == base.median_ms and row.slim_p90_ms == cand.p90_ms
        for s in (base, cand):
            assert 0 < s.min_ms <= s.median_ms <= s.p90_ms <= s.max_ms
        rounds = {
            m.model: np.asarray(m.rounds_ms)
            for m in report.measurements
            if (m.backend, m.batch) == (row.backend, row.batch)
        }
        ratios = rounds["original"] / rounds["slim"]
        assert row.speedup == pytest.approx(np.median(ratios))
        assert row.speedup_min == pytest.approx(ratios.min())
        assert row.speedup_max == pytest.approx(ratios.max())
        assert row.macs_ratio == pytest.approx(slim.report.macs_before / slim.report.macs_after)
        assert row.efficiency == pytest.approx(row.speedup / row.macs_ratio)
    assert report.models["original"].macs == slim.report.macs_before
    assert report.models["slim"].params == slim.report.params_after


def test_models_are_left_as_they_were(report):
    model = report.test_context["model"]
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, report.test_context["state"][key])


def test_unavailable_backends_are_skipped_with_a_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    available, skipped = bench_backends.resolve_backends(["torch-cpu", "torch-cuda", "ort-trt"])
    assert available == ["torch-cpu"]
    assert skipped["torch-cuda"] == "PyTorch sees no CUDA device"
    assert "TensorrtExecutionProvider" in skipped["ort-trt"]
    with pytest.raises(ValueError, match="unknown backend"):
        bench_backends.resolve_backends(["tvm"])


def test_skipped_backends_appear_in_the_report(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
    b = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    rep = compare_latency(
        a,
        b,
        torch.randn(1, 3, 8, 8),
        batches=(2,),
        backends=("torch-cpu", "torch-cuda"),
        rounds=2,
        warmup=0,
        progress=False,
    )
    assert rep.backends == ["torch-cpu"]
    assert "torch-cuda" in rep.skipped and "torch-cuda" in rep.to_markdown()
    assert rep.row("torch-cpu", 2).macs_ratio == pytest.approx(2.0)


def test_rounds_alternate_and_short_calls_are_repeated():
    order = []
    clock = {"a": 0.0}

    def call(name):
        def run():
            order.append(name)

        return run

    timings = time_rounds(
        {"A": call("A"), "B": call("B")},
        rounds=3,
        warmup=2,
        min_round_seconds=0.0,
        advance=lambda n: clock.__setitem__("a", clock["a"] + n),
    )
    assert order == ["A", "A", "A", "B", "B", "B", "A", "B", "B", "A", "A", "B"]
    assert clock["a"] == 3
    assert {name: len(seconds) for name, (seconds, _) in timings.items()} == {"A": 3, "B": 3}
    repeated = time_rounds({"A": call("A")}, 1, 0, min_round_seconds=1e-3, advance=lambda n: 0)
    assert repeated["A"][1] > 1  # a call far below 1 ms is repeated within the round


def _measurement(model, rounds_ms):
    return Measurement(
        "ort-cpu", 8, model, TimingStats.from_seconds(np.array(rounds_ms) / 1e3), rounds_ms
    )


def test_noise_is_flagged_when_the_spread_exceeds_the_effect():
    infos = {"original": ModelInfo("original", 10, 400), "slim": ModelInfo("slim", 5, 100)}
    clean = [_measurement("original", [10.0, 10.2, 10.1]), _measurement("slim", [4.0, 4.1, 4.0])]
    rows, warnings = _rows(clean, infos, "original")
    assert not rows[0].noisy and warnings == []
    assert rows[0].efficiency == pytest.approx(rows[0].speedup / 4.0)
    noisy = [_measurement("original", [10.0, 30.0, 10.1]), _measurement("slim", [9.0, 9.1, 25.0])]
    rows, warnings = _rows(noisy, infos, "original")
    assert rows[0].noisy
    assert len(warnings) == 1 and "exceeds the effect" in warnings[0]


def test_json_round_trip_markdown_and_plot(report, tmp_path):
    text = report.to_json()
    data = json.loads(text)
    assert data["machine"]["cpu"] and data["settings"]["rounds"] == 4
    again = LatencyReport.from_json(text)
    assert again.rows == report.rows and again.models == report.models
    markdown = report.to_markdown()
    assert markdown.count("| ort-cpu |") == 2 and "efficiency" in markdown
    assert "median" in report.table() and "ort-cpu" in report.table()
    paths = report.save(tmp_path / "out", "bench")
    assert [p.name for p in paths] == ["bench.json", "bench.md", "bench.png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths[0].read_text()) == data
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "bench.json",
        "bench.md",
        "bench.png",
    ]


def test_library_does_not_print(capsys):
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).eval()
    measure_latency(
        {"x": a, "y": a},
        torch.randn(1, 3, 8, 8),
        batches=(1,),
        backends=("torch-cpu",),
        rounds=2,
        warmup=0,
        progress=True,
    )
    out = capsys.readouterr()
    assert out.out == ""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batches": (0,)}, "batch sizes"),
        ({"rounds": 0}, "rounds"),
        ({"threads": 0}, "threads"),
        ({"backends": ()}, "no backend"),
        ({"baseline": "z"}, "baseline"),
    ],
)
def test_invalid_settings(options, message):
    a = torch.nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=message):
        measure_latency({"x": a}, torch.randn(1, 3, 8, 8), progress=False, **options)


def _tiny_pair():
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
    b = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    return a, b, torch.randn(1, 3, 8, 8)


def test_a_backend_failing_to_start_is_skipped_and_the_rest_measured(monkeypatch):
    from slimfx.bench import latency as bench

    real = bench.prepare_runners

    def flaky(backend, *args):
        if backend == "ort-cpu":
            raise OSError("provider library not found")
        return real(backend, *args)

    monkeypatch.setattr(bench, "prepare_runners", flaky)
    a, b, x = _tiny_pair()
    rep = compare_latency(
        a, b, x, batches=(1,), backends=("ort-cpu", "torch-cpu"), rounds=2, warmup=0,
        progress=False,
    )  # fmt: skip
    assert rep.backends == ["torch-cpu"]
    assert rep.skipped == {"ort-cpu": "could not be prepared: provider library not found"}


def test_an_export_failing_its_check_is_an_error(monkeypatch):
    from slimfx.bench import latency as bench
    from slimfx.errors import EquivalenceError

    def mismatch(*args):
        raise EquivalenceError("onnxruntime differs from PyTorch", 1.0, 1e-4)

    monkeypatch.setattr(bench, "prepare_runners", mismatch)
    a, b, x = _tiny_pair()
    with pytest.raises(EquivalenceError):
        compare_latency(a, b, x, batches=(1,), backends=("ort-cpu",), rounds=1, progress=False)


@pytest.mark.parametrize("backend", ["torch-cpu", "ort-cpu"])
def test_each_runner_computes_its_model(backend, tmp_path, make_tiny_vgg):
    model, x = make_tiny_vgg(), torch.randn(1, 3, 32, 32)
    runners = bench_backends.prepare_runners(backend, {"m": model}, (x,), tmp_path, {}, None)
    batch = torch.randn(3, 3, 32, 32)
    out = runners["m"].bind((batch,))()
    got = out.numpy() if backend == "torch-cpu" else out[0].numpy()
    with torch.no_grad():
        want = model(batch).numpy()
    assert got.shape == (3, 10)
    assert np.abs(got - want).max() <= ONNX_RTOL * np.abs(want).max()
