"""The names of the runtimes slimfx measures latency on (no runtime is imported here).

``torch-cpu``, ``torch-cuda``, ``torch-compile``, ``ort-cpu``, ``ort-cuda``, ``ort-trt`` and
``openvino-cpu``; what each is, and whether it can run here, is :mod:`slimfx.bench.backends`.
The aliases are what the command line and the API also accept.
"""

from __future__ import annotations

BACKENDS = (
    "torch-cpu",
    "torch-cuda",
    "torch-compile",
    "ort-cpu",
    "ort-cuda",
    "ort-trt",
    "openvino-cpu",
)

#: Other names the command line and the API accept for the backends.
BACKEND_ALIASES = {
    "onnxruntime": "ort-cpu",
    "ort": "ort-cpu",
    "onnxruntime-cpu": "ort-cpu",
    "onnxruntime-cuda": "ort-cuda",
    "tensorrt": "ort-trt",
    "torch": "torch-cpu",
    "pytorch": "torch-cpu",
    "cpu": "torch-cpu",
    "cuda": "torch-cuda",
    "compile": "torch-compile",
    "torch.compile": "torch-compile",
    "inductor": "torch-compile",
    "openvino": "openvino-cpu",
    "ov": "openvino-cpu",
}


def canonical_backend(name: str) -> str:
    """The backend ``name`` stands for (``"onnxruntime"`` → ``"ort-cpu"``); ``ValueError``
    for an unknown one."""
    if not isinstance(name, str):
        raise ValueError(f"backend must be a name, got {name!r}")
    name = BACKEND_ALIASES.get(name.lower(), name.lower())
    if name not in BACKENDS:
        known = ", ".join([*BACKENDS, *BACKEND_ALIASES])
        raise ValueError(f"unknown backend {name!r}; choose from {known}")
    return name
