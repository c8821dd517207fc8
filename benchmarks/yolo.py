"""Network slimming of stock Ultralytics YOLO models, end to end, beside Torch-Pruning.

For YOLOv8n and YOLO11n (built from Ultralytics' yaml files, trained here from random
weights on a tiny drawn detection dataset, so that mAP means something):

1. sparsity training (slimfx's L1 callbacks in Ultralytics' trainer), mAP50-95;
2. slimming 50%: compensated (slimfx's default) and zeroed (the reference code's masking),
   mAP right after each, verified in float64 at two image sizes;
3. fine-tuning the compensated model with Ultralytics' trainer, mAP;
4. Torch-Pruning's BN-scale pruner on the same trained model (its YOLOv8 recipe: the
   Detect head ignored, the stock C2f blocks as they are), mAP right after;
5. parameters, MACs and onnxruntime CPU latency of original, slim and Torch-Pruning models,
   measured side by side in alternating rounds (medians).

``python benchmarks/yolo.py [--epochs 100] [--finetune 30] [--latency-size 640]``
writes ``results/yolo.{json,md}`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-settings-"))

import torch
import ultralytics

from slimfx.bench.latency import measure_latency
from slimfx.files import write_text
from slimfx.integrations.ultralytics import (
    _Decoded,
    as_yolo,
    save_yolo,
    slim_yolo,
    train_yolo,
)
from slimfx.ir.options import SlimOptions
from slimfx.testing import write_detection_dataset

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("yolov8n.yaml", "yolo11n.yaml")
#: Torch-Pruning gets this long and this much memory per model, in its own process.
TP_TIMEOUT_S = 300
MEMORY_LIMIT_GB = 8


def val_map(model: torch.nn.Module, data: Path, imgsz: int) -> float:
    wrapper = as_yolo(model)
    metrics = wrapper.val(
        data=str(data), imgsz=imgsz, batch=8, workers=0, device="cpu", plots=False, verbose=False
    )
    return float(metrics.box.map)


def torch_pruning(model: torch.nn.Module, imgsz: int, percent: float, work: Path) -> dict:
    """Torch-Pruning's BN-scale pruner on the model, in its own process (memory capped, time
    limited: on YOLO11 its dependency tracing can take all the memory); the pruned model
    comes back as a full pickle this script wrote, under ``"model"``."""
    source, target = work / "tp-input.pt", work / "tp-output.pt"
    save_yolo(model, source)
    limit = MEMORY_LIMIT_GB * 2**30

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    command = [
        sys.executable,
        __file__,
        "--torch-pruning-probe",
        str(source),
        str(target),
        str(imgsz),
        str(percent),
    ]
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=TP_TIMEOUT_S, preexec_fn=cap_memory
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"no result after {TP_TIMEOUT_S} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["killed"])[-1][:120]
        return {"ok": False, "error": f"crashed ({last}; memory capped at {MEMORY_LIMIT_GB} GB)"}
    result = json.loads(lines[-1])
    if result["ok"]:
        result["model"] = torch.load(target, weights_only=False)  # written by this script
    return result


def torch_pruning_probe(source: str, target: str, imgsz: int, percent: float) -> None:
    """The child process of :func:`torch_pruning`: prints one JSON line."""
    import torch_pruning as tp

    victim = ultralytics.YOLO(source).model.float().eval()
    for p in victim.parameters():
        p.requires_grad_(True)
    start = time.perf_counter()
    try:
        pruner = tp.pruner.BNScalePruner(
            victim,
            torch.zeros(1, 3, imgsz, imgsz),
            importance=tp.importance.BNScaleImportance(normalizer=None),
            global_pruning=True,
            pruning_ratio=percent,
            ignored_layers=[victim.model[-1]],
        )
        pruner.step()
        with torch.no_grad():
            victim(torch.zeros(1, 3, imgsz, imgsz))
    except Exception as exc:  # recorded: the stock model is what is compared
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
        print(json.dumps({"ok": False, "seconds": time.perf_counter() - start, "error": error}))
        return
    torch.save(victim, target)
    print(json.dumps({"ok": True, "seconds": time.perf_counter() - start}))


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_model(cfg: str, data: Path, args, work: Path) -> dict:
    torch.manual_seed(0)
    model = ultralytics.YOLO(cfg).model
    common = dict(
        imgsz=args.imgsz,
        batch=8,
        workers=0,
        device="cpu",
        amp=False,
        plots=False,
        project=str(work / "runs"),
        exist_ok=True,
        verbose=False,
        seed=0,
    )
    start = time.perf_counter()
    sparse = train_yolo(
        model, data, sparsity=args.s, epochs=args.epochs, name=f"{cfg}-sparse", **common
    )
    row = {"model": cfg.removesuffix(".yaml"), "train_seconds": time.perf_counter() - start}
    trained = sparse.model.float().eval()
    row["gammas"] = sparse.slimfx_gammas[-1] if sparse.slimfx_gammas else None
    row["map_trained"] = val_map(trained, data, args.imgsz)
    slim = slim_yolo(trained, args.percent, args.imgsz)
    zeroed = slim_yolo(trained, args.percent, args.imgsz, options=SlimOptions(compensate=False))
    row["errors"] = {str(k): v for k, v in slim.errors.items()}
    row["map_slim"] = val_map(slim.model, data, args.imgsz)
    row["map_zeroed"] = val_map(zeroed.model, data, args.imgsz)
    tuned = train_yolo(slim.model, data, epochs=args.finetune, name=f"{cfg}-tuned", **common)
    row["map_finetuned"] = val_map(tuned.model.float().eval(), data, args.imgsz)
    rep = slim.result.report
    row.update(
        params_before=params(trained),
        params_after=params(slim.model),
        macs_before=rep.macs_before,
        macs_after=rep.macs_after,
    )
    theirs = torch_pruning(trained, args.imgsz, args.percent, work)
    tp_model = theirs.pop("model", None)
    if tp_model is not None:
        theirs["params_after"] = params(tp_model)
        theirs["map_pruned"] = val_map(tp_model, data, args.imgsz)
    row["torch_pruning"] = theirs
    models = {"original": _Decoded(trained), "slimfx": _Decoded(slim.model.float().eval())}
    if tp_model is not None:
        models["torch-pruning"] = _Decoded(tp_model)
    x = torch.zeros(1, 3, args.latency_size, args.latency_size)
    report = measure_latency(
        models,
        x,
        batches=(1,),
        backends=["ort-cpu"],
        threads=args.threads,
        rounds=args.rounds,
        progress=False,
    )
    row["latency_table"] = report.table()
    print(row["latency_table"], flush=True)
    return row


def write_results(rows: list[dict], args, out: Path) -> None:
    lines = [
        f"Ultralytics {ultralytics.__version__}, torch {torch.__version__}; trained {args.epochs} "
        f"epochs with sparsity s={args.s} at {args.imgsz}px on {args.images} drawn images, "
        f"slimmed {args.percent:.0%}, fine-tuned {args.finetune} epochs",
        "",
        "| model | params | MACs | mAP50-95 trained | slim, compensated | slim, zeroed | "
        "fine-tuned | decoded error f64 | Torch-Pruning |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["torch_pruning"]
        tp_cell = (
            f"{t['params_after'] / 1e6:.2f}M params, mAP {t['map_pruned']:.3f}"
            if t.get("ok")
            else f"failed: {t.get('error', '')}"
        )
        worst = max(r["errors"].values())
        lines.append(
            f"| {r['model']} | {r['params_before'] / 1e6:.2f}M → {r['params_after'] / 1e6:.2f}M | "
            f"{r['macs_before'] / 1e6:.0f}M → {r['macs_after'] / 1e6:.0f}M | "
            f"{r['map_trained']:.3f} | {r['map_slim']:.3f} | {r['map_zeroed']:.3f} | "
            f"{r['map_finetuned']:.3f} | {worst:.1e} | {tp_cell} |"
        )
    lines.append("")
    for r in rows:
        lines += [
            f"onnxruntime CPU latency, {r['model']} at {args.latency_size}px:",
            "",
            r["latency_table"],
            "",
        ]
    table = "\n".join(lines)
    print("\n" + table)
    write_text(out / "yolo.md", table + "\n")
    write_text(out / "yolo.json", json.dumps(rows, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--finetune", type=int, default=30)
    parser.add_argument("--s", type=float, default=1.0)
    parser.add_argument("--percent", type=float, default=0.5)
    parser.add_argument("--imgsz", type=int, default=64)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--latency-size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--torch-pruning-probe", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_pruning_probe:
        source, target, imgsz, percent = args.torch_pruning_probe
        torch_pruning_probe(source, target, int(imgsz), float(percent))
        return
    work = Path(tempfile.mkdtemp(prefix="slimfx-yolo-bench-"))
    data = write_detection_dataset(work / "data", args.images, args.imgsz)
    rows = [run_model(cfg, data, args, work) for cfg in args.models]
    write_results(rows, args, Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
