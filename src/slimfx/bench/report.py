"""A latency benchmark's results as one value, and its Markdown, JSON, table and plot.

:class:`LatencyReport` holds what :func:`slimfx.bench.latency.measure_latency` measured; the
values it collects (:class:`TimingStats`, :class:`Measurement`, :class:`ModelInfo`,
:class:`LatencyRow`) are defined in :mod:`slimfx.bench.stats` and importable from here too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimfx.bench.stats import LatencyRow, Measurement, ModelInfo, TimingStats
from slimfx.files import OutputSet, atomic_path

__all__ = ["LatencyReport", "LatencyRow", "Measurement", "ModelInfo", "TimingStats"]


@dataclass
class LatencyReport:
    """Everything one latency run measured (see :func:`slimfx.bench.latency.measure_latency`).

    Attributes
    ----------
    rows : list of LatencyRow
        Every candidate against the baseline, per backend and batch size.
    measurements : list of Measurement
        Raw statistics of every model, backend and batch size.
    models : dict
        Name → :class:`ModelInfo`.
    baseline : str
        The model the others are compared with (``"original"``).
    machine, settings : dict
        Where and how it was measured.
    skipped : dict
        Backend → why it was not measured.
    warnings : list of str
        Noise warnings.
    """

    rows: list[LatencyRow]
    measurements: list[Measurement]
    models: dict[str, ModelInfo]
    baseline: str
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def row(self, backend: str, batch: int, model: str = "slim") -> LatencyRow:
        """The row of ``model`` on ``backend`` at ``batch`` (``KeyError`` if not measured)."""
        for row in self.rows:
            if (row.backend, row.batch, row.model) == (backend, batch, model):
                return row
        raise KeyError(f"no row for {model} on {backend} at batch {batch}")

    def stats(self, backend: str, batch: int, model: str) -> TimingStats:
        for item in self.measurements:
            if (item.backend, item.batch, item.model) == (backend, batch, model):
                return item.stats
        raise KeyError(f"no measurement of {model} on {backend} at batch {batch}")

    @property
    def backends(self) -> list[str]:
        return list(dict.fromkeys(m.backend for m in self.measurements))

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))

    def to_json(self) -> str:
        """The report as JSON (NaN and infinities become ``null``)."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> LatencyReport:
        data = json.loads(text)
        return cls(
            rows=[LatencyRow(**row) for row in data["rows"]],
            measurements=[
                Measurement(**{**m, "stats": TimingStats(**m["stats"])})
                for m in data["measurements"]
            ],
            models={k: ModelInfo(**v) for k, v in data["models"].items()},
            baseline=data["baseline"],
            machine=data["machine"],
            settings=data["settings"],
            skipped=data["skipped"],
            warnings=data["warnings"],
        )

    def with_prediction(self, model: str, latency: dict) -> LatencyReport:
        """This report with ``model``'s predicted latency from its plan's latency record
        (``SlimPlan.latency``) in the rows of the backend and batch size it was planned for."""
        target = latency["target"]
        rows = [
            dataclasses.replace(r, predicted_ms=float(latency["predicted_ms"]))
            if (r.model, r.backend, r.batch) == (model, target["backend"], target["batch"])
            else r
            for r in self.rows
        ]
        return dataclasses.replace(self, rows=rows)

    def _predicted(self, row: LatencyRow) -> str:
        if row.predicted_ms is None:
            return "-"
        return f"{row.predicted_ms:.2f} ({row.predicted_ms / row.slim_median_ms - 1:+.0%})"

    def header(self) -> str:
        """One line naming the machine, the software and the settings."""
        m, s = self.machine, self.settings
        parts = [f"{m.get('host', '?')}: {m.get('cpu', '?')} ({m.get('cpu_count', '?')} CPUs)"]
        if m.get("gpu"):
            parts.append(f"GPU {m['gpu']}")
        parts.append(f"torch {m.get('torch', '?')}")
        if m.get("onnxruntime"):
            parts.append(f"onnxruntime {m['onnxruntime']}")
        parts.append(f"threads {m.get('threads') or 'default'}")
        parts.append(f"{s.get('rounds', '?')} rounds after {s.get('warmup', '?')} warm-up calls")
        return ", ".join(parts)

    def model_lines(self) -> list[str]:
        base = self.models.get(self.baseline)
        lines = ["| model | params | MACs / sample | MACs ratio |", "|---|---:|---:|---:|"]
        for info in self.models.values():
            ratio = _ratio(base.macs if base else None, info.macs)
            lines.append(
                f"| {info.name} | {info.params / 1e6:.2f} M | {_macs(info.macs)} | "
                f"{'-' if ratio is None else f'{ratio:.2f}×'} |"
            )
        return lines

    def to_markdown(self, title: str | None = None) -> str:
        """A Markdown section: machine, model sizes, the comparison table, notes."""
        lines = [f"### {title or 'Latency: ' + self.baseline + ' vs ' + self._candidates()}", ""]
        lines += [self.header() + ".", "", *self.model_lines(), ""]
        predicted = any(r.predicted_ms is not None for r in self.rows)
        lines += [
            f"| backend | batch | model | {self.baseline} ms median (p90) | min–max | "
            "model ms median (p90) | min–max | "
            + ("predicted ms (error) | " if predicted else "")
            + "speedup (min–max) | efficiency |",
            "|---|---:|---|---:|---:|---:|---:|" + ("---:|" if predicted else "") + "---:|---:|",
        ]
        for r in self.rows:
            note = " ⚠ noisy" if r.noisy else ""
            lines.append(
                f"| {r.backend} | {r.batch} | {r.model} | {r.original_median_ms:.2f} "
                f"({r.original_p90_ms:.2f}) | {r.original_min_ms:.2f}–{r.original_max_ms:.2f} | "
                f"{r.slim_median_ms:.2f} ({r.slim_p90_ms:.2f}) | "
                f"{r.slim_min_ms:.2f}–{r.slim_max_ms:.2f} | "
                + (f"{self._predicted(r)} | " if predicted else "")
                + f"{r.speedup:.2f}× ({r.speedup_min:.2f}–{r.speedup_max:.2f}){note} | "
                f"{_num(r.efficiency)} |"
            )
        lines.append("")
        lines.append(
            "speedup: median of per-round ratios (rounds alternate the models); efficiency = "
            "speedup ÷ MACs ratio; ⚠ noisy: the latency spread (max − min) exceeds the effect."
            + (
                " predicted: the latency plan's prediction (error against the measured median)."
                if predicted
                else ""
            )
        )
        if self.skipped:
            lines += [
                "",
                "Not measured: " + "; ".join(f"{k} ({v})" for k, v in self.skipped.items()),
            ]
        if self.warnings:
            lines += ["", "Warnings:", *[f"- {w}" for w in self.warnings]]
        return "\n".join(lines) + "\n"

    def table(self) -> str:
        """A plain-text table for a terminal (medians in ms, the candidate's min–max)."""
        width = max([len("model"), *(len(r.model) for r in self.rows)]) + 2
        base = f"{self.baseline} median"
        predicted = any(r.predicted_ms is not None for r in self.rows)
        head = (
            f"{'backend':<11}{'batch':>6}  {'model':<{width}}{base:>17}{'model median':>14}"
            f"{'p90':>10}{'min–max':>19}"
            + (f"{'predicted':>18}" if predicted else "")
            + f"{'speedup':>9}{'eff.':>7}"
        )
        lines = [self.header(), head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.backend:<11}{r.batch:>6}  {r.model:<{width}}{r.original_median_ms:>14.2f} ms"
                f"{r.slim_median_ms:>11.2f} ms{r.slim_p90_ms:>10.2f}"
                f"{f'{r.slim_min_ms:.2f}–{r.slim_max_ms:.2f}':>19}"
                + (f"{self._predicted(r):>18}" if predicted else "")
                + f"{r.speedup:>8.2f}×{_num(r.efficiency):>7}{'  noisy' if r.noisy else ''}"
            )
        for name, reason in self.skipped.items():
            lines.append(f"not measured: {name} ({reason})")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike) -> Path:
        """Latency against batch size, one panel per backend, every model; a PNG (atomic)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker

        backends = self.backends
        if not backends:
            raise ValueError("nothing was measured; no plot to draw")
        fig, axes = plt.subplots(
            1, len(backends), figsize=(4.2 * len(backends), 3.6), squeeze=False
        )
        for ax, backend in zip(axes[0], backends, strict=True):
            for model in self.models:
                points = sorted(
                    (m.batch, m.stats)
                    for m in self.measurements
                    if m.backend == backend and m.model == model
                )
                if not points:
                    continue
                x = [b for b, _ in points]
                y = np.array([s.median_ms for _, s in points])
                low = y - np.array([s.min_ms for _, s in points])
                high = np.array([s.max_ms for _, s in points]) - y
                ax.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, label=model)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            batches = sorted({m.batch for m in self.measurements if m.backend == backend})
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_title(backend)
            ax.set_xlabel("batch size")
            ax.set_ylabel("latency, ms (median, min–max)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(self.header(), fontsize="x-small")
        fig.tight_layout()
        dest = Path(path)
        with atomic_path(dest, suffix=".tmp" + (dest.suffix or ".png")) as tmp:
            fig.savefig(tmp, dpi=110, format=(dest.suffix.lstrip(".") or "png"))
        plt.close(fig)
        return dest

    def save(self, folder: str | os.PathLike, stem: str, *, plot: bool = True) -> list[Path]:
        """Write ``stem.json``, ``stem.md`` and ``stem.png`` into ``folder`` as one set.

        The plot is left out with ``plot=False`` or when nothing was measured; a
        ``stem.png`` of an earlier report is then removed, so the files always describe
        one report. The files appear together only once all were written
        (:class:`slimfx.files.OutputSet`); on failure the earlier ones stay as they were.
        """
        out = Path(folder)
        paths = [out / f"{stem}.json", out / f"{stem}.md"]
        png = out / f"{stem}.png"
        with OutputSet(stale=[png]) as files:
            files.write_text(paths[0], self.to_json())
            files.write_text(paths[1], self.to_markdown())
            if plot and self.measurements:
                self.plot(files.path(png, suffix=".tmp.png"))
                paths.append(png)
        return paths

    def _candidates(self) -> str:
        return ", ".join(name for name in self.models if name != self.baseline)


def _ratio(a: int | None, b: int | None) -> float | None:
    return a / b if a and b else None


def _macs(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f} M"


def _num(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
