"""Timing loops of the latency benchmark: warm-up, calibrated rounds, alternation."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping

import torch


def time_rounds(
    calls: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int,
    min_round_seconds: float,
    advance: Callable[[int], object],
) -> dict[str, tuple[list[float], int]]:
    """Time every call in ``rounds`` alternating rounds.

    Each call is warmed up ``warmup`` times, then timed once to choose how many calls make
    a round of about ``min_round_seconds``. Round ``r`` runs the calls in order when ``r`` is
    even and in reverse when odd. ``advance(1)`` is called after each round.

    Returns
    -------
    dict
        Name → (per-call seconds of each round, calls per round).
    """
    repeat = {}
    for name, call in calls.items():
        for _ in range(warmup):
            call()
        start = time.perf_counter()
        call()
        once = max(time.perf_counter() - start, 1e-6)
        repeat[name] = max(1, math.ceil(min_round_seconds / once))
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            call, n = calls[name], repeat[name]
            start = time.perf_counter()
            for _ in range(n):
                call()
            seconds[name].append((time.perf_counter() - start) / n)
        advance(1)
    return {name: (seconds[name], repeat[name]) for name in names}


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run PyTorch with ``threads`` intra-op threads (unchanged when ``None``)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _NoBar:
    interactive = False

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass


class _LineBar:
    """Progress as a line on stderr every ``interval`` seconds (output to a file or a pipe)."""

    interactive = False

    def __init__(self, total: int, unit: str, interval: float = 10.0):
        self.total, self.unit, self.interval = total, unit, interval
        self.done, self.description = 0, ""
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def set_description(self, text: str) -> None:
        self.description = text

    def close(self) -> None:
        if time.perf_counter() - self.start >= self.interval:  # a long run says it is done
            self._line(time.perf_counter())

    def _line(self, now: float) -> None:
        label = f"{self.description}: " if self.description else ""
        print(
            f"{label}{self.done}/{self.total} {self.unit}s ({now - self.start:.0f} s)",
            file=sys.stderr,
            flush=True,
        )


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool, unit: str = "round"):
    """Progress of ``total`` steps: a tqdm bar on a terminal, a line on stderr every 10 s
    when stderr is a file or a pipe, nothing when not ``enabled``.

    The bar's ``interactive`` attribute says whether a tqdm bar is shown.
    """
    if not enabled:
        yield _NoBar()
        return
    if not sys.stderr.isatty():
        bar = _LineBar(total, unit)
        try:
            yield bar
        finally:
            bar.close()
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        yield _NoBar()
        return
    bar = tqdm(total=total, unit=unit, leave=False)
    bar.interactive = True
    try:
        yield bar
    finally:
        bar.close()
