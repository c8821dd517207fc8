"""Shared pieces of the benchmark scripts: models, file names, timing flags.

The scripts import the installed slimfx (``pip install .`` or ``pip install -e .``) and run
from the clone root or from anywhere else.
"""

from __future__ import annotations

import re

import torch

MODELS = ("vgg19-cifar", "vgg16_bn")


def build(name: str, checkpoint: str | None = None, seed: int = 0):
    """``(model, example input)`` for a benchmark model name of :data:`MODELS`."""
    if name == "vgg19-cifar":
        from slimfx.models import VGG

        model, example = VGG(depth=19), torch.randn(1, 3, 32, 32)
        if checkpoint:
            from slimfx.checkpoint import load_checkpoint, load_into

            state = load_checkpoint(checkpoint)
            model = VGG(depth=19, cfg=state.get("cfg"))
            load_into(model, state["state_dict"], checkpoint)
            return model.eval(), example
    elif name == "vgg16_bn":
        import torchvision

        model, example = torchvision.models.vgg16_bn(weights=None), torch.randn(1, 3, 224, 224)
        if checkpoint:
            raise ValueError("--checkpoint is only read for vgg19-cifar")
    else:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    from slimfx.bench.models import synthetic_scales

    return synthetic_scales(model, seed).eval(), example


def slug(text: str) -> str:
    """``text`` as a file-name part (``NVIDIA H100 80GB HBM3`` → ``nvidia-h100-80gb-hbm3``)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise SystemExit(f"expected comma-separated integers, got {text!r}") from exc
    if not values:
        raise SystemExit(f"expected comma-separated integers, got {text!r}")
    return values


def add_timing_arguments(parser) -> None:
    """``--batches``, ``--rounds``, ``--warmup`` and ``--threads``, read by :func:`measure`."""
    parser.add_argument("--batches", type=int_list, default="1,8,64")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="intra-op threads (runtime default if unset)")


def measure(models, example, args):
    """:func:`slimfx.bench.latency.measure_latency` with the settings of
    :func:`add_timing_arguments` and ``args.backends``."""
    from slimfx.bench.latency import measure_latency

    return measure_latency(
        models,
        example,
        batches=args.batches,
        backends=args.backends,
        rounds=args.rounds,
        warmup=args.warmup,
        threads=args.threads,
    )
