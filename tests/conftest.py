"""Fixtures shared by every test folder.

- the command line in a subprocess (:func:`run_slimfx`);
- the Hypothesis profiles (``slimfx``: 100 cases per property, ``thorough``: 1,000);
- graph-level tests (``ir``, ``rules``, ``passes``, ``api``) run on one thread with a fixed
  seed: their models are tiny, and thread start-up would dominate every op;
- a tiny CIFAR-shaped VGG with random BatchNorm scales for the export, benchmark and CLI
  tests (``make_tiny_vgg``, ``model``, ``example``, ``slim_result``);
- digits subsets, a narrow digits VGG and the reference code's model class for the training,
  workflow and CLI tests (``wf`` bundles the helpers, since tests cannot import a conftest
  under importlib mode).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, settings
from torch.utils.data import Subset

import slimfx
from slimfx.bench.latency import synthetic_scales
from slimfx.bench.timing import torch_threads
from slimfx.data import load_dataset
from slimfx.models import VGG
from slimfx.testing import assert_matches_oracle, write_detection_dataset

# Ultralytics runs offline in the tests, its settings in a temporary folder (set before it is
# imported: it reads them at import; subprocesses inherit them)
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="slimfx-ultralytics-settings-")
os.environ["YOLO_VERBOSE"] = "False"

# Property tests: 100 random cases each by default (the suite's time on 2 cores);
# ``pytest --hypothesis-profile=thorough`` draws 1,000. Tests that set max_examples keep it.
settings.register_profile(
    "slimfx", max_examples=100, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile("thorough", settings.get_profile("slimfx"), max_examples=1000)
settings.load_profile("slimfx")


def pytest_configure(config):
    """In a worker of ``pytest -n N`` (the default, see setup.cfg) PyTorch gets the worker's
    share of the CPU cores as threads: N processes each of the machine's thread count would
    contend for every core."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) // int(workers)))


