"""Ultralytics YOLO: slim, save, sparsity-train and fine-tune stock models.

The only slimfx module that imports ``ultralytics`` (AGPL-3.0; ``pip install 'slimfx[yolo]'``).
It works on the models Ultralytics builds from its own yaml files or loads from its
checkpoints — ``DetectionModel``, ``SegmentationModel``, ``PoseModel``, ``OBBModel`` and
``ClassificationModel`` of YOLOv5u, YOLOv8, YOLO11 and later — with no change to them:

- :func:`slim_yolo` traces the model up to its head's raw predictions (the head in its
  training branch, which computes no anchors from shapes; its layers in eval mode), slims
  it with the pieces of every ``chunk`` kept even (``keep_forward``: a C2f/C3k2 block
  chunks its first convolution into equal halves), and puts the slim layers back into a
  copy of the model: the result is the same Ultralytics class, and validates, predicts,
  trains and exports with Ultralytics' own tools. Its decoded outputs (boxes, scores,
  masks, keypoints) are verified in float64 against the masked original at the given
  image size and a second one.
- :func:`save_yolo` writes an Ultralytics checkpoint ``YOLO(path)`` loads. The pruned
  structure lives in the pickled module itself; the yaml inside still describes the
  original widths, which is why fine-tuning goes through :func:`train_yolo` (Ultralytics'
  own ``train()`` rebuilds the model from that yaml and would drop every pruned weight).
- :func:`train_yolo` runs Ultralytics' trainer on a given model, optionally with the
  network-slimming L1 penalty on the prunable BatchNorms (:class:`SparsityCallbacks`).

Ultralytics sets PyTorch's thread count to one less than the CPUs whenever it picks a
device (its ``select_device``: one thread on a 2-CPU machine, for the rest of the process);
the calls this module makes into Ultralytics' trainer and validator (:func:`train_yolo`,
:func:`validate_yolo`) leave the thread count as they found it.

Ultralytics checkpoints are full pickles: loading one runs code stored in the file.
:func:`load_yolo` loads one only when told ``trust_pickles=True``. Nothing is downloaded:
this module puts Ultralytics in offline mode (``YOLO_OFFLINE=1``) unless the environment
says otherwise.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from slimfx.api import slim
from slimfx.errors import CheckpointError, UnsupportedError
from slimfx.files import atomic_path, save_torch, write_text
from slimfx.ir.options import SlimOptions
from slimfx.model_tree import into_model
from slimfx.passes.rewrite import rewrite
from slimfx.passes.verify import masked_state
from slimfx.passes.verify import verify as verify_modules
from slimfx.result import SlimResult
from slimfx.tolerances import FLOAT64_RTOL
from slimfx.train.sparsity import SparsityRegularizer, prunable_batchnorms, sparsity_strength

os.environ.setdefault("YOLO_OFFLINE", "1")

try:
    import ultralytics
    from ultralytics.models.yolo.classify import ClassificationTrainer
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.models.yolo.obb import OBBTrainer
    from ultralytics.models.yolo.pose import PoseTrainer
    from ultralytics.models.yolo.segment import SegmentationTrainer
    from ultralytics.nn.modules.block import C2f
    from ultralytics.nn.tasks import BaseModel
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "slimfx's YOLO support needs Ultralytics: pip install 'slimfx[yolo]'"
    ) from exc

logger = logging.getLogger(__name__)

__all__ = [
    "RawPredictions",
    "SparsityCallbacks",
    "YoloSlimResult",
    "as_yolo",
    "load_yolo",
    "save_yolo",
    "slim_yolo",
    "train_yolo",
    "ultralytics_threads_restored",
    "validate_yolo",
    "yolo_model",
]


def yolo_model(model: Any) -> nn.Module:
    """The ``torch.nn.Module`` of an Ultralytics ``YOLO`` object (or the module itself)."""
    inner = model if isinstance(model, BaseModel) else getattr(model, "model", None)
    if not isinstance(inner, BaseModel):
        raise TypeError(
            "expected an Ultralytics model (ultralytics.YOLO or one of its DetectionModel, "
            f"SegmentationModel, PoseModel, OBBModel, ClassificationModel), got "
            f"{type(model).__name__}"
        )
    return inner


def load_yolo(path: str | os.PathLike, *, trust_pickles: bool = False) -> nn.Module:
    """An Ultralytics model from a yaml file (random weights) or a checkpoint.

    Parameters
    ----------
    path : str or path
        ``yolov8n.yaml``, ``yolo11n-seg.yaml`` (Ultralytics' bundled configs) or a ``.pt``
        checkpoint.
    trust_pickles : bool, default False
        Ultralytics checkpoints are full pickles: loading one runs code stored in the
        file. Pass ``True`` only for files you trust; otherwise a ``.pt`` is refused.

    Raises
    ------
    CheckpointError
        A checkpoint without ``trust_pickles``, or a file Ultralytics cannot read.
    """
    text = str(path)
    if text.endswith((".yaml", ".yml")):
        return ultralytics.YOLO(text).model
    if not trust_pickles:
        raise CheckpointError(
            f"{text} is an Ultralytics checkpoint: a full pickle, and loading it runs code "
            "stored in the file. Load it only if you trust it (trust_pickles=True, on the "
            "command line --trust-checkpoint)"
        )
    if not Path(text).is_file():
        raise CheckpointError(f"no such checkpoint: {text}")
    try:
        return ultralytics.YOLO(text).model
    except Exception as exc:  # Ultralytics raises many kinds: one clear line
        raise CheckpointError(f"{text} is not an Ultralytics checkpoint: {exc}") from exc


class RawPredictions(nn.Module):
    """The layers of an Ultralytics model with its head's raw predictions as outputs.

    The model's own ``_predict_once`` routing (each layer's ``f`` inputs, ``save`` list),
    with the head run in its training branch — the raw box, class, mask and keypoint maps,
    before anchors are made from the feature shapes — while the head's layers stay in eval
    mode. The features the head passes through (``"feats"``) are left out: they are not
    predictions. The layers are the model's own (``self.model`` is its ``nn.Sequential``),
    so qualified names match the model's.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.model
        self.save = list(model.save)

    def forward(self, x):
        outputs = []
        for layer in self.model:
            if layer.f != -1:
                x = (
                    outputs[layer.f]
                    if isinstance(layer.f, int)
                    else [x if j == -1 else outputs[j] for j in layer.f]
                )
            x = _raw_head_output(layer, x) if layer is self.model[-1] else layer(x)
            outputs.append(x if layer.i in self.save else None)
        return _without_features(x)


