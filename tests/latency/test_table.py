"""Latency tables: the grid, interpolation, the cache, and the calibrated rest."""

import json
import logging

import numpy as np
import pytest
import torch

from slimfx.ir.layout import KeepTable
from slimfx.latency import table as table_module
from slimfx.latency.layers import timed_layers
from slimfx.latency.table import LayerTable, ProbeCache, Target, grid, measure_table
from slimfx.models import VGG
from slimfx.passes.analyze import analyze
from slimfx.passes.trace import trace

CFG = [8, "M", 16, 16, "M", 16, "M", 16]


def fake_latency(shape, backend, batch, threads, workdir=None):
    """MACs-proportional stand-in for a probe: 1 ms per million MACs of the batch."""
    return shape.macs() * batch / 1e6


@pytest.fixture
def vgg_graph():
    x = torch.randn(2, 3, 16, 16)
    return analyze(trace(VGG(cfg=CFG).eval(), x)), x


def test_the_grid_holds_multiples_of_the_step_and_the_full_width():
    assert grid(64, 8) == [8, 16, 32, 48, 64]
    assert grid(100, 16) == [16, 32, 64, 80, 96, 100]
    assert grid(5, 8) == [5]


def test_bilinear_tables_are_exact_on_bilinear_costs():
    widths = [8, 16, 32, 64]

    def cost(i, o):
        return 0.5 + 0.01 * i + 0.02 * o + 0.003 * i * o

    table = LayerTable("n", widths, widths, [[cost(i, o) for o in widths] for i in widths])
    for cin, cout in [(8, 8), (20, 40), (64, 12), (4, 4), (80, 70)]:
        assert table.predict(cin, cout) == pytest.approx(cost(cin, cout), rel=1e-12)
    depthwise = LayerTable("d", widths, widths, [[float(w) for w in widths]], diagonal=True)
    assert depthwise.predict(24, 24) == pytest.approx(24.0)


def test_points_are_measured_once_and_cached_per_target(vgg_graph, tmp_path, monkeypatch, caplog):
    cg, x = vgg_graph
    calls = []

    def probe(shape, *args, **kw):
        calls.append(shape.key())
        return fake_latency(shape, *args, **kw)

    monkeypatch.setattr(table_module, "time_probe", probe)
    target = Target("torch-cpu", batch=4, threads=1)
    first = measure_table(cg, x, target, step=8, cache_dir=tmp_path, progress=False, model_ms=9.0)
    assert first.probes == len(calls) == len(set(calls))  # equal shapes share their points
    layers = {t.node: t for t in first.layers.values()}
    assert layers["feature_0"].in_widths == [3] and layers["feature_0"].out_widths == [8]
    assert layers["feature_4"].in_widths == [8] and layers["feature_4"].out_widths == [8, 16]
    again = measure_table(cg, x, target, step=8, cache_dir=tmp_path, progress=False, model_ms=9.0)
    assert again.probes == 0 and len(calls) == first.probes
    assert again.layers == first.layers
    other = Target("torch-cpu", batch=8, threads=1)  # another target: its own points
    measure_table(cg, x, other, step=8, cache_dir=tmp_path, progress=False, model_ms=9.0)
    assert len(calls) == 2 * first.probes
    assert len(list((tmp_path / "latency").glob("*.json"))) == 2
    # an unreadable cache file is reported and replaced, never trusted
    path = ProbeCache(target.context(), tmp_path).path
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        measure_table(cg, x, target, step=8, cache_dir=tmp_path, progress=False, model_ms=9.0)
    assert "unreadable latency cache" in caplog.text
    assert json.loads(path.read_text())["context"] == target.context()


def test_the_rest_is_fitted_to_whole_model_measurements(vgg_graph, tmp_path, monkeypatch):
    cg, x = vgg_graph
    monkeypatch.setattr(table_module, "time_probe", fake_latency)
    target = Target("torch-cpu", batch=4, threads=1)
    layers = timed_layers(cg)
    probe_full = sum(fake_latency(t.shape, "torch-cpu", 4, 1) for t in layers)
    table = measure_table(
        cg, x, target, step=8, cache_dir=tmp_path, progress=False, model_ms=probe_full + 3.0
    )
    assert table.rest_fixed_ms == pytest.approx(3.0, rel=1e-9)  # one point: a fixed rest
    # a model whose rest is 1 ms plus 1e-4 ms per activation value: two points recover it
    full = KeepTable({})
    half = KeepTable({g.id: np.arange(g.size) < g.size // 2 for g in cg.groups if g.prunable})

    def measured(keep):
        point = table.point(layers, keep, 0.0)
        return point["layers_ms"] + 1.0 + 1e-4 * point["activations"]

    base = table.point(layers, full, 0.0)
    table = table.__class__(**{**table.__dict__, "model_ms": measured(full)})
    fitted = table.calibrated([table.point(layers, half, measured(half))])
    assert fitted.rest_fixed_ms == pytest.approx(1.0, rel=1e-9)
    assert fitted.rest_per_activation == pytest.approx(1e-4, rel=1e-9)
    assert fitted.predict(layers, half) == pytest.approx(measured(half), rel=1e-9)
    assert fitted.predict(layers, full) == pytest.approx(measured(full), rel=1e-9)
    assert base["activations"] > table.point(layers, half, 0.0)["activations"]


def test_targets_are_checked():
    with pytest.raises(ValueError, match="unknown backend"):
        Target("tpu")
    with pytest.raises(ValueError, match="batch"):
        Target("ort-cpu", batch=0)
    with pytest.raises(ValueError, match="threads"):
        Target("ort-cpu", threads=0)
