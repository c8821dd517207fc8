"""The runtimes a latency benchmark runs models in, and the machine it runs on.

Backends (names as used by :func:`slimfx.bench.latency.compare_latency` and the CLI):

``torch-cpu``
    PyTorch eager on the CPU (``torch.inference_mode``).
``torch-cuda``
    PyTorch eager on the first CUDA device; every call is followed by a synchronisation.
``torch-compile``
    ``torch.compile`` (inductor) on the CPU, static shapes: each model is compiled for each
    batch size when its inputs are bound, outside the timing. Compiling takes seconds per
    model and batch (C++ kernels are built; inductor caches them on disk), so it runs only
    when asked for by name.
``ort-cpu``
    onnxruntime, ``CPUExecutionProvider``, all graph optimisations (``ORT_ENABLE_ALL``: its
    NCHWc convolution kernels need channel counts that are multiples of the SIMD block,
    which is what ``round_to`` provides).
``ort-cuda``
    onnxruntime, ``CUDAExecutionProvider``, inputs and outputs bound on the device.
``ort-trt``
    onnxruntime, ``TensorrtExecutionProvider`` (CUDA as fallback); building engines takes
    minutes per model and batch size, so it runs only when asked for by name.
``openvino-cpu``
    OpenVINO's CPU plugin on the same checked ONNX file as the onnxruntime backends, float32
    (``INFERENCE_PRECISION_HINT`` ``f32``: on CPUs with bfloat16 support OpenVINO would
    otherwise compute in bfloat16). An optional dependency (``pip install
    'slimfx[openvino]'``), so it runs only when asked for by name.

A backend is *available* when its runtime is installed and sees its device; the others are
skipped with the reason.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from slimfx.export.onnx import export_onnx
from slimfx.targets import BACKEND_ALIASES, BACKENDS, canonical_backend

__all__ = ["BACKENDS", "BACKEND_ALIASES", "DEFAULT_BACKENDS", "Runner", "canonical_backend"]

logger = logging.getLogger(__name__)

#: Backends measured when none are named (``ort-trt`` and ``torch-compile`` must be asked for:
#: engine builds and compilation are slow; ``openvino-cpu`` too: it is an optional install).
DEFAULT_BACKENDS = ("torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda")
_ORT_PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}

#: One inference with inputs already in place; returns its outputs (on the device) when ready.
Call = Callable[[], object]


def runs_onnx(backend: str) -> bool:
    """Whether ``backend`` runs an exported ONNX file (onnxruntime, OpenVINO)."""
    return backend.startswith("ort") or backend == "openvino-cpu"


def backend_status(name: str) -> tuple[bool, str]:
    """Whether backend ``name`` can run here, and why not when it cannot."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name == "torch-cpu":
        return True, ""
    if name == "torch-cuda":
        ok = torch.cuda.is_available()
        return ok, "" if ok else "PyTorch sees no CUDA device"
    if name == "torch-compile":
        cxx = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
        ok = shutil.which(cxx) is not None
        return ok, "" if ok else f"torch.compile (inductor) needs a C++ compiler: no {cxx}"
    if name == "openvino-cpu":
        try:
            import openvino
        except ImportError:
            return False, "openvino is not installed (pip install 'slimfx[openvino]')"
        ok = "CPU" in openvino.Core().available_devices
        return ok, "" if ok else "OpenVINO sees no CPU device"
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    provider = _ORT_PROVIDERS[name]
    if provider not in ort.get_available_providers():
        return False, f"this onnxruntime build has no {provider}"
    return True, ""


def resolve_backends(names=None) -> tuple[list[str], dict[str, str]]:
    """Split requested backends (default :data:`DEFAULT_BACKENDS`) into available and skipped.

    Aliases (``"openvino"``, ``"compile"`` …: :data:`BACKEND_ALIASES`) stand for their backend.

    Returns
    -------
    tuple
        ``(available names, {skipped name: reason})``.
    """
    requested = list(DEFAULT_BACKENDS if names is None else names)
    if not requested:
        raise ValueError("no backend requested")
    available, skipped = [], {}
    for name in dict.fromkeys(canonical_backend(n) for n in requested):
        ok, reason = backend_status(name)
        if ok:
            available.append(name)
        else:
            skipped[name] = reason
            logger.info("skipping backend %s: %s", name, reason)
    return available, skipped


