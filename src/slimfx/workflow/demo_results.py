"""What ``slimfx demo`` reports: the results table, as Markdown and JSON, and its summary.

:class:`DemoResult` is what :func:`slimfx.workflow.demo.run_demo` returns: one
:class:`DemoRow` per model and stage, the accuracies, the time of each stage and the files
written; :func:`summary_lines` is the text printed around the table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["DemoResult", "DemoRow", "summary_lines"]


@dataclass
class DemoRow:
    """One line of the results table.

    Attributes
    ----------
    step : str
        The stage, e.g. ``"pruned and fine-tuned"``.
    compensation : str
        ``"compensate"``, ``"no-compensate"`` or ``"-"`` (the unpruned model).
    accuracy : float
        Test accuracy in [0, 1].
    params, macs : int
        Parameters and conv+linear MACs per sample.
    latency_ms : dict
        ``"<backend> b<batch>"`` → median latency in milliseconds (empty when not timed).
    speedup : dict
        The same keys → speedup over the unpruned model (median of per-round ratios).
    noisy : dict
        The same keys → True where the latency spread exceeds the difference to the
        unpruned model: the speedup is within noise.
    """

    step: str
    compensation: str
    accuracy: float
    params: int
    macs: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    speedup: dict[str, float] = field(default_factory=dict)
    noisy: dict[str, bool] = field(default_factory=dict)

    def latency_cell(self, key: str) -> str:
        """``"12.34 (1.95x)"``, flagged ``⚠`` when within noise; ``-`` when not timed."""
        if key not in self.latency_ms:
            return "-"
        cell = f"{self.latency_ms[key]:.2f}"
        if key in self.speedup:
            cell += f" ({self.speedup[key]:.2f}×)"
        return cell + (" ⚠" if self.noisy.get(key) else "")


@dataclass
class DemoResult:
    """What :func:`slimfx.workflow.demo.run_demo` measured and wrote.

    Attributes
    ----------
    rows : list of DemoRow
        The results table.
    accuracy : dict
        Stage (``"sparsity-trained"``, ``"pruned (compensate)"`` …) → test accuracy.
    seconds : dict
        Stage → wall time in seconds; ``"total"`` for the whole run.
    files : dict
        Name → path of every file written.
    cfg : dict
        Mode → the pruned model's channel configuration.
    notes : list of str
        Lines to print with the table.
    """

    rows: list[DemoRow]
    accuracy: dict[str, float]
    seconds: dict[str, float]
    files: dict[str, Path]
    cfg: dict[str, list]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """The results table."""
        batches = sorted({k for row in self.rows for k in row.latency_ms}, key=_batch_key)
        head = ["step", "compensation", "test accuracy", "params", "MACs"]
        head += [f"latency {k} (ms, speedup)" for k in batches]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [
                r.step,
                r.compensation,
                f"{100 * r.accuracy:.2f}%",
                f"{r.params:,}",
                f"{r.macs:,}",
            ]
            cells += [r.latency_cell(k) for k in batches]
            lines.append("| " + " | ".join(cells) + " |")
        if any(any(r.noisy.values()) for r in self.rows):
            lines += [
                "",
                "⚠ within noise: the latency spread (max − min over the rounds) exceeds the "
                "difference to the unpruned model (latency.md has the spreads).",
            ]
        return "\n".join(lines)

    def to_json(self) -> str:
        """The result as JSON (paths as strings)."""
        data = {
            "rows": [asdict(r) for r in self.rows],
            "accuracy": self.accuracy,
            "seconds": self.seconds,
            "cfg": self.cfg,
            "files": {k: str(v) for k, v in self.files.items()},
            "notes": self.notes,
        }
        return json.dumps(data, indent=1)


def _batch_key(name: str) -> tuple[str, int]:
    backend, _, batch = name.rpartition(" b")
    return backend, int(batch) if batch.isdigit() else 0


def summary_lines(result: DemoResult) -> list[str]:
    """Short text around the table: timing, sparsity, files.

    Parameters
    ----------
    result : DemoResult

    Returns
    -------
    list of str
        The notes, then one line with the total and each stage's time.
    """
    total = result.seconds.get("total", 0.0)
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items() if k != "total")
    return [*result.notes, f"finished in {total:.0f} s ({parts})"]
