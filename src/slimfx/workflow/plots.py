"""PNG figures of a slimming run: scaling-factor distribution, channels kept, training curves.

Figures are drawn with matplotlib's object API on an Agg canvas (no global backend is
switched, nothing is shown) and written atomically. Every function returns the path it
wrote; the figure itself is built by a ``_draw_*`` function.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from slimfx.files import atomic_path
from slimfx.report import SlimReport

PRUNED, KEPT, CARRIER, ORIGINAL = "#C44E52", "#4C72B0", "#DD8452", "#DDDDDD"
#: Layer names shown on one axis at most; beyond it every k-th name is shown.
MAX_NAMES = 48
#: Decades of |gamma| below the largest one that the per-layer panel shows.
DECADES = 8


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


def _name_size(names: Sequence[str]) -> tuple[float, float]:
    """Font size of layer names on an axis, and the inches their rotated labels take."""
    size = 8.0 if len(names) <= 24 else 6.5
    longest = max(map(len, names), default=0)
    return size, 0.62 * size / 72 * longest + 0.2


def _name_ticks(ax, names: Sequence[str], size: float) -> None:
    """The layers' qualified names under the x axis (every k-th when there are many)."""
    step = max(1, math.ceil(len(names) / MAX_NAMES))
    ticks = range(0, len(names), step)
    ax.set_xticks(list(ticks), [names[i] for i in ticks], rotation=90, fontsize=size)
    ax.set_xlim(-0.6, len(names) - 0.4)


def plot_gamma_distribution(
    gammas: Mapping[str, np.ndarray],
    threshold: float | None,
    path: str | os.PathLike,
    *,
    title: str = "BatchNorm scaling factors |gamma|",
) -> Path:
    """Histogram of all ``|gamma|`` and their spread per layer, with the threshold marked.

    The per-layer panel has a log axis; zeros (and values more than :data:`DECADES`
    decades below the largest) are drawn on a dotted line at its bottom, labelled.

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
    return _save(_draw_gammas(gammas, threshold, title), path)


def _floor(values: np.ndarray) -> tuple[float, float]:
    """The per-layer panel's bottom (where zeros are drawn) and top, both > 0."""
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    positive = finite[finite > 0]
    low = max(float(positive.min()), top * 10.0**-DECADES) if positive.size else top * 1e-3
    return 10.0 ** (math.floor(math.log10(low)) - 0.5), top


def _draw_gammas(gammas: Mapping[str, np.ndarray], threshold: float | None, title: str):
    values = {name: np.abs(np.asarray(v, dtype=np.float64)).ravel() for name, v in gammas.items()}
    everything = np.concatenate(list(values.values())) if values else np.zeros(0)
    names = list(values)
    size, label_inches = _name_size(names)
    fig = _figure(11, 4.2 + label_inches)
    overall, per_layer = fig.subplots(1, 2, width_ratios=(1, 1.3))
    floor, top = _floor(everything)
    if everything.size:
        overall.hist(everything[np.isfinite(everything)], bins=60, range=(0, top), color=KEPT)
        overall.set_yscale("log")
    overall.set_xlabel("|gamma|")
    overall.set_ylabel("channels (log scale)")
    overall.set_title(f"{title}: all {everything.size} channels")
    rng = np.random.default_rng(0)
    for i, v in enumerate(values.values()):
        jitter = rng.uniform(-0.3, 0.3, size=v.size)
        pruned = v <= threshold if threshold is not None else np.zeros(v.size, dtype=bool)
        shown = np.clip(v, floor, None)
        for mask, color in ((~pruned, KEPT), (pruned, PRUNED)):
            per_layer.scatter(i + jitter[mask], shown[mask], s=4, color=color, alpha=0.6)
    per_layer.set_yscale("log")
    if threshold is not None and np.isfinite(threshold):
        top = max(top, threshold)
    per_layer.set_ylim(floor / 10**0.35, top * 10**0.35)
    if (everything < floor).any():  # zeros: a dotted line at the bottom, labelled like a tick
        label = "0" if everything[everything < floor].max() == 0 else "≈0"
        per_layer.axhline(floor, color="#888888", linestyle=":", linewidth=0.8)
        per_layer.annotate(
            label,
            (0, floor),
            xycoords=("axes fraction", "data"),
            xytext=(-5, 0),
            textcoords="offset points",
            ha="right",
            va="center",
            color="#555555",
        )
    _name_ticks(per_layer, names, size)
    per_layer.set_ylabel("|gamma| (log scale)")
    per_layer.set_title("per layer (red: pruned)" if threshold is not None else "per layer")
    if threshold is not None and np.isfinite(threshold):
        style = {"color": PRUNED, "linestyle": "--"}
        label = f"threshold {threshold:.3g}"
        overall.axvline(threshold, label=label, **style)
        per_layer.axhline(max(threshold, floor), label=label, **style)
        overall.legend(loc="upper right")
        per_layer.legend(loc="lower right", fontsize=8)
    return fig