def pytest_collection_modifyitems(config, items):
    """In workers, the tests marked ``slow`` come first: each starts at once beside the
    rest, instead of one running alone at the end (workers steal pending tests from each
    other, so the rest spreads over the workers that are free)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


TESTS = Path(__file__).resolve().parent
#: Test folders whose tests run single-threaded with ``torch.manual_seed(0)``.
GRAPH_TEST_FOLDERS = {"ir", "rules", "passes", "api"}


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


@pytest.fixture(autouse=True)
def _torch_threads_left_as_found():
    """A test that changes PyTorch's thread count fails (and the count is put back, so the
    tests after it do not run on fewer threads)."""
    threads = torch.get_num_threads()
    yield
    changed = torch.get_num_threads()
    torch.set_num_threads(threads)
    assert changed == threads, f"the test left torch with {changed} threads, not {threads}"


@pytest.fixture(autouse=True)
def _graph_tests_single_threaded(request, _torch_threads_left_as_found):
    """One thread and a fixed seed for the tests under :data:`GRAPH_TEST_FOLDERS`."""
    folder = Path(str(request.node.path)).resolve().relative_to(TESTS).parts[0]
    if folder not in GRAPH_TEST_FOLDERS:
        yield
        return
    torch.manual_seed(0)
    with torch_threads(1):
        yield


@pytest.fixture
def oracle_check():
    """:func:`slimfx.testing.assert_matches_oracle`."""
    return assert_matches_oracle


# --- export, benchmark and CLI tests: a tiny CIFAR-shaped VGG ---

#: A VGG small enough to export and time in well under a second (32x32 inputs).
EXPORT_CFG = [8, "M", 16, "M", 16, "M", 24, "M", 24]


def tiny_vgg(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return synthetic_scales(VGG(cfg=EXPORT_CFG), seed).eval()


@pytest.fixture(scope="session")
def make_tiny_vgg():
    return tiny_vgg


@pytest.fixture
def model():
    return tiny_vgg()


@pytest.fixture
def example():
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def slim_result():
    """The tiny VGG slimmed by half (shared: tests must not modify it)."""
    return slimfx.slim(tiny_vgg(), torch.randn(1, 3, 32, 32), 0.5)


# --- training, workflow and CLI tests: digits and a narrow VGG ---

TINY_CFG = [8, "M", 16, "M", 16, 16, "M", 32, 32, "M", 32, 32]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_train():
    return load_dataset("digits", True)


@pytest.fixture(scope="session")
def digits_test():
    return load_dataset("digits", False)


@pytest.fixture(scope="session")
def small_train(digits_train):
    """256 training images: 4 steps of 64 per epoch."""
    return Subset(digits_train, range(256))


@pytest.fixture(scope="session")
def small_test(digits_test):
    return Subset(digits_test, range(128))


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return VGG(dataset="digits", cfg=TINY_CFG)


@pytest.fixture
def tiny_pruned(tmp_path) -> Path:
    """A ``pruned.pth`` of the tiny VGG, for ``slimfx train --refine`` in CLI tests."""
    torch.manual_seed(0)
    model = VGG(dataset="digits", cfg=TINY_CFG)
    path = tmp_path / "tiny.pth"
    torch.save({"cfg": model.cfg, "state_dict": model.state_dict()}, path)
    return path


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the reference code's model (network-slimming, models/vgg.py), verbatim in substance ---

defaultcfg = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
    ],
}


class reference_vgg(nn.Module):  # the reference code's class name
    def __init__(self, dataset="cifar10", depth=19, init_weights=True, cfg=None):
        super().__init__()
        if cfg is None:
            cfg = defaultcfg[depth]
        self.feature = self.make_layers(cfg, True)
        if dataset == "cifar100":
            num_classes = 100
        elif dataset == "cifar10":
            num_classes = 10
        self.classifier = nn.Linear(cfg[-1], num_classes)
        if init_weights:
            self._initialize_weights()

    def make_layers(self, cfg, batch_norm=False):
        layers = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1, bias=False)
                if batch_norm:
                    layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                else:
                    layers += [conv2d, nn.ReLU(inplace=True)]
                in_channels = v
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.feature(x)
        x = nn.AvgPool2d(2)(x)
        x = x.view(x.size(0), -1)
        y = self.classifier(x)
        return y

    def _initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(0.5)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()


def sparse_trained_like(model: nn.Module, seed: int = 0, zero_fraction: float = 0.6) -> nn.Module:
    """Give a model what sparsity training leaves: many tiny gammas, nonzero betas, real
    BatchNorm statistics. All |gamma| are distinct, so thresholds have no ties."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                gamma = torch.rand(n, generator=g) * 0.9 + 0.1
                small = torch.rand(n, generator=g) < zero_fraction
                gamma[small] = torch.rand(int(small.sum()), generator=g) * 1e-3
                sign = torch.where(torch.rand(n, generator=g) < 0.1, -1.0, 1.0)
                m.weight.copy_(gamma * sign)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="session")
def wf(slimfx_cli):
    """Helpers of the workflow tests (tests cannot import conftest under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        TINY_CFG=TINY_CFG,
        REPO=REPO,
        run_slimfx=slimfx_cli,
        states_equal=states_equal,
        sparse_trained_like=sparse_trained_like,
        reference_vgg=reference_vgg,
    )


# --- Ultralytics YOLO: a tiny detection dataset ---


@pytest.fixture(scope="session")
def detection_data(tmp_path_factory) -> Path:
    return write_detection_dataset(tmp_path_factory.mktemp("yolo-data"))


@pytest.fixture
def train_args(tmp_path) -> dict:
    """Ultralytics training arguments for a few seconds on the CPU."""
    return dict(
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        amp=False,
        plots=False,
        project=str(tmp_path / "runs"),
        exist_ok=True,
        verbose=False,
    )
