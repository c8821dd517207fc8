"""The digits demo model where it is deployed: backend × precision × original/slim.

Runs the demo's training (sparsity-trained VGG-11 on the bundled digits, 50 % slimmed with
compensation, fine-tuned), exports the original, the slim model and the slim model in int8
(onnxruntime static quantization, QDQ, calibrated on 128 training images), measures the
test accuracy of each file, and times them all side by side in one alternating run on
onnxruntime, OpenVINO (when installed), PyTorch eager and torch.compile (medians).

    python benchmarks/deployment.py --out benchmarks/results/cpu-2vcpu
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import common
import torch

import slimfx
from slimfx.bench.backends import machine_info
from slimfx.bench.latency import measure_latency
from slimfx.data import load_dataset
from slimfx.export.quantize import onnx_accuracy
from slimfx.files import write_text
from slimfx.train.evaluation import evaluate
from slimfx.workflow.demo import DemoConfig, run_demo
from slimfx.workflow.prune import load_trained_model

BACKENDS = ("ort-cpu", "openvino-cpu", "torch-cpu", "torch-compile")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    train_set, test_set = load_dataset("digits", True), load_dataset("digits", False)
    with tempfile.TemporaryDirectory(prefix="slimfx-deploy-") as tmp:
        tmp = Path(tmp)
        config = DemoConfig(out_dir=tmp / "demo", export=False, bench=False)
        run_demo(config)
        build = {"arch": "vgg", "depth": config.depth, "dataset": "digits"}
        original, _ = load_trained_model(tmp / "demo/sparsity/model_best.pth.tar", **build)
        slim, _ = load_trained_model(tmp / "demo/finetune-compensate/model_best.pth.tar", **build)
        original, slim = original.eval(), slim.eval()
        x = torch.stack([test_set[i][0] for i in range(2)])
        int8 = slimfx.export_onnx(
            slim, x, tmp / "slim-int8.onnx", quantize=slimfx.QuantizeOptions(train_set)
        )
        slimfx.export_onnx(slim, x, tmp / "slim.onnx")
        accuracy = {
            "original": evaluate(original, test_set),
            "slim": evaluate(slim, test_set),
            "slim int8": onnx_accuracy(int8.path, test_set),
            "slim (onnxruntime float)": onnx_accuracy(tmp / "slim.onnx", test_set),
        }
        report = measure_latency(
            {"original": original, "slim": slim, "slim int8": str(int8.path)},
            x,
            batches=(args.batch,),
            backends=args.backends.split(","),
            threads=args.threads,
            rounds=args.rounds,
        )
    info = machine_info(args.threads)
    lines = [
        "## The digits VGG-11 where it is deployed",
        "",
        f"{info.get('cpu')} ({info.get('cpu_count')} CPUs), torch {info.get('torch')}, "
        f"onnxruntime {info.get('onnxruntime')}, OpenVINO {info.get('openvino', '-')}; batch "
        f"{args.batch}, {args.threads} threads, medians of {args.rounds} alternating rounds "
        "(all models and backends in one run).",
        "",
        "| backend | precision | model | latency ms | speedup | test accuracy |",
        "|---|---|---|---:|---:|---:|",
    ]
    for backend in report.backends:
        for name in ("original", "slim", "slim int8"):
            try:
                stats = report.stats(backend, args.batch, name)
            except KeyError:
                continue
            speedup = (
                "1.00×"
                if name == "original"
                else (f"{report.row(backend, args.batch, name).speedup:.2f}×")
            )
            precision = "int8" if name.endswith("int8") else "float32"
            lines.append(
                f"| {backend} | {precision} | {name.split()[0]} | {stats.median_ms:.2f} | "
                f"{speedup} | {100 * accuracy[name]:.2f}% |"
            )
    lines += [
        "",
        f"Accuracy in PyTorch for float32 (onnxruntime float slim: "
        f"{100 * accuracy['slim (onnxruntime float)']:.2f}%), in onnxruntime for int8. "
        + ("Not measured: " + "; ".join(f"{k} ({v})" for k, v in report.skipped.items()))
        if report.skipped
        else "",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"deployment-{common.slug(str(info.get('cpu')))}"
    write_text(out / f"{stem}.md", text)
    data = {"accuracy": accuracy, "latency": report.to_dict(), "machine": info}
    data["seconds"] = time.perf_counter() - start
    write_text(out / f"{stem}.json", json.dumps(data, indent=1, default=str))
    print(f"wrote {out / stem}.md/.json in {data['seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
