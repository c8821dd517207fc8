"""The slimming report: what was pruned, what it saves, how it was checked."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class LayerRow:
    """One BatchNorm layer, as in the reference code's per-layer table.

    Attributes
    ----------
    index : int
        Position in ``model.modules()`` (the reference code's "layer index").
    name : str
        Qualified module name.
    total : int
        Channels before.
    remaining : int
        Original channels kept.
    width : int
        Channels in the slim model (``remaining`` plus a carrier channel, if any).
    mode : str
        ``"compensate"``, ``"zero"`` or ``"frozen"``/``"kept"`` for layers not pruned.
    group : str
        The channel group(s) the BatchNorm's channels belong to (named by their first
        layer; BatchNorms after a residual add share one).
    """

    index: int
    name: str
    total: int
    remaining: int
    width: int
    mode: str
    group: str = ""


def latency_summary(latency: dict) -> str:
    """One line: the latency target, and predicted against measured latency."""
    target = latency["target"]
    threads = f", {target['threads']} threads" if target.get("threads") else ""
    asked = (
        f"asked {latency['speedup']:.2f}x"
        if latency.get("speedup")
        else f"asked {latency['budget_ms']:.2f} ms"
    )
    error = latency["predicted_ms"] / latency["measured_ms"] - 1
    return (
        f"Latency on {target['backend']} (batch {target['batch']}{threads}): original "
        f"{latency['original_ms']:.2f} ms -> predicted {latency['predicted_ms']:.2f} ms, "
        f"measured {latency['measured_ms']:.2f} ms ({latency['measured_speedup']:.2f}x "
        f"faster, {asked}; prediction {error:+.1%}), |gamma| mass kept "
        f"{latency['kept_mass'] / max(latency['total_mass'], 1e-300):.1%}"
    )


@dataclass
class SlimReport:
    """Numbers and notes of one slimming run (see :func:`slimfx.slim`)."""

    percent: float | None
    threshold: float
    total_channels: int
    pruned_channels: int
    carriers: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    layers: list[LayerRow] = field(default_factory=list)
    cfg: list | None = None
    verification_error: float | None = None
    weights_error: float | None = None
    frozen: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    latency: dict | None = None

    @property
    def ratio(self) -> float:
        """Fraction of prunable channels pruned."""
        return self.pruned_channels / self.total_channels if self.total_channels else 0.0

    def table(self) -> str:
        """The per-layer table: each BatchNorm by name, the group it governs, its channels
        before and after (the reference code's columns, with names instead of indices)."""
        if not self.layers:
            return ""
        name_width = max(len("BatchNorm"), *(len(r.name) for r in self.layers))
        group_width = max(len("group"), *(len(r.group) for r in self.layers))
        lines = [
            f"{'BatchNorm':<{name_width}}  {'group':<{group_width}}  total channel  "
            "remaining channel  mode"
        ]
        for row in self.layers:
            extra = " +1 carrier" if row.width > row.remaining else ""
            lines.append(
                f"{row.name:<{name_width}}  {row.group:<{group_width}}  {row.total:>13d}  "
                f"{f'{row.remaining:d}{extra}':>17}  {row.mode}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        def ratio(a: int, b: int) -> str:
            return f"{a / b:.2f}x" if b else "-"

        threshold = "-" if math.isnan(self.threshold) else f"{self.threshold:.4g}"
        requested = (
            f"requested {self.percent * 100:.2f}%"
            if self.percent is not None
            else "to a latency target"
        )
        lines = [
            self.table(),
            f"Pruned ratio: {self.ratio * 100:.2f}% ({self.pruned_channels} of "
            f"{self.total_channels} channels, {requested}), "
            f"threshold |gamma| <= {threshold}, carrier channels: {self.carriers}",
            f"Parameters: {self.params_before:,} -> {self.params_after:,} "
            f"({ratio(self.params_before, self.params_after)} fewer)",
            f"MACs: {self.macs_before:,} -> {self.macs_after:,} "
            f"({ratio(self.macs_before, self.macs_after)} fewer)",
        ]
        if self.cfg is not None:
            lines.append(f"cfg: {self.cfg}")
        if self.verification_error is not None:
            lines.append(
                f"Verified: relative error {self.verification_error:.2e} in float64"
                + (
                    f", {self.weights_error:.2e} with the stored weights"
                    if self.weights_error is not None
                    else ""
                )
            )
        if self.latency is not None:
            lines.append(latency_summary(self.latency))
        lines += [f"frozen: {f}" for f in self.frozen]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def latency_table(self) -> str:
        """Per layer: widths, predicted latency at full and slim width (latency plans)."""
        if self.latency is None:
            return ""
        lines = [f"{'layer':<28} {'widths':>15} {'original ms':>12} {'predicted ms':>13}"]
        for node, row in self.latency["layers"].items():
            widths = "{}->{} of {}->{}".format(*row["widths"], *row["full_widths"])
            lines.append(
                f"{row['module'] or node:<28} {widths:>15} {row['original_ms']:>12.3f} "
                f"{row['predicted_ms']:>13.3f}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ratio"] = self.ratio
        if math.isnan(self.threshold):
            data["threshold"] = None
        return data
