"""Export time of each PyTorch ONNX exporter, for the original and the slim model.

Every export goes through :func:`slimfx.export_onnx` with one exporter forced, so each file
is checked (onnx.checker, onnxruntime vs PyTorch at another batch size). One warm-up export
per exporter first (imports, JIT set-up), then ``--repeats`` timed ones; the median is shown.

    python benchmarks/export_time.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import common
import torch

import slimfx
from slimfx.bench.backends import machine_info
from slimfx.export.onnx import EXPORTERS, export_onnx


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vgg19-cifar", help=", ".join(common.MODELS))
    p.add_argument("--percent", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {machine_info()['cpu']}")
    print("| model | variant | exporter | export s (median) | check s | max rel. error |")
    print("|---|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, example = common.build(name)
            slim = slimfx.slim(model, example, args.percent).module
            for variant, module in (("original", model), ("slim", slim)):
                for exporter in EXPORTERS:
                    path = Path(tmp) / f"{name}-{variant}-{exporter}.onnx"
                    export_onnx(module, example, path, exporter=exporter)  # warm-up
                    runs = [
                        export_onnx(module, example, path, exporter=exporter)
                        for _ in range(args.repeats)
                    ]
                    seconds = statistics.median(r.export_seconds for r in runs)
                    check = statistics.median(r.check_seconds for r in runs)
                    error = max(r.max_relative_error for r in runs)
                    print(
                        f"| {name} | {variant} | {exporter} | {seconds:.2f} | {check:.2f} | "
                        f"{error:.1e} |"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
