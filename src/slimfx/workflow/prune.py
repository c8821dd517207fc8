"""The prune step of the network-slimming workflow, as library functions.

``slimfx prune`` is :func:`load_trained_model` followed by :func:`prune_model`: the model is
rebuilt from ``--arch/--depth/--dataset`` (or from the checkpoint's ``cfg``, so a fine-tuned
pruned model prunes again), slimmed by :func:`slimfx.slim`, tested as the masked original and
as the slim model, and written as the reference code writes it:

- ``prune.txt``: configuration, number of parameters, test accuracy (then slimfx's extras);
- ``pruned.pth``: ``{'cfg', 'state_dict'}`` — ``vgg(cfg=cfg).load_state_dict(sd, strict=True)``;
- ``prune.json``: the full :class:`slimfx.SlimReport`;
- ``gammas.png`` and ``channels.png`` (see :mod:`slimfx.workflow.plots`).

The files are written by :mod:`slimfx.workflow.prune_files`.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from slimfx.api import SlimResult, slim
from slimfx.checkpoint import check_shapes, load_checkpoint, load_into
from slimfx.errors import CheckpointError
from slimfx.files import ensure_output_dir
from slimfx.ir.options import SlimOptions
from slimfx.models import MODEL_BUILDERS, build_model
from slimfx.train.evaluation import evaluate
from slimfx.workflow.prune_files import write_prune_files

logger = logging.getLogger(__name__)


@dataclass
class PruneOutcome:
    """What :func:`prune_model` did.

    Attributes
    ----------
    result : SlimResult
        The slim model, its masked reference, cfg and report.
    masked_accuracy, slim_accuracy, original_accuracy : float or None
        Test accuracies (fractions); ``None`` when not measured.
    round_to : int
        The width multiple used (resolved when ``"auto"`` was asked for).
    files : dict
        ``"prune.txt"``, ``"pruned.pth"``, ``"prune.json"``, ``"gammas.png"``,
        ``"channels.png"`` → where they were written.
    """

    result: SlimResult
    masked_accuracy: float | None = None
    slim_accuracy: float | None = None
    original_accuracy: float | None = None
    round_to: int = 1
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return self.result.report.params_after


def load_trained_model(
    path: str | os.PathLike, *, arch: str = "vgg", depth: int = 19, dataset: str = "cifar10"
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint was trained as and load its weights.

    Reads the reference code's training checkpoints, slimfx's, ``pruned.pth`` files (the
    model is built from their ``cfg``) and plain state dicts, with ``weights_only=True``.

    Returns
    -------
    (model, checkpoint) : (torch.nn.Module, dict)

    Raises
    ------
    CheckpointError
        Unreadable or unsafe file, a cfg that builds no model or disagrees with the file's
        weights, weights that do not fit (for example the wrong ``--depth``; the keys and
        shapes are named), or NaN/infinite weights.
    """
    ckpt = load_checkpoint(path)
    model = model_for_checkpoint(ckpt, str(path), arch=arch, depth=depth, dataset=dataset)
    load_into(model, ckpt["state_dict"], str(path))
    return model, ckpt


def model_for_checkpoint(
    ckpt: dict[str, Any], source: str, *, arch: str, depth: int, dataset: str
) -> nn.Module:
    """The (freshly initialised) model whose state dict ``ckpt`` holds.

    Built from the checkpoint's ``cfg`` when it has one, else from ``arch``/``depth``. The
    model is first built on the ``meta`` device, which allocates nothing, and compared with
    the state dict key by key, so a cfg that disagrees with its weights — or asks for an
    enormous model — is reported before any memory is spent on it.

    Raises
    ------
    CheckpointError
        The cfg builds no model, or the state dict does not fit the model (keys and shapes
        named).
    ValueError
        Unknown ``arch``; invalid ``depth``/``dataset`` for a file without a cfg.
    """
    if arch not in MODEL_BUILDERS:
        raise ValueError(f"--arch must be one of {', '.join(sorted(MODEL_BUILDERS))}, got {arch!r}")
    cfg = ckpt.get("cfg")
    if cfg is None:
        with torch.device("meta"):
            shell = build_model(arch, depth, dataset)
        check_shapes(shell, ckpt["state_dict"], source)
        return build_model(arch, depth, dataset)
    if not isinstance(cfg, list):
        raise CheckpointError(f"{source}: 'cfg' is a {type(cfg).__name__}, not a list")
    try:
        with torch.device("meta"):
            shell = build_model(arch, depth, dataset, cfg=cfg)
    except Exception as exc:  # the cfg comes from the file: whatever it breaks is its fault
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckpointError(
            f"{source}: its cfg does not build a {arch} model ({text}); wrong --arch or --depth?"
        ) from exc
    check_shapes(
        shell,
        ckpt["state_dict"],
        source,
        hint="the file's cfg and its state_dict disagree, or wrong --arch/--dataset",
    )
    return build_model(arch, depth, dataset, cfg=cfg)


