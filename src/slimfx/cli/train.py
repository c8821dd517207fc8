"""``slimfx train``: the reference ``main.py`` — sparsity training (``-sr``) and ``--refine``.

Also runs under ``torchrun --nproc_per_node=N -m slimfx train ...`` (one process per CPU
share or GPU; ``--batch-size`` is per process).
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from slimfx.checkpoint import load_checkpoint
from slimfx.data import DATASETS, load_dataset
from slimfx.files import check_output_dir
from slimfx.models import DEFAULT_CFG, MODEL_BUILDERS, MODEL_DEPTHS, build_model
from slimfx.train.distributed import env_rank
from slimfx.train.loop import EpochResult, TrainConfig, TrainingInterrupted, TrainResult, fit
from slimfx.train.state import check_training_checkpoint, model_cfg
from slimfx.workflow.prune import load_trained_model, model_for_checkpoint

INTERRUPTED = 130


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = nonnegative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def add_optimizer_arguments(
    parser: argparse.ArgumentParser, *, lr: float, what: str, batch_note: str = ""
) -> None:
    """``--batch-size``, ``--lr``, ``--momentum``, ``--weight-decay`` and ``--seed`` of a
    ``what`` ("training", "fine-tuning") run with learning rate ``lr`` by default."""
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        metavar="N",
        help=f"{what} batch size{batch_note} (default: 64)",
    )
    parser.add_argument(
        "--lr", type=positive_float, default=lr, help=f"{what} learning rate (default: {lr:g})"
    )
    parser.add_argument(
        "--momentum", type=nonnegative_float, default=0.9, help="SGD momentum (default: 0.9)"
    )
    parser.add_argument(
        "--weight-decay",
        "--wd",
        type=nonnegative_float,
        default=1e-4,
        help="weight decay (default: 1e-4)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")


def add_model_arguments(parser: argparse.ArgumentParser, dataset: str = "cifar10") -> None:
    """``--dataset``, ``--arch``, ``--depth``, ``--data-dir``, ``--download``, ``--no-cuda``."""
    parser.add_argument(
        "--dataset", choices=DATASETS, default=dataset, help=f"dataset (default: {dataset})"
    )
    parser.add_argument(
        "--arch", choices=sorted(MODEL_BUILDERS), default="vgg", help="architecture (default: vgg)"
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=19,
        help="depth of the network (default: 19): vgg "
        + "/".join(map(str, MODEL_DEPTHS["vgg"]))
        + "; resnet 9n+2 (164); densenet 3n+4 (40)",
    )
    parser.add_argument(
        "--data-dir",
        default="./data",
        metavar="DIR",
        help="folder holding cifar-10-batches-py/ or cifar-100-python/",
    )
    parser.add_argument(
        "--download", action="store_true", help="download CIFAR into --data-dir if it is not there"
    )
    parser.add_argument("--no-cuda", action="store_true", help="train/test on the CPU")
    parser.add_argument(
        "--test-batch-size",
        type=positive_int,
        default=256,
        metavar="N",
        help="input batch size for testing (default: 256)",
    )


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train with sparsity on BatchNorm gammas (-sr) or fine-tune (--refine)",
        description="Train a network, optionally with the network-slimming L1 penalty on "
        "the scaling factors of every BatchNorm the pruner can cut (-sr, --s), or fine-tune "
        "a pruned model (--refine pruned.pth). Writes checkpoint.pth.tar every epoch and "
        "model_best.pth.tar to --save. Ctrl-C saves a checkpoint that --resume continues.",
    )
    add_model_arguments(p)
    p.add_argument(
        "-sr",
        "--sparsity-regularization",
        dest="sr",
        action="store_true",
        help="train with the L1 penalty on BatchNorm gammas",
    )
    p.add_argument(
        "--s",
        "--sparsity",
        dest="s",
        type=nonnegative_float,
        default=1e-4,
        help="penalty strength (default: 1e-4); under torchrun write --sparsity, since "
        "torchrun's own parser reads --s as an abbreviation of its options",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=160,
        metavar="N",
        help="epochs to train (default: 160)",
    )
    add_optimizer_arguments(p, lr=0.1, what="training", batch_note=", per process")
    p.add_argument(
        "--save",
        default="./logs",
        metavar="DIR",
        help="folder for the checkpoints (default: ./logs)",
    )
    p.add_argument(
        "--resume",
        default="",
        metavar="PATH",
        help="continue from a checkpoint (optimizer, LR schedule and all)",
    )
    p.add_argument(
        "--refine",
        default="",
        metavar="PATH",
        help="fine-tune a pruned.pth (the model is rebuilt from its cfg)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="data loading processes (default: 0, load in the main process)",
    )
    p.add_argument(
        "--dist-timeout",
        type=positive_float,
        default=300.0,
        metavar="SECONDS",
        help="under torchrun: fail when other workers stop answering this long",
    )
    p.set_defaults(run=run)


def build_training_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model to train: from --resume's cfg, --refine's cfg and weights, or --depth.

    A ``--resume`` file is checked whole (a training checkpoint whose optimizer and
    schedule fit the model) before anything is trained or written.
    """
    torch.manual_seed(args.seed)
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        check_training_checkpoint(ckpt, args.resume)
        if ckpt.get("cfg") is None and args.refine:
            ckpt["cfg"] = load_checkpoint(args.refine).get("cfg")
        model = model_for_checkpoint(
            ckpt, args.resume, arch=args.arch, depth=args.depth, dataset=args.dataset
        )
        check_training_checkpoint(ckpt, args.resume, model)
        return model
    if args.refine:
        model, _ = load_trained_model(
            args.refine, arch=args.arch, depth=args.depth, dataset=args.dataset
        )
        return model
    return build_model(args.arch, args.depth, args.dataset)


