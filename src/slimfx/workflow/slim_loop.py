"""Multi-pass slimming toward a latency target: prune, fine-tune, repeat (``slimfx slim-loop``).

The paper reaches its best ratios in several rounds. :func:`slim_loop` runs pass k = 1 … N:

1. Prune the current model to run ``(speedup / achieved) ** (1 / passes left)`` times
   faster *than itself* on the target (:func:`slimfx.workflow.prune.prune_model` in
   latency mode), ``achieved`` being the product of the earlier passes' measured speedups:
   ``speedup ** (1/N)`` for the first pass, and each later pass re-aims at what is still
   missing. Each pass times its own input against its own output in alternating runs, so
   the drift of a shared machine between passes cancels. Once the target is reached, the
   remaining passes are not run. The prune files
   (``prune.txt``, ``pruned.pth``, ``prune.json``, plots) go into ``SAVE/pass-k/``.
2. Fine-tune the slim model for ``train.epochs`` epochs (:func:`slimfx.train.fit`, with the
   L1 penalty when ``train.sparsity > 0``); its checkpoints (``checkpoint.pth.tar``,
   ``model_best.pth.tar``) go into ``SAVE/pass-k/`` too.
3. Continue from the fine-tuned best (or last) checkpoint.

``SAVE/loop.json`` (written atomically after every step) holds the settings and, per pass,
its numbers and how far it got (``"pruned"`` or ``"done"``). Running the same loop again
skips the finished passes, keeps a pruned pass's files and resumes its fine-tuning from
``checkpoint.pth.tar`` (exactly, as ``slimfx train --resume``). Other settings than the
state file records raise ``ValueError`` before any work. ``SAVE/loop.md`` is the per-pass
table (:func:`loop_table`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from slimfx.bench.backends import backend_status
from slimfx.checkpoint import load_checkpoint
from slimfx.errors import CheckpointError
from slimfx.files import ensure_output_dir, write_text
from slimfx.ir.options import SlimOptions
from slimfx.train.config import EpochResult, StepInfo, TrainConfig
from slimfx.train.distributed import resolve_device
from slimfx.train.loop import fit
from slimfx.train.state import BEST_NAME, CHECKPOINT_NAME, model_cfg
from slimfx.workflow.prune import load_trained_model, model_for_checkpoint, prune_model

logger = logging.getLogger(__name__)

STATE_NAME = "loop.json"
TABLE_NAME = "loop.md"
#: A loop whose measured speedup is within this margin of its target runs no more passes.
REACHED = 0.02
STATE_FORMAT = "slimfx-slim-loop/1"
#: Fine-tuning settings when none are given (the CLI's defaults).
DEFAULT_FINETUNE = TrainConfig(epochs=20, lr=0.01)
CONTINUE_FROM = ("best", "last")


@dataclass
class PassRow:
    """One pass of :func:`slim_loop`; speedups are ratios, accuracies fractions.

    ``asked`` is this pass's target, relative to its input; ``asked_total`` what the loop
    aimed at after it (the earlier passes' measured speedups times ``asked``) and
    ``measured_total`` what it reached (cumulative over passes 1 … ``index``);
    ``stage`` is ``"pruned"`` until the fine-tuning is done, then ``"done"``;
    ``checkpoint`` names the file of ``SAVE/pass-k/`` the next pass starts from.
    """

    index: int
    asked: float
    asked_total: float
    measured: float
    measured_total: float
    budget_ms: float
    predicted_ms: float
    measured_ms: float
    params: int
    macs: int
    cfg: list | None
    pruned_accuracy: float | None
    finetuned_accuracy: float | None = None
    stage: str = "pruned"
    checkpoint: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class LoopResult:
    """What :func:`slim_loop` returns.

    Attributes
    ----------
    rows : list of PassRow
        One per pass, in order.
    original : dict
        ``params``, ``macs``, ``ms`` (on the target) and ``accuracy`` of the input model.
    model : torch.nn.Module
        The final model (CPU, eval mode), loaded from ``checkpoint``.
    checkpoint : Path
    skipped : list of int
        Passes finished by an earlier run (read from ``loop.json``).
    files : dict
        ``"loop.json"``, ``"loop.md"`` → their paths.
    """

    rows: list[PassRow]
    original: dict[str, Any]
    model: nn.Module
    checkpoint: Path
    skipped: list[int] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def slim_loop(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    options: SlimOptions,
    train: TrainConfig | None = None,
    *,
    passes: int,
    save_dir: str | os.PathLike,
    arch: str = "vgg",
    depth: int = 19,
    dataset: str = "cifar10",
    continue_from: str = "best",
    example_inputs: torch.Tensor | None = None,
    latency_cache: str | os.PathLike | None = None,
    plots: bool = True,
    on_pruned: Callable[[PassRow], None] | None = None,
    on_pass_end: Callable[[PassRow], None] | None = None,
    on_epoch_end: Callable[[int, EpochResult], None] | None = None,
    on_step_end: Callable[[int, StepInfo], None] | None = None,
) -> LoopResult:
    """Prune toward a latency target in ``passes`` passes, fine-tuning after each.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model, as :func:`slimfx.models.build_model` builds it (``arch``,
        ``depth``, ``dataset``, its ``cfg``). Not modified.
    train_set, test_set : Dataset
        Fine-tuning data; the test set also tests every pruned model.
    options : SlimOptions
        ``speedup`` is the target of the whole loop; ``backend``, ``batch``, ``threads``,
        ``min_channels``, ``round_to``, ``compensate`` … apply to every pass.
    train : TrainConfig, optional
        Fine-tuning of every pass (``epochs``, ``lr``, ``sparsity`` …; default
        :data:`DEFAULT_FINETUNE`). ``save_dir`` and ``resume`` are set by the loop.
    passes : int
        Number of passes, at least 1.
    save_dir : path
        Holds ``loop.json``, ``loop.md`` and ``pass-1/`` … ``pass-N/``.
    arch, depth, dataset : str, int, str
        How the pruned models are rebuilt from their ``cfg`` (as ``slimfx train --refine``).
    continue_from : {"best", "last"}
        Which fine-tuning checkpoint the next pass starts from.
    example_inputs : tensor, optional
        Defaults to two test images; the latency batch is ``options.batch`` or theirs.
    latency_cache : path, optional
        Where measured layer latencies are cached (default ``$SLIMFX_CACHE_DIR`` or
        ``~/.cache/slimfx``).
    plots : bool
        Write each pass's ``gammas.png`` and ``channels.png``.
    on_pruned, on_pass_end : callable, optional
        Called with a pass's :class:`PassRow` after its pruning / its fine-tuning.
    on_epoch_end, on_step_end : callable, optional
        Called with the pass number and the :class:`EpochResult` / :class:`StepInfo`.

    Returns
    -------
    LoopResult

    Raises
    ------
    ValueError
        Invalid settings, or other settings than ``save_dir/loop.json`` records.
    TrainingInterrupted
        Ctrl-C during a fine-tuning; running the loop again resumes it.

    Examples
    --------
    >>> opts = SlimOptions(speedup=3.0, backend="ort-cpu", batch=64, threads=2)
    >>> res = slim_loop(model, train, test, opts, TrainConfig(epochs=2, lr=0.01), passes=3,
    ...                 save_dir="runs/loop", dataset="digits")  # doctest: +SKIP
    >>> print(loop_table(res.rows, res.original))  # doctest: +SKIP
    """
    train = DEFAULT_FINETUNE if train is None else train
    example = _example(example_inputs, test_set)
    settings = _settings(model, options, train, passes, continue_from, arch, depth, dataset)
    build = {"arch": arch, "depth": depth, "dataset": dataset}
    model_for_checkpoint(  # the pruned models must rebuild: check before any work
        {"cfg": model_cfg(model), "state_dict": model.state_dict()}, "the model", **build
    )
    device = resolve_device(train.device)
    save = ensure_output_dir(save_dir)
    state = _load_state(save / STATE_NAME, settings)
    loop = _Loop(save, state, train, train_set, test_set, build, continue_from)
    loop.on_epoch_end, loop.on_step_end = on_epoch_end, on_step_end
    skipped = [r.index for r in loop.rows if r.stage == "done"]
    prune_settings = {
        "test_set": test_set,
        "test_batch_size": train.test_batch_size,
        "device": device,
        "example_inputs": example,
        "plots": plots,
        "latency_cache": latency_cache,
    }
    source: Path | None = None  # the checkpoint the next pass starts from (None: ``model``)
    for k in range(1, passes + 1):
        folder = save / f"pass-{k}"
        row = loop.rows[k - 1] if k <= len(loop.rows) else None
        if row is None:
            achieved = math.prod(r.measured for r in loop.rows)
            remaining = options.speedup / achieved
            if remaining <= 1 + REACHED:
                logger.info(
                    "the target %.3gx is reached after %d passes (%.3gx measured); the other "
                    "passes are not needed",
                    options.speedup,
                    k - 1,
                    achieved,
                )
                break
            per_pass = options.replace(speedup=remaining ** (1 / (passes - k + 1)))
            current = model if source is None else load_trained_model(source, **build)[0]
            logger.info("pass %d/%d: pruning to %.3gx", k, passes, per_pass.speedup)
            for stale in (CHECKPOINT_NAME, BEST_NAME):  # of an attempt loop.json forgot
                (folder / stale).unlink(missing_ok=True)
            outcome = prune_model(
                current, per_pass, save_dir=folder, test_original=k == 1, **prune_settings
            )
            del current
            if k == 1:
                state["original"] = _original(outcome)
            row = _pruned_row(k, per_pass.speedup, outcome, loop.rows)
            loop.rows.append(row)
            loop.save()
            if on_pruned:
                on_pruned(row)
        if row.stage != "done":
            row.checkpoint, row.finetuned_accuracy = loop.finetune(k, folder)
            row.stage = "done"
            loop.save()
            logger.info("pass %d/%d done: %.3gx measured", k, passes, row.measured)
            if on_pass_end:
                on_pass_end(row)
        source = folder / row.checkpoint
    final, _ = load_trained_model(source, **build)
    files = {STATE_NAME: save / STATE_NAME, TABLE_NAME: save / TABLE_NAME}
    return LoopResult(loop.rows, state["original"], final.eval(), source, skipped, files)


class _Loop:
    """The state of one :func:`slim_loop` run and its fine-tuning step."""

    def __init__(self, folder, state, train, train_set, test_set, build, continue_from):
        self.folder, self.state, self.train, self.build = folder, state, train, build
        self.train_set, self.test_set, self.continue_from = train_set, test_set, continue_from
        self.rows = [PassRow(**r) for r in state["passes"]]
        self.on_epoch_end = self.on_step_end = None

    def save(self) -> None:
        """Write ``loop.json`` and ``loop.md`` (atomically)."""
        self.state["passes"] = [dataclasses.asdict(r) for r in self.rows]
        write_text(self.folder / STATE_NAME, json.dumps(self.state, indent=1) + "\n")
        write_text(self.folder / TABLE_NAME, loop_table(self.rows, self.state["original"]) + "\n")

    def finetune(self, k: int, folder: Path) -> tuple[str, float | None]:
        """Fine-tune pass ``k``'s model, resuming its checkpoint when there is one.

        Returns the name of the file the next pass starts from and its test accuracy.
        """
        resume: Path | None = folder / CHECKPOINT_NAME
        if resume.exists():
            logger.info("pass %d: resuming the fine-tuning from %s", k, resume)
            model = model_for_checkpoint(load_checkpoint(resume), str(resume), **self.build)
        else:
            model, _ = load_trained_model(folder / "pruned.pth", **self.build)
            resume = None
        on_epoch, on_step = self.on_epoch_end, self.on_step_end
        fit(
            model,
            self.train_set,
            self.test_set,
            dataclasses.replace(self.train, save_dir=folder, resume=resume),
            on_epoch_end=(lambda e: on_epoch(k, e)) if on_epoch else None,
            on_step_end=(lambda s: on_step(k, s)) if on_step else None,
        )
        best = self.continue_from == "best" and (folder / BEST_NAME).exists()
        name = BEST_NAME if best else CHECKPOINT_NAME
        prec1 = load_checkpoint(folder / name).get("prec1")
        return name, None if prec1 is None else float(prec1)


def loop_table(rows: list[PassRow], original: dict[str, Any] | None = None) -> str:
    """The per-pass table in Markdown (what ``loop.md`` holds and ``slimfx slim-loop`` prints).

    Parameters
    ----------
    rows : list of PassRow
    original : dict, optional
        ``params``, ``macs``, ``ms``, ``accuracy`` of the input model: row 0.
    """

    def acc(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    head = (
        "| pass | asked | asked total | measured | measured total | predicted ms | "
        "measured ms | params | MACs | accuracy pruned | accuracy fine-tuned |"
    )
    lines = [head, "|" + "---:|" * 11]
    if original:
        lines.append(
            f"| 0 (original) | | | | | | {ms(original.get('ms'))} | {original['params']:,} | "
            f"{original['macs']:,} | {acc(original.get('accuracy'))} | |"
        )
    for r in rows:
        lines.append(
            f"| {r.index} | {r.asked:.3f}x | {r.asked_total:.3f}x | {r.measured:.3f}x | "
            f"{r.measured_total:.3f}x | {ms(r.predicted_ms)} | {ms(r.measured_ms)} | "
            f"{r.params:,} | {r.macs:,} | {acc(r.pruned_accuracy)} | "
            f"{acc(r.finetuned_accuracy)} |"
        )
    return "\n".join(lines)


def _pruned_row(k: int, asked: float, outcome, rows: list[PassRow]) -> PassRow:
    latency = outcome.result.plan.latency
    report = outcome.result.report
    achieved = math.prod(r.measured for r in rows)
    measured_total = achieved * latency["measured_speedup"]
    return PassRow(
        index=k,
        asked=asked,
        asked_total=achieved * asked,
        measured=float(latency["measured_speedup"]),
        measured_total=float(measured_total),
        budget_ms=float(latency["budget_ms"]),
        predicted_ms=float(latency["predicted_ms"]),
        measured_ms=float(latency["measured_ms"]),
        params=int(report.params_after),
        macs=int(report.macs_after),
        cfg=outcome.result.cfg,
        pruned_accuracy=outcome.slim_accuracy,
        notes=list(dict.fromkeys([*outcome.result.plan.notes, *report.notes])),
    )


def _original(outcome) -> dict[str, Any]:
    report = outcome.result.report
    return {
        "params": int(report.params_before),
        "macs": int(report.macs_before),
        "ms": float(outcome.result.plan.latency["original_ms"]),
        "accuracy": outcome.original_accuracy,
    }


def _example(example_inputs, test_set) -> torch.Tensor:
    if test_set is None or not len(test_set):
        raise ValueError("slim_loop needs a test set with at least one image")
    if example_inputs is None:
        return torch.stack([test_set[i][0] for i in range(min(2, len(test_set)))])
    return example_inputs


def _settings(model, options, train, passes, continue_from, arch, depth, dataset) -> dict:
    """Everything a resumed loop must share with the run that wrote ``loop.json``."""
    if not isinstance(options, SlimOptions) or options.speedup is None:
        raise ValueError("slim_loop needs a speedup target: SlimOptions(speedup=...)")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes must be a positive integer, got {passes!r}")
    if continue_from not in CONTINUE_FROM:
        raise ValueError(f"continue_from must be one of {CONTINUE_FROM}, got {continue_from!r}")
    train.validate()
    if train.save_dir is not None or train.resume is not None:
        raise ValueError("slim_loop sets the fine-tuning's save_dir and resume itself")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("slim-loop runs in one process; start it without torchrun")
    ok, reason = backend_status(options.backend)
    if not ok:
        raise ValueError(f"backend {options.backend} cannot run here: {reason}")
    slimming = dataclasses.asdict(options)
    for name in ("percent", "latency_ms", "verify", "strict"):  # no effect on the result
        slimming.pop(name)
    slimming["leaf_types"] = [f"{t.__module__}.{t.__qualname__}" for t in options.leaf_types]
    fine = {k: getattr(train, k) for k in ("epochs", "lr", "momentum", "weight_decay")}
    fine.update(sparsity=train.sparsity, batch_size=train.batch_size, seed=train.seed)
    fine.update(milestones=list(train.milestones), lr_decay=train.lr_decay)
    settings = {"passes": passes, **slimming, **fine, "continue_from": continue_from}
    settings.update(arch=arch, depth=depth, dataset=dataset, model=_fingerprint(model))
    return json.loads(json.dumps(settings))


def _fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state dict (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_state(path: Path, settings: dict) -> dict:
    """The state of ``path`` when it exists (checked against ``settings``), else a new one."""
    if not path.exists():
        return {"format": STATE_FORMAT, "settings": settings, "original": None, "passes": []}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        ok = state.get("format") == STATE_FORMAT and isinstance(state.get("passes"), list)
        rows = [PassRow(**r) for r in state["passes"]] if ok else []
        ok = ok and [r.index for r in rows] == list(range(1, len(rows) + 1))
        done = [r.stage == "done" for r in rows]
        ok = ok and all(done[:-1]) and all(r.stage in ("pruned", "done") for r in rows)
        ok = ok and all(
            r.checkpoint in (BEST_NAME, CHECKPOINT_NAME) for r in rows if r.stage == "done"
        )
        ok = ok and (not rows or isinstance(state.get("original"), dict))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a slim-loop state file ({exc})") from exc
    if not ok:
        raise CheckpointError(f"{path} is not a slim-loop state file of this slimfx")
    recorded = state.get("settings") or {}
    diffs = [
        f"{key} {_show(key, recorded.get(key))} (this run: {_show(key, settings.get(key))})"
        for key in sorted(set(recorded) | set(settings))
        if recorded.get(key) != settings.get(key)
    ]
    if diffs:
        raise ValueError(
            f"{path} records a slim-loop with other settings: {'; '.join(diffs)}; rerun with "
            "its settings to resume it, or use another save folder"
        )
    done = sum(r.stage == "done" for r in rows)
    logger.info("%s: %d of %d passes done", path, done, settings["passes"])
    return state


def _show(key: str, value: Any) -> str:
    if key == "model" and isinstance(value, str):
        return f"with weights {value[:12]}"
    return "unset" if value is None else json.dumps(value)
