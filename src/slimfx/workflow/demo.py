"""``slimfx demo``: the whole network-slimming loop on the bundled digits data, in minutes.

1. Sparsity-train the reference VGG-11 (:func:`slimfx.train.loop.fit` with the L1 penalty).
2. Prune its best checkpoint by the global |gamma| threshold, once with compensation and
   once with the reference code's masking (:func:`slimfx.workflow.prune.prune_model`).
3. Fine-tune both pruned models briefly (``slimfx train --refine``).
4. Export the original and the compensated slim model to ONNX (checked by onnxruntime) and
   time all three models (:mod:`slimfx.bench.latency`).
5. Write a results table (Markdown and JSON) and plots, all under one folder.

This module holds the settings (:class:`DemoConfig`) and the run (:func:`run_demo`); the
results table and its text are :mod:`slimfx.workflow.demo_results`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from slimfx.counting import count_macs, count_params
from slimfx.data import load_dataset
from slimfx.files import ensure_output_dir, write_text
from slimfx.models import build_model
from slimfx.passes.trace import trace
from slimfx.train.evaluation import evaluate
from slimfx.train.loop import EpochResult, TrainConfig, fit
from slimfx.train.state import BEST_NAME
from slimfx.workflow.demo_results import DemoResult, DemoRow, summary_lines
from slimfx.workflow.plots import plot_training_curves
from slimfx.workflow.prune import load_trained_model, prune_model

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "DemoResult", "DemoRow", "run_demo", "summary_lines"]

MODES = {"compensate": True, "no-compensate": False}


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo` (the defaults finish in a few minutes on 2 CPU cores)."""

    out_dir: str | os.PathLike = "slimfx-demo"
    depth: int = 11
    epochs: int = 6
    sparsity: float = 0.02
    lr: float = 0.1
    batch_size: int = 64
    percent: float = 0.5
    finetune_epochs: int = 2
    finetune_lr: float = 0.01
    seed: int = 1
    export: bool = True
    bench: bool = True
    bench_rounds: int = 9
    progress: bool = False


