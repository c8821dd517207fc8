"""``slimfx slim-loop``: prune toward a latency target in several passes, fine-tuning between.

A thin layer over :func:`slimfx.workflow.slim_loop.slim_loop`: the same command run again
after an interruption skips the finished passes and resumes an interrupted fine-tuning.
"""

from __future__ import annotations

import argparse
import sys

from slimfx.cli.prune import add_channel_arguments, add_target_arguments, speedup_value
from slimfx.cli.train import (
    INTERRUPTED,
    add_model_arguments,
    add_optimizer_arguments,
    nonnegative_float,
    positive_int,
)
from slimfx.data import load_dataset
from slimfx.ir.options import SlimOptions
from slimfx.train.config import EpochResult, TrainConfig
from slimfx.train.loop import TrainingInterrupted
from slimfx.workflow.prune import load_trained_model
from slimfx.workflow.slim_loop import (
    CONTINUE_FROM,
    DEFAULT_FINETUNE,
    PassRow,
    loop_table,
    slim_loop,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "slim-loop",
        help="prune toward a latency target in several passes, fine-tuning between them",
        description="Prune a trained checkpoint to run --speedup times faster on --backend in "
        "--passes passes: each pass prunes the current model toward what is still missing "
        "((speedup / measured so far) ** (1 / passes left) of its own latency, measured on "
        "the target), fine-tunes it for --epochs (with the L1 "
        "penalty on gammas when -sr) and continues from the best (or last) fine-tuned "
        "model. Writes --save/pass-K/ (prune files and checkpoints), loop.json and loop.md "
        "(the per-pass table). Run the same command again to resume an interrupted loop.",
    )
    add_model_arguments(p)
    p.add_argument("--model", required=True, metavar="PATH", help="the checkpoint to slim")
    p.add_argument(
        "--speedup",
        type=speedup_value,
        required=True,
        metavar="X",
        help="latency target of the whole loop: X times faster than --model",
    )
    p.add_argument(
        "--passes", type=positive_int, default=3, metavar="N", help="passes (default: 3)"
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=DEFAULT_FINETUNE.epochs,
        metavar="N",
        help=f"fine-tuning epochs per pass (default: {DEFAULT_FINETUNE.epochs})",
    )
    add_target_arguments(p)
    p.add_argument(
        "--latency-cache",
        default=None,
        metavar="DIR",
        help="cache of measured layer latencies (default: $SLIMFX_CACHE_DIR or ~/.cache/slimfx)",
    )
    p.add_argument(
        "-sr",
        "--sr",
        "--sparsity-regularization",
        dest="sr",
        action="store_true",
        help="fine-tune with the L1 penalty on BatchNorm gammas",
    )
    p.add_argument(
        "--s",
        "--sparsity",
        dest="s",
        type=nonnegative_float,
        default=1e-4,
        help="penalty strength with -sr (default: 1e-4)",
    )
    add_optimizer_arguments(p, lr=DEFAULT_FINETUNE.lr, what="fine-tuning")
    p.add_argument(
        "--workers", type=int, default=0, metavar="N", help="data loading processes (default: 0)"
    )
    add_channel_arguments(
        p,
        round_to_type=positive_int,
        round_to_metavar="N",
        round_to_help="round kept widths up to a multiple of N (default: 1: the backend's own "
        "step)",
    )
    p.add_argument(
        "--continue-from",
        choices=CONTINUE_FROM,
        default="best",
        help="which fine-tuned checkpoint the next pass prunes (default: best)",
    )
    p.add_argument(
        "--save",
        default="./logs",
        metavar="DIR",
        help="folder for loop.json, loop.md and pass-1/ ... (default: ./logs)",
    )
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> tuple[SlimOptions, TrainConfig]:
    """The slimming options and fine-tuning settings the flags describe."""
    options = SlimOptions(
        speedup=args.speedup,
        backend=args.backend,
        batch=args.batch,
        threads=args.threads,
        min_channels=args.min_channels,
        round_to=args.round_to,
        compensate=not args.no_compensate,
    )
    train = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        test_batch_size=args.test_batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        sparsity=args.s if args.sr else 0.0,
        seed=args.seed,
        device="cpu" if args.no_cuda else "auto",
        num_workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    return options, train


def run(args: argparse.Namespace) -> int:
    options, train = options_from_args(args)
    train.validate()
    train_set = load_dataset(args.dataset, True, args.data_dir, download=args.download)
    test_set = load_dataset(args.dataset, False, args.data_dir, download=False)
    model, _ = load_trained_model(
        args.model, arch=args.arch, depth=args.depth, dataset=args.dataset
    )
    n = args.passes
    per_pass = args.speedup ** (1 / n)
    print(
        f"slim-loop: {args.model} to {args.speedup:g}x on {options.backend} (batch "
        f"{args.batch}) in {n} passes (the first {per_pass:.3f}x), {args.epochs} fine-tuning "
        f"epochs each; files in {args.save}",
        flush=True,
    )

    def pruned(r: PassRow) -> None:
        print(
            f"pass {r.index}/{n}: pruned to {r.measured:.3f}x (asked {r.asked:.3f}x), "
            f"{r.measured_ms:.3f} ms, {r.params:,} params, test accuracy "
            f"{_acc(r.pruned_accuracy)}; cfg {r.cfg}",
            flush=True,
        )
        for note in r.notes:
            print(f"  note: {note}")

    def epoch(k: int, e: EpochResult) -> None:
        print(
            f"pass {k}/{n} epoch {e.epoch}/{args.epochs}  loss {e.train_loss:.4f}  "
            f"test accuracy {100 * e.test_accuracy:.2f}% (best {100 * e.best_accuracy:.2f}%)  "
            f"{e.seconds:.1f} s",
            flush=True,
        )

    def done(r: PassRow) -> None:
        print(
            f"pass {r.index}/{n}: fine-tuned, test accuracy {_acc(r.finetuned_accuracy)} "
            f"({r.checkpoint})",
            flush=True,
        )

    try:
        result = slim_loop(
            model,
            train_set,
            test_set,
            options,
            train,
            passes=n,
            save_dir=args.save,
            arch=args.arch,
            depth=args.depth,
            dataset=args.dataset,
            continue_from=args.continue_from,
            latency_cache=args.latency_cache,
            plots=not args.no_plots,
            on_pruned=pruned,
            on_pass_end=done,
            on_epoch_end=epoch,
        )
    except TrainingInterrupted as stop:
        saved = f"; the fine-tuning checkpoint is {stop.checkpoint}" if stop.checkpoint else ""
        print(
            f"slimfx slim-loop: interrupted{saved}; run the same command to resume", file=sys.stderr
        )
        return INTERRUPTED
    if result.skipped:
        print(f"passes done before (from loop.json): {', '.join(map(str, result.skipped))}")
    print(loop_table(result.rows, result.original))
    files = ", ".join(str(p) for p in result.files.values())
    print(f"final model: {result.checkpoint}; wrote {files}")
    return 0


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
