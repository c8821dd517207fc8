"""The files of one pruning, in the reference code's formats (then slimfx's extras).

- ``prune.txt``: configuration, number of parameters, test accuracy, then slimfx's details;
- ``pruned.pth``: ``{'cfg', 'state_dict'}`` — ``vgg(cfg=cfg).load_state_dict(sd, strict=True)``;
- ``prune.json``: the full :class:`slimfx.SlimReport`, accuracies and kept channels;
- ``gammas.png`` and ``channels.png`` (see :mod:`slimfx.workflow.plots`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.nn as nn

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
    files = {name: folder / name for name in ("prune.txt", "pruned.pth", "prune.json")}
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
