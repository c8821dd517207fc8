"""Shared fixtures of the safety tests: small checkpoints of every kind, hostile files, and
a helper that runs the CLI in-process and insists on one clean error line."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from slimfx.bench.timing import torch_threads
from slimfx.cli import main
from slimfx.models import VGG, build_model
from slimfx.testing import randomize_batchnorm

#: A narrow VGG for the digits data: a CLI prune of it takes about a second.
TINY_CFG = [8, "M", 16, "M", 16, 16, "M", 24, 24, "M", 24, 24]


def tiny_vgg(seed: int = 0) -> VGG:
    torch.manual_seed(seed)
    return randomize_batchnorm(VGG(dataset="digits", cfg=TINY_CFG), seed=seed, sparse=0.5).eval()


class Payload:
    """A pickled object that, when unpickled, calls ``function(*args)``."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    """Two ways a pickle asks to act: create a file (``open``), run a command (``os.system``)."""
    return {
        "open": Payload(open, str(marker), "w"),
        "os.system": Payload(os.system, f"touch {marker}"),
    }


def write_malicious(path: Path, payload: Payload, fmt: str, state: dict) -> Path:
    """A checkpoint that looks right (a real state dict) but carries ``payload``.

    ``fmt``: ``"zip"`` (``torch.save``), ``"legacy"`` (the pre-1.6 format the reference
    code's checkpoints use) or ``"pickle"`` (plain ``pickle.dump``, protocol 4).
    """
    obj = {"cfg": TINY_CFG, "state_dict": state, "epoch": payload}
    if fmt == "pickle":
        path.write_bytes(pickle.dumps(obj, protocol=4))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models: one thread avoids thread start-up costs (and spinning on busy cores)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> SimpleNamespace:
    """Good files: ``pruned`` ({cfg, state_dict}), ``train`` (a training checkpoint of the same
    model, with optimizer and schedule state), ``resnet`` (a ResNet-20 state dict)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    model = tiny_vgg()
    state = model.state_dict()
    torch.save({"cfg": TINY_CFG, "state_dict": state}, folder / "pruned.pth")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [1, 2], 0.1)
    model.train()
    loss = model(torch.randn(4, 3, 32, 32)).square().mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    model.eval()
    train = {
        "epoch": 1,
        "step": 0,
        "best_prec1": 0.1,
        "prec1": 0.1,
        "cfg": TINY_CFG,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        "seed": 1,
        "sparsity": 0.0,
    }
    torch.save(train, folder / "train.pth.tar")
    torch.save({"state_dict": build_model("resnet", 20, "digits").state_dict()}, folder / "r.pth")
    return SimpleNamespace(
        folder=folder,
        pruned=folder / "pruned.pth",
        train=folder / "train.pth.tar",
        train_state=train,
        resnet=folder / "r.pth",
        state=state,
        model=tiny_vgg,
    )


@pytest.fixture
def cli(capsys):
    """``cli.error(argv)``: run ``slimfx ARGV`` in this process, assert exit status 2 and one
    line on stderr without a traceback, return that line. ``cli.run(argv)``: the status."""

    def error(argv, code: int = 2) -> str:
        status = _status(argv)
        captured = capsys.readouterr()
        assert status == code, f"exit {status}: {captured.err}"
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, captured.err
        assert "Traceback" not in captured.err
        return lines[0]

    def run(argv) -> int:
        return _status(argv)

    return SimpleNamespace(error=error, run=run, capsys=capsys)


def _status(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse rejects a flag value
        return int(exc.code)


@pytest.fixture
def safety():
    """Helpers of the safety tests (tests cannot import conftest under importlib mode)."""
    return SimpleNamespace(
        TINY_CFG=TINY_CFG,
        tiny_vgg=tiny_vgg,
        payloads=payloads,
        write_malicious=write_malicious,
        Payload=Payload,
    )
