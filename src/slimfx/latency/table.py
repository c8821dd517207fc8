"""Latency tables: what each layer costs at the widths a plan may give it, on one target.

A :class:`LatencyTable` is measured for one traced model on one *target* — backend, batch
size, thread count, on this machine with these runtime versions (:func:`measure_table`):

1. Every convolution and linear layer (:func:`slimfx.latency.layers.timed_layers`) is
   timed alone (:mod:`slimfx.latency.probes`) on a grid of widths: its full width and about
   1/8, 1/4, 1/2 and 3/4 of it, each rounded up to a multiple of the target's *step* (the
   width its kernels compute in blocks of; widths between two steps cost what the next step
   costs, so a plan only ever chooses multiples). An axis no prunable group reaches has one
   point; a depthwise convolution is timed along one axis, input and output together.
2. Between grid points the latency is interpolated bilinearly (linearly along one axis).
3. Every point is cached on disk (:class:`ProbeCache`) under the target's key, so a table is
   measured once per machine and target; layers of equal shape share their points.
4. The whole model is timed once at full width; what the layers alone do not account for
   (pooling, activations, per-op overheads, and memory: in the model a layer reads what
   the previous one wrote, alone it runs from the cache) is the *rest*. It is modelled as a
   fixed part plus a part proportional to the activations the layers read and write
   (channels times positions), fitted to whole-model measurements of slimmer versions
   (:meth:`LatencyTable.calibrated`); with the full model alone, the rest is fixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimfx.bench.backends import backend_status, machine_info
from slimfx.bench.timing import progress_bar, torch_threads
from slimfx.files import write_text
from slimfx.ir.channel_graph import ChannelGraph
from slimfx.ir.layout import KeepTable
from slimfx.latency.layers import LayerShape, TimedLayer, timed_layers
from slimfx.latency.probes import default_step, time_probe

logger = logging.getLogger(__name__)

#: Grid fractions of a layer's full width (each rounded up to the step).
GRID_FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Target:
    """Where the slim model is to run fast.

    Attributes
    ----------
    backend : str
        A name of :data:`slimfx.bench.backends.BACKENDS` (``"ort-cpu"`` …).
    batch : int
    threads : int or None
        Intra-op threads (the runtime's default when ``None``).
    """

    backend: str = "ort-cpu"
    batch: int = 1
    threads: int | None = None

    def __post_init__(self) -> None:
        backend_status(self.backend)  # ValueError for an unknown name
        if isinstance(self.batch, bool) or int(self.batch) != self.batch or self.batch < 1:
            raise ValueError(f"batch must be a positive integer, got {self.batch!r}")
        if self.threads is not None and (int(self.threads) != self.threads or self.threads < 1):
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")

    def context(self) -> dict[str, Any]:
        """What a measurement on this target depends on: the cache's key."""
        info = machine_info(self.threads)
        device = info.get("gpu") if "cuda" in self.backend or "trt" in self.backend else None
        if self.backend.startswith("ort"):
            runtime = info.get("onnxruntime")
        elif self.backend == "openvino-cpu":
            runtime = info.get("openvino")
        else:
            runtime = info["torch"]
        return {
            "backend": self.backend,
            "device": device or info["cpu"],
            "runtime": runtime,
            "threads": self.threads,
            "batch": self.batch,
        }


@dataclass
class LayerTable:
    """Measured latency of one layer on a grid of widths.

    Attributes
    ----------
    node : str
    in_widths, out_widths : list of int
        The grid (one entry for an axis that does not change).
    ms : list of list of float
        ``ms[i][j]``: latency at ``in_widths[i]``, ``out_widths[j]``; a depthwise layer
        (``diagonal``) has one row, its input width equal to its output width.
    diagonal : bool
    """

    node: str
    in_widths: list[int]
    out_widths: list[int]
    ms: list[list[float]]
    diagonal: bool = False
    in_area: int = 1
    out_area: int = 1

    def predict(self, cin: int, cout: int) -> float:
        """Latency at widths ``cin``, ``cout`` (interpolated; extrapolated linearly)."""
        if self.diagonal:
            return max(_interp(self.out_widths, self.ms[0], cout), 0.0)
        rows = [_interp(self.out_widths, row, cout) for row in self.ms]
        return max(_interp(self.in_widths, rows, cin), 0.0)

    def activations(self, cin: int, cout: int) -> int:
        """Activation values per sample the layer reads and writes at these widths."""
        return cin * self.in_area + cout * self.out_area

    @property
    def full_ms(self) -> float:
        return self.ms[-1][-1]

    @property
    def full_activations(self) -> int:
        return self.activations(self.in_widths[-1], self.out_widths[-1])


@dataclass
class LatencyTable:
    """Per-layer latency tables of one model on one target, and the whole model's latency.

    Attributes
    ----------
    target : Target
    step : int
        Widths are planned in multiples of this.
    layers : dict
        Node name → :class:`LayerTable`.
    model_ms : float
        The whole model, measured at full width.
    context : dict
        Machine, runtime and settings of the measurement.
    seconds : float
        How long measuring took (cached points cost nothing).
    probes : int
        Points measured (the rest came from the cache).
    rest_fixed, rest_per_activation : float
        The rest of the model (see the module docstring): a fixed part (``None``: all of
        ``model_ms`` less the layers) and a part per activation value of the layers.
    calibration : list of dict
        The whole-model measurements the rest was fitted to (:meth:`calibrated`).
    """

    target: Target
    step: int
    layers: dict[str, LayerTable]
    model_ms: float
    context: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    probes: int = 0
    rest_fixed: float | None = None
    rest_per_activation: float = 0.0
    calibration: list[dict] = field(default_factory=list)

    @property
    def layers_full_ms(self) -> float:
        return float(sum(t.full_ms for t in self.layers.values()))

    @property
    def rest_fixed_ms(self) -> float:
        """The part of the rest that does not shrink with the widths."""
        if self.rest_fixed is None:
            return self.model_ms - self.layers_full_ms
        return self.rest_fixed

    def layer_prediction(self, node: str, cin: int, cout: int) -> float:
        """Predicted latency of layer ``node`` at these widths, with its activations' share
        of the rest (the fixed part of the rest is not in it)."""
        table = self.layers[node]
        return table.predict(cin, cout) + self.rest_per_activation * table.activations(cin, cout)

    def layer_ms(self, layers: list[TimedLayer], keep: KeepTable) -> dict[str, float]:
        """Predicted latency of every tabled layer when ``keep`` says which channels stay."""
        return {
            layer.node: self.layer_prediction(layer.node, *layer.widths(keep))
            for layer in layers
            if layer.node in self.layers
        }

    def predict(self, layers: list[TimedLayer], keep: KeepTable) -> float:
        """Predicted latency of the whole model in milliseconds."""
        return float(sum(self.layer_ms(layers, keep).values()) + self.rest_fixed_ms)

    def point(self, layers: list[TimedLayer], keep: KeepTable, measured_ms: float) -> dict:
        """A calibration point: the tables' sum and the activations at ``keep``, measured."""
        probe = act = 0.0
        for layer in layers:
            table = self.layers.get(layer.node)
            if table is not None:
                widths = layer.widths(keep)
                probe += table.predict(*widths)
                act += table.activations(*widths)
        return {"layers_ms": probe, "activations": act, "measured_ms": float(measured_ms)}

    def calibrated(self, points: list[dict]) -> LatencyTable:
        """This table with the rest fitted to whole-model measurements (least squares).

        ``points`` come from :meth:`point` (the full model's is added here): the rest of
        each, ``measured - layers``, is fitted as ``fixed + per_activation * activations``.
        Both parts are kept non-negative (a rest that grows as layers shrink is noise, not
        a cost); one point fits a fixed rest only.
        """
        full_act = float(sum(t.full_activations for t in self.layers.values()))
        full = {"layers_ms": self.layers_full_ms, "activations": full_act}
        points = [{**full, "measured_ms": self.model_ms}, *points]
        rest = np.array([p["measured_ms"] - p["layers_ms"] for p in points])
        act = np.array([p["activations"] for p in points])
        fixed, per_act = _fit_rest(rest, act, full_act)
        return replace(
            self,
            rest_fixed=float(fixed),
            rest_per_activation=float(per_act),
            calibration=[dict(p) for p in points[1:]],
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = asdict(self.target)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        data = dict(data)
        data["target"] = Target(**data["target"])
        data["layers"] = {k: LayerTable(**v) for k, v in data["layers"].items()}
        return cls(**data)


class ProbeCache:
    """Measured probe latencies on disk, one JSON file per target context.

    The directory is ``cache_dir``, else ``$SLIMFX_CACHE_DIR``, else
    ``~/.cache/slimfx``, with a ``latency`` folder inside. Files are written atomically; an
    unreadable one is ignored (and replaced on the next write) with a warning.
    """

    def __init__(self, context: Mapping[str, Any], cache_dir: str | os.PathLike | None = None):
        root = cache_dir or os.environ.get("SLIMFX_CACHE_DIR") or Path.home() / ".cache/slimfx"
        digest = hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(root) / "latency" / f"{context['backend']}-{digest}.json"
        self.context = dict(context)
        self.points: dict[str, float] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("context") == self.context:
                    self.points = {str(k): float(v) for k, v in data["points"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                logger.warning("ignoring the unreadable latency cache %s (%s)", self.path, exc)

    def get(self, key: str) -> float | None:
        return self.points.get(key)

    def put(self, key: str, ms: float) -> None:
        self.points[key] = ms

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"context": self.context, "points": self.points}
        write_text(self.path, json.dumps(data, indent=0, sort_keys=True))


def grid(full: int, step: int, fractions=GRID_FRACTIONS) -> list[int]:
    """Widths a table measures for a full width: fractions rounded up to ``step``, ``full``,
    and the last multiple of ``step`` below ``full`` (a width off the staircase may cost
    more than the step below it)."""
    points = {min(full, max(step, -(-int(np.ceil(f * full)) // step) * step)) for f in fractions}
    if full > step and full % step:
        points.add(full - full % step)
    return sorted(points | {full})


def measure_table(
    cg: ChannelGraph,
    example_inputs: Any,
    target: Target,
    *,
    step: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    model_ms: float | None = None,
) -> LatencyTable:
    """Measure (or load from the cache) the latency table of ``cg``'s model on ``target``.

    Parameters
    ----------
    cg : ChannelGraph
        The analysed model (:func:`slimfx.passes.analyze`).
    example_inputs : tensor or tuple of tensors
        Inputs of the shape the model is used with; dimension 0 becomes ``target.batch``.
    target : Target
    step : int, optional
        Width step (default: :func:`slimfx.latency.probes.default_step` of the backend).
    cache_dir : path, optional
        Where measured points are kept (see :class:`ProbeCache`).
    progress : bool
        A tqdm bar on a terminal, a line every 10 s when stderr is a file
        (:func:`slimfx.bench.timing.progress_bar`).
    model_ms : float, optional
        The whole model's latency on the target, when already measured.

    Returns
    -------
    LatencyTable

    Raises
    ------
    SlimfxError
        The backend is not available here.
    """
    from slimfx.errors import SlimfxError

    ok, reason = backend_status(target.backend)
    if not ok:
        raise SlimfxError(f"cannot measure latency on {target.backend}: {reason}")
    step = default_step(target.backend) if step is None else int(step)
    if step < 1:
        raise ValueError(f"step must be a positive integer, got {step}")
    start = time.perf_counter()
    context = target.context()
    cache = ProbeCache(context, cache_dir)
    prunable = {g.id for g in cg.groups if g.prunable}
    layers = timed_layers(cg)
    plans = {layer.node: _layer_grid(layer, prunable, step) for layer in layers}
    wanted: dict[str, LayerShape] = {}
    for layer in layers:
        for cin, cout in plans[layer.node][0]:
            shape = layer.shape.at(cin, cout)
            wanted.setdefault(shape.key(), shape)
    missing = [key for key in wanted if cache.get(key) is None]
    logger.info(
        "latency table on %s, batch %d: %d layers, %d points (%d cached)",
        target.backend,
        target.batch,
        len(layers),
        len(wanted),
        len(wanted) - len(missing),
    )
    with progress_bar(len(missing), progress, unit="probe") as bar, torch_threads(target.threads):
        bar.set_description(f"latency table ({target.backend}, batch {target.batch})")
        for key in missing:
            cache.put(key, time_probe(wanted[key], target.backend, target.batch, target.threads))
            bar.update(1)
    if missing:
        cache.save()
    tables = {}
    for layer in layers:
        points, in_widths, out_widths, diagonal = plans[layer.node]
        values = [cache.get(layer.shape.at(cin, cout).key()) for cin, cout in points]
        ms = [values] if diagonal else np.reshape(values, (len(in_widths), len(out_widths)))
        tables[layer.node] = LayerTable(
            layer.node,
            in_widths,
            out_widths,
            np.asarray(ms).tolist(),
            diagonal,
            in_area=layer.in_area,
            out_area=layer.out_area,
        )
    if model_ms is None:
        model_ms = measure_model_ms(cg.gm, example_inputs, target)
    seconds = time.perf_counter() - start
    logger.info("latency table measured in %.1f s (%d probes)", seconds, len(missing))
    return LatencyTable(
        target=target,
        step=step,
        layers=tables,
        model_ms=float(model_ms),
        context=context,
        seconds=seconds,
        probes=len(missing),
    )


def time_on_target(models: Mapping[str, Any], example_inputs: Any, target: Target, rounds: int = 7):
    """:func:`slimfx.bench.measure_latency` of ``models`` on ``target`` alone (its backend,
    batch and threads; 2 warm-up calls, no progress bar, noise logged at INFO)."""
    from slimfx.bench.latency import measure_latency

    return measure_latency(
        dict(models),
        example_inputs,
        batches=(target.batch,),
        backends=(target.backend,),
        threads=target.threads,
        rounds=rounds,
        warmup=2,
        progress=False,
        warn_noise=False,
    )


def measure_model_ms(
    module: torch.nn.Module | str | os.PathLike, example_inputs: Any, target: Target
) -> float:
    """Median latency of ``module`` (or of an ONNX file) on ``target`` (:func:`time_on_target`)."""
    report = time_on_target({"model": module}, example_inputs, target)
    return report.stats(target.backend, target.batch, "model").median_ms


def _layer_grid(layer: TimedLayer, prunable: set[int], step: int):
    """(points, in widths, out widths, diagonal) a layer is measured at."""
    shape = layer.shape
    varies_in = bool(set(layer.in_groups) & prunable)
    varies_out = bool(set(layer.out_groups) & prunable)
    if shape.depthwise and (varies_in or varies_out):
        widths = grid(shape.out_channels, step)
        return [(w, w) for w in widths], widths, widths, True
    unit = step
    if shape.groups > 1:  # grouped: every group keeps as many channels
        unit = int(np.lcm(step, shape.groups))
    in_widths = grid(shape.in_channels, unit) if varies_in else [shape.in_channels]
    out_widths = grid(shape.out_channels, step if shape.groups == 1 else unit)
    out_widths = out_widths if varies_out else [shape.out_channels]
    points = [(i, o) for i in in_widths for o in out_widths]
    return points, in_widths, out_widths, False


def _fit_rest(rest: np.ndarray, act: np.ndarray, full_act: float) -> tuple[float, float]:
    """``rest ≈ fixed + per_act * act`` by least squares with both parts >= 0."""
    if len(rest) < 2 or np.ptp(act) < 1e-6 * max(full_act, 1.0):
        return max(float(rest.mean()), 0.0), 0.0
    design = np.stack([np.ones_like(act), act], axis=1)
    (fixed, per_act), *_ = np.linalg.lstsq(design, rest, rcond=None)
    if fixed >= 0 and per_act >= 0:
        return float(fixed), float(per_act)
    candidates = [(max(float(rest.mean()), 0.0), 0.0)]  # the boundaries of the feasible set
    candidates.append((0.0, max(float(rest @ act / (act @ act)), 0.0)))
    return min(candidates, key=lambda c: float(np.sum((c[0] + c[1] * act - rest) ** 2)))


def _interp(xs: list[int], ys: list[float], x: float) -> float:
    """Piecewise-linear through (xs, ys), extended linearly beyond both ends."""
    if len(xs) == 1:
        return float(ys[0])
    k = int(np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2))
    x0, x1, y0, y1 = xs[k], xs[k + 1], ys[k], ys[k + 1]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
