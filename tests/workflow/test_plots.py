"""The PNG figures: written whole (atomically), with or without a threshold, and readable:
axes that fit the data, the real layer names, the carrier shown, epochs in order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer

import slimfx
from slimfx.models import VGG
from slimfx.workflow import plots
from slimfx.workflow.plots import plot_channels_kept, plot_gamma_distribution, plot_training_curves

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def slimmed(wf):
    model = wf.sparse_trained_like(VGG(dataset="digits", cfg=wf.TINY_CFG))
    res = slimfx.slim(model, torch.randn(2, 3, 32, 32), 0.5)
    gammas = {name: model.get_submodule(name).weight.detach().numpy() for name in res.kept}
    return res, gammas


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting functions save, in order (they are still written)."""
    drawn = []
    save = plots._save

    def keep(fig, path):
        drawn.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return drawn


def test_plots_are_pngs_and_leave_no_temporary_files(tmp_path, slimmed):
    res, gammas = slimmed
    paths = [
        plot_gamma_distribution(gammas, res.report.threshold, tmp_path / "gammas.png"),
        plot_gamma_distribution(gammas, None, tmp_path / "no-threshold.png"),
        plot_channels_kept(res.report, tmp_path / "channels.png"),
        plot_training_curves(
            {"a": [0.1, 0.5, 0.9]}, tmp_path / "curves.png", sparse=[0.0, 0.3, None]
        ),
        plot_training_curves({"a": [0.2]}, tmp_path / "one.png"),
        plot_gamma_distribution({}, None, tmp_path / "empty.png"),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    assert np.isfinite(res.report.threshold)


def test_gamma_axis_fits_nonnegative_values_with_zeros_labelled(tmp_path, slimmed, figures):
    res, gammas = slimmed
    gammas = {k: v.copy() for k, v in gammas.items()}
    first = next(iter(gammas))
    gammas[first][:2] = 0.0  # a masked model's gammas are exactly zero
    threshold = res.report.threshold
    plot_gamma_distribution(gammas, threshold, tmp_path / "g.png")
    overall, per_layer = figures[-1].axes
    values = np.abs(np.concatenate(list(gammas.values())))
    bottom, top = per_layer.get_ylim()
    assert per_layer.get_yscale() == "log" and 0 < bottom < values[values > 0].min()
    assert top > values.max()  # the largest gamma is not clipped
    points = np.concatenate([c.get_offsets()[:, 1] for c in per_layer.collections])
    assert len(points) == values.size and bottom < points.min() and points.max() < top
    assert [t.get_text() for t in per_layer.texts] == ["0"]
    assert any(line.get_ydata()[0] == threshold for line in per_layer.get_lines())
    assert [t.get_text() for t in per_layer.get_xticklabels()] == list(gammas)  # real names
    assert overall.get_xlim()[0] >= -0.05 * values.max()


def test_channels_show_the_carrier_and_the_batchnorm_names(tmp_path, slimmed, figures):
    res, _ = slimmed
    rows = res.report.layers
    carried = [r for r in rows if r.width > r.remaining]
    assert carried and len(carried) < len(rows)  # compensation adds carriers, not everywhere
    plot_channels_kept(res.report, tmp_path / "c.png")
    (ax,) = figures[-1].axes
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}
    carrier = next(c for label, c in bars.items() if label.startswith("carrier"))
    assert len(carrier.patches) == len(carried)  # no empty bars drawing stray edges
    for patch, row in zip(carrier.patches, carried, strict=True):
        assert patch.get_y() == row.remaining and patch.get_height() == 1
        assert patch.get_linewidth() >= 2 and patch.get_hatch()  # visible at any scale
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert carrier.get_label() in legend and "kept" in legend
    assert [t.get_text() for t in ax.get_xticklabels()] == [r.name for r in rows]


def test_fine_tuning_epochs_follow_the_sparsity_run(tmp_path, figures):
    curves = {
        "sparsity": [0.5, 0.7, 0.8],
        "finetune-compensate": [0.9, 0.95],
        "finetune-no-compensate": [0.6, 0.9],
    }
    plot_training_curves(curves, tmp_path / "t.png", sparse=[0.1, 0.2, 0.3])
    acc = figures[-1].axes[0]
    xs = {line.get_label(): list(line.get_xdata()) for line in acc.get_lines()}
    assert xs["sparsity"] == [1, 2, 3]
    assert xs["finetune-compensate"] == xs["finetune-no-compensate"] == [4, 5]
    separators = [x for label, x in xs.items() if label not in curves]
    assert separators == [[3.5, 3.5]]
    plot_training_curves({"a": [0.1, 0.2], "b": [0.3]}, tmp_path / "u.png", finetune=["b"])
    xs = {line.get_label(): list(line.get_xdata()) for line in figures[-1].axes[0].get_lines()}
    assert xs["a"] == [1, 2] and xs["b"] == [3]
    plot_training_curves({"a": [0.1, 0.2], "b": [0.3]}, tmp_path / "v.png")  # two runs: no split
    lines = figures[-1].axes[0].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[1, 2], [1]]
