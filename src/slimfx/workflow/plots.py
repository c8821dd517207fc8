"""PNG figures of a slimming run: scaling-factor distribution, channels kept, training curves.

Figures are drawn with matplotlib's object API on an Agg canvas (no global backend is
switched, nothing is shown) and written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from slimfx.files import atomic_path
from slimfx.report import SlimReport


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _short(name: str) -> str:
    return name.replace("feature.", "f.").replace("features.", "f.")


def plot_gamma_distribution(
    gammas: Mapping[str, np.ndarray],
    threshold: float | None,
    path: str | os.PathLike,
    *,
    title: str = "BatchNorm scaling factors |gamma|",
) -> Path:
    """Histogram of all ``|gamma|`` and their spread per layer, with the threshold marked.

    Parameters
    ----------
    gammas : mapping
        BatchNorm name → its ``|gamma|`` (in layer order).
    threshold : float or None
        The pruning threshold (channels at or below it are pruned); not drawn when ``None``.
    path : path
        Destination PNG.

    Returns
    -------
    pathlib.Path
    """
    values = {name: np.abs(np.asarray(v, dtype=np.float64)).ravel() for name, v in gammas.items()}
    everything = np.concatenate(list(values.values())) if values else np.zeros(0)
    fig = _figure(11, 4.2)
    overall, per_layer = fig.subplots(1, 2, width_ratios=(1, 1.3))
    if everything.size:
        overall.hist(everything, bins=60, color="#4C72B0")
        overall.set_yscale("log")
    overall.set_xlabel("|gamma|")
    overall.set_ylabel("channels (log scale)")
    overall.set_title(f"{title}: all {everything.size} channels")
    rng = np.random.default_rng(0)
    for i, v in enumerate(values.values()):
        jitter = rng.uniform(-0.3, 0.3, size=v.size)
        pruned = v <= threshold if threshold is not None else np.zeros(v.size, dtype=bool)
        per_layer.scatter(i + jitter[~pruned], v[~pruned], s=4, color="#4C72B0", alpha=0.6)
        per_layer.scatter(i + jitter[pruned], v[pruned], s=4, color="#C44E52", alpha=0.6)
    per_layer.set_xticks(range(len(values)), [_short(n) for n in values], rotation=45)
    per_layer.set_yscale("symlog", linthresh=1e-3)
    per_layer.set_ylabel("|gamma| (linear below 1e-3)")
    per_layer.set_title("per layer (red: pruned)")
    if threshold is not None and np.isfinite(threshold):
        style = {"color": "#C44E52", "linestyle": "--"}
        overall.axvline(threshold, label=f"threshold {threshold:.3g}", **style)
        per_layer.axhline(threshold, **style)
        overall.legend(loc="upper right")
    return _save(fig, path)


def plot_channels_kept(report: SlimReport, path: str | os.PathLike) -> Path:
    """Bar chart of channels per BatchNorm layer: original, kept, and a carrier if any."""
    rows = report.layers
    fig = _figure(max(6.0, 0.7 * len(rows) + 2), 4.0)
    ax = fig.subplots()
    x = np.arange(len(rows))
    ax.bar(x, [r.total for r in rows], color="#DDDDDD", label="original")
    ax.bar(x, [r.remaining for r in rows], color="#4C72B0", label="kept")
    carriers = [r.width - r.remaining for r in rows]
    if any(carriers):
        ax.bar(x, carriers, bottom=[r.remaining for r in rows], color="#DD8452", label="carrier")
    for xi, r in zip(x, rows, strict=True):
        ax.text(xi, r.width, str(r.width), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [_short(r.name) for r in rows], rotation=45)
    ax.set_ylabel("channels")
    ax.set_ylim(0, 1.12 * max([r.total for r in rows], default=1))
    ax.set_title(f"Channels kept per layer ({report.ratio * 100:.1f}% of channels pruned)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plot_training_curves(
    curves: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    sparse: Sequence[float | None] | None = None,
) -> Path:
    """Test accuracy per epoch of one or more runs, and the share of near-zero gammas.

    Parameters
    ----------
    curves : mapping
        Run name → test accuracy (fraction) after each epoch.
    sparse : sequence, optional
        Fraction of gammas below 0.01 after each epoch of the sparsity run.
    """
    fig = _figure(10 if sparse else 6, 4.0)
    axes = fig.subplots(1, 2 if sparse else 1)
    acc_ax = axes[0] if sparse else axes
    for name, values in curves.items():
        acc_ax.plot(range(1, len(values) + 1), [100 * v for v in values], marker="o", label=name)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("test accuracy (%)")
    acc_ax.set_title("Test accuracy")
    acc_ax.legend()
    if sparse:
        ys = [100 * (v or 0.0) for v in sparse]
        axes[1].plot(range(1, len(ys) + 1), ys, marker="o", color="#C44E52")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("gammas below 0.01 (%)")
        axes[1].set_title("Sparsity")
    return _save(fig, path)
