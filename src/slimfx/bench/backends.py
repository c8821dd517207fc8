"""The runtimes a latency benchmark runs models in, and the machine it runs on.

Backends (names as used by :func:`slimfx.bench.latency.compare_latency` and the CLI):

``torch-cpu``
    PyTorch eager on the CPU (``torch.inference_mode``).
``torch-cuda``
    PyTorch eager on the first CUDA device; every call is followed by a synchronisation.
``ort-cpu``
    onnxruntime, ``CPUExecutionProvider``, all graph optimisations (``ORT_ENABLE_ALL``: its
    NCHWc convolution kernels need channel counts that are multiples of the SIMD block,
    which is what ``round_to`` provides).
``ort-cuda``
    onnxruntime, ``CUDAExecutionProvider``, inputs and outputs bound on the device.
``ort-trt``
    onnxruntime, ``TensorrtExecutionProvider`` (CUDA as fallback); building engines takes
    minutes per model and batch size, so it runs only when asked for by name.

A backend is *available* when its runtime is installed and sees its device; the others are
skipped with the reason.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from slimfx.export.onnx import export_onnx

logger = logging.getLogger(__name__)

BACKENDS = ("torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-trt")
#: Backends measured when none are named (``ort-trt`` must be asked for: engine builds are slow).
DEFAULT_BACKENDS = ("torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda")
_ORT_PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}

#: One inference with inputs already in place; returns its outputs (on the device) when ready.
Call = Callable[[], object]


def backend_status(name: str) -> tuple[bool, str]:
    """Whether backend ``name`` can run here, and why not when it cannot."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name == "torch-cpu":
        return True, ""
    if name == "torch-cuda":
        ok = torch.cuda.is_available()
        return ok, "" if ok else "PyTorch sees no CUDA device"
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

    Returns
    -------
    tuple
        ``(available names, {skipped name: reason})``.
    """
    requested = list(DEFAULT_BACKENDS if names is None else names)
    if not requested:
        raise ValueError("no backend requested")
    available, skipped = [], {}
    for name in dict.fromkeys(requested):
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
        if backend.startswith("torch"):
            device = "cuda" if backend == "torch-cuda" else "cpu"
            self.module = copy.deepcopy(module).to(device).eval() if device == "cuda" else module
            self.device = torch.device(device)
        else:
            self.session = _ort_session(backend, onnx_path, threads)

    def bind(self, inputs: tuple[torch.Tensor, ...]) -> Call:
        """A zero-argument call running one inference on ``inputs`` (CPU tensors)."""
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
    models: dict[str, torch.nn.Module],
    example_inputs: tuple[torch.Tensor, ...],
    onnx_dir: Path,
    onnx_files: dict[str, Path],
    threads: int | None,
) -> dict[str, Runner]:
    """One :class:`Runner` per model; ONNX files are exported once into ``onnx_dir``.

    ``onnx_files`` caches the exported files across backends (name → path).
    """
    runners = {}
    for name, module in models.items():
        path = None
        if backend.startswith("ort"):
            if name not in onnx_files:
                file = onnx_dir / f"{len(onnx_files)}.onnx"
                result = export_onnx(module, example_inputs, file)
                logger.info("benchmark export of %s: %s", name, result)
                onnx_files[name] = file
            path = onnx_files[name]
        runners[name] = Runner(backend, module, path, threads)
    return runners


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
