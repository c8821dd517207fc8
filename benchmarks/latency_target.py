"""Slimming to a latency target: asked speedup against measured, and what it keeps.

For each case (CIFAR VGG-19 at batch 64 and torchvision ResNet-18 at 224² and batch 8, on
onnxruntime's CPU provider with 2 threads by default):

1. The latency table is measured into an empty cache (its time is reported).
2. ``slimfx.slim(model, x, speedup=s, ...)`` for each asked speedup ``s``.
3. For comparison at the same latency: ``percent`` pruning with each uniform ``round_to``,
   its ``percent`` chosen (by bisection on the calibrated prediction) as the smallest that
   is predicted at least as fast as the latency plan.
4. For the efficiency at that latency: the plan that keeps the most MACs instead of the
   most |gamma| mass (the same planner with each channel scored by the MACs it carries at
   full width, a first-order count), a plan that loses few MACs for the latency it saves.
5. The original and every slim model are timed in one run, alternating rounds (medians);
   the run is repeated ``--repeats`` times and the median of the runs' speedups reported
   with their range, so the table also shows how far one run moves on this machine.

The table gives measured speedup, predicted and measured latency, MACs ratio, latency
efficiency (speedup ÷ MACs ratio) and the |gamma| mass each plan keeps. With
``--digits`` the reference VGG-11 is also sparsity-trained on the bundled digits, slimmed
both ways at the same latency, fine-tuned with ``--seeds`` seeds, and the accuracies
compared (mean over the seeds).

    python benchmarks/latency_target.py --out benchmarks/results
    python benchmarks/latency_target.py --cases vgg19-cifar --speedups 2 --no-digits
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
from slimfx.bench.latency import measure_latency
from slimfx.bench.models import synthetic_scales
from slimfx.files import write_text
from slimfx.latency import Target, measure_table, timed_layers
from slimfx.passes.analyze import analyze
from slimfx.passes.latency_plan import choose_widths
from slimfx.passes.plan import cuttable_groups, group_scores, plan
from slimfx.passes.rewrite import rewrite
from slimfx.passes.trace import trace

CASES = {
    "vgg19-cifar": (64, (3, 32, 32)),
    "resnet18": (8, (3, 224, 224)),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="vgg19-cifar,resnet18")
    p.add_argument("--speedups", default="2,3")
    p.add_argument("--round-to", default="1,8,16", help="uniform round_to of the comparison")
    p.add_argument("--backend", default="ort-cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--repeats", type=int, default=3, help="independent timing runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds (digits)")
    p.add_argument("--digits", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    args.cases = args.cases.split(",")
    args.speedups = [float(s) for s in args.speedups.split(",")]
    args.round_to = common.int_list(args.round_to)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    return args


def build(case: str, seed: int):
    if case == "vgg19-cifar":
        from slimfx.models import VGG

        model = VGG(depth=19)
    else:
        import torchvision

        model = torchvision.models.resnet18(weights=None)
    batch, shape = CASES[case]
    return synthetic_scales(model, seed).eval(), torch.randn(2, *shape), batch


def kept_mass(cg, slim_plan) -> float:
    """|gamma| score of the real channels a plan keeps (a carrier keeps none)."""
    by_name = {g.name: g for g in cg.groups}
    total = 0.0
    for name, gp in slim_plan.groups.items():
        total += float(group_scores(cg, by_name[name])[gp.kept].sum())
    return total


def percent_at(cg, table, layers, round_to: int, budget_ms: float) -> tuple[float, object]:
    """The smallest ``percent`` whose plan with ``round_to`` is predicted within the budget."""
    lo, hi = 0.0, 0.97
    best = None
    for _ in range(14):
        mid = (lo + hi) / 2
        candidate = plan(cg, mid, round_to=round_to)
        if table.predict(layers, candidate.keep_table(cg)) <= budget_ms:
            hi, best = mid, candidate
        else:
            lo = mid
    return hi, best if best is not None else plan(cg, hi, round_to=round_to)


def mac_scores(cg, layers) -> dict[int, np.ndarray]:
    """Per group, the MACs each channel carries at full width (first order: a channel of a
    layer's input or output axis carries that layer's MACs over the axis' width)."""
    scores = {g.id: np.zeros(g.size) for g in cg.groups}
    for layer in layers:
        macs = layer.shape.macs()
        axes = (
            (layer.in_layout, layer.shape.in_channels),
            (layer.out_layout, layer.shape.out_channels),
        )
        for layout, width in axes:
            if layout is None:
                continue
            for gid in layout.group_ids():
                if gid in scores:
                    np.add.at(scores[gid], layout.index[layout.group == gid], macs / width)
    return scores


def most_macs_plan(cg, table, layers, goal_ms: float, unit: int):
    """The plan the latency planner makes when it keeps the most MACs, not |gamma| mass."""
    groups = cuttable_groups(cg)
    scores = mac_scores(cg, layers)
    choice = choose_widths(
        cg, groups, {g.id: scores[g.id] for g in groups}, layers, table, goal_ms, unit=unit
    )
    return plan(cg, 0.5, widths=choice.widths)


def timed_runs(models: dict, x, batch: int, args, progress: bool = False):
    """``--repeats`` independent alternating runs: per model its speedup in each run, and
    the last run's report (latencies, MACs)."""
    speedups: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        report = measure_latency(
            models,
            x,
            batches=(batch,),
            backends=(args.backend,),
            threads=args.threads,
            rounds=args.rounds,
            progress=progress,
        )
        for name in models:
            if name != "original":
                row = report.row(args.backend, batch, name)
                speedups.setdefault(name, []).append(row.speedup)
    return speedups, report


def run_case(case: str, args, cache: Path) -> dict:
    model, x, batch = build(case, args.seed)
    target = Target(args.backend, batch, args.threads)
    cg = analyze(trace(model, x))
    layers = timed_layers(cg)
    start = time.perf_counter()
    table = measure_table(cg, x, target, cache_dir=cache, progress=True)
    table_seconds = time.perf_counter() - start
    print(f"{case}: latency table in {table_seconds:.1f} s ({table.probes} probes)", flush=True)
    models = {"original": model}
    rows = []
    for speedup in args.speedups:
        result = slimfx.slim(
            model,
            x,
            speedup=speedup,
            backend=args.backend,
            batch=batch,
            threads=args.threads,
            latency_cache=cache,
            latency_table=table,
        )
        lat = result.plan.latency
        name = f"latency {speedup:g}x"
        models[name] = result.module
        pair, _ = timed_runs({"original": model, name: result.module}, x, batch, args)
        rows.append(
            {
                "model": name,
                "asked": speedup,
                "predicted_ms": lat["predicted_ms"],
                "predicted_speedup": lat["original_ms"] / lat["predicted_ms"],
                "pair_speedup": float(np.median(pair[name])),
                "pair_runs": pair[name],
                "planner_speedup": lat["measured_speedup"],
                "attempts": lat["attempts"],
                "mass": kept_mass(cg, result.plan),
                "pruned": result.report.ratio,
            }
        )
        calibrated = dataclasses.replace(
            table,
            rest_fixed=lat["rest_fixed_ms"],
            rest_per_activation=lat["rest_per_activation"],
        )
        correction = lat["correction"]
        goal = lat["predicted_ms"] / correction
        comparisons = {}
        for round_to in args.round_to:
            percent, candidate = percent_at(cg, calibrated, layers, round_to, goal)
            comparisons[f"percent {percent:.3f} round_to {round_to}"] = candidate
        most_macs = most_macs_plan(cg, calibrated, layers, goal, lat["step"])
        comparisons["most MACs kept"] = most_macs
        for label, candidate in comparisons.items():
            label = f"{label} (vs {speedup:g}x)"
            models[label] = rewrite(cg, candidate)
            predicted = calibrated.predict(layers, candidate.keep_table(cg)) * correction
            rows.append(
                {
                    "model": label,
                    "asked": speedup,
                    "predicted_ms": predicted,
                    "predicted_speedup": lat["original_ms"] / predicted,
                    "mass": kept_mass(cg, candidate),
                    "pruned": candidate.ratio,
                }
            )
    runs, report = timed_runs(models, x, batch, args, progress=True)
    total_mass = float(sum(group_scores(cg, g).sum() for g in cg.groups if g.prunable))
    for row in rows:
        measured = report.row(args.backend, batch, row["model"])
        row.update(
            measured_ms=measured.slim_median_ms,
            original_ms=measured.original_median_ms,
            speedup=float(np.median(runs[row["model"]])),
            runs=runs[row["model"]],
            macs_ratio=measured.macs_ratio,
            efficiency=float(np.median(runs[row["model"]])) / measured.macs_ratio,
            mass_kept=row["mass"] / total_mass,
            noisy=measured.noisy,
        )
    return {
        "case": case,
        "batch": batch,
        "table_seconds": table_seconds,
        "probes": table.probes,
        "step": table.step,
        "rows": rows,
        "latency_report": report.to_dict(),
    }


def digits_comparison(args, cache: Path) -> dict:
    """Sparsity-train VGG-11 on digits; slim both ways at the same latency; fine-tune both."""
    from slimfx.data import load_dataset
    from slimfx.train.loop import TrainConfig, fit
    from slimfx.train.state import BEST_NAME
    from slimfx.workflow.demo import DemoConfig, run_demo
    from slimfx.workflow.prune import load_trained_model

    config = DemoConfig(export=False, bench=False)
    with tempfile.TemporaryDirectory(prefix="slimfx-latency-digits-") as tmp:
        config = dataclasses.replace(config, out_dir=tmp)
        run_demo(config)
        original, _ = load_trained_model(
            Path(tmp) / "sparsity" / BEST_NAME, arch="vgg", depth=config.depth, dataset="digits"
        )
        train_set, test_set = load_dataset("digits", True), load_dataset("digits", False)
        x = torch.stack([test_set[i][0] for i in range(2)])
        batch = 64
        speedup = args.speedups[0]
        result = slimfx.slim(
            original, x, speedup=speedup, backend=args.backend, batch=batch,
            threads=args.threads, latency_cache=cache,
        )  # fmt: skip
        lat = result.plan.latency
        cg = result.channel_graph
        layers = timed_layers(cg)
        table = measure_table(cg, x, Target(args.backend, batch, args.threads), cache_dir=cache)
        calibrated = dataclasses.replace(
            table,
            rest_fixed=lat["rest_fixed_ms"],
            rest_per_activation=lat["rest_per_activation"],
            model_ms=lat["original_ms"],
        )
        candidates = {"latency": (result.module, kept_mass(cg, result.plan))}
        for round_to in args.round_to:
            goal = lat["predicted_ms"] / lat["correction"]
            percent, candidate = percent_at(cg, calibrated, layers, round_to, goal)
            module = rewrite(cg, candidate)
            candidates[f"percent {percent:.3f} round_to {round_to}"] = (
                module,
                kept_mass(cg, candidate),
            )
        out = {}
        seeds = [config.seed + k for k in range(args.seeds)]
        for name, (module, mass) in candidates.items():
            accuracies = []
            for seed in seeds:
                torch.manual_seed(seed)
                run = fit(
                    copy.deepcopy(module).train(),
                    train_set,
                    test_set,
                    TrainConfig(
                        epochs=config.finetune_epochs,
                        lr=config.finetune_lr,
                        batch_size=config.batch_size,
                        seed=seed,
                        device="cpu",
                        save_dir=Path(tmp) / "ft" / f"{name.replace(' ', '_')}-{seed}",
                    ),
                )
                accuracies.append(run.final_accuracy)
            out[name] = {
                "mass": mass,
                "fine_tuned_accuracy": float(np.mean(accuracies)),
                "accuracies": accuracies,
            }
        runs, report = timed_runs(
            {"original": original, **{k: v[0] for k, v in candidates.items()}}, x, batch, args
        )
        for name in out:
            row = report.row(args.backend, batch, name)
            out[name].update(
                speedup=float(np.median(runs[name])),
                runs=runs[name],
                measured_ms=row.slim_median_ms,
            )
    return {"speedup": speedup, "batch": batch, "seeds": seeds, "models": out}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "## Slimming to a latency target",
        "",
        f"{m.get('cpu')} ({m.get('cpu_count')} CPUs), torch {m.get('torch')}, onnxruntime "
        f"{m.get('onnxruntime')}, backend {results['backend']}, {results['threads']} threads; "
        "synthetic |gamma| (uniform) for the VGG-19 and ResNet-18 cases; medians of "
        f"{results['rounds']} alternating rounds, all models of a case in one run; each run "
        f"repeated {results.get('repeats', 1)} times: median speedup of the runs (their range "
        "in brackets).",
        "",
    ]
    for case in results["cases"]:
        lines += [
            f"### {case['case']}, batch {case['batch']}",
            "",
            f"Latency table: {case['table_seconds']:.1f} s ({case['probes']} probes, width "
            f"step {case['step']}).",
            "",
            "| plan | asked | measured speedup | alone vs original | planner's check | "
            "predicted speedup | prediction error | measured ms | MACs ratio | efficiency | "
            "|gamma| mass kept | channels pruned |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in case["rows"]:
            noisy = " ⚠" if r["noisy"] else ""
            pair = _runs(r["pair_speedup"], r.get("pair_runs")) if "pair_speedup" in r else "–"
            check = f"{r['planner_speedup']:.2f}×" if "planner_speedup" in r else "–"
            error = r["speedup"] / r["predicted_speedup"] - 1  # predicted ÷ measured latency
            lines.append(
                f"| {r['model']} | {r['asked']:g}× | {_runs(r['speedup'], r.get('runs'))}{noisy} | "
                f"{pair} | "
                f"{check} | "
                f"{r['predicted_speedup']:.2f}× | {error:+.1%} | {r['measured_ms']:.2f} | "
                f"{r['macs_ratio']:.2f}× | {r['efficiency']:.2f} | {r['mass_kept']:.1%} | "
                f"{r['pruned']:.1%} |"
            )
        lines.append("")
    if results.get("digits"):
        d = results["digits"]
        lines += [
            f"### Digits VGG-11 (sparsity-trained, fine-tuned), asked {d['speedup']:g}×, "
            f"batch {d['batch']}",
            "",
            "| plan | measured speedup | measured ms | |gamma| mass | fine-tuned accuracy, "
            f"mean of {len(d.get('seeds', [0]))} seeds (each) |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, r in d["models"].items():
            each = ", ".join(f"{100 * a:.2f}" for a in r.get("accuracies", []))
            lines.append(
                f"| {name} | {_runs(r['speedup'], r.get('runs'))} | {r['measured_ms']:.2f} | "
                f"{r['mass']:.3f} | {100 * r['fine_tuned_accuracy']:.2f}% ({each}) |"
            )
        lines.append("")
    lines.append(
        "measured speedup: all plans of a case and the original in one alternating run; "
        "alone vs original: the latency plan and the original in a run of their own (what "
        "`slimfx bench` shows); planner's check: the speedup the planner measured for the "
        "plan it kept (its own run against the original, inside `slimfx.slim`); predicted "
        "speedup: the plan's prediction against the "
        "original's latency in the table; prediction error: predicted over measured latency, "
        "both relative to the original; percent rows: the smallest percent whose plan with "
        "that uniform round_to is predicted at least as fast as the latency plan (bisection on "
        "the same calibrated prediction); most MACs kept: the latency planner with channels "
        "scored by the MACs they carry at full width instead of |gamma|, at the same "
        "prediction (a plan that loses few MACs for the latency it saves); efficiency: "
        "measured speedup ÷ MACs ratio."
    )
    return "\n".join(lines) + "\n"


def _runs(median: float, runs: list[float] | None) -> str:
    """A speedup with the range of its runs."""
    if not runs or len(runs) < 2:
        return f"{median:.2f}×"
    return f"{median:.2f}× ({min(runs):.2f}–{max(runs):.2f})"


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    results = {
        "machine": machine_info(args.threads),
        "backend": args.backend,
        "threads": args.threads,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="slimfx-latency-cache-") as cache:
        for case in args.cases:
            results["cases"].append(run_case(case, args, Path(cache)))
        if args.digits:
            results["digits"] = digits_comparison(args, Path(cache))
    results["seconds"] = time.perf_counter() - start
    text = markdown(results)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"latency-target-{common.slug(str(results['machine'].get('cpu')))}"
    write_text(out / f"{stem}.md", text)
    write_text(out / f"{stem}.json", json.dumps(results, indent=1, default=str))
    print(f"wrote {out / stem}.md/.json in {results['seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
