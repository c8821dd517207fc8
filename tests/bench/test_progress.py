"""Progress: a tqdm bar on a terminal, a line every few seconds into a file."""

import sys

from slimfx.bench import timing


def test_output_to_a_file_gets_periodic_lines(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    clock = iter([0.0, 4.0, 11.0, 12.0, 25.0, 26.0])  # start, 3 updates, close
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    with timing.progress_bar(3, True, unit="probe") as bar:
        bar.set_description("latency table")
        for _ in range(3):
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["latency table: 2/3 probes (11 s)", "latency table: 3/3 probes (26 s)"]


def test_disabled_progress_says_nothing(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with timing.progress_bar(3, False) as bar:
        bar.update(3)
    assert capsys.readouterr().err == "" and not bar.interactive
