"""Latency statistics as values: one model's timings, a model's size, one comparison row.

:class:`LatencyReport <slimfx.bench.report.LatencyReport>` collects these; they are plain
frozen dataclasses, so a report round-trips through JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LatencyRow", "Measurement", "ModelInfo", "TimingStats"]


@dataclass(frozen=True)
class TimingStats:
    """Latency of one model on one backend at one batch size, over all rounds.

    Attributes
    ----------
    median_ms, p90_ms, min_ms, max_ms : float
        Per-call latency in milliseconds (one value per round: the mean of its calls).
    rounds : int
    calls_per_round : int
    """

    median_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    rounds: int
    calls_per_round: int

    @classmethod
    def from_seconds(cls, seconds, calls_per_round: int = 1) -> TimingStats:
        """Statistics of per-round latencies given in seconds.

        Parameters
        ----------
        seconds : array_like of float
            One per-call latency per round, in seconds.
        calls_per_round : int
            How many calls each round averaged.

        Returns
        -------
        TimingStats

        Raises
        ------
        ValueError
            When ``seconds`` is empty.
        """
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        if ms.size == 0:
            raise ValueError("no timings")
        return cls(
            median_ms=float(np.median(ms)),
            p90_ms=float(np.percentile(ms, 90)),
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            rounds=int(ms.size),
            calls_per_round=int(calls_per_round),
        )

    @property
    def spread_ms(self) -> float:
        """``max - min``: how far the rounds scatter."""
        return self.max_ms - self.min_ms


@dataclass(frozen=True)
class Measurement:
    """One model on one backend at one batch size: statistics and every round's latency.

    Attributes
    ----------
    backend : str
    batch : int
    model : str
        The model's display name.
    stats : TimingStats
    rounds_ms : list of float
        Every round's per-call latency in milliseconds, in the order measured.
    """

    backend: str
    batch: int
    model: str
    stats: TimingStats
    rounds_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ModelInfo:
    """Size of a benchmarked model: parameters and conv+linear MACs per sample.

    Attributes
    ----------
    name : str
    params : int
    macs : int or None
        ``None`` when the model could not be traced.
    """

    name: str
    params: int
    macs: int | None


@dataclass(frozen=True)
class LatencyRow:
    """One comparison: the candidate model ``model`` (``"slim"`` …) against the original.

    ``speedup`` is the median of the per-round ratios original/candidate (rounds alternate
    the models, so a ratio compares neighbours in time); ``speedup_min``/``speedup_max`` are
    their extremes. ``efficiency`` = ``speedup / macs_ratio`` (1.0: latency falls as much as
    MACs). ``noisy`` is true when the latency spread (max - min) of either model exceeds the
    effect (the difference of the medians): the speedup is then not resolved.

    Attributes
    ----------
    backend : str
    batch : int
    model : str
        The candidate's display name.
    original_median_ms, original_p90_ms, original_min_ms, original_max_ms : float
        The baseline's statistics in milliseconds.
    slim_median_ms, slim_p90_ms, slim_min_ms, slim_max_ms : float
        The candidate's statistics in milliseconds.
    speedup, speedup_min, speedup_max : float
    macs_ratio : float or None
        Baseline MACs over candidate MACs (``None`` when either is unknown).
    efficiency : float or None
    noisy : bool
    predicted_ms : float or None
        The candidate's latency as its latency plan predicted it (``SlimPlan.latency``),
        when it was planned for this backend and batch size.
    """

    backend: str
    batch: int
    model: str
    original_median_ms: float
    original_p90_ms: float
    original_min_ms: float
    original_max_ms: float
    slim_median_ms: float
    slim_p90_ms: float
    slim_min_ms: float
    slim_max_ms: float
    speedup: float
    speedup_min: float
    speedup_max: float
    macs_ratio: float | None
    efficiency: float | None
    noisy: bool
    predicted_ms: float | None = None
