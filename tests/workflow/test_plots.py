"""The PNG figures: written whole (atomically), with or without a threshold."""

from __future__ import annotations

import numpy as np
import torch

import slimfx
from slimfx.models import VGG
from slimfx.workflow.plots import plot_channels_kept, plot_gamma_distribution, plot_training_curves

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_are_pngs_and_leave_no_temporary_files(tmp_path, wf):
    model = wf.sparse_trained_like(VGG(dataset="digits", cfg=wf.TINY_CFG))
    res = slimfx.slim(model, torch.randn(2, 3, 32, 32), 0.5)
    gammas = {name: model.get_submodule(name).weight.detach().numpy() for name in res.kept}
    paths = [
        plot_gamma_distribution(gammas, res.report.threshold, tmp_path / "gammas.png"),
        plot_gamma_distribution(gammas, None, tmp_path / "no-threshold.png"),
        plot_channels_kept(res.report, tmp_path / "channels.png"),
        plot_training_curves(
            {"a": [0.1, 0.5, 0.9]}, tmp_path / "curves.png", sparse=[0.0, 0.3, None]
        ),
        plot_training_curves({"a": [0.2]}, tmp_path / "one.png"),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    assert np.isfinite(res.report.threshold)
