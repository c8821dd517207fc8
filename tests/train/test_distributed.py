"""``torchrun --nproc_per_node=2 -m slimfx train``: two CPU processes, gloo.

Each test starts a real ``torchrun``; the narrow VGG keeps an epoch to a few seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import torch

from slimfx.train.state import BEST_NAME, CHECKPOINT_NAME

# Calls what ``slimfx train`` calls; "normal" saves each rank's final weights, "hang" makes
# rank 1 stop answering at its second step.
DRIVER = textwrap.dedent(
    """
    import os, sys, time
    import torch
    import slimfx.cli.train as cli_train
    from slimfx.cli import build_parser, main

    mode, out, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    rank = int(os.environ["RANK"])
    if mode == "normal":
        result = cli_train.execute(build_parser().parse_args(argv))
        torch.save(result.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    else:
        real_fit = cli_train.fit

        def stalled_fit(*args, **kwargs):
            def stall(info):
                if rank == 1 and info.step == 2:
                    time.sleep(600)
            return real_fit(*args, on_step_end=stall, **kwargs)

        cli_train.fit = stalled_fit
        sys.exit(main(argv))
    """
)


def torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--monitor-interval=0.5",
        *args,
    ]


def train_args(tiny_pruned: Path, save: Path, epochs: int = 1) -> list[str]:
    return [
        "train",
        "--dataset",
        "digits",
        "--refine",
        str(tiny_pruned),
        "-sr",
        "--sparsity",
        "0.01",
        "--epochs",
        str(epochs),
        "--lr",
        "0.05",
        "--save",
        str(save),
        "--no-cuda",
    ]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def test_two_processes_end_with_identical_weights(tmp_path, tiny_pruned, wf):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    save = tmp_path / "run"
    proc = subprocess.run(
        torchrun(str(driver), "normal", str(tmp_path), *train_args(tiny_pruned, save)),
        capture_output=True,
        text=True,
        timeout=300,
        env=env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 prints; rank 1 does not
    assert proc.stdout.count("epoch 1/1") == 1, proc.stdout
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert wf.states_equal(rank0, rank1)  # parameters and BatchNorm statistics alike
    initial = torch.load(tiny_pruned, weights_only=True)["state_dict"]
    assert not torch.equal(rank0["feature.0.weight"], initial["feature.0.weight"])
    # written by rank 0 only, complete, readable with weights_only=True
    assert sorted(p.name for p in save.iterdir()) == [CHECKPOINT_NAME, BEST_NAME]
    ckpt = torch.load(save / CHECKPOINT_NAME, weights_only=True)
    assert {"epoch", "best_prec1", "state_dict", "optimizer", "cfg", "lr_scheduler"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["world_size"] == 2 and ckpt["cfg"] == wf.TINY_CFG
    assert wf.states_equal(ckpt["state_dict"], rank0)
    assert len(ckpt["optimizer"]["state"]) == len(list(rank0)) - 3 * 8  # params with momentum


def test_a_hung_worker_fails_the_run_within_the_timeout(tmp_path, tiny_pruned):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = [*train_args(tiny_pruned, tmp_path / "run", epochs=2), "--dist-timeout", "5"]
    start = time.monotonic()
    proc = subprocess.run(
        torchrun(str(driver), "hang", str(tmp_path), *args),
        capture_output=True,
        text=True,
        timeout=240,
        env=env(),
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 120, f"took {elapsed:.0f} s"
    assert "slimfx train: error: rank 0: lost the other workers" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.split("slimfx train: error:")[0].split("\n")[-1]


def _workers(parent: int) -> dict[int, int]:
    """rank → pid of torchrun's worker processes (Linux /proc)."""
    found: dict[int, int] = {}
    pending = [parent]
    while pending:
        pid = pending.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            children = (
                (task / "children").read_text().split() if (task / "children").exists() else []
            )
            pending.extend(int(c) for c in children)
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [e for e in environ if e.startswith(b"RANK=")]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if ranks and b"slimfx" in cmdline and b"torch.distributed.run" not in cmdline:
            found[int(ranks[0].split(b"=")[1])] = pid
    return found


def test_a_killed_worker_fails_the_run_promptly(tmp_path, tiny_pruned):
    proc = subprocess.Popen(
        torchrun("-m", "slimfx", *train_args(tiny_pruned, tmp_path / "run", epochs=30)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    lines: list[str] = []
    first_epoch = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "epoch 1/30" in line:
                first_epoch.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert first_epoch.wait(180), "".join(lines) + proc.stderr.read()
        workers = _workers(proc.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGKILL)
        killed = time.monotonic()
        code = proc.wait(timeout=120)
        assert code != 0
        assert time.monotonic() - killed < 60
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
