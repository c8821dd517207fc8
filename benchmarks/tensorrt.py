"""TensorRT engines of the original and the slim model, timed beside onnxruntime-CUDA and
PyTorch CUDA in one alternating run (for a machine with an NVIDIA GPU).

For each model (original, slim) the script exports the checked float ONNX file
(:func:`slimfx.export_onnx`) and, with ``--int8``, the int8 QDQ file (calibrated on random
inputs here: latency does not depend on the calibration). It then builds, through
onnxruntime's TensorRT execution provider, an fp32, an fp16 and — from the QDQ file — an
int8 engine (engine builds are cached in ``--cache``), and times every engine, the float
model on onnxruntime's CUDA provider and in PyTorch CUDA eager (fp32 and fp16 autocast), all
in alternating rounds (:func:`slimfx.bench.timing.time_rounds`; medians). Results go to
``--out`` as ``tensorrt-<gpu>.md/.json``.

    python benchmarks/tensorrt.py --out benchmarks/results/cuda-h200
    python benchmarks/tensorrt.py --model vgg16_bn --batches 1,64 --no-int8

Without a CUDA GPU, or without onnxruntime's TensorRT provider, it says so and exits 2
before doing any work.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import torch

import slimfx
from slimfx.bench.backends import machine_info
from slimfx.bench.timing import time_rounds
from slimfx.export.check import resize_batch
from slimfx.files import write_text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vgg16_bn", choices=common.MODELS)
    p.add_argument("--percent", type=float, default=0.5)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--batches", type=common.int_list, default="1,64")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--cache", default=None, help="TensorRT engine cache (default: a temp dir)")
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args(argv)


def available() -> str | None:
    """Why the benchmark cannot run here, or ``None``."""
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    import onnxruntime as ort

    missing = {"TensorrtExecutionProvider", "CUDAExecutionProvider"} - set(
        ort.get_available_providers()
    )
    return f"this onnxruntime has no {', '.join(sorted(missing))}" if missing else None


def trt_session(path: Path, cache: Path, precision: str):
    import onnxruntime as ort

    options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
    options["trt_fp16_enable"] = precision in ("fp16", "int8")
    options["trt_int8_enable"] = precision == "int8"  # explicit QDQ: no calibration table
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3
    session = ort.InferenceSession(
        str(path),
        session_options,
        providers=[("TensorrtExecutionProvider", options), "CUDAExecutionProvider"],
    )
    if "TensorrtExecutionProvider" not in session.get_providers():
        raise RuntimeError("onnxruntime did not enable TensorRT")
    return session


def ort_session(path: Path, provider: str = "CUDAExecutionProvider"):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=[provider])


def ort_call(session, x: torch.Tensor):
    """One inference with input and output bound on the GPU (no copies in the timing)."""
    import onnxruntime as ort

    binding = session.io_binding()
    value = ort.OrtValue.ortvalue_from_numpy(x.numpy(), "cuda", 0)
    binding.bind_ortvalue_input(session.get_inputs()[0].name, value)
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda")

    def call():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return call


def torch_call(module: torch.nn.Module, x: torch.Tensor, half: bool):
    placed = x.cuda()

    def call():
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=half):
            module(placed)
        torch.cuda.synchronize()

    return call


def main(argv=None) -> int:
    args = parse_args(argv)
    why = available()
    if why:
        print(f"tensorrt benchmark: cannot run here: {why}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    model, example = common.build(args.model)
    slim = slimfx.slim(model, example, args.percent, round_to=args.round_to).module.eval()
    models = {"original": model, "slim": slim}
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimfx-trt-") as tmp:
        tmp = Path(tmp)
        cache = Path(args.cache) if args.cache else tmp / "engines"
        cache.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, module in models.items():
            files[name] = slimfx.export_onnx(module, example, tmp / f"{name}.onnx").path
            if args.int8:
                calibration = resize_batch((example,), 32, seed=0)[0]  # one batch of 32
                quantize = slimfx.QuantizeOptions(calibration, calibration_images=32)
                files[f"{name}-int8"] = slimfx.export_onnx(
                    module, example, tmp / f"{name}-int8.onnx", quantize=quantize
                ).path
        for batch in args.batches:
            (x,) = resize_batch((example,), batch, seed=batch)
            calls = {}
            for name, module in models.items():
                cuda_module = module.cuda().eval()
                calls[f"{name} torch-cuda fp32"] = torch_call(cuda_module, x, half=False)
                calls[f"{name} torch-cuda fp16"] = torch_call(cuda_module, x, half=True)
                calls[f"{name} ort-cuda fp32"] = ort_call(ort_session(files[name]), x)
                for precision in ("fp32", "fp16"):
                    session = trt_session(files[name], cache, precision)
                    calls[f"{name} tensorrt {precision}"] = ort_call(session, x)
                if args.int8:
                    session = trt_session(files[f"{name}-int8"], cache, "int8")
                    calls[f"{name} tensorrt int8"] = ort_call(session, x)
            timings = time_rounds(calls, args.rounds, args.warmup, 0.05, lambda n: None)
            medians = {k: float(np.median(v[0]) * 1e3) for k, v in timings.items()}
            for key, ms in medians.items():
                model_name, runtime, precision = key.split(" ")
                base = medians[f"original {runtime} {precision}"]
                rows.append(
                    {
                        "batch": batch,
                        "model": model_name,
                        "runtime": runtime,
                        "precision": precision,
                        "median_ms": ms,
                        "speedup": base / ms,
                    }
                )
            print(f"batch {batch}: timed {len(calls)} engines", file=sys.stderr, flush=True)
    info = machine_info()
    gpu = str(info.get("gpu", "gpu"))
    lines = [
        f"## TensorRT, onnxruntime-CUDA and PyTorch CUDA: {args.model}, {args.percent:.0%} "
        f"pruned, round_to {args.round_to}",
        "",
        f"{gpu}, CUDA {info.get('cuda')}, torch {info.get('torch')}, onnxruntime "
        f"{info.get('onnxruntime')}; medians of {args.rounds} alternating rounds.",
        "",
        "| batch | runtime | precision | original ms | slim ms | speedup |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        if r["model"] != "slim":
            continue
        base = next(
            o["median_ms"]
            for o in rows
            if o["model"] == "original"
            and (o["batch"], o["runtime"], o["precision"])
            == (r["batch"], r["runtime"], r["precision"])
        )
        lines.append(
            f"| {r['batch']} | {r['runtime']} | {r['precision']} | {base:.3f} | "
            f"{r['median_ms']:.3f} | {r['speedup']:.2f}× |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"tensorrt-{args.model}-{common.slug(gpu)}"
    write_text(out / f"{stem}.md", text)
    data = {"machine": info, "settings": vars(args), "rows": rows}
    data["seconds"] = time.perf_counter() - start
    write_text(out / f"{stem}.json", json.dumps(data, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
