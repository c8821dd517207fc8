"""What width rounding buys: the slim model at several ``round_to``, timed in one run.

For each ``round_to`` the model is slimmed at ``--percent``; the original and every slim
variant are timed in alternating rounds on each backend. The table gives each variant's
MACs ratio, latency, speedup and latency efficiency, and the fastest ``round_to`` per
backend and batch size (by the fastest round: interference only adds time).

    python benchmarks/round_to.py --out benchmarks/results
    python benchmarks/round_to.py --backends ort-cpu --batches 64 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import common

import slimfx
from slimfx.bench.backends import machine_info
from slimfx.files import write_text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vgg19-cifar", choices=common.MODELS)
    p.add_argument("--checkpoint", help="a trained vgg19-cifar checkpoint instead of synthetic")
    p.add_argument("--percent", type=float, default=0.5)
    p.add_argument("--round-to", default="1,8,16,32", help="comma-separated candidates")
    p.add_argument("--backends", default="torch-cpu,ort-cpu")
    common.add_timing_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    args.round_to = common.int_list(args.round_to)
    args.backends = args.backends.split(",")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    model, example = common.build(args.model, args.checkpoint, args.seed)
    models, cfgs = {"original": model}, {}
    for value in args.round_to:
        result = slimfx.slim(model, example, args.percent, round_to=value)
        models[f"round_to={value}"] = result.module
        cfgs[value] = result.cfg or [row.width for row in result.report.layers]
        print(f"round_to={value}: widths {cfgs[value]}")
    report = common.measure(models, example, args)
    report.settings.update(model=args.model, percent=args.percent, cfgs=cfgs)
    machine = machine_info(args.threads)
    tag = f"{args.model}-{common.slug(str(machine.get('gpu') or machine['host']))}"
    paths = report.save(Path(args.out), f"round-to-{tag}")
    lines = [
        f"## round_to on {machine['host']} ({machine.get('gpu') or machine['cpu']})",
        "",
        f"{args.model}, {args.percent:.0%} of channels pruned. Widths per round_to:",
        "",
        *[f"- round_to={k}: {v}" for k, v in cfgs.items()],
        "",
        "| backend | batch | round_to | MACs ratio | median ms | fastest round ms | "
        "speedup | efficiency |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in report.backends:
        for batch in args.batches:
            rows = [r for r in report.rows if (r.backend, r.batch) == (backend, batch)]
            if not rows:
                continue
            fastest = min(rows, key=lambda r: r.slim_min_ms)
            for r in rows:
                best = " **fastest**" if r is fastest else ""
                noisy = " ⚠" if r.noisy else ""
                macs = "-" if r.macs_ratio is None else f"{r.macs_ratio:.2f}×"
                eff = "-" if r.efficiency is None else f"{r.efficiency:.2f}"
                lines.append(
                    f"| {backend} | {batch} | {r.model.split('=')[1]}{best} | {macs} | "
                    f"{r.slim_median_ms:.2f} | {r.slim_min_ms:.2f} | {r.speedup:.2f}×{noisy} | "
                    f"{eff} |"
                )
    summary = "\n".join(lines) + "\n"
    write_text(Path(args.out) / f"round-to-{tag}-summary.md", summary)
    print(report.table())
    print(summary)
    print("wrote " + ", ".join(map(str, paths)))
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
