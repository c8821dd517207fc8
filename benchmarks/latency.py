"""Latency sweep: original vs slimfx vs Torch-Pruning, every backend, in one process.

For each model and each ``round_to``, the model is slimmed at ``--percent``; when
torch-pruning is installed, Torch-Pruning prunes the same model to the same channels
(``torch-pruning``) and, with ``--torch-pruning native``, by its own BNScalePruner too. All
models are timed in alternating rounds (:func:`slimfx.bench.latency.measure_latency`), and
``<out>/latency-<model>-r<k>-<tag>.{json,md,png}`` plus a summary ``<out>/latency-<tag>.md``
and ``.json`` are written (``tag`` names the machine: ``cpu-<host>`` or ``cuda-<gpu>``).

CPU (default)::

    python benchmarks/latency.py --out benchmarks/results

GPU (CIFAR VGG-19 and torchvision vgg16_bn on torch-cuda and, when the onnxruntime build
has it, ort-cuda)::

    python benchmarks/latency.py --gpu --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import common
import numpy as np
import torch
import torch_pruning_peer as peer

import slimfx
from slimfx.bench.backends import BACKENDS, machine_info
from slimfx.files import write_text

PRESETS = {
    "cpu": {
        "backends": "torch-cpu,ort-cpu",
        "models": "vgg19-cifar",
        "round_to": "1,16",
        "max_minutes": 30.0,
    },
    "gpu": {
        "backends": "torch-cuda,ort-cuda",
        "models": "vgg19-cifar,vgg16_bn",
        "round_to": "1,8",
        "max_minutes": 3.0,
    },
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="the CUDA preset (models, backends)")
    p.add_argument("--models", help=f"comma-separated, from {', '.join(common.MODELS)}")
    p.add_argument("--checkpoint", help="a trained vgg19-cifar checkpoint instead of synthetic")
    p.add_argument("--percent", type=float, default=0.5, help="pruning ratio (default 0.5)")
    p.add_argument("--round-to", help="comma-separated round_to values (cpu: 1,16; gpu: 1,8)")
    p.add_argument("--backends", help=f"comma-separated, from {', '.join(BACKENDS)}")
    common.add_timing_arguments(p)
    p.add_argument(
        "--torch-pruning",
        choices=("auto", "off", "native"),
        default="auto",
        help="auto: same channels as slimfx when installed; native: also its own pruner",
    )
    p.add_argument("--out", default="benchmarks/results", help="output folder")
    p.add_argument(
        "--max-minutes", type=float, help="start no new config after this (cpu: 30, gpu: 3)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    preset = PRESETS["gpu" if args.gpu else "cpu"]
    args.models = (args.models or preset["models"]).split(",")
    args.round_to = common.int_list(args.round_to or preset["round_to"])
    args.backends = (args.backends or preset["backends"]).split(",")
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown:
        p.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    unknown = [m for m in args.models if m not in common.MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {', '.join(common.MODELS)}")
    args.max_minutes = args.max_minutes or preset["max_minutes"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if "torch-cuda" in args.backends and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    machine = machine_info(args.threads)
    tag = f"cuda-{common.slug(machine['gpu'])}" if machine.get("gpu") and args.gpu else None
    tag = tag or f"cpu-{common.slug(str(machine['host']))}"
    tp_ok, tp_note = peer.available()
    use_tp = args.torch_pruning != "off" and tp_ok
    print(f"machine: {machine}")
    print(f"Torch-Pruning: {tp_note if args.torch_pruning != 'off' else 'off'}")
    out = Path(args.out)
    sections, summary = [], []
    configs = [(m, r) for m in args.models for r in args.round_to]
    for k, (name, round_to) in enumerate(configs, 1):
        elapsed = (time.perf_counter() - start) / 60
        if elapsed > args.max_minutes:
            print(f"[{k}/{len(configs)}] skipped {name} round_to={round_to}: over --max-minutes")
            continue
        print(f"[{k}/{len(configs)}] {name}, {args.percent:.0%} pruned, round_to={round_to}")
        checkpoint = args.checkpoint if name == "vgg19-cifar" else None
        model, example = common.build(name, checkpoint, args.seed)
        result = slimfx.slim(model, example, args.percent, round_to=round_to)
        models = {"original": model, "slim": result.module}
        if use_tp:
            models["torch-pruning"] = peer.prune_same_channels(model, example, result)
            if args.torch_pruning == "native":
                native = peer.prune_native(model, example, args.percent, round_to)
                models["torch-pruning-native"] = native
        report = common.measure(models, example, args)
        report.settings.update(
            model=name,
            percent=args.percent,
            round_to=round_to,
            cfg=result.cfg,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            weights=checkpoint or f"synthetic BatchNorm scales, seed {args.seed}",
            torch_pruning=tp_note,
        )
        paths = report.save(out, f"latency-{name}-r{round_to}-{tag}", plot=_can_plot())
        print(report.table())
        print("wrote " + ", ".join(map(str, paths)))
        title = f"{name}, {args.percent:.0%} pruned, round_to={round_to}"
        sections.append(report.to_markdown(title))
        summary += _summary(report, name, round_to)
        lines = _write_summary(out, tag, machine, args, tp_note, summary, sections)
    if not sections:
        lines = _write_summary(out, tag, machine, args, tp_note, summary, sections)
    print("\n".join(lines))
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min; summary {out}/latency-{tag}.md")
    return 0


def _write_summary(out, tag, machine, args, tp_note, summary, sections) -> list[str]:
    """(Re)write the summary files: after every configuration, so a cut-off run keeps them."""
    lines = _summary_markdown(machine, args, tp_note, summary)
    write_text(out / f"latency-{tag}.md", "\n".join(lines) + "\n\n" + "\n".join(sections))
    record = {"machine": machine, "settings": vars(args), "rows": summary}
    write_text(out / f"latency-{tag}.json", json.dumps(record, indent=1))
    return lines


def _summary(report, name: str, round_to: int) -> list[dict]:
    """Per backend and batch: slim's efficiency, and slim against Torch-Pruning."""
    rows = []
    for row in report.rows:
        if row.model != "slim":
            continue
        item = {
            "model": name,
            "round_to": round_to,
            "backend": row.backend,
            "batch": row.batch,
            "slim_ms": row.slim_median_ms,
            "speedup": row.speedup,
            "macs_ratio": row.macs_ratio,
            "efficiency": row.efficiency,
            "noisy": row.noisy,
        }
        for peer_name in ("torch-pruning", "torch-pruning-native"):
            if peer_name not in report.models:
                continue
            ours = report.stats(row.backend, row.batch, "slim")
            theirs = report.stats(row.backend, row.batch, peer_name)
            peer_row = report.row(row.backend, row.batch, peer_name)
            per_round = {
                m.model: np.asarray(m.rounds_ms)
                for m in report.measurements
                if (m.backend, m.batch) == (row.backend, row.batch)
            }
            ratio = float(np.median(per_round[peer_name] / per_round["slim"]))
            slower = ours.median_ms - theirs.median_ms
            noise = max(ours.spread_ms, theirs.spread_ms)
            item[peer_name] = {
                "ms": theirs.median_ms,
                "efficiency": peer_row.efficiency,
                "their_latency_over_ours": ratio,
                "verdict": _verdict(slower, noise),
            }
        rows.append(item)
    return rows