def run_demo(
    config: DemoConfig | None = None,
    *,
    on_epoch_end: Callable[[str, EpochResult], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> DemoResult:
    """Sparsity-train, prune (with and without compensation), fine-tune, export, time.

    Parameters
    ----------
    config : DemoConfig
    on_epoch_end : callable, optional
        Called with the stage name (``"sparsity"``, ``"finetune-compensate"`` …) and each
        :class:`~slimfx.train.loop.EpochResult`.
    on_stage : callable, optional
        Called with a one-line description as each stage starts.

    Returns
    -------
    DemoResult
    """
    return _Demo(config or DemoConfig(), on_epoch_end, on_stage).run()


class _Demo:
    def __init__(self, config: DemoConfig, on_epoch_end, on_stage):
        self.config, self.on_epoch_end = config, on_epoch_end
        self.stage = on_stage or (lambda text: logger.info("%s", text))
        self.out = ensure_output_dir(config.out_dir)
        self.train_set, self.test_set = load_dataset("digits", True), load_dataset("digits", False)
        self.example = torch.stack([self.test_set[i][0] for i in range(2)])
        self.result = DemoResult([], {}, {}, {}, {})
        self.curves: dict[str, list[float]] = {}
        self.sparse_curve: list[float | None] = []

    def run(self) -> DemoResult:
        started = time.perf_counter()
        original, sparse_fraction = self._timed("sparsity training", self.sparsity_training)
        self._timed("pruning", self.prune, original)
        finetuned = self._timed("fine-tuning", self.finetune)
        if self.config.export or self.config.bench:
            self.stage("4/4 exporting to ONNX and measuring latency")
        if self.config.export:
            self._timed("export", self.export, original, finetuned["compensate"])
        if self.config.bench:
            self._timed("latency", self.measure, {"original": original, **finetuned})
        res, out = self.result, self.out
        res.files["training.png"] = plot_training_curves(
            self.curves, out / "training.png", sparse=self.sparse_curve
        )
        res.seconds["total"] = time.perf_counter() - started
        if sparse_fraction is not None:
            res.notes.insert(
                0,
                f"{100 * sparse_fraction:.1f}% of the penalised gammas ended "
                "below 0.01 after sparsity training",
            )
        res.files["results.md"], res.files["results.json"] = (
            out / "results.md",
            out / "results.json",
        )
        write_text(res.files["results.md"], res.to_markdown() + "\n")
        write_text(res.files["results.json"], res.to_json() + "\n")
        return res

    def _timed(self, name: str, step, *args):
        start = time.perf_counter()
        value = step(*args)
        self.result.seconds[name] = time.perf_counter() - start
        return value

    def _fit(self, name: str, model: torch.nn.Module, **settings):
        self.curves[name] = []

        def record(e: EpochResult) -> None:
            self.curves[name].append(e.test_accuracy)
            if self.on_epoch_end:
                self.on_epoch_end(name, e)

        c = self.config
        config = TrainConfig(
            batch_size=c.batch_size,
            seed=c.seed,
            device="cpu",
            progress=c.progress,
            save_dir=self.out / name,
            **settings,
        )
        return fit(model, self.train_set, self.test_set, config, on_epoch_end=record)

    def _row(self, step: str, mode: str, accuracy: float, model: torch.nn.Module) -> None:
        macs = count_macs(trace(model, self.example))
        self.result.rows.append(DemoRow(step, mode, accuracy, count_params(model), macs))

    def sparsity_training(self):
        c = self.config
        self.stage(
            f"1/4 sparsity training VGG-{c.depth} on digits: {c.epochs} epochs, s={c.sparsity:g}"
        )
        torch.manual_seed(c.seed)
        run = self._fit(
            "sparsity",
            build_model("vgg", c.depth, "digits"),
            epochs=c.epochs,
            lr=c.lr,
            sparsity=c.sparsity,
        )
        self.sparse_curve = [e.sparse_fraction for e in run.history]
        original, _ = load_trained_model(
            self.out / "sparsity" / BEST_NAME, arch="vgg", depth=c.depth, dataset="digits"
        )
        accuracy = evaluate(original.eval(), self.test_set)
        self.result.accuracy["sparsity-trained"] = accuracy
        self._row(f"sparsity-trained VGG-{c.depth}", "-", accuracy, original)
        return original, (self.sparse_curve[-1] if run.history else None)

    def prune(self, original: torch.nn.Module) -> None:
        percent = self.config.percent
        self.stage(f"2/4 pruning {100 * percent:g}% of the channels, with and without compensation")
        for mode, compensate in MODES.items():
            outcome = prune_model(
                original,
                percent=percent,
                test_set=self.test_set,
                save_dir=self.out / f"prune-{mode}",
                compensate=compensate,
                example_inputs=self.example,
                progress=True,
            )
            self.result.accuracy[f"pruned ({mode})"] = outcome.slim_accuracy
            self.result.cfg[mode] = outcome.result.cfg
            self.result.files.update({f"prune-{mode}/{k}": v for k, v in outcome.files.items()})
            rep = outcome.result.report
            self.result.rows.append(
                DemoRow(
                    f"pruned {100 * percent:g}%, before fine-tuning",
                    mode,
                    outcome.slim_accuracy,
                    rep.params_after,
                    rep.macs_after,
                )
            )

    def finetune(self) -> dict[str, torch.nn.Module]:
        c = self.config
        self.stage(f"3/4 fine-tuning both pruned models for {c.finetune_epochs} epochs")
        finetuned = {}
        for mode in MODES:
            model, _ = load_trained_model(
                self.out / f"prune-{mode}" / "pruned.pth",
                arch="vgg",
                depth=c.depth,
                dataset="digits",
            )
            run = self._fit(f"finetune-{mode}", model, epochs=c.finetune_epochs, lr=c.finetune_lr)
            finetuned[mode] = run.model.cpu().eval()
            self.result.accuracy[f"fine-tuned ({mode})"] = run.final_accuracy
            self._row("pruned and fine-tuned", mode, run.final_accuracy, finetuned[mode])
        return finetuned

    def export(self, original: torch.nn.Module, slim: torch.nn.Module) -> None:
        from slimfx.export.onnx import export_onnx

        for name, module in (("original", original), ("slim", slim)):
            exported = export_onnx(module, self.example[:1], self.out / f"{name}.onnx")
            self.result.files[f"{name}.onnx"] = exported.path
            self.result.notes.append(f"{name}.onnx: {exported}")

    def measure(self, models: dict[str, torch.nn.Module]) -> None:
        """Median latencies into the table's rows; latency.md/json/png into the folder."""
        from slimfx.bench.latency import measure_latency

        report = measure_latency(
            models,
            self.example[:1],
            baseline="original",
            batches=(1, 64),
            backends=("torch-cpu", "ort-cpu"),
            rounds=self.config.bench_rounds,
            warmup=2,
            threads=torch.get_num_threads(),  # onnxruntime would count the machine's cores
            progress=True,  # a bar on a terminal, a line every 10 s into a file
            warn_noise=False,
        )
        try:
            paths = report.save(self.out, "latency", plot=bool(report.measurements))
        except (ImportError, RuntimeError, ValueError) as exc:  # not worth failing the demo
            logger.warning("latency plot not written: %s", exc)
            paths = report.save(self.out, "latency", plot=False)
        self.result.files.update({p.name: p for p in paths})
        rows = {"original": self.result.rows[0]}
        rows.update({r.compensation: r for r in self.result.rows if r.step.endswith("fine-tuned")})
        for m in report.measurements:
            if m.model in rows:
                rows[m.model].latency_ms[f"{m.backend} b{m.batch}"] = m.stats.median_ms
        for r in report.rows:
            if r.model in rows:
                rows[r.model].speedup[f"{r.backend} b{r.batch}"] = r.speedup
                rows[r.model].noisy[f"{r.backend} b{r.batch}"] = r.noisy
