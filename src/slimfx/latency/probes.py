"""One layer, alone, on a backend: the probe a latency table is measured with.

For backends that run ONNX (onnxruntime, OpenVINO) a probe is a one-node ONNX model
(``Conv``, ``ConvTranspose``, ``Gemm`` or ``MatMul`` + ``Add``) built directly with
:mod:`onnx.helper` — no export, so a probe costs a session and a few runs; for PyTorch
backends it is the ``torch.nn`` layer.
Both run through :class:`slimfx.bench.backends.Runner`, exactly as whole models are timed.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from slimfx.bench.backends import Runner, runs_onnx
from slimfx.bench.timing import time_rounds
from slimfx.latency.layers import LayerShape

#: Timed rounds per probe (their median is the probe's latency).
PROBE_ROUNDS = 5
#: Each round repeats the call until it lasts about this long.
PROBE_ROUND_SECONDS = 0.004


def default_step(backend: str) -> int:
    """The width step of ``backend``'s fast kernels: channels are computed in blocks of it.

    onnxruntime and PyTorch on the CPU compute convolutions in blocks of the SIMD width (16
    floats with AVX-512, 8 with AVX2, 4 otherwise); CUDA tensor-core tiles take multiples
    of 8. Widths between two multiples cost what the next multiple costs, or more.
    """
    if backend.endswith("cuda") or backend.endswith("trt"):
        return 8
    flags = _cpu_flags()
    if "avx512f" in flags:
        return 16
    if "avx2" in flags or "neon" in flags or "asimd" in flags:
        return 8
    return 4


def time_probe(
    shape: LayerShape, backend: str, batch: int, threads: int | None, workdir: Path | None = None
) -> float:
    """Median latency in milliseconds of ``shape`` alone on ``backend`` at ``batch``."""
    inputs = (_input(shape, batch),)
    if runs_onnx(backend):
        with tempfile.TemporaryDirectory(prefix="slimfx-probe-", dir=workdir) as tmp:
            path = Path(tmp) / "probe.onnx"
            path.write_bytes(onnx_probe(shape, batch).SerializeToString())
            runner = Runner(backend, None, path, threads)
            return _median_ms(runner, inputs)
    runner = Runner(backend, torch_probe(shape).eval(), None, threads)
    return _median_ms(runner, inputs)


def _median_ms(runner: Runner, inputs) -> float:
    call = runner.bind(inputs)
    timings = time_rounds({"probe": call}, PROBE_ROUNDS, 1, PROBE_ROUND_SECONDS, lambda n: None)
    return float(np.median(timings["probe"][0]) * 1e3)


def _input(shape: LayerShape, batch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if shape.kind == "linear":
        size = (batch, *shape.spatial, shape.in_channels)
    else:
        size = (batch, shape.in_channels, *shape.spatial)
    return torch.randn(size, generator=generator)


def torch_probe(shape: LayerShape) -> nn.Module:
    """The PyTorch layer of ``shape`` (random weights)."""
    if shape.kind == "linear":
        return nn.Linear(shape.in_channels, shape.out_channels, bias=shape.bias)
    dims = len(shape.kernel)
    kwargs = dict(
        stride=shape.stride,
        padding=shape.padding,
        dilation=shape.dilation,
        groups=shape.groups,
        bias=shape.bias,
    )
    if shape.kind == "conv_transpose":
        layer = getattr(nn, f"ConvTranspose{dims}d")
        return layer(
            shape.in_channels,
            shape.out_channels,
            shape.kernel,
            output_padding=shape.output_padding,
            **kwargs,
        )
    layer = getattr(nn, f"Conv{dims}d")
    return layer(shape.in_channels, shape.out_channels, shape.kernel, **kwargs)


def onnx_probe(shape: LayerShape, batch: int):
    """A one-layer ONNX model of ``shape`` at ``batch`` (random weights), input ``x``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name: str, *dims: int):
        array = (rng.standard_normal(dims) / math.sqrt(max(dims[1:] or (1,)))).astype(np.float32)
        return numpy_helper.from_array(array, name)

    cin, cout, g = shape.in_channels, shape.out_channels, shape.groups
    inits = []
    inputs = ["x"]
    if shape.kind == "linear":
        x_dims = [batch, *shape.spatial, cin]
        if shape.spatial:
            inits.append(weight("w", cin, cout))
            nodes = [helper.make_node("MatMul", ["x", "w"], ["mm" if shape.bias else "y"])]
            if shape.bias:
                inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
                nodes.append(helper.make_node("Add", ["mm", "b"], ["y"]))
        else:
            inits.append(weight("w", cout, cin))
            inputs.append("w")
            if shape.bias:
                inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
                inputs.append("b")
            nodes = [helper.make_node("Gemm", inputs, ["y"], transB=1)]
    else:
        x_dims = [batch, cin, *shape.spatial]
        transposed = shape.kind == "conv_transpose"
        dims = (cin, cout // g) if transposed else (cout, cin // g)
        inits.append(weight("w", *dims, *shape.kernel))
        inputs.append("w")
        if shape.bias:
            inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
            inputs.append("b")
        attrs = dict(
            kernel_shape=list(shape.kernel),
            strides=list(shape.stride),
            pads=list(shape.padding) * 2,
            dilations=list(shape.dilation),
            group=g,
        )
        if transposed and any(shape.output_padding):
            attrs["output_padding"] = list(shape.output_padding)
        op = "ConvTranspose" if transposed else "Conv"
        nodes = [helper.make_node(op, inputs, ["y"], **attrs)]
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return set()
    match = re.search(r"^(flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    return set(match.group(2).split()) if match else set()