def resolve_round_to(
    round_to: int | str, model: nn.Module, example_inputs: Any, options: SlimOptions
) -> int:
    """``round_to`` as an int; ``"auto"`` times candidates
    (:func:`slimfx.bench.round_to.auto_round_to`) slimmed with ``options``."""
    if round_to == "auto":
        from slimfx.bench.round_to import auto_round_to

        return int(auto_round_to(model, example_inputs, options=options))
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"--round-to must be a positive integer or 'auto', got {round_to!r}")
    return round_to


def prune_model(
    model: nn.Module,
    options: SlimOptions | None = None,
    *,
    round_to: int | str | None = None,
    test_set: Dataset | None = None,
    save_dir: str | os.PathLike | None = None,
    test_batch_size: int = 256,
    device: str | torch.device = "cpu",
    example_inputs: Any = None,
    test_original: bool = False,
    plots: bool = True,
    **settings: Any,
) -> PruneOutcome:
    """Slim a trained model, test it, and write the reference code's files.

    Parameters
    ----------
    model : torch.nn.Module
        The sparsity-trained model. It is not modified: not moved, not switched to eval
        mode (a model on another device is slimmed as a CPU copy).
    options : SlimOptions, optional
        How to slim (``--percent``, ``--min-channels``, ``--no-compensate`` …).
    round_to : int or "auto", optional
        Width multiple, overriding ``options.round_to``; ``"auto"`` measures the fastest
        (:func:`resolve_round_to`).
    test_set : Dataset, optional
        Tests the masked and the slim model (and the original if ``test_original``).
    save_dir : path, optional
        Where ``prune.txt``, ``pruned.pth``, ``prune.json`` and the plots go.
    test_batch_size, device
        Batch size and device of the tests.
    example_inputs : tensor, optional
        Defaults to two images of ``test_set`` (or random 3x32x32 inputs).
    **settings
        Single settings of :class:`slimfx.SlimOptions` by name (``percent=0.5``,
        ``compensate=False`` …), overriding ``options``.

    Returns
    -------
    PruneOutcome
        Its slim and masked models are on the CPU, in eval mode.
    """
    options = SlimOptions.of(options, **settings)
    source = _on_cpu(model)
    if example_inputs is None:
        example_inputs = (
            torch.stack([test_set[i][0] for i in range(min(2, len(test_set)))])
            if test_set is not None and len(test_set)
            else torch.randn(2, 3, 32, 32)
        )
    chosen = resolve_round_to(
        options.round_to if round_to is None else round_to, source, example_inputs, options
    )
    result = slim(source, example_inputs, options=options.replace(round_to=chosen))
    result.module.eval()
    result.reference.eval()
    outcome = PruneOutcome(result=result, round_to=chosen)
    if test_set is not None:
        outcome.masked_accuracy = _test(result.reference, test_set, test_batch_size, device)
        outcome.slim_accuracy = _test(result.module, test_set, test_batch_size, device)
        if test_original:
            outcome.original_accuracy = _test(source, test_set, test_batch_size, device)
    if save_dir is not None:
        outcome.files = write_prune_files(outcome, source, ensure_output_dir(save_dir), plots)
    return outcome


def _on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself when all its tensors are on the CPU, else a CPU copy of it."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).cpu()


def _test(module: nn.Module, data: Dataset, batch_size: int, device) -> float:
    """Accuracy of ``module`` (left as it is: a copy is moved when ``device`` is not the CPU)."""
    device = torch.device(device)
    if device.type != "cpu":
        module = copy.deepcopy(module).to(device)
    return evaluate(module, data, batch_size=batch_size, device=device)
