"""``slimfx prune``: the reference ``vggprune.py`` on top of the verified slimming pass."""

from __future__ import annotations

import argparse
import math

import torch

from slimfx.cli.train import add_model_arguments, positive_int
from slimfx.data import load_dataset
from slimfx.files import ensure_output_dir
from slimfx.ir.options import SlimOptions
from slimfx.workflow.prune import PruneOutcome, load_trained_model, prune_model


def percent_value(text: str) -> float:
    """argparse type: a fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not math.isfinite(value) or not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def round_to_value(text: str) -> int | str:
    """argparse type: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {text!r}"
        ) from None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "prune",
        help="prune a sparsity-trained checkpoint by a global BatchNorm |gamma| threshold",
        description="Prune --percent of the channels with the smallest BatchNorm scaling "
        "factors, build the structurally smaller model (verified against the masked "
        "original), test both, and write prune.txt and pruned.pth ({'cfg', 'state_dict'}, "
        "loadable by the reference vgg(cfg=cfg)) plus plots to --save.",
    )
    add_model_arguments(p)
    p.add_argument(
        "--percent",
        type=percent_value,
        default=0.5,
        help="fraction of channels to prune (default: 0.5)",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="checkpoint to prune (the reference code's, slimfx's, or a state dict)",
    )
    p.add_argument(
        "--save",
        default="logs/",
        metavar="DIR",
        help="folder for prune.txt, pruned.pth and the plots (default: logs/)",
    )
    p.add_argument(
        "--min-channels",
        type=positive_int,
        default=1,
        metavar="N",
        help="no layer keeps fewer channels (default: 1)",
    )
    p.add_argument(
        "--round-to",
        type=round_to_value,
        default=1,
        metavar="N|auto",
        help="round kept widths up to a multiple of N; 'auto' measures the fastest (default: 1)",
    )
    p.add_argument(
        "--no-compensate",
        action="store_true",
        help="zero pruned channels' gamma and beta like the reference code, instead "
        "of folding their constant output into the next layer",
    )
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.set_defaults(run=run)


def summary(outcome: PruneOutcome) -> str:
    """What ``slimfx prune`` prints: the reference table, ratio, accuracies, cfg, files."""
    report = outcome.result.report

    def acc(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    lines = [str(report)]
    lines.append(f"Test accuracy of the masked model: {acc(outcome.masked_accuracy)}")
    lines.append(f"Test accuracy of the slim model: {acc(outcome.slim_accuracy)}")
    lines.append(f"Configuration: {outcome.result.cfg}")
    if outcome.files:
        lines.append("wrote " + ", ".join(str(p) for p in outcome.files.values()))
    return "\n".join(lines)


def slim_options(args: argparse.Namespace) -> SlimOptions:
    """The :class:`slimfx.SlimOptions` of ``slimfx prune``'s flags (``--round-to`` apart:
    it may be ``auto``, resolved by :func:`slimfx.workflow.prune.prune_model`)."""
    return SlimOptions(
        percent=args.percent, min_channels=args.min_channels, compensate=not args.no_compensate
    )


def run(args: argparse.Namespace) -> int:
    test_set = load_dataset(args.dataset, False, args.data_dir, download=args.download)
    model, ckpt = load_trained_model(
        args.model, arch=args.arch, depth=args.depth, dataset=args.dataset
    )
    if "epoch" in ckpt:
        try:  # a number or a 0-d tensor in the reference code's files; shown, not needed
            best_text = f" Prec1: {float(ckpt['best_prec1']):f}"
        except (KeyError, TypeError, ValueError, RuntimeError):
            best_text = ""
        print(f"=> loaded checkpoint '{args.model}' (epoch {ckpt['epoch']}){best_text}")
    else:
        print(f"=> loaded '{args.model}'")
    ensure_output_dir(args.save)  # fail before the work when --save cannot be written
    device = "cuda" if not args.no_cuda and torch.cuda.is_available() else "cpu"
    outcome = prune_model(
        model,
        slim_options(args),
        round_to=args.round_to,
        test_set=test_set,
        save_dir=args.save,
        test_batch_size=args.test_batch_size,
        device=device,
        plots=not args.no_plots,
    )
    print(summary(outcome))
    return 0
