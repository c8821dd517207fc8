"""``slimfx export``: a checkpoint (pruned or not) to a checked ONNX file (or, with
``--format pt2``, a checked ``torch.export`` archive)."""

from __future__ import annotations

import argparse
import os

import torch

from slimfx.cli.train import positive_int
from slimfx.data import DATASETS
from slimfx.models import MODEL_BUILDERS
from slimfx.validation import check_inputs_fit

#: Datasets the CLI models are built for, and their input shape (channels, height, width).
INPUT_SHAPE = (3, 32, 32)


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--model``, ``--arch``, ``--depth``, ``--dataset`` and ``--input-size``."""
    parser.add_argument(
        "--model",
        required=required,
        metavar="PATH",
        help="checkpoint: pruned.pth (with its cfg), a training checkpoint or a state dict",
    )
    parser.add_argument(
        "--arch", default="vgg", help=f"{', '.join(sorted(MODEL_BUILDERS))} (default: vgg)"
    )
    parser.add_argument(
        "--depth", type=int, default=19, help="depth when the file has no cfg (default: 19)"
    )
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default="cifar10",
        help="sets the number of classes (default: cifar10)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=INPUT_SHAPE[1],
        metavar="PIXELS",
        help="height and width of the input (default: 32)",
    )


def build_model(arch: str, depth: int, dataset: str, cfg: list | None) -> torch.nn.Module:
    """The model registry of :mod:`slimfx.models` (``VGG`` where it has none)."""
    from slimfx import models

    if hasattr(models, "build_model"):
        return models.build_model(arch, depth, dataset, cfg)
    if arch != "vgg":
        raise ValueError(f"--arch must be 'vgg', got {arch!r}")
    return models.VGG(dataset=dataset, depth=depth, cfg=cfg)


def load_model(path: str | os.PathLike, arch: str, depth: int, dataset: str) -> torch.nn.Module:
    """Rebuild the model a checkpoint holds (its ``cfg`` when it has one) in eval mode."""
    from slimfx.workflow.prune import load_trained_model

    model, _ = load_trained_model(path, arch=arch, depth=depth, dataset=dataset)
    return model.eval()


def example_input(args: argparse.Namespace, batch: int = 1) -> torch.Tensor:
    if args.input_size < 1:
        raise ValueError(f"--input-size must be positive, got {args.input_size}")
    if batch < 1:
        raise ValueError(f"--batch-size must be positive, got {batch}")
    return torch.randn(batch, INPUT_SHAPE[0], args.input_size, args.input_size)


def output_path(args: argparse.Namespace) -> str:
    """The file to write: ``--out``, or ``--onnx`` for ONNX; ``ValueError`` for a missing,
    doubled or mismatched one."""
    if args.onnx and args.out:
        raise ValueError("give the file to write once: --out PATH or --onnx PATH")
    if args.format == "pt2":
        if args.onnx:
            raise ValueError("--onnx writes ONNX; with --format pt2 give --out PATH")
        if args.opset is not None or args.exporter != "auto":
            raise ValueError("--opset and --exporter are ONNX settings; --format pt2 has none")
    path = args.out or args.onnx
    if not path:
        raise ValueError(f"--out PATH is required (the {args.format} file to write)")
    return path


def run(args: argparse.Namespace) -> int:
    from slimfx.export.onnx import export_onnx

    path = output_path(args)
    check_int8_arguments(args)
    model = load_model(args.model, args.arch, args.depth, args.dataset)
    example = example_input(args, args.batch_size)
    check_inputs_fit(model, example, f"--input-size {args.input_size}: an input")
    if args.int8:
        return run_int8(args, model, example, path)
    if args.format == "pt2":
        from slimfx.export.pt2 import export_pt2

        print(f"wrote {export_pt2(model, example, path, dynamic_batch=not args.static_batch)}")
        return 0
    args.onnx = path
    result = export_onnx(
        model,
        example,
        args.onnx,
        opset=args.opset,
        dynamic_batch=not args.static_batch,
        exporter=args.exporter,
    )
    print(f"wrote {result}")
    return 0


# --- --int8: static quantization in onnxruntime, accuracy and latency against the float model

#: Calibration images used when ``--calib-images`` is not given.
CALIB_IMAGES = 128


def add_int8_arguments(parser: argparse.ArgumentParser) -> None:
    """``--int8`` and its settings."""
    group = parser.add_argument_group(
        "int8",
        "--int8 writes the model quantized by onnxruntime (QDQ, per-channel weights), "
        "calibrated on training images, then reports float and int8 test accuracy and "
        "the latency of both (and of --original) in onnxruntime",
    )
    group.add_argument("--int8", action="store_true", help="write the int8 model")
    group.add_argument(
        "--calib-data",
        choices=DATASETS,
        help="dataset whose training split calibrates (default: --dataset)",
    )
    group.add_argument(
        "--calib-images",
        type=positive_int,
        metavar="N",
        help=f"calibration images (default: {CALIB_IMAGES})",
    )
    group.add_argument(
        "--data-dir", metavar="DIR", help="folder holding the CIFAR data (default: data)"
    )
    group.add_argument(
        "--download", action="store_true", help="download CIFAR into --data-dir if missing"
    )
    group.add_argument(
        "--original", metavar="PATH", help="checkpoint of the unpruned model, timed too"
    )
    group.add_argument("--batches", help="latency batch sizes (default: 1,64)")
    group.add_argument("--rounds", type=positive_int, default=9, help="latency rounds (default: 9)")
    group.add_argument("--threads", type=positive_int, help="intra-op threads (runtime default)")


def check_int8_arguments(args: argparse.Namespace) -> None:
    """``ValueError`` for int8 settings without ``--int8`` or that cannot go together."""
    given = [
        flag
        for flag, value in (
            ("--calib-data", args.calib_data),
            ("--calib-images", args.calib_images),
            ("--data-dir", args.data_dir),
            ("--download", args.download or None),
            ("--original", args.original),
            ("--batches", args.batches),
        )
        if value is not None
    ]
    if not args.int8:
        if given:
            raise ValueError(f"{given[0]} is an --int8 setting; add --int8")
        return
    if args.format != "onnx":
        raise ValueError(f"--int8 writes ONNX; it does not go with --format {args.format}")
    args.batches = _batch_sizes(args)


def _batch_sizes(args: argparse.Namespace) -> list[int]:
    if args.batches is None:
        return [args.batch_size] if args.static_batch else [1, 64]
    try:
        sizes = [int(v) for v in args.batches.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ValueError(
            f"--batches must be comma-separated positive integers, got {args.batches!r}"
        )
    if args.static_batch and sizes != [args.batch_size]:
        raise ValueError(
            f"--static-batch fixes the batch size at {args.batch_size}: --batches can only be that"
        )
    return sizes


def run_int8(args: argparse.Namespace, model: torch.nn.Module, example, path: str) -> int:
    """Export the int8 model, then print float and int8 accuracy and the latency table."""
    from slimfx.bench.latency import measure_latency
    from slimfx.bench.timing import torch_threads
    from slimfx.data import load_dataset
    from slimfx.export.onnx import export_onnx
    from slimfx.export.quantize import QuantizeOptions, onnx_accuracy
    from slimfx.train.evaluation import evaluate

    original = None
    if args.original:
        original = load_model(args.original, args.arch, args.depth, args.dataset)
        check_inputs_fit(original, example, f"--original {args.original}: an input")
    data_dir = args.data_dir or "data"
    calib_name = args.calib_data or args.dataset
    calibration = load_dataset(calib_name, True, data_dir, download=args.download, augment=False)
    test_set = load_dataset(args.dataset, False, data_dir, download=args.download)
    options = QuantizeOptions(calibration, calibration_images=args.calib_images or CALIB_IMAGES)
    result = export_onnx(
        model,
        example,
        path,
        opset=args.opset,
        dynamic_batch=not args.static_batch,
        exporter=args.exporter,
        quantize=options,
    )
    print(f"wrote {result}")
    with torch_threads(args.threads):
        float_accuracy = evaluate(model, test_set)
    int8_accuracy = onnx_accuracy(path, test_set, threads=args.threads)
    print(
        f"test accuracy ({args.dataset}, {len(test_set)} images; calibrated on "
        f"{result.quantization.calibration_images} {calib_name} training images): "
        f"float {float_accuracy:.2%} (PyTorch), int8 {int8_accuracy:.2%} (onnxruntime), "
        f"{100 * (int8_accuracy - float_accuracy):+.2f} points"
    )
    models = {"original": original} if original is not None else {}
    models.update({"slim": model, "slim-int8": path})
    report = measure_latency(
        models,
        example,
        batches=args.batches,
        backends=["ort-cpu"],
        rounds=args.rounds,
        threads=args.threads,
        progress=False,
    )
    print(report.table())
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX or torch.export (checked against PyTorch)",
        description="Rebuild the model of a checkpoint (a pruned model from its cfg) and "
        "write it to ONNX. The file is written only after onnx.checker and onnxruntime, "
        "run on a batch of another size, agree with PyTorch within 1e-4 relative. With "
        "--format pt2, a torch.export archive, written only after the program loaded back "
        "from it agrees with PyTorch within 1e-5 relative on a batch of another size.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--format", choices=("onnx", "pt2"), default="onnx", help="file format (default: onnx)"
    )
    parser.add_argument("--out", metavar="PATH", help="file to write (.onnx, or .pt2 for pt2)")
    parser.add_argument("--onnx", metavar="PATH", help="ONNX file to write (as --out)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="batch of the example input (default: 1)"
    )
    parser.add_argument(
        "--static-batch", action="store_true", help="fix the batch size instead of 'batch'"
    )
    parser.add_argument(
        "--exporter",
        choices=("auto", "torchscript", "dynamo"),
        default="auto",
        help="PyTorch exporter (default: auto = the fastest that passes the check)",
    )
    add_int8_arguments(parser)
    parser.set_defaults(run=run)