def config_from_args(args: argparse.Namespace, progress: bool) -> TrainConfig:
    """The :class:`TrainConfig` the flags describe."""
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        test_batch_size=args.test_batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        sparsity=args.s if args.sr else 0.0,
        seed=args.seed,
        save_dir=args.save or None,
        resume=args.resume or None,
        device="cpu" if args.no_cuda else "auto",
        num_workers=args.workers,
        progress=progress,
        dist_timeout_s=args.dist_timeout,
    )


def execute(args: argparse.Namespace, *, echo: bool = True) -> TrainResult:
    """Everything ``slimfx train`` does; returns the :class:`TrainResult`."""
    # every input is checked before anything is printed, downloaded, created or trained
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    config = config_from_args(args, progress=sys.stderr.isatty())
    config.validate()
    if args.save:
        check_output_dir(args.save, "--save")
    model = build_training_model(args)
    train_set = load_dataset(args.dataset, True, args.data_dir, download=args.download)
    test_set = load_dataset(args.dataset, False, args.data_dir, download=False)
    main = env_rank() == 0
    say = print if echo and main else (lambda *a, **k: None)
    what = f"sparsity training (s={args.s:g})" if args.sr else "training"
    if args.refine:
        what = "fine-tuning " + args.refine + (f" with sparsity (s={args.s:g})" if args.sr else "")
    cfg = model_cfg(model)
    arch = f"{args.arch}-{args.depth}"
    if cfg is not None and cfg != DEFAULT_CFG.get(args.depth):
        arch = f"{args.arch} with cfg {cfg}"
    say(
        f"{what}: {arch} on {args.dataset} ({len(train_set)} training, "
        f"{len(test_set)} test images), {args.epochs} epochs, checkpoints in {args.save}"
    )

    def report(e: EpochResult) -> None:
        sparse = (
            "" if e.sparse_fraction is None else f"  |gamma|<0.01: {100 * e.sparse_fraction:.1f}%"
        )
        say(
            f"epoch {e.epoch}/{args.epochs}  loss {e.train_loss:.4f}  "
            f"test accuracy {100 * e.test_accuracy:.2f}% (best {100 * e.best_accuracy:.2f}%)  "
            f"lr {e.lr:g}{sparse}  {e.seconds:.1f} s",
            flush=True,
        )

    result = fit(model, train_set, test_set, config, on_epoch_end=report)
    if not result.history:
        say(
            f"nothing to train: {args.resume} has {result.start_epoch} epochs done "
            f"(--epochs {args.epochs})"
        )
    else:
        say(
            f"best test accuracy {100 * result.best_accuracy:.2f}%; "
            f"checkpoints: {args.save}/checkpoint.pth.tar, {args.save}/model_best.pth.tar"
        )
    return result


def run(args: argparse.Namespace) -> int:
    try:
        execute(args)
    except TrainingInterrupted as stop:
        print(f"slimfx train: {stop}", file=sys.stderr)
        return INTERRUPTED
    return 0
