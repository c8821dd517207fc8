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
from slimfx.checkpoint import load_checkpoint, load_into, mismatch_summary, shape_mismatches
from slimfx.errors import CheckpointError
from slimfx.files import ensure_output_dir
from slimfx.ir.options import SlimOptions
from slimfx.models import MODEL_BUILDERS, MODEL_DEPTHS, build_model
from slimfx.models.vgg import NUM_CLASSES
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
    model is built from their ``cfg``) and plain state dicts, with ``weights_only=True``;
    and, without any pickle, ``pruned.safetensors`` / ``pruned.json`` pairs
    (:func:`slimfx.workflow.prune_files.read_pruned`).

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
    if Path(path).suffix in (".safetensors", ".json"):
        from slimfx.workflow.prune_files import read_pruned

        ckpt = read_pruned(path)
    else:
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
    enormous model — is reported before any memory is spent on it. When the weights do not
    fit, the models of the other ``--arch``/``--depth``/``--dataset`` are tried the same way
    and the error says which one the file is (``use --depth 11``).

    Raises
    ------
    CheckpointError
        The cfg builds no model, or the state dict does not fit the model (the first key of
        each kind named, and the flags that fit the file when some do).
    ValueError
        Unknown ``arch``; invalid ``depth``/``dataset`` for a file without a cfg.
    """
    if arch not in MODEL_BUILDERS:
        raise ValueError(f"--arch must be one of {', '.join(sorted(MODEL_BUILDERS))}, got {arch!r}")
    cfg = ckpt.get("cfg")
    state = ckpt["state_dict"]
    asked = (arch, depth, dataset)
    if cfg is None:
        try:
            with torch.device("meta"):
                shell = build_model(arch, depth, dataset)
        except ValueError as exc:  # e.g. --depth 12: say which depth the file has
            match = _identify(state, None, asked)
            raise ValueError(f"{exc}; {_advice(match)}" if match else str(exc)) from exc
        _check_fits(shell, state, source, None, asked, f"{type(shell).__name__}-{depth}")
        return build_model(arch, depth, dataset)
    if not isinstance(cfg, list):
        raise CheckpointError(f"{source}: 'cfg' is a {type(cfg).__name__}, not a list")
    try:
        with torch.device("meta"):
            shell = build_model(arch, depth, dataset, cfg=cfg)
    except Exception as exc:  # the cfg comes from the file: whatever it breaks is its fault
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        match = _identify(state, cfg, asked)
        raise CheckpointError(
            f"{source}: its cfg does not build a {arch} model ({text}); wrong --arch or --depth?"
            + (f" {_advice(match, capital=True)}" if match else "")
        ) from exc
    _check_fits(shell, state, source, cfg, asked, type(shell).__name__)
    return build_model(arch, depth, dataset, cfg=cfg)


def _check_fits(shell, state, source: str, cfg, asked: tuple, name: str) -> None:
    """Raise :class:`CheckpointError` when ``state`` does not fit ``shell``: which model
    the file is when one fits, and the first mismatch of each kind."""
    found = shape_mismatches(shell, state)
    if not found:
        return
    match = _identify(state, cfg, asked)
    if match:
        wrong = "/".join(match[1])
        raise CheckpointError(
            f"{source} does not fit {name}: wrong {wrong}: {_advice(match)} "
            f"({mismatch_summary(found)})"
        )
    hint = (
        "wrong --arch/--depth/--dataset, or a pruned model without its cfg?"
        if cfg is None
        else "the file's cfg and its state_dict disagree, or wrong --arch/--dataset"
    )
    raise CheckpointError(f"{source} does not fit {name}: {mismatch_summary(found)} ({hint})")


#: Architectures whose depth follows from their block count: the key prefix of the first
#: stage's blocks, and depth as a function of their number.
BLOCK_DEPTHS = {
    "resnet": ("layer1.", lambda n: 9 * n + 2),
    "densenet": ("dense1.", lambda n: 3 * n + 4),
}


def _identify(
    state: dict[str, torch.Tensor], cfg: list | None, asked: tuple[str, int, str]
) -> tuple[str, dict[str, Any]] | None:
    """Which of the known models (:data:`slimfx.models.MODEL_BUILDERS`) ``state`` fits:
    ``("VGG-11", {"--depth": 11})`` (a label, and the flags that differ from ``asked``), or
    ``None`` when none does.

    Each candidate is built on the ``meta`` device (nothing allocated) with ``cfg``, its
    depths are the listed ones or, for architectures with a depth rule, the one its block
    count gives, and the asked ``(arch, depth, dataset)`` are tried first.
    """
    arch, depth, dataset = asked
    archs = [arch, *(a for a in MODEL_BUILDERS if a != arch)]
    datasets = [dataset, *(d for d in NUM_CLASSES if d != dataset)]
    for a in archs:
        for d in _candidate_depths(a, state, cfg, depth if a == arch else None):
            for ds in datasets:
                try:
                    with torch.device("meta"):
                        shell = build_model(a, d, ds, cfg=cfg)
                except Exception:  # this candidate cannot even be built from the file's cfg
                    continue
                if not shape_mismatches(shell, state):
                    match = _match(type(shell).__name__, (a, d, ds), asked, cfg)
                    return match if match[1] else None
    return None


def _candidate_depths(arch: str, state, cfg: list | None, asked: int | None) -> list[int]:
    if arch in BLOCK_DEPTHS:
        prefix, rule = BLOCK_DEPTHS[arch]
        blocks = {k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)}
        n = len(blocks) if all(b.isdigit() for b in blocks) else 0
        return [rule(n)] if 0 < n <= 200 else []
    if cfg is not None:  # the depth of a model built from a cfg is its cfg's
        return [asked if asked is not None else 0]
    listed = MODEL_DEPTHS.get(arch)
    depths = list(listed) if isinstance(listed, tuple) else []
    return sorted(depths, key=lambda d: d != asked)


def _match(name: str, found: tuple, asked: tuple, cfg: list | None) -> tuple[str, dict]:
    (arch, depth, dataset), (want_arch, want_depth, want_dataset) = found, asked
    depth_matters = cfg is None or arch in BLOCK_DEPTHS
    flags = {}
    if arch != want_arch:
        flags["--arch"] = arch
    if depth_matters and depth != want_depth:
        flags["--depth"] = depth
    if NUM_CLASSES[dataset] != NUM_CLASSES.get(want_dataset):
        flags["--dataset"] = dataset
    label = ("pruned " if cfg is not None else "") + name + (f"-{depth}" if depth_matters else "")
    label += " checkpoint" + (
        f" with {NUM_CLASSES[dataset]} classes" if "--dataset" in flags else ""
    )
    return label, flags


def _advice(match: tuple[str, dict], capital: bool = False) -> str:
    """``"the file is a VGG-11 checkpoint: use --depth 11"``."""
    label, flags = match
    use = " ".join(f"{flag} {value}" for flag, value in flags.items())
    return f"{'T' if capital else 't'}he file is a {label}: use {use}"


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
    latency_cache: str | os.PathLike | None = None,
    progress: bool = False,
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
    plots : bool
        Write ``gammas.png`` and ``channels.png``.
    latency_cache : path, optional
        With a latency target (``speedup``, ``latency_ms``): where measured layer
        latencies are cached (default ``$SLIMFX_CACHE_DIR`` or ``~/.cache/slimfx``).
    progress : bool
        Show the slimming's passes as they run (see :func:`slimfx.slim`).
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
    result = slim(
        source,
        example_inputs,
        options=options.replace(round_to=chosen),
        latency_cache=latency_cache,
        progress=progress,
    )
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
