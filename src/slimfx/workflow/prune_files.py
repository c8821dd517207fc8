"""The files of one pruning, in the reference code's formats (then slimfx's extras).

- ``prune.txt``: configuration, number of parameters, test accuracy, then slimfx's details;
- ``pruned.pth``: ``{'cfg', 'state_dict'}`` — ``vgg(cfg=cfg).load_state_dict(sd, strict=True)``;
- ``prune.json``: the full :class:`slimfx.SlimReport`, accuracies and kept channels;
- ``pruned.safetensors`` and ``pruned.json``: the weights of ``pruned.pth`` without pickle
  (safetensors), and beside them the cfg and the plan as JSON — for tools that refuse
  pickles; :func:`read_pruned` reads the pair back;
- ``gammas.png`` and ``channels.png`` (see :mod:`slimfx.workflow.plots`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.nn as nn
from safetensors.torch import load_file, save_file

from slimfx.files import OutputSet
from slimfx.workflow.plots import plot_channels_kept, plot_gamma_distribution

if TYPE_CHECKING:
    from slimfx.workflow.prune import PruneOutcome

logger = logging.getLogger(__name__)


def bn_gammas(model: nn.Module, names: list[str]) -> dict[str, Any]:
    """``|gamma|`` of the named BatchNorms, as numpy arrays."""
    return {n: model.get_submodule(n).weight.detach().abs().cpu().numpy() for n in names}


def prune_text(outcome: PruneOutcome) -> str:
    """``prune.txt``: the reference code's three entries, then slimfx's details."""
    res, report = outcome.result, outcome.result.report

    def acc(value: float | None) -> str:
        return "not measured" if value is None else f"{value:.4f}"

    threshold = report.to_dict()["threshold"]
    lines = [
        "Configuration: ",
        str(res.cfg),
        f"Number of parameters: {report.params_after}",
        f"Test accuracy: {acc(outcome.masked_accuracy)}",
        f"Test accuracy of the slim model: {acc(outcome.slim_accuracy)}",
        f"Pruned ratio: {report.ratio:.4f} ({report.pruned_channels} of "
        f"{report.total_channels} channels; threshold |gamma| <= {threshold})",
        f"Compensation: {'on' if res.plan.compensate else 'off'} "
        f"(carrier channels: {report.carriers})",
        f"Parameters: {report.params_before} -> {report.params_after}",
        f"MACs: {report.macs_before} -> {report.macs_after}",
        f"round_to: {outcome.round_to}, min_channels: {res.plan.min_channels}",
    ]
    if outcome.original_accuracy is not None:
        lines.append(f"Test accuracy of the original model: {acc(outcome.original_accuracy)}")
    return "\n".join(lines) + "\n"


#: ``format`` of ``pruned.json``.
PRUNED_JSON_FORMAT = "slimfx-pruned/1"


def read_pruned(path: str | os.PathLike) -> dict[str, Any]:
    """``{'cfg', 'state_dict', 'plan'}`` from ``pruned.json`` or ``pruned.safetensors``
    (either of the pair: the other is found beside it) — no pickle is read.

    Raises
    ------
    CheckpointError
        The files are missing, unreadable or not a slimfx pair.
    """
    from slimfx.errors import CheckpointError

    path = Path(path)
    meta_path = path if path.suffix == ".json" else path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: cannot read the cfg and plan ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != PRUNED_JSON_FORMAT:
        raise CheckpointError(f"{meta_path} is not a slimfx pruned.json")
    weights = meta_path.with_name(str(meta.get("weights", "")))
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{weights}: not readable safetensors weights ({exc})") from exc
    return {"cfg": meta.get("cfg"), "state_dict": state, "plan": meta.get("plan")}


def write_prune_files(
    outcome: PruneOutcome, model: nn.Module, folder: Path, plots: bool = True
) -> dict[str, Path]:
    """Write ``prune.txt``, ``pruned.pth``, ``prune.json`` and the plots into ``folder``.

    The files are one set (:class:`slimfx.files.OutputSet`): they replace an earlier run's
    only once every one of them was written, so a run that fails or is interrupted —
    even while drawing the last plot — leaves the earlier files byte for byte as they were.
    With ``plots=False`` an earlier run's plots are removed, since they would describe
    another pruning.
    """
    res = outcome.result
    names = ("prune.txt", "pruned.pth", "prune.json", "pruned.safetensors", "pruned.json")
    files = {name: folder / name for name in names}
    plot_files = {name: folder / name for name in ("gammas.png", "channels.png")}
    state = {k: v.detach().cpu().clone() for k, v in res.module.state_dict().items()}
    summary = {
        "report": res.report.to_dict(),
        "masked_accuracy": outcome.masked_accuracy,
        "slim_accuracy": outcome.slim_accuracy,
        "original_accuracy": outcome.original_accuracy,
        "round_to": outcome.round_to,
        "kept": res.kept,
    }
    with OutputSet(stale=plot_files.values()) as out:
        out.write_text(files["prune.txt"], prune_text(outcome))
        out.save_torch({"cfg": res.cfg, "state_dict": state}, files["pruned.pth"])
        out.write_text(files["prune.json"], json.dumps(summary, indent=1) + "\n")
        save_file(state, out.path(files["pruned.safetensors"], suffix=".tmp.safetensors"))
        pruned_json = {
            "format": PRUNED_JSON_FORMAT,
            "weights": files["pruned.safetensors"].name,
            "cfg": res.cfg,
            "plan": json.loads(res.plan.to_json()),
        }
        out.write_text(files["pruned.json"], json.dumps(pruned_json, indent=1) + "\n")
        if plots:
            threshold = res.report.threshold
            plot_gamma_distribution(
                bn_gammas(model, list(res.kept)),
                None if threshold != threshold else threshold,
                out.path(plot_files["gammas.png"], suffix=".tmp.png"),
            )
            plot_channels_kept(res.report, out.path(plot_files["channels.png"], suffix=".tmp.png"))
            files.update(plot_files)
    logger.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return files