def _raw_head_output(head: nn.Module, x):
    training = head.training
    head.training = True  # the head's own flag only: its layers stay as they are
    try:
        return head(x)
    finally:
        head.training = training


def _without_features(out):
    if isinstance(out, dict):
        return {k: _without_features(v) for k, v in out.items() if k != "feats"}
    if isinstance(out, list | tuple):
        return type(out)(_without_features(v) for v in out)
    return out


class _Decoded(nn.Module):
    """A model's decoded predictions in eval mode (what validation and export use)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out


@dataclass
class YoloSlimResult:
    """What :func:`slim_yolo` returns.

    Attributes
    ----------
    model : torch.nn.Module
        The slim model: the input's Ultralytics class with slim layers (a new module).
    result : SlimResult
        The slimming of the raw predictions (plan, report, channel graph).
    errors : dict
        Image size → relative error of the decoded outputs against the masked original
        in float64 (at most 1e-9).
    """

    model: nn.Module
    result: SlimResult
    errors: dict[int, float] = field(default_factory=dict)


def slim_yolo(
    model: Any,
    percent: float = 0.5,
    imgsz: int = 640,
    *,
    options: SlimOptions | None = None,
    check_sizes: tuple[int, ...] | None = None,
) -> YoloSlimResult:
    """Network-slim an Ultralytics model (see the module docstring).

    Parameters
    ----------
    model : ultralytics.YOLO or its model
        Not modified.
    percent : float
        Fraction of the prunable channels to remove.
    imgsz : int
        The image size the model is used at (square inputs).
    options : SlimOptions, optional
        Further settings; ``percent`` and ``keep_forward=True`` override them.
    check_sizes : tuple of int, optional
        Image sizes to verify the decoded outputs at; ``imgsz`` and ``imgsz`` plus the
        model's largest stride by default.

    Returns
    -------
    YoloSlimResult
    """
    original = yolo_model(model)
    work = copy.deepcopy(original).float().eval()
    channels = int(getattr(work, "yaml", {}).get("channels", 3))
    stride = int(max(getattr(work, "stride", torch.tensor([32])).tolist()))
    if imgsz % stride:
        raise ValueError(f"imgsz must be a multiple of the model's stride {stride}, got {imgsz}")
    options = SlimOptions.of(options, percent=percent, keep_forward=True)
    raw = RawPredictions(work)
    example = torch.zeros(1, channels, imgsz, imgsz)
    result = slim(raw, example, options=options)
    slim_model = _synced(into_model(work, result.channel_graph.gm, result.module))
    sizes = check_sizes or (imgsz, imgsz + stride)
    errors = _verify_decoded(work, result, sizes, channels)
    return YoloSlimResult(slim_model, result, errors)


def _synced(model: nn.Module) -> nn.Module:
    """``model`` with the widths Ultralytics' blocks keep as attributes brought in line
    with their slim layers: a C2f (and C3k2) block's ``c``, the half it splits its first
    convolution at in ``forward_split`` (which Ultralytics' exporter switches to)."""
    for module in model.modules():
        if isinstance(module, C2f):
            module.c = module.cv1.conv.out_channels // 2
    return model


def _verify_decoded(work: nn.Module, result: SlimResult, sizes, channels: int) -> dict:
    """Float64 relative error of the slim model's decoded outputs per image size."""
    cg, slim_plan = result.channel_graph, result.plan
    state = masked_state(RawPredictions(work), cg, slim_plan, dtype=torch.float64)
    exact = _synced(into_model(work, cg.gm, rewrite(cg, slim_plan, dtype=torch.float64)))
    reference = _Decoded(work)
    state = {f"model.{k}": v for k, v in state.items()}  # _Decoded holds it as .model
    errors = {}
    for size in sizes:
        x = torch.zeros(1, channels, size, size)
        errors[size] = verify_modules(
            _Decoded(exact), reference, x, tolerance=FLOAT64_RTOL, reference_state=state
        )
    split = copy.deepcopy(exact)  # as Ultralytics' exporter runs C2f blocks
    for module in split.modules():
        if isinstance(module, C2f):
            module.forward = module.forward_split
    x = torch.zeros(1, channels, sizes[0], sizes[0])
    verify_modules(_Decoded(split), reference, x, tolerance=FLOAT64_RTOL, reference_state=state)
    logger.info("decoded outputs exact at %s: %s", sizes, errors)
    return errors


def save_yolo(model: nn.Module, path: str | os.PathLike, **train_args: Any) -> None:
    """Write ``model`` as an Ultralytics checkpoint (``YOLO(path)`` loads it), atomically.

    The module is stored whole (float32), so its slim structure comes back with it;
    ``train_args`` are stored as the checkpoint's training arguments.
    """
    module = copy.deepcopy(yolo_model(model)).float().to(memory_format=torch.contiguous_format)
    save_torch(
        {
            "model": module,
            "ema": None,
            "train_args": dict(train_args),
            "date": datetime.now().astimezone().isoformat(),
            "version": ultralytics.__version__,
        },
        path,
    )


class SparsityCallbacks:
    """Ultralytics trainer callbacks: network slimming's L1 penalty on BatchNorm gammas.

    At the start of training the prunable BatchNorms of the model are found (those
    :func:`slim_yolo` can cut) and each gets a gradient hook adding
    ``s * sign(gamma)`` — multiplied by the trainer's loss scale, which AMP divides out
    again before the optimizer step, and divided by the gradient accumulation count, so
    the penalty is once per optimizer step. Under DDP every rank adds the same term to
    its replica's gradient before the average. The EMA model follows the trained weights.
    At the end of every epoch the gamma statistics are logged and appended to
    ``gammas.csv`` in the run's folder (and ``gammas.png`` plots them).

    Parameters
    ----------
    strength : float
        ``s`` (the forks' ``--sr``; 1e-3 to 1e-2 for YOLO with Ultralytics' batch-scaled
        loss).
    decay : bool
        Decay ``s`` linearly to a tenth of itself over the epochs.
    imgsz : int, optional
        Image size for finding the prunable BatchNorms (the trainer's by default).
    """

    def __init__(self, strength: float, *, decay: bool = False, imgsz: int | None = None):
        self.strength = sparsity_strength(strength)
        self.decay = decay
        self.imgsz = imgsz
        self.regularizer: SparsityRegularizer | None = None
        self.history: list[dict[str, float]] = []
        self._trainer = None
        self._handles: list[Any] = []

    def register(self, target: Any) -> None:
        """Add the callbacks to an Ultralytics ``YOLO`` object or trainer."""
        target.add_callback("on_train_start", self.on_train_start)
        target.add_callback("on_fit_epoch_end", self.on_fit_epoch_end)
        target.add_callback("on_train_end", self.on_train_end)

    def current(self) -> float:
        """``s`` at the trainer's current epoch."""
        trainer = self._trainer
        if not self.decay or trainer is None:
            return self.strength
        return self.strength * (1 - 0.9 * trainer.epoch / max(trainer.epochs, 1))

    def on_train_start(self, trainer) -> None:
        self._trainer = trainer
        inner = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        imgsz = self.imgsz or int(trainer.args.imgsz)
        channels = int(getattr(inner, "yaml", {}).get("channels", 3))
        example = torch.zeros(1, channels, imgsz, imgsz, device=next(inner.parameters()).device)
        was_training = inner.training
        names = prunable_batchnorms(RawPredictions(inner.eval()), example)
        inner.train(was_training)
        names = [n.removeprefix("model.") for n in names]
        self.regularizer = SparsityRegularizer(inner.model, self.strength, batchnorms=names)
        for bn in self.regularizer.modules:
            self._handles.append(bn.weight.register_hook(self._hook(bn.weight)))
        logger.info("sparsity training: s=%g on %d BatchNorms", self.strength, len(names))

    def _hook(self, weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def add_subgradient(grad: torch.Tensor) -> torch.Tensor:
            trainer = self._trainer
            scaler = getattr(trainer, "scaler", None)
            scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
            accumulate = max(int(getattr(trainer, "accumulate", 1)), 1)
            step = self.current() * scale / accumulate
            return grad + step * torch.sign(weight.detach())

        return add_subgradient

    def on_fit_epoch_end(self, trainer) -> None:
        if self.regularizer is None:
            return
        gammas = self.regularizer.gammas()
        row = {
            "epoch": min(int(trainer.epoch) + 1, int(trainer.epochs)),
            "s": self.current(),
            "mean": float(gammas.mean()),
            "median": float(gammas.median()),
            "below_1e-2": float((gammas < 1e-2).float().mean()),
            "below_1e-3": float((gammas < 1e-3).float().mean()),
        }
        if self.history and self.history[-1]["epoch"] == row["epoch"]:
            self.history[-1] = row  # the final validation reports the last epoch again
        else:
            self.history.append(row)
        logger.info(
            "epoch %d gammas: mean %.4g, median %.4g, %.1f%% below 1e-2",
            row["epoch"],
            row["mean"],
            row["median"],
            100 * row["below_1e-2"],
        )
        save_dir = getattr(trainer, "save_dir", None)
        if save_dir is not None:
            _write_history(Path(save_dir), self.history)

    def on_train_end(self, trainer) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _write_history(folder: Path, history: list[dict[str, float]]) -> None:
    keys = list(history[0])
    lines = [",".join(keys)] + [",".join(f"{row[k]:.6g}" for k in keys) for row in history]
    write_text(folder / "gammas.csv", "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [row["mean"] for row in history], marker="o", label="mean |gamma|")
    ax.plot(epochs, [row["median"] for row in history], marker="o", label="median |gamma|")
    ax.set_xlabel("epoch")
    ax.set_ylabel("|gamma|")
    share = ax.twinx()
    share.plot(epochs, [row["below_1e-2"] for row in history], "k--", label="share < 1e-2")
    share.set_ylim(0, 1)
    share.set_ylabel("share of gammas below 1e-2")
    fig.legend(loc="upper right", fontsize=8)
    ax.set_title("BatchNorm scaling factors during sparsity training")
    fig.tight_layout()
    with atomic_path(folder / "gammas.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


class _GivenModel:
    """A trainer mixin that trains the model it is given as it is, instead of a new one
    built from the model's yaml (which holds the original, unpruned widths)."""

    def get_model(self, cfg=None, weights=None, verbose=True):
        if isinstance(weights, nn.Module):
            return weights
        return super().get_model(cfg=cfg, weights=weights, verbose=verbose)


class SlimDetectionTrainer(_GivenModel, DetectionTrainer):
    """Ultralytics' detection trainer, keeping a slim model's structure."""


class SlimSegmentationTrainer(_GivenModel, SegmentationTrainer):
    """Ultralytics' segmentation trainer, keeping a slim model's structure."""


class SlimPoseTrainer(_GivenModel, PoseTrainer):
    """Ultralytics' pose trainer, keeping a slim model's structure."""


class SlimOBBTrainer(_GivenModel, OBBTrainer):
    """Ultralytics' oriented-box trainer, keeping a slim model's structure."""


class SlimClassificationTrainer(_GivenModel, ClassificationTrainer):
    """Ultralytics' classification trainer, keeping a slim model's structure."""


TRAINERS = {
    "detect": SlimDetectionTrainer,
    "segment": SlimSegmentationTrainer,
    "pose": SlimPoseTrainer,
    "obb": SlimOBBTrainer,
    "classify": SlimClassificationTrainer,
}


def train_yolo(
    model: Any,
    data: str | os.PathLike,
    *,
    sparsity: float = 0.0,
    decay: bool = False,
    **train_args: Any,
):
    """Train an Ultralytics model as it is (slim or not) with Ultralytics' trainer.

    Parameters
    ----------
    model : ultralytics.YOLO or its model
        Not modified: training runs on a copy.
    data : str or path
        The dataset yaml (Ultralytics' format).
    sparsity : float
        Network slimming's L1 strength ``s`` on the prunable BatchNorms (0: none).
    decay : bool
        Decay ``s`` to a tenth over the epochs (:class:`SparsityCallbacks`).
    **train_args
        Ultralytics' training arguments (``epochs``, ``imgsz``, ``batch``, ``device``,
        ``project``, ``name``, ...).

    Returns
    -------
    ultralytics.YOLO
        The trained model (Ultralytics' ``best.pt`` of the run, loaded), its run folder in
        ``.trainer.save_dir``; ``.slimfx_gammas`` holds the gamma statistics per epoch.
    """
    module = yolo_model(model)
    task = getattr(module, "task", None) or _task_of(module)
    if task not in TRAINERS:
        raise UnsupportedError(f"no slimfx trainer for Ultralytics task {task!r}")
    wrapper = as_yolo(module, task)
    callbacks = SparsityCallbacks(sparsity, decay=decay) if sparsity > 0 else None
    if callbacks is not None:
        callbacks.register(wrapper)
    with ultralytics_threads_restored():
        wrapper.train(data=str(data), trainer=TRAINERS[task], **train_args)
    wrapper.slimfx_gammas = callbacks.history if callbacks is not None else []
    return wrapper


def validate_yolo(model: Any, data: str | os.PathLike, **val_args: Any):
    """Ultralytics' validation of ``model`` (slim or not) on the dataset yaml ``data``.

    Parameters
    ----------
    model : ultralytics.YOLO or its model
        Not modified: validation runs on a copy.
    data : str or path
    **val_args
        Ultralytics' validation arguments (``imgsz``, ``batch``, ``device``, ``plots`` ...).

    Returns
    -------
    Ultralytics' metrics object (``.box.map`` for detection tasks, ``.top1`` for
    classification).
    """
    with ultralytics_threads_restored():
        return as_yolo(model).val(data=str(data), **val_args)


@contextlib.contextmanager
def ultralytics_threads_restored() -> Iterator[None]:
    """Run Ultralytics code, then put PyTorch's thread count back as it was.

    Ultralytics' ``select_device`` (called by its trainer, validator, predictor and
    exporter) sets ``torch.set_num_threads(cpu_count - 1)`` for the rest of the process.
    """
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _task_of(module: nn.Module) -> str:
    from ultralytics.nn.tasks import guess_model_task

    return guess_model_task(module)


def as_yolo(model: Any, task: str | None = None):
    """An ``ultralytics.YOLO`` object holding a copy of ``model`` (for its ``val``,
    ``predict``, ``export`` and ``train``), made through a checkpoint this process writes
    and deletes again."""
    module = yolo_model(model)
    folder = Path(tempfile.mkdtemp(prefix="slimfx-yolo-"))
    try:
        path = folder / "model.pt"
        save_yolo(module, path)
        return ultralytics.YOLO(str(path), task=task or getattr(module, "task", None))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