def plot_channels_kept(report: SlimReport, path: str | os.PathLike) -> Path:
    """Bar chart of channels per BatchNorm layer: original, kept, and a carrier if any.

    A carrier is one channel, a sliver next to hundreds; it is drawn as a hatched segment
    with a thick orange edge, so that it shows at any scale.
    """
    return _save(_draw_channels(report), path)


def _draw_channels(report: SlimReport):
    rows = report.layers
    names = [r.name for r in rows]
    size, label_inches = _name_size(names)
    width = min(max(6.0, (0.55 if len(rows) <= 24 else 0.2) * len(rows) + 2.5), 40.0)
    fig = _figure(width, 3.6 + label_inches)
    ax = fig.subplots()
    x = np.arange(len(rows))
    ax.bar(x, [r.total for r in rows], color=ORIGINAL, label="original")
    ax.bar(x, [r.remaining for r in rows], color=KEPT, label="kept")
    carried = [i for i, r in enumerate(rows) if r.width > r.remaining]
    if carried:  # only those bars: an empty bar would still draw its edge
        ax.bar(
            x[carried],
            [rows[i].width - rows[i].remaining for i in carried],
            bottom=[rows[i].remaining for i in carried],
            color=CARRIER,
            edgecolor=CARRIER,
            linewidth=2.5,
            hatch="////",
            label="carrier (+1 channel)",
        )
    if len(rows) <= MAX_NAMES:
        for xi, r in zip(x, rows, strict=True):
            extra = "+1" if r.width > r.remaining else ""
            text = f"{r.remaining}{extra}"
            ax.text(xi, r.width, text, ha="center", va="bottom", fontsize=min(size, 7.5))
    _name_ticks(ax, names, size)
    ax.set_ylabel("channels")
    ax.set_ylim(0, 1.12 * max([r.total for r in rows], default=1))
    ax.set_title(f"Channels kept per layer ({report.ratio * 100:.1f}% of channels pruned)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_training_curves(
    curves: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    sparse: Sequence[float | None] | None = None,
    finetune: Collection[str] | None = None,
) -> Path:
    """Test accuracy per epoch of one or more runs, and the share of near-zero gammas.

    Fine-tuning runs continue the x axis after the longest other run (the sparsity run
    they were pruned from), past a dotted line marking the pruning.

    Parameters
    ----------
    curves : mapping
        Run name → test accuracy (fraction) after each epoch.
    sparse : sequence, optional
        Fraction of gammas below 0.01 after each epoch of the sparsity run.
    finetune : collection of str, optional
        The runs of ``curves`` that fine-tune a pruned model; by default those whose
        name starts with ``finetune`` or ``fine-tun``.
    """
    return _save(_draw_training(curves, sparse, finetune), path)


def _draw_training(curves, sparse, finetune):
    if finetune is None:
        finetune = {n for n in curves if n.lower().startswith(("finetune", "fine-tun"))}
    before = {n: v for n, v in curves.items() if n not in finetune}
    after = {n: v for n, v in curves.items() if n in finetune}
    offset = max(map(len, before.values()), default=0) if after else 0
    fig = _figure(10 if sparse else 6, 4.0)
    axes = fig.subplots(1, 2 if sparse else 1)
    acc_ax = axes[0] if sparse else axes
    for name, values in curves.items():
        start = offset + 1 if name in after else 1
        xs = range(start, start + len(values))
        acc_ax.plot(xs, [100 * v for v in values], marker="o", label=name)
    if after and offset:
        acc_ax.axvline(offset + 0.5, color="#888888", linestyle=":", linewidth=1)
        acc_ax.annotate(
            "pruned, then fine-tuned",
            (offset + 0.5, 0),
            xycoords=("data", "axes fraction"),
            xytext=(-3, 4),
            textcoords="offset points",
            rotation=90,
            ha="right",
            va="bottom",
            fontsize=8,
            color="#555555",
        )
    acc_ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.set_xlabel("epoch (fine-tuning continues after the sparsity run)" if after else "epoch")
    acc_ax.set_ylabel("test accuracy (%)")
    acc_ax.set_title("Test accuracy")
    acc_ax.legend()
    if sparse:
        ys = [100 * (v or 0.0) for v in sparse]
        axes[1].plot(range(1, len(ys) + 1), ys, marker="o", color=PRUNED)
        axes[1].xaxis.get_major_locator().set_params(integer=True)
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("gammas below 0.01 (%)")
        axes[1].set_title("Sparsity")
    return fig
