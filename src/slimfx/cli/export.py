"""``slimfx export``: a checkpoint (pruned or not) to a checked ONNX file."""

from __future__ import annotations

import argparse
import os

import torch

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


def run(args: argparse.Namespace) -> int:
    from slimfx.export.onnx import export_onnx

    model = load_model(args.model, args.arch, args.depth, args.dataset)
    example = example_input(args, args.batch_size)
    check_inputs_fit(model, example, f"--input-size {args.input_size}: an input")
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


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (checked against PyTorch in onnxruntime)",
        description="Rebuild the model of a checkpoint (a pruned model from its cfg) and "
        "write it to ONNX. The file is written only after onnx.checker and onnxruntime, "
        "run on a batch of another size, agree with PyTorch within 1e-4 relative.",
    )
    add_model_arguments(parser)
    parser.add_argument("--onnx", required=True, metavar="PATH", help="ONNX file to write")
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
    parser.set_defaults(run=run)