def _verdict(slower_ms: float, noise_ms: float) -> str:
    """slimfx against the peer: a difference within the spread of the rounds is no difference."""
    if abs(slower_ms) <= noise_ms:
        return "equal within noise"
    return "faster" if slower_ms < 0 else "SLOWER"


def _summary_markdown(machine, args, tp_note: str, summary: list[dict]) -> list[str]:
    where = machine.get("gpu") or machine["cpu"]
    lines = [
        f"## Latency sweep on {machine['host']} ({where})",
        "",
        f"{args.percent:.0%} of channels pruned; batches {args.batches}; {args.rounds} rounds; "
        f"threads {args.threads or 'default'}; Torch-Pruning: {tp_note}.",
        "",
        "| model | round_to | backend | batch | slim ms | speedup | MACs ratio | efficiency | "
        "Torch-Pruning (same channels) ms | TP ÷ slim latency | verdict |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in summary:
        tp = s.get("torch-pruning")
        tp_cells = (
            f"{tp['ms']:.2f} | {tp['their_latency_over_ours']:.3f} | {tp['verdict']}"
            if tp
            else "- | - | -"
        )
        eff = "-" if s["efficiency"] is None else f"{s['efficiency']:.2f}"
        macs = "-" if s["macs_ratio"] is None else f"{s['macs_ratio']:.2f}×"
        lines.append(
            f"| {s['model']} | {s['round_to']} | {s['backend']} | {s['batch']} | "
            f"{s['slim_ms']:.2f} | {s['speedup']:.2f}×{' ⚠' if s['noisy'] else ''} | {macs} | "
            f"{eff} | {tp_cells} |"
        )
    target = [
        s
        for s in summary
        if s["model"] == "vgg19-cifar" and s["backend"] == "ort-cpu" and s["batch"] == 64
    ]
    if target:
        lines += ["", "Target (onnxruntime CPU, CIFAR VGG-19, batch 64: efficiency ≥ 0.85):"]
        for s in target:
            eff = s["efficiency"] or float("nan")
            lines.append(
                f"- round_to={s['round_to']}: efficiency {eff:.2f} "
                f"({'met' if eff >= 0.85 else 'not met'})"
            )
    return lines


def _can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no PNG plots")
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
