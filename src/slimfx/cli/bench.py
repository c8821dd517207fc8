"""``slimfx bench``: latency of the original and the slim model in every available runtime."""

from __future__ import annotations

import argparse
import sys

from slimfx.bench.backends import BACKEND_ALIASES, BACKENDS, canonical_backend
from slimfx.cli.export import add_model_arguments, build_model, example_input, load_model
from slimfx.cli.prune import backend_value, percent_value, speedup_value
from slimfx.cli.train import positive_float
from slimfx.files import ensure_output_dir
from slimfx.report import latency_summary
from slimfx.validation import check_inputs_fit


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ValueError(f"--batches must be comma-separated positive integers, got {text!r}")
    return values


def _backends(text: str) -> list[str] | None:
    if text == "all":
        return list(BACKENDS)
    if text == "default":
        return None
    names = [v.strip().lower() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in BACKENDS and n not in BACKEND_ALIASES]
    if unknown or not names:
        raise ValueError(
            f"--backends: unknown {', '.join(unknown) or text!r}; use 'default', 'all' or "
            f"a comma-separated list of {', '.join(BACKENDS)}"
        )
    return list(dict.fromkeys(canonical_backend(n) for n in names))


def _round_to(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"--round-to must be 'auto' or a positive integer, got {text!r}")
    return value


def _recorded_latency(pruned: str) -> dict | None:
    """The latency record of ``prune.json`` beside a pruned checkpoint, if it has one."""
    import json
    from pathlib import Path

    summary = Path(pruned).with_name("prune.json")
    try:
        return json.loads(summary.read_text(encoding="utf-8"))["report"].get("latency")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def run(args: argparse.Namespace) -> int:
    from slimfx.api import slim
    from slimfx.bench.latency import compare_latency
    from slimfx.bench.models import synthetic_scales
    from slimfx.bench.round_to import measure_round_to

    batches = _ints(args.batches)
    backends = _backends(args.backends)
    round_to = _round_to(args.round_to)
    example = example_input(args)
    fits = f"--input-size {args.input_size}: an input"
    if args.model:
        original = load_model(args.model, args.arch, args.depth, args.dataset)
    else:
        fresh = build_model(args.arch, args.depth, args.dataset, None)
        original = synthetic_scales(fresh, args.seed).eval()
        print(
            f"no --model: {args.arch}-{args.depth} with random BatchNorm scales (seed "
            f"{args.seed}) stands in for a trained model",
            file=sys.stderr,
        )
    check_inputs_fit(original, example, fits)
    slim_model = None
    if args.pruned:
        slim_model = load_model(args.pruned, args.arch, args.depth, args.dataset)
        check_inputs_fit(slim_model, example, fits)
    if args.out:
        ensure_output_dir(args.out)  # fail before the measurements, not after them
    latency = None
    if slim_model is not None:
        label = f"slim: {args.pruned}"
        latency = _recorded_latency(args.pruned)
    elif args.speedup is not None or args.latency_ms is not None:
        target_batch = args.batch or batches[0]
        result = slim(
            original,
            example,
            speedup=args.speedup,
            latency_ms=args.latency_ms,
            backend=args.backend,
            batch=target_batch,
            threads=args.threads,
        )
        slim_model, latency = result.module, result.plan.latency
        print(latency_summary(latency), file=sys.stderr)
        asked = f"{args.speedup:g}x faster" if args.speedup else f"{args.latency_ms:g} ms"
        label = f"slim: {asked} on {latency['target']['backend']}, batch {target_batch}"
    else:
        if round_to == "auto":
            choice = measure_round_to(
                original,
                example,
                0.5 if args.percent is None else args.percent,
                threads=args.threads,
                progress=True,
            )
            print(choice.table(), file=sys.stderr)
            round_to = choice.round_to
        percent = 0.5 if args.percent is None else args.percent
        slim_model = slim(original, example, percent, round_to=round_to).module
        label = f"slim: {percent:.0%} pruned, round_to={round_to}"
    report = compare_latency(
        original,
        slim_model,
        example,
        batches=batches,
        backends=backends,
        rounds=args.rounds,
        warmup=args.warmup,
        threads=args.threads,
        progress=True,
    )
    if latency is not None:
        report = report.with_prediction("slim", latency)
    report.settings["slim"] = label
    print(label)
    print(report.table())
    if args.out:
        paths = report.save(args.out, "bench", plot=not args.no_plot)
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="latency of the original vs the slim model (PyTorch, onnxruntime, CUDA)",
        description="Time the original and the slim model in alternating rounds on every "
        "available backend; print median, p90, min-max, speedup and latency efficiency "
        "(speedup / MACs ratio), and write JSON, Markdown and a PNG plot.",
    )
    add_model_arguments(parser, required=False)
    parser.add_argument(
        "--pruned", metavar="PATH", help="a pruned checkpoint (else --model is slimmed here)"
    )
    objective = parser.add_mutually_exclusive_group()
    objective.add_argument(
        "--percent", type=percent_value, default=None, help="pruning ratio (default: 0.5)"
    )
    objective.add_argument(
        "--speedup",
        type=speedup_value,
        metavar="X",
        help="slim to run X times faster on --backend at --batch (measured there); the "
        "table then shows the plan's predicted latency beside the measured one",
    )
    objective.add_argument(
        "--latency-ms",
        type=positive_float,
        metavar="MS",
        help="slim to run one --batch within MS milliseconds on --backend",
    )
    parser.add_argument(
        "--backend",
        type=backend_value,
        default="ort-cpu",
        metavar="NAME",
        help="target of --speedup/--latency-ms (default: onnxruntime)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help="batch size of --speedup/--latency-ms (default: the first of --batches)",
    )
    parser.add_argument(
        "--round-to",
        default="1",
        help="width multiple for the slim model, or 'auto' to measure the best (default: 1)",
    )
    parser.add_argument("--batches", default="1,8,64", help="batch sizes (default: 1,8,64)")
    parser.add_argument(
        "--backends",
        default="default",
        help=f"'default', 'all' or a comma-separated list of {', '.join(BACKENDS)}",
    )
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (default: 15)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up calls (default: 3)")
    parser.add_argument("--threads", type=int, help="intra-op threads (runtime default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stand-in model")
    parser.add_argument(
        "--out", default="bench", metavar="DIR", help="folder for bench.json/.md/.png"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    parser.set_defaults(run=run)
