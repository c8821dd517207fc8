"""The helpers of benchmarks/: running from a plain checkout, Torch-Pruning as the peer."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import slimfx
from slimfx.counting import count_macs

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"

CHECKOUT_ONLY = """
import sys
sys.path[:0] = [{repo!r}, {benchmarks!r}]
sys.path.append({site!r})  # packages without their .pth hooks: slimfx is not installed
try:
    import slimfx
except ModuleNotFoundError as exc:
    print("plain import fails:", exc.name)
import common
print(common.ensure_slimfx_importable())
import slimfx, slimfx.passes
print(slimfx.passes.__file__)
print(slimfx.slim.__module__)
"""


def test_scripts_run_from_a_checkout_without_installing():
    code = CHECKOUT_ONLY.format(
        repo=str(REPO), benchmarks=str(BENCHMARKS), site=sysconfig.get_paths()["purelib"]
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "plain import fails: slimfx.passes"
    assert lines[1].startswith("checkout")
    assert Path(lines[2]) == REPO / "passes" / "__init__.py"
    assert lines[3] == "slimfx.api"


@pytest.fixture
def peer(monkeypatch):
    import torch_pruning  # noqa: F401  (the peer tool: installed with the test extra)

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import torch_pruning_peer

    return torch_pruning_peer


def test_torch_pruning_removes_the_same_channels(peer, make_tiny_vgg):
    model, x = make_tiny_vgg(), torch.randn(1, 3, 32, 32)
    res = slimfx.slim(model, x, 0.5)
    theirs = peer.prune_same_channels(model, x, res)
    widths = [m.num_features for m in theirs.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert widths == [row.width for row in res.report.layers]
    assert count_macs(slimfx.trace(theirs, x)) == res.report.macs_after
    assert [m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == [
        8,
        16,
        16,
        24,
        24,
    ]


def test_torch_pruning_native_rounds_down(peer, make_tiny_vgg):
    model, x = make_tiny_vgg(), torch.randn(1, 3, 32, 32)
    theirs = peer.prune_native(model, x, 0.5, round_to=8)
    widths = [m.num_features for m in theirs.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(w > 0 and w % 8 == 0 for w in widths) and sum(widths) < 88
