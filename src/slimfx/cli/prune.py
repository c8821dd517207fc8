"""``slimfx prune``: the reference ``vggprune.py`` on top of the verified slimming pass."""

from __future__ import annotations

import argparse
import math

import torch

from slimfx.cli.train import add_model_arguments, positive_float, positive_int
from slimfx.data import load_dataset
from slimfx.files import check_output_dir, ensure_output_dir
from slimfx.ir.options import SlimOptions
from slimfx.targets import canonical_backend
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


def speedup_value(text: str) -> float:
    """argparse type: a finite number > 1."""
    value = positive_float(text)
    if value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number > 1, got {text!r}")
    return value


def backend_value(text: str) -> str:
    """argparse type: a backend name or alias (``onnxruntime`` → ``ort-cpu``)."""
    try:
        return canonical_backend(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_latency_arguments(parser: argparse.ArgumentParser, objective) -> None:
    """``--speedup``/``--latency-ms`` (in the ``objective`` group, exclusive with
    ``--percent``) and the target's flags (:func:`add_target_arguments`)."""
    objective.add_argument(
        "--speedup",
        type=speedup_value,
        metavar="X",
        help="prune until the model runs X times faster on --backend (measured there), "
        "keeping the most |gamma| mass",
    )
    objective.add_argument(
        "--latency-ms",
        type=positive_float,
        metavar="MS",
        help="prune until one batch runs within MS milliseconds on --backend",
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--latency-cache",
        default=None,
        metavar="DIR",
        help="cache of measured layer latencies (default: $SLIMFX_CACHE_DIR or ~/.cache/slimfx)",
    )


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--batch`` and ``--threads``: where a latency target is measured."""
    parser.add_argument(
        "--backend",
        type=backend_value,
        default="ort-cpu",
        metavar="NAME",
        help="where a latency target is measured: onnxruntime (ort-cpu), torch-cpu, "
        "ort-cuda, torch-cuda, ort-trt (default: onnxruntime)",
    )
    parser.add_argument(
        "--batch",
        type=positive_int,
        default=1,
        metavar="N",
        help="batch size of the latency target (default: 1)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="intra-op threads of the latency target (default: the runtime's)",
    )


def add_channel_arguments(
    parser, *, round_to_type, round_to_help: str, round_to_metavar: str = "N|auto"
) -> None:
    """``--min-channels``, ``--round-to`` and ``--no-compensate``."""
    parser.add_argument(
        "--min-channels",
        type=positive_int,
        default=1,
        metavar="N",
        help="no layer keeps fewer channels (default: 1)",
    )
    parser.add_argument(
        "--round-to", type=round_to_type, default=1, metavar=round_to_metavar, help=round_to_help
    )
    parser.add_argument(
        "--no-compensate",
        action="store_true",
        help="zero pruned channels' gamma and beta like the reference code, instead "
        "of folding their constant output into the next layer",
    )


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
    objective = p.add_mutually_exclusive_group()
    objective.add_argument(
        "--percent",
        type=percent_value,
        default=None,
        help="fraction of channels to prune (default: 0.5, unless a latency target is given)",
    )
    add_latency_arguments(p, objective)
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
    add_channel_arguments(
        p,
        round_to_type=round_to_value,
        round_to_help="round kept widths up to a multiple of N; 'auto' measures the fastest "
        "(default: 1)",
    )
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.set_defaults(run=run)


def summary(outcome: PruneOutcome) -> str:
    """What ``slimfx prune`` prints: the reference table, ratio, accuracies, cfg, files."""
    report = outcome.result.report

    def acc(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    lines = [str(report)]
    if report.latency is not None:
        lines.insert(0, report.latency_table())
    lines.append(f"Test accuracy of the masked model: {acc(outcome.masked_accuracy)}")
    lines.append(f"Test accuracy of the slim model: {acc(outcome.slim_accuracy)}")
    lines.append(f"Configuration: {outcome.result.cfg}")
    if outcome.files:
        lines.append("wrote " + ", ".join(str(p) for p in outcome.files.values()))
    return "\n".join(lines)


def slim_options(args: argparse.Namespace) -> SlimOptions:
    """The :class:`slimfx.SlimOptions` of ``slimfx prune``'s flags (``--round-to`` apart:
    it may be ``auto``, resolved by :func:`slimfx.workflow.prune.prune_model`)."""
    latency = {}
    if args.speedup is not None or args.latency_ms is not None:
        latency = dict(
            speedup=args.speedup,
            latency_ms=args.latency_ms,
            backend=args.backend,
            batch=args.batch,
            threads=args.threads,
        )
    return SlimOptions(
        percent=args.percent,
        min_channels=args.min_channels,
        compensate=not args.no_compensate,
        **latency,
    )


def run(args: argparse.Namespace) -> int:
    # every input is checked before anything is loaded at length, printed or created

    options = slim_options(args)
    if options.latency_target and args.round_to == "auto":
        raise ValueError(
            "--round-to auto and a latency target are exclusive: the latency "
            "planner measures the widths itself"
        )
    if options.latency_target:
        from slimfx.bench.backends import backend_status

        ok, reason = backend_status(options.backend)
        if not ok:
            raise ValueError(f"cannot measure latency on {options.backend}: {reason}")
        if args.latency_cache:
            check_output_dir(args.latency_cache, "--latency-cache")
    check_output_dir(args.save, "--save")
    model, ckpt = load_trained_model(
        args.model, arch=args.arch, depth=args.depth, dataset=args.dataset
    )
    test_set = load_dataset(args.dataset, False, args.data_dir, download=args.download)
    if "epoch" in ckpt:
        try:  # a number or a 0-d tensor in the reference code's files; shown, not needed
            best_text = f" Prec1: {float(ckpt['best_prec1']):f}"
        except (KeyError, TypeError, ValueError, RuntimeError):
            best_text = ""
        print(f"=> loaded checkpoint '{args.model}' (epoch {ckpt['epoch']}){best_text}")
    else:
        print(f"=> loaded '{args.model}'")
    ensure_output_dir(args.save)
    device = "cuda" if not args.no_cuda and torch.cuda.is_available() else "cpu"
    outcome = prune_model(
        model,
        options,
        round_to=args.round_to,
        latency_cache=args.latency_cache,
        progress=True,
        test_set=test_set,
        save_dir=args.save,
        test_batch_size=args.test_batch_size,
        device=device,
        plots=not args.no_plots,
    )
    print(summary(outcome))
    return 0
