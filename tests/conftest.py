"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_slimfx(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``python -m slimfx ARGS`` in a subprocess (stdout/stderr captured as text)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "slimfx", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


@pytest.fixture(scope="session")
def slimfx_cli():
    """:func:`run_slimfx`: the command line in a subprocess."""
    return run_slimfx
