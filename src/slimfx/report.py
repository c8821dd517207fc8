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
    """

    index: int
    name: str
    total: int
    remaining: int
    width: int
    mode: str


@dataclass
class SlimReport:
    """Numbers and notes of one slimming run (see :func:`slimfx.slim`)."""

    percent: float
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

    @property
    def ratio(self) -> float:
        """Fraction of prunable channels pruned."""
        return self.pruned_channels / self.total_channels if self.total_channels else 0.0

    def table(self) -> str:
        """The reference code's per-layer table."""
        lines = []
        for row in self.layers:
            extra = " (+1 carrier)" if row.width > row.remaining else ""
            lines.append(
                f"layer index: {row.index:d} \t total channel: {row.total:d} \t "
                f"remaining channel: {row.remaining:d}{extra}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        def ratio(a: int, b: int) -> str:
            return f"{a / b:.2f}x" if b else "-"

        threshold = "-" if math.isnan(self.threshold) else f"{self.threshold:.4g}"
        lines = [
            self.table(),
            f"Pruned ratio: {self.ratio * 100:.2f}% ({self.pruned_channels} of "
            f"{self.total_channels} channels, requested {self.percent * 100:.2f}%), "
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
        lines += [f"frozen: {f}" for f in self.frozen]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ratio"] = self.ratio
        if math.isnan(self.threshold):
            data["threshold"] = None
        return data
