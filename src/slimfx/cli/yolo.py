"""``slimfx yolo prune`` / ``slimfx yolo train``: network slimming of Ultralytics YOLO models.

Needs the ``yolo`` extra (``pip install 'slimfx[yolo]'``); Ultralytics is imported only
when one of these commands runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slimfx.cli.prune import percent_value
from slimfx.cli.train import nonnegative_float, positive_int
from slimfx.files import ensure_output_dir, write_text

PICKLE_NOTICE = (
    "note: {path} is an Ultralytics checkpoint, a full pickle: loading it runs code stored in "
    "the file (you passed it, so it is loaded)"
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "yolo",
        help="network slimming of Ultralytics YOLO models (needs slimfx[yolo])",
        description="Sparsity-train, prune and fine-tune stock Ultralytics YOLO models "
        "(YOLOv5u, YOLOv8, YOLO11: detect, segment, pose, obb, classify). The pruned model "
        "stays an Ultralytics model: YOLO(path) loads it, and its val, predict and export "
        "work on it.",
    )
    sub = p.add_subparsers(dest="yolo_command", metavar="COMMAND", parser_class=type(p))
    sub.required = True

    prune = sub.add_parser(
        "prune",
        help="slim a model by its BatchNorm |gamma|, verified, into an Ultralytics checkpoint",
        description="Prune --percent of the prunable channels with the smallest BatchNorm "
        "scaling factors. The slim model's decoded outputs are verified against the masked "
        "original in float64 at --imgsz and a second size. Writes slim.pt (an Ultralytics "
        "checkpoint), plan.json and report.txt to --save.",
    )
    prune.add_argument("--model", required=True, metavar="PATH", help="a .pt checkpoint or yaml")
    prune.add_argument(
        "--percent", type=percent_value, default=0.5, help="fraction to prune (default: 0.5)"
    )
    prune.add_argument(
        "--imgsz", type=positive_int, default=640, metavar="N", help="image size (default: 640)"
    )
    prune.add_argument(
        "--min-channels",
        type=positive_int,
        default=1,
        metavar="N",
        help="no layer keeps fewer channels (default: 1)",
    )
    prune.add_argument(
        "--round-to",
        type=positive_int,
        default=1,
        metavar="N",
        help="round kept widths up to a multiple of N (default: 1)",
    )
    prune.add_argument(
        "--no-compensate",
        action="store_true",
        help="zero pruned channels' gamma and beta instead of folding their constants",
    )
    prune.add_argument(
        "--data", metavar="YAML", help="a dataset yaml: validate before and after pruning"
    )
    prune.add_argument("--device", default="cpu", help="device for validation (default: cpu)")
    prune.add_argument("--save", default="logs/", metavar="DIR", help="output folder")
    prune.set_defaults(run=run_prune)

    train = sub.add_parser(
        "train",
        help="train or fine-tune a model with Ultralytics' trainer, optionally with sparsity",
        description="Train --model on --data with Ultralytics' trainer, keeping a pruned "
        "model's structure (Ultralytics' own train() rebuilds it from its yaml). With -sr, "
        "add network slimming's L1 penalty on the prunable BatchNorms' gammas (AMP, EMA and "
        "DDP aware) and write gammas.csv and gammas.png per epoch to the run folder.",
    )
    train.add_argument("--model", required=True, metavar="PATH", help="a .pt checkpoint or yaml")
    train.add_argument("--data", required=True, metavar="YAML", help="the dataset yaml")
    train.add_argument(
        "-sr",
        "--sparsity-regularization",
        dest="sr",
        action="store_true",
        help="train with the L1 penalty on BatchNorm gammas",
    )
    train.add_argument(
        "--s",
        "--sparsity",
        dest="s",
        type=nonnegative_float,
        default=1e-3,
        help="penalty strength (default: 1e-3)",
    )
    train.add_argument(
        "--decay", action="store_true", help="decay --s linearly to a tenth over the epochs"
    )
    train.add_argument("--epochs", type=positive_int, default=100, metavar="N")
    train.add_argument("--imgsz", type=positive_int, default=640, metavar="N")
    train.add_argument("--batch", type=positive_int, default=16, metavar="N")
    train.add_argument("--workers", type=int, default=8, metavar="N")
    train.add_argument("--device", default=None, help="Ultralytics' device (e.g. cpu, 0, 0,1)")
    train.add_argument("--save", default="runs/", metavar="DIR", help="the runs folder")
    train.add_argument("--name", default="train", help="the run's name in --save")
    train.set_defaults(run=run_train)


def _integration():
    try:
        from slimfx.integrations import ultralytics
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    return ultralytics


def _load(path: str):
    yolo = _integration()
    if Path(path).suffix.lower() not in (".yaml", ".yml"):
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such model file: {path}")
        print(PICKLE_NOTICE.format(path=path), file=sys.stderr)
    return yolo.load_yolo(path, trust_pickles=True)


def run_prune(args: argparse.Namespace) -> int:
    from slimfx.ir.options import SlimOptions

    save = ensure_output_dir(args.save)  # before any work
    if args.data is not None and not Path(args.data).is_file():
        raise FileNotFoundError(f"no such dataset yaml: {args.data}")
    yolo = _integration()
    model = _load(args.model)
    options = SlimOptions(
        min_channels=args.min_channels,
        round_to=args.round_to,
        compensate=not args.no_compensate,
    )
    before = _validate(yolo, model, args) if args.data else None
    slim = yolo.slim_yolo(model, args.percent, args.imgsz, options=options)
    after = _validate(yolo, slim.model, args) if args.data else None
    report = str(slim.result.report)
    errors = ", ".join(f"{size}px {err:.1e}" for size, err in slim.errors.items())
    lines = [report, f"Decoded outputs against the masked original (float64): {errors}"]
    if before is not None:
        what = "top-1" if slim.model.task == "classify" else "mAP50-95"
        lines.append(f"{what} before: {before:.4f}, after slimming: {after:.4f}")
    yolo.save_yolo(slim.model, save / "slim.pt", imgsz=args.imgsz)
    write_text(save / "plan.json", slim.result.plan.to_json())
    write_text(save / "report.txt", "\n".join(lines) + "\n")
    lines.append(f"wrote {save / 'slim.pt'}, {save / 'plan.json'}, {save / 'report.txt'}")
    print("\n".join(lines))
    return 0


def _validate(yolo, model, args) -> float:
    metrics = yolo.validate_yolo(
        model, args.data, imgsz=args.imgsz, device=args.device, plots=False, verbose=False
    )
    box = getattr(metrics, "box", None)  # detection-type tasks; classification: top-1
    return float(box.map) if box is not None else float(metrics.top1)


def run_train(args: argparse.Namespace) -> int:
    ensure_output_dir(args.save)
    if not Path(args.data).is_file():
        raise FileNotFoundError(f"no such dataset yaml: {args.data}")
    yolo = _integration()
    model = _load(args.model)
    trained = yolo.train_yolo(
        model,
        args.data,
        sparsity=args.s if args.sr else 0.0,
        decay=args.decay,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        workers=args.workers,
        device=args.device,
        project=str(Path(args.save).resolve()),
        name=args.name,
        exist_ok=True,
    )
    folder = trained.trainer.save_dir
    print(f"trained {args.epochs} epoch(s): {folder / 'weights' / 'best.pt'}")
    if trained.slimfx_gammas:
        last = trained.slimfx_gammas[-1]
        print(
            f"gammas after epoch {last['epoch']}: mean {last['mean']:.4g}, median "
            f"{last['median']:.4g}, {100 * last['below_1e-2']:.1f}% below 1e-2 "
            f"({folder / 'gammas.csv'})"
        )
    return 0
