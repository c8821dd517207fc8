"""Coverage of timm: the smallest BatchNorm model of every architecture family, 30% slimmed.

A family is the alphabetic stem of a model name (with its version digit: ``mobilenetv3``,
``efficientnetv2``); of each family the model with the fewest parameters that has a
BatchNorm is taken (``pretrained=False``; the choice is saved, per timm version, in
``results/timm_models.json``). Each model, its BatchNorm statistics randomised, gets a small
input (64x64, or the size it is fixed to), and:

- ``slimfx.slim(model, x, 0.3)`` on one thread, timed without verification, then verified
  (float64 rebuild against the masked original, 1e-9; the stored float32 weights, 1e-5);
- the share of its BatchNorms that are pruned (not frozen), with the reason for every model
  below one half;
- Torch-Pruning's ``BNScalePruner`` (raw |gamma|, global, 30%) on the same model in its own
  process, in the same run, with :data:`TP_TIMEOUT_S` seconds per model.

Writes ``results/timm_zoo.{json,md}`` and prints the table.

Usage: ``python benchmarks/timm_zoo.py [--models resnet10t ...] [--no-torch-pruning]
[--torch-pruning-from results/timm_zoo.json]``
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import platform
import re
import statistics
import time
import warnings
from pathlib import Path

import timm
import torch
from zoo import run_torch_pruning, torch_pruning_in_subprocess

import slimfx
from slimfx.files import write_text
from slimfx.rules import is_batchnorm
from slimfx.testing import randomize_batchnorm

try:
    import torch_pruning as tp
except ImportError:
    tp = None

DEFAULT_SIZE = 64
#: Torch-Pruning gets this long per model (in its own process, memory capped); no result
#: by then counts as a failure. slimfx's own target is 10 s.
TP_TIMEOUT_S = 60
RESULTS = Path(__file__).resolve().parent / "results"
PRUNED_MODES = {"compensate", "zero"}


def family(name: str) -> str:
    """``resnet10t`` → ``resnet``, ``mobilenetv3_small_050`` → ``mobilenetv3``."""
    return re.match(r"[a-z]+(?:v\d+)?", name).group(0)


def select_models(cache: Path, reselect: bool = False) -> list[str]:
    """The smallest model with a BatchNorm of every family (built on the meta device)."""
    if cache.exists() and not reselect:
        saved = json.loads(cache.read_text())
        if saved.get("timm") == timm.__version__:
            return saved["models"]
    families = collections.defaultdict(list)
    for name in timm.list_models():
        families[family(name)].append(name)
    chosen = []
    for names in families.values():
        best = None
        for name in names:
            try:
                with torch.device("meta"):
                    model = timm.create_model(name, pretrained=False)
            except Exception:  # a model that cannot be built is not in the list
                continue
            if not any(is_batchnorm(m) for m in model.modules()):
                continue
            size = sum(p.numel() for p in model.parameters())
            if best is None or size < best[1]:
                best = (name, size)
        if best is not None:
            chosen.append(best[0])
    chosen.sort()
    write_text(cache, json.dumps({"timm": timm.__version__, "models": chosen}, indent=1) + "\n")
    return chosen


def build(name: str):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    randomize_batchnorm(model.eval(), seed=0)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    fixed = tuple(cfg.get("input_size", (3, 224, 224)))
    sizes = [fixed] if cfg.get("fixed_input_size") else [(3, DEFAULT_SIZE, DEFAULT_SIZE), fixed]
    for size in sizes:
        x = torch.randn(1, *size)
        try:
            with torch.no_grad():
                model(x)
            return model, x
        except Exception:  # too small for this model: try its own size
            continue
    return model, torch.randn(1, *fixed)


def bn_share(res) -> float:
    rows = res.report.layers
    pruned = [r for r in rows if set(r.mode.split("/")) & PRUNED_MODES]
    return len(pruned) / len(rows) if rows else 0.0


def frozen_reasons(res) -> str:
    reasons = collections.Counter()
    for g in res.channel_graph.groups:
        if g.frozen and g.scorers:
            reasons[g.frozen[0].split(":")[0]] += len(g.scorers)
    by_name = {g.name: g for g in res.channel_graph.groups}
    for name, why in res.plan.frozen.items():  # groups the plan could not prune exactly
        reasons[why.split(" at ")[0]] += len(by_name[name].scorers) if name in by_name else 1
    return "; ".join(f"{n} x {why}" for why, n in reasons.most_common()) or "-"


def run_ours(model, x) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        res = slimfx.slim(model, x, 0.3, verify=False)
        seconds = time.perf_counter() - start
        torch.set_num_threads(threads)
        res.verify()
    except Exception as exc:  # recorded as a failure of the row
        return {
            "ok": False,
            "seconds": time.perf_counter() - start,
            "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
        }
    finally:
        torch.set_num_threads(threads)
    rep = res.report
    return {
        "ok": rep.params_after < rep.params_before,
        "seconds": seconds,
        "batchnorms": len(rep.layers),
        "bn_share": bn_share(res),
        "frozen_why": frozen_reasons(res),
        "params_before": rep.params_before,
        "params_after": rep.params_after,
        "error_f64": rep.verification_error,
        "error_f32": rep.weights_error,
        "error": None if rep.params_after < rep.params_before else "no parameter removed",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="only these models")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--reselect", action="store_true", help="choose the models again")
    parser.add_argument("--no-torch-pruning", action="store_true")
    parser.add_argument(
        "--torch-pruning-from",
        help="take Torch-Pruning's results from an earlier timm_zoo.json instead of running it",
    )
    parser.add_argument("--torch-pruning-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.torch_pruning_probe:
        model, x = build(args.torch_pruning_probe)
        print(json.dumps(run_torch_pruning(model, x)))
        return
    names = args.models or select_models(Path(args.out) / "timm_models.json", args.reselect)
    earlier = {}
    if args.torch_pruning_from:
        for row in json.loads(Path(args.torch_pruning_from).read_text()):
            if "torch_pruning" in row:
                earlier[row["model"]] = row["torch_pruning"]
    rows = []
    for name in names:
        model, x = build(name)
        row = {"model": name, "input": x.shape[-1], "ours": run_ours(model, x)}
        del model
        gc.collect()
        if name in earlier:
            row["torch_pruning"] = earlier[name]
        elif tp is not None and not args.no_torch_pruning:
            row["torch_pruning"] = torch_pruning_in_subprocess(name, TP_TIMEOUT_S, __file__)
        rows.append(row)
        ours, theirs = row["ours"], row.get("torch_pruning", {})
        print(
            f"{name:28s} ours: {'ok ' if ours['ok'] else 'FAIL'} {ours['seconds']:6.2f}s "
            f"{ours.get('bn_share', 0):.2f} {ours.get('error') or ''}"
            + (f" | torch-pruning: {'ok ' if theirs['ok'] else 'FAIL'}" if theirs else ""),
            flush=True,
        )
    write_results(rows, Path(args.out))


def write_results(rows: list[dict], out: Path) -> None:
    ok = [r for r in rows if r["ours"]["ok"]]
    shares = [r["ours"]["bn_share"] for r in ok]
    theirs = [r["torch_pruning"] for r in rows if "torch_pruning" in r]
    slowest = max((r["ours"]["seconds"] for r in ok), default=float("nan"))
    worst64 = max((r["ours"]["error_f64"] for r in ok), default=float("nan"))
    worst32 = max((r["ours"]["error_f32"] or 0.0 for r in ok), default=float("nan"))
    lines = [
        f"timm {timm.__version__}, smallest BatchNorm model of each of {len(rows)} families, "
        f"30% network slimming ({platform.machine()}, torch {torch.__version__}): "
        f"slimfx {len(ok)}/{len(rows)} verified"
        + (
            f"; Torch-Pruning BNScalePruner {sum(t['ok'] for t in theirs)}/{len(theirs)}"
            if theirs
            else ""
        ),
        f"median share of BatchNorms pruned {statistics.median(shares) if shares else 0:.2f}; "
        f"largest error {worst64:.1e} (float64), {worst32:.1e} (float32 weights); slowest "
        f"slimming {slowest:.2f} s on one thread",
        "",
        "| model | input | BatchNorms pruned | frozen: why | params before → after "
        "| rel. error f64 / f32 | slimfx pass (1 thread) | Torch-Pruning |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o, t = r["ours"], r.get("torch_pruning")
        tp_cell = "n/a" if t is None else (f"{t['seconds']:.2f} s" if t["ok"] else "failed")
        if "batchnorms" not in o:
            lines.append(
                f"| {r['model']} | {r['input']} | - | - | - | - | failed: {o['error']} | "
                f"{tp_cell} |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['input']} | {o['bn_share']:.2f} of {o['batchnorms']} | "
            f"{o['frozen_why'] if o['bn_share'] < 1 else '-'} | "
            f"{o['params_before'] / 1e6:.2f}M → {o['params_after'] / 1e6:.2f}M | "
            f"{o['error_f64']:.1e} / {o['error_f32'] or 0:.1e} | {o['seconds']:.2f} s | "
            f"{tp_cell} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    write_text(out / "timm_zoo.md", table + "\n")
    write_text(out / "timm_zoo.json", json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
