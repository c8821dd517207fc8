"""Multi-process training helpers: process group set-up from ``torchrun``'s environment.

``torchrun --nproc_per_node=N -m slimfx train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` set; :func:`setup` joins
them in a process group (gloo on the CPU, nccl on GPUs) with a timeout, so that a worker that
dies or hangs makes the others fail within ``timeout_s`` instead of waiting forever.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

from slimfx.errors import SlimfxError

logger = logging.getLogger(__name__)


class DistributedError(SlimfxError):
    """A collective operation failed: another worker died, hung or lost its connection."""


@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes
    ----------
    rank, world_size, local_rank : int
    device : torch.device
        The device this process trains on.
    owns_group : bool
        Whether :func:`setup` created the process group (and :func:`teardown` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and prints."""
        return self.rank == 0


def env_rank() -> int:
    """This process's rank according to ``torchrun``'s environment (0 without torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def env_world_size() -> int:
    """Number of processes according to ``torchrun``'s environment (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` → the GPU of this local rank when CUDA is available, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA was requested but is not available (use --no-cuda)")
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device(device)


def setup(device: str | torch.device = "auto", timeout_s: float = 300.0) -> DistContext:
    """Join the process group described by the environment, if there is one.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"} or torch.device
    timeout_s : float
        Collective operations fail after this many seconds without progress.

    Returns
    -------
    DistContext
        ``world_size == 1`` without ``torchrun`` (nothing is initialised then).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    resolved = resolve_device(device, local_rank)
    owns = False
    if env_world_size() > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"could not join the process group ({exc})") from exc
        owns = True
        logger.info(
            "joined process group: rank %d of %d (%s)",
            dist.get_rank(),
            dist.get_world_size(),
            backend,
        )
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, resolved, owns)
    return DistContext(device=resolved)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _flag_device(ctx: DistContext) -> torch.device:
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(ctx: DistContext, *flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over all ranks (one collective), so every rank takes the same branch."""
    if not ctx.enabled:
        return tuple(bool(f) for f in flags)
    values = torch.tensor([float(f) for f in flags], device=_flag_device(ctx))
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in values.tolist())


def sum_over_ranks(ctx: DistContext, *numbers: float) -> tuple[float, ...]:
    """Each number summed over all ranks."""
    if not ctx.enabled:
        return tuple(float(n) for n in numbers)
    values = torch.tensor(numbers, dtype=torch.float64, device=_flag_device(ctx))
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return tuple(values.tolist())


@torch.no_grad()
def average_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks.

    DDP keeps parameters identical; each rank's running statistics follow its own batches.
    Averaging them at the end of an epoch leaves every replica identical again.
    """
    if not ctx.enabled:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(ctx.world_size)


def is_collective_failure(exc: BaseException) -> bool:
    """Whether an exception comes from a failed collective (a lost or hung peer)."""
    dist_error = getattr(dist, "DistError", ())
    text = str(exc).lower()
    words = ("gloo", "nccl", "timed out", "timeout", "connection", "peer")
    return isinstance(exc, dist_error) or any(word in text for word in words)
