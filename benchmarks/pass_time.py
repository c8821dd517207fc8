"""Time and peak memory of the slimming pass, side by side with Torch-Pruning.

Measures ``slimfx.slim(model, x, 0.5, verify=False)`` on torchvision vgg16_bn at 224x224 and
the reference CIFAR VGG-19 at 32x32 (and, to separate per-node work from tensor work, the
VGG-19 with every width divided by 16) and, when ``torch-pruning`` is installed, its
``BNScalePruner`` (importance = raw |gamma|, global pruning, 50%) on the same models, in the
same process, alternating runs. Prints medians and ratios and writes
``benchmarks/results/pass_time.{json,md}``.

Targets: slimfx at most 0.3 x Torch-Pruning's time on vgg16_bn and at most 0.8 x on VGG-19;
slimfx's peak memory at most 1.3 x (original + slim model).

A second table splits slimfx's time by pass (trace, analyze, constant propagation, plan,
rewrite), each timed on
its own in the same process.

Peak memory is measured in a fresh process per model: the resident set high-water mark
(``VmHWM``), reset just before the call (``/proc/self/clear_refs``), above the resident size
before it, plus the original model's tensors.

Usage: ``python benchmarks/pass_time.py [--runs 5] [--out benchmarks/results]``
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch_pruning_peer as peer
import torchvision

import slimfx
from slimfx.files import write_text
from slimfx.models import VGG
from slimfx.models.vgg import DEFAULT_CFG
from slimfx.testing import randomize_batchnorm

try:
    import torch_pruning as tp
except ImportError:  # optional comparison
    tp = None


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def tensor_bytes(module: torch.nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(fn):
    """(seconds, extra peak bytes over the resident size before the call, result)."""
    gc.collect()
    before = _status("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") - before
    return seconds, peak, result


def run_slimfx(model, x):
    return slimfx.slim(model, x, 0.5, verify=False)


def probe_memory(index: int) -> dict:
    """Peak memory of one ``slim`` call, in a fresh process (run as a subprocess)."""
    _, model, x, _ = CASES[index]()
    model.eval()
    gc.collect()
    _, peak, res = measure(lambda: run_slimfx(model, x))
    return {"peak_extra": peak, "slim_bytes": tensor_bytes(res.module)}


def by_pass(model, x, runs) -> dict[str, float]:
    """Median seconds of each pass of ``slim(model, x, 0.5, verify=False)``, run one by one."""
    names = ("trace", "analyze", "constants", "plan", "rewrite")
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        gm = slimfx.trace(model, x)
        traced = time.perf_counter()
        cg = slimfx.analyze(gm)
        analyzed = time.perf_counter()
        constants = slimfx.propagate_constants(cg)  # as slim() does
        propagated = time.perf_counter()
        slim_plan = slimfx.plan(cg, 0.5, constants=constants)
        planned = time.perf_counter()
        slim = slimfx.rewrite(cg, slim_plan, constants=constants)
        rewritten = time.perf_counter()
        times["trace"].append(traced - start)
        times["analyze"].append(analyzed - traced)
        times["constants"].append(propagated - analyzed)
        times["plan"].append(planned - propagated)
        times["rewrite"].append(rewritten - planned)
        del gm, cg, slim
    return {name: statistics.median(values) for name, values in times.items()}


def case(index, name, model, x, runs):
    model.eval()
    ours, theirs = [], []
    for _ in range(runs):
        seconds, _, res = measure(lambda: run_slimfx(model, x))
        ours.append(seconds)
        del res
        if tp is not None:
            victim = copy.deepcopy(model)
            seconds, _, _ = measure(lambda v=victim: peer.prune_native_in_place(v, x, 0.5))
            theirs.append(seconds)
            del victim
    probe = subprocess.run(
        [sys.executable, __file__, "--probe-memory", str(index)],
        capture_output=True,
        text=True,
        check=True,
    )
    memory = json.loads(probe.stdout.strip().splitlines()[-1])
    passes = by_pass(model, x, runs)
    original, slim_bytes, peak = tensor_bytes(model), memory["slim_bytes"], memory["peak_extra"]
    row = {
        "model": name,
        "input": list(x.shape),
        "slimfx_s": statistics.median(ours),
        "slimfx_min_max_s": [min(ours), max(ours)],
        "torch_pruning_s": statistics.median(theirs) if theirs else None,
        "time_ratio": statistics.median(ours) / statistics.median(theirs) if theirs else None,
        "original_mb": original / 2**20,
        "slim_mb": slim_bytes / 2**20,
        "peak_mb": (original + peak) / 2**20,
        "peak_over_models": (original + peak) / (original + slim_bytes),
        "slimfx_by_pass_s": passes,
    }
    return row


def _vgg16_bn():
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.vgg16_bn(), seed=1)
    return (
        "torchvision vgg16_bn",
        model,
        torch.randn(1, 3, 224, 224),
        0.3,
    )


def _cifar_vgg19():
    torch.manual_seed(0)
    model = randomize_batchnorm(VGG(depth=19), seed=2)
    return "CIFAR VGG-19", model, torch.randn(1, 3, 32, 32), 0.8


def _cifar_vgg19_narrow():
    """The same graph with every width divided by 16: what is left is per-node work."""
    torch.manual_seed(0)
    cfg = [c if c == "M" else c // 16 for c in DEFAULT_CFG[19]]
    model = randomize_batchnorm(VGG(cfg=cfg), seed=2)
    return (
        "CIFAR VGG-19, widths / 16",
        model,
        torch.randn(1, 3, 32, 32),
        None,
    )


#: (name, model, example input, target time ratio) builders.
CASES = [_vgg16_bn, _cifar_vgg19, _cifar_vgg19_narrow]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--probe-memory", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_memory is not None:
        print(json.dumps(probe_memory(args.probe_memory)))
        return
    rows = []
    for index, make in enumerate(CASES):
        name, model, x, target = make()
        row = case(index, name, model, x, args.runs)
        row["target_ratio"] = target
        rows.append(row)
        del model
        gc.collect()
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    lines = [
        f"Pass time, 50% network slimming, median of {args.runs} runs ({machine}, "
        f"torch {torch.__version__}, torch-pruning "
        f"{getattr(tp, '__version__', 'not installed')})",
        "",
        "| model | input | slimfx | Torch-Pruning | ratio (target) | peak / (orig + slim) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        tp_s = f"{r['torch_pruning_s']:.3f} s" if r["torch_pruning_s"] else "n/a"
        target = f" (<= {r['target_ratio']:.2f})" if r["target_ratio"] else ""
        ratio = f"{r['time_ratio']:.2f}{target}" if r["time_ratio"] else "n/a"
        # the narrow diagnostic model is too small for a memory ratio to mean anything
        peak = f"{r['peak_over_models']:.2f} (<= 1.30)" if r["target_ratio"] else "-"
        lines.append(
            f"| {r['model']} | {'x'.join(map(str, r['input']))} | {r['slimfx_s']:.3f} s "
            f"({r['slimfx_min_max_s'][0]:.3f}-{r['slimfx_min_max_s'][1]:.3f}) | {tp_s} | "
            f"{ratio} | {peak} |"
        )
    lines += [
        "",
        f"slimfx by pass, median of {args.runs} runs of each pass on its own",
        "",
        "| model | trace | analyze | constant propagation | plan | rewrite |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = " | ".join(f"{1e3 * s:.1f} ms" for s in r["slimfx_by_pass_s"].values())
        lines.append(f"| {r['model']} | {cells} |")
    table = "\n".join(lines)
    print(table)
    if tp is None:
        print("\ntorch-pruning is not installed: install it to measure the comparison.")
    out = Path(args.out)
    write_text(out / "pass_time.md", table + "\n")
    write_text(out / "pass_time.json", json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
