"""Coverage of the torchvision classification zoo: slim 30% of every model with BatchNorm.

For each model (``weights=None``, BatchNorm statistics randomised, a small input where the
model allows) runs ``slimfx.slim(model, x, 0.3)`` with verification and records groups,
frozen groups and why, parameters before/after, pass time and any error. When
``torch-pruning`` is installed, runs its ``BNScalePruner`` (raw |gamma|, global, 30%) on the
same model in the same run and records its success and time beside ours.

Writes ``benchmarks/results/zoo.{json,md}`` and prints the table.

Usage: ``python benchmarks/zoo.py [--models resnet18 vgg11_bn ...] [--out DIR]``
"""

from __future__ import annotations

import argparse
import collections
import copy
import gc
import json
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch_pruning_peer as peer
import torchvision

import slimfx
from slimfx.files import write_text
from slimfx.testing import randomize_batchnorm

try:
    import torch_pruning as tp
except ImportError:
    tp = None

#: Models that need a larger input than the default 64x64.
INPUT_SIZE = {"inception_v3": 299, "maxvit_t": 224}
DEFAULT_SIZE = 64
#: Memory cap of the Torch-Pruning subprocess, in GiB.
MEMORY_LIMIT_GB = 12


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def frozen_summary(res) -> str:
    """Frozen BatchNorm-governed groups, counted by reason."""
    reasons = collections.Counter()
    for g in res.channel_graph.groups:
        if g.frozen and g.scorers:
            reasons[g.frozen[0].split(":")[0]] += 1
    return "; ".join(f"{n} x {why}" for why, n in reasons.most_common()) or "-"


def run_ours(model, x) -> dict:
    start = time.perf_counter()
    try:
        res = slimfx.slim(model, x, 0.3, verify=False)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        res.verify()
        verify_seconds = time.perf_counter() - start
    except Exception as exc:  # recorded as a failure of the row
        return {
            "ok": False,
            "seconds": time.perf_counter() - start,
            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
        }
    rep = res.report
    groups = res.channel_graph.groups
    return {
        "ok": rep.params_after < rep.params_before,
        "seconds": seconds,
        "verify_seconds": verify_seconds,
        "groups": len(groups),
        "prunable": len([g for g in groups if g.prunable]),
        "frozen": len([g for g in groups if g.frozen and g.scorers]),
        "frozen_why": frozen_summary(res),
        "zeroed": sum(1 for g in res.plan.groups.values() if g.mode == "zero"),
        "params_before": rep.params_before,
        "params_after": rep.params_after,
        "error_f64": rep.verification_error,
        "error": None if rep.params_after < rep.params_before else "no parameter removed",
    }


def run_torch_pruning(model, x) -> dict:
    victim = copy.deepcopy(model)
    start = time.perf_counter()
    try:
        peer.prune_native_in_place(victim, x, 0.3)
        with torch.no_grad():
            victim(x)
        seconds = time.perf_counter() - start
        after = sum(p.numel() for p in victim.parameters())
        return {"ok": True, "seconds": seconds, "params_after": after}
    except Exception as exc:
        return {
            "ok": False,
            "seconds": time.perf_counter() - start,
            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
        }


def torch_pruning_in_subprocess(name: str, timeout: float = 600, script: str = __file__) -> dict:
    """Torch-Pruning on one model in its own process, with a memory cap and a time limit.

    Its dependency tracing can take all the memory on some models; a separate process keeps
    such a failure a row of the table instead of the end of the run. ``script`` is run with
    ``--torch-pruning-probe NAME`` and prints the result as one JSON line.
    """
    limit = MEMORY_LIMIT_GB * 2**30

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        proc = subprocess.run(
            [sys.executable, script, "--torch-pruning-probe", name],
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=cap_memory,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "seconds": timeout, "error": f"no result after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["killed"])[-1][:120]
        return {
            "ok": False,
            "seconds": float("nan"),
            "error": f"crashed ({last}; memory capped at {MEMORY_LIMIT_GB} GB)",
        }
    return json.loads(lines[-1])


def build(name: str):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    if not has_batchnorm(model):
        return None, None
    randomize_batchnorm(model.eval(), seed=0)
    size = INPUT_SIZE.get(name, DEFAULT_SIZE)
    return model, torch.randn(1, 3, size, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="only these models")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--no-torch-pruning", action="store_true")
    parser.add_argument("--torch-pruning-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.torch_pruning_probe:
        model, x = build(args.torch_pruning_probe)
        print(json.dumps(run_torch_pruning(model, x)))
        return
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    rows = []
    for name in names:
        model, x = build(name)
        if model is None:
            continue
        row = {"model": name, "input": x.shape[-1], "ours": run_ours(model, x)}
        del model
        gc.collect()
        if tp is not None and not args.no_torch_pruning:
            row["torch_pruning"] = torch_pruning_in_subprocess(name)
        rows.append(row)
        ours = row["ours"]
        theirs = row.get("torch_pruning", {})
        print(
            f"{name:22s} ours: {'ok ' if ours['ok'] else 'FAIL'} {ours['seconds']:6.2f}s "
            f"{ours.get('error') or ''}"
            + (
                f" | torch-pruning: {'ok ' if theirs['ok'] else 'FAIL'} {theirs['seconds']:6.2f}s"
                if theirs
                else ""
            ),
            flush=True,
        )
    write_results(rows, Path(args.out))


def write_results(rows: list[dict], out: Path) -> None:
    ok = sum(r["ours"]["ok"] for r in rows)
    theirs = [r["torch_pruning"] for r in rows if "torch_pruning" in r]
    lines = [
        f"torchvision zoo, 30% network slimming, verified in float64 "
        f"({platform.machine()}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}): slimfx {ok}/{len(rows)} models"
        + (
            f"; Torch-Pruning {getattr(tp, '__version__', '?')} BNScalePruner "
            f"{sum(t['ok'] for t in theirs)}/{len(theirs)}"
            if theirs
            else ""
        ),
        "",
        "| model | input | groups (prunable) | frozen groups: why | params before → after "
        "| rel. error | slimfx pass (+ verification) | Torch-Pruning |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o = r["ours"]
        t = r.get("torch_pruning")
        tp_cell = (
            "n/a"
            if t is None
            else (f"{t['seconds']:.2f} s" if t["ok"] else f"failed ({t['error']})")
        )
        if o.get("groups") is None:
            lines.append(
                f"| {r['model']} | {r['input']} | - | - | - | - | failed: "
                f"{o['error']} | {tp_cell} |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['input']} | {o['groups']} ({o['prunable']}) | "
            f"{o['frozen']}: {o['frozen_why']} | {o['params_before'] / 1e6:.2f}M → "
            f"{o['params_after'] / 1e6:.2f}M | {o['error_f64']:.1e} | {o['seconds']:.2f} s "
            f"(+{o['verify_seconds']:.2f} s) | "
            f"{tp_cell} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    write_text(out / "zoo.md", table + "\n")
    write_text(out / "zoo.json", json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
