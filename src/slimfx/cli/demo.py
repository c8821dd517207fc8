"""``slimfx demo``: sparsity-train, prune, fine-tune, export and time a VGG on digits."""

from __future__ import annotations

import argparse
import sys

from slimfx.cli.prune import percent_value
from slimfx.cli.train import nonnegative_float, positive_float, positive_int
from slimfx.train.loop import EpochResult, TrainingInterrupted
from slimfx.workflow.demo import DemoConfig, run_demo, summary_lines

DEFAULTS = DemoConfig()


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole workflow on the bundled digits data (a few minutes on a CPU)",
        description="Sparsity-train the reference VGG-11 on scikit-learn's digits (upsampled "
        "to 32x32), prune it with and without compensation, fine-tune both, export to ONNX, "
        "time the models and print a results table. Everything is written to --out.",
    )
    p.add_argument(
        "--out",
        default=str(DEFAULTS.out_dir),
        metavar="DIR",
        help=f"output folder (default: {DEFAULTS.out_dir})",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=DEFAULTS.epochs,
        metavar="N",
        help=f"sparsity-training epochs (default: {DEFAULTS.epochs})",
    )
    p.add_argument(
        "--s",
        type=nonnegative_float,
        default=DEFAULTS.sparsity,
        help=f"sparsity strength (default: {DEFAULTS.sparsity:g})",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=DEFAULTS.lr,
        help=f"learning rate of sparsity training (default: {DEFAULTS.lr:g})",
    )
    p.add_argument(
        "--percent",
        type=percent_value,
        default=DEFAULTS.percent,
        help=f"fraction of channels to prune (default: {DEFAULTS.percent:g})",
    )
    p.add_argument(
        "--finetune-epochs",
        type=positive_int,
        default=DEFAULTS.finetune_epochs,
        metavar="N",
        help=f"fine-tuning epochs (default: {DEFAULTS.finetune_epochs})",
    )
    p.add_argument(
        "--seed", type=int, default=DEFAULTS.seed, help=f"random seed (default: {DEFAULTS.seed})"
    )
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    p.add_argument("--no-bench", action="store_true", help="skip the latency measurement")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(
        out_dir=args.out,
        epochs=args.epochs,
        sparsity=args.s,
        lr=args.lr,
        percent=args.percent,
        finetune_epochs=args.finetune_epochs,
        seed=args.seed,
        export=not args.no_export,
        bench=not args.no_bench,
        progress=sys.stderr.isatty(),
    )

    def epoch_line(stage: str, e: EpochResult) -> None:
        sparse = (
            "" if e.sparse_fraction is None else f", |gamma|<0.01: {100 * e.sparse_fraction:.0f}%"
        )
        print(
            f"  {stage} epoch {e.epoch}: test accuracy {100 * e.test_accuracy:.2f}%"
            f"{sparse} ({e.seconds:.0f} s)",
            flush=True,
        )

    def stage_line(text: str) -> None:
        print(text, flush=True)

    try:
        result = run_demo(config, on_epoch_end=epoch_line, on_stage=stage_line)
    except TrainingInterrupted as stop:
        print(f"slimfx demo: {stop}", file=sys.stderr)
        return 130
    print()
    print(result.to_markdown())
    print()
    for line in summary_lines(result):
        print(line)
    print(f"everything is in {args.out}/ (results.md, plots, checkpoints, ONNX files)")
    return 0