class Runner:
    """A model prepared for one backend; :meth:`bind` places inputs and returns a call."""

    def __init__(self, backend: str, module: torch.nn.Module, onnx_path: Path | None, threads):
        self.backend = backend
        self.threads = threads
        if backend == "torch-compile":
            self.module, self.device = module, torch.device("cpu")
            self.compiled = torch.compile(module, dynamic=False)
        elif backend == "openvino-cpu":
            self.compiled = _openvino_model(onnx_path, threads)
        elif backend.startswith("torch"):
            device = "cuda" if backend == "torch-cuda" else "cpu"
            self.module = copy.deepcopy(module).to(device).eval() if device == "cuda" else module
            self.device = torch.device(device)
        else:
            self.session = _ort_session(backend, onnx_path, threads)

    def bind(self, inputs: tuple[torch.Tensor, ...]) -> Call:
        """A zero-argument call running one inference on ``inputs`` (CPU tensors)."""
        if self.backend == "torch-compile":
            return self._bind_compiled(inputs)
        if self.backend == "openvino-cpu":
            return self._bind_openvino(inputs)
        if self.backend.startswith("torch"):
            return self._bind_torch(inputs)
        return self._bind_ort(inputs)

    def _bind_torch(self, inputs) -> Call:
        placed = tuple(t.to(self.device) for t in inputs)
        module = self.module
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

        def call():
            with torch.inference_mode():
                out = module(*placed)
            sync()
            return out

        return call

    def _bind_compiled(self, inputs) -> Call:
        """Compiles for the shapes of ``inputs`` here (static shapes), outside the timing."""
        placed = tuple(t.cpu() for t in inputs)
        compiled = self.compiled
        with _fail_on_recompile_limit(), torch.inference_mode():
            compiled(*placed)

        def call():
            with torch.inference_mode():
                return compiled(*placed)

        return call

    def _bind_openvino(self, inputs) -> Call:
        """One infer request with its input tensors set once; returns its output tensors."""
        import openvino

        request = self.compiled.create_infer_request()
        arrays = [t.detach().cpu().numpy() for t in inputs]
        for k, array in enumerate(arrays):
            request.set_input_tensor(k, openvino.Tensor(array))

        def call():
            request.start_async()
            request.wait()
            return request.output_tensors  # openvino.Tensor views: no copy

        return call

    def _bind_ort(self, inputs) -> Call:
        """Inputs and outputs bound on the backend's device: no copies inside the timing."""
        import onnxruntime as ort

        session = self.session
        device = "cpu" if self.backend == "ort-cpu" else "cuda"
        binding = session.io_binding()
        for arg, tensor in zip(session.get_inputs(), inputs, strict=True):
            array = tensor.detach().cpu().numpy()
            value = ort.OrtValue.ortvalue_from_numpy(array, device, 0)
            binding.bind_ortvalue_input(arg.name, value)
        for arg in session.get_outputs():
            binding.bind_output(arg.name, device)

        def call():
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return binding.get_outputs()  # OrtValues on the device: no copy

        return call


def prepare_runners(
    backend: str,
    models: dict[str, torch.nn.Module | str | os.PathLike],
    example_inputs: tuple[torch.Tensor, ...],
    onnx_dir: Path,
    onnx_files: dict[str, Path],
    threads: int | None,
) -> dict[str, Runner]:
    """One :class:`Runner` per model; ONNX files are exported once into ``onnx_dir``.

    ``onnx_files`` caches the exported files across backends (name → path). A model given
    as the path of an ONNX file (an int8 model) runs as it is on the backends that run ONNX
    files and gets no runner on the others.
    """
    runners = {}
    for name, module in models.items():
        path = None
        if isinstance(module, str | os.PathLike):  # an ONNX file written earlier
            onnx_files[name], module = Path(module), None
        if runs_onnx(backend):
            if name not in onnx_files:
                file = onnx_dir / f"{len(onnx_files)}.onnx"
                result = export_onnx(module, example_inputs, file)
                logger.info("benchmark export of %s: %s", name, result)
                onnx_files[name] = file
            path = onnx_files[name]
        elif module is None:
            continue  # PyTorch cannot run an ONNX file (measure_latency lists it as skipped)
        runners[name] = Runner(backend, module, path, threads)
    return runners


def _fail_on_recompile_limit():
    """Make dynamo raise, not fall back to eager silently, past its recompile limit (8 batch
    sizes per model): a benchmark must not time eager code as compiled."""
    config = torch._dynamo.config
    if hasattr(config, "fail_on_recompile_limit_hit"):
        return config.patch(fail_on_recompile_limit_hit=True)
    return contextlib.nullcontext()


def _openvino_model(path: Path | None, threads: int | None):
    import openvino

    if path is None:
        raise ValueError("the openvino-cpu backend runs an ONNX file, and none was given")
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return openvino.Core().compile_model(str(path), "CPU", config)


def _ort_session(backend: str, path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers: list = [_ORT_PROVIDERS[backend]]
    if backend == "ort-trt":
        cache = str(path.parent / "trt-cache")
        providers = [
            (
                "TensorrtExecutionProvider",
                {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache},
            ),
            "CUDAExecutionProvider",
        ]
    session = ort.InferenceSession(str(path), options, providers=providers)
    if _ORT_PROVIDERS[backend] not in session.get_providers():
        raise RuntimeError(f"onnxruntime did not enable {_ORT_PROVIDERS[backend]}")
    return session


def machine_info(threads: int | None = None) -> dict[str, object]:
    """The machine and software a measurement ran on (goes into every report)."""
    info: dict[str, object] = {
        "host": platform.node(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["ort_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    with contextlib.suppress(ImportError):
        import openvino

        info["openvino"] = openvino.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
