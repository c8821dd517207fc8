"""One-layer probes: built for onnxruntime and PyTorch, and timed."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from slimfx.latency.layers import LayerShape
from slimfx.latency.probes import default_step, onnx_probe, time_probe, torch_probe

SHAPES = [
    LayerShape("conv", 8, 16, (3, 3), (2, 2), (1, 1), (1, 1), (), 1, (9, 9)),
    LayerShape("conv", 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), (), 8, (6, 6), False),
    LayerShape("conv_transpose", 8, 4, (2, 2), (2, 2), (0, 0), (1, 1), (1, 1), 1, (5, 5)),
    LayerShape("conv", 4, 6, (3,), (1,), (1,), (2,), (), 2, (10,)),
    LayerShape("linear", 12, 5),
    LayerShape("linear", 12, 5, spatial=(7,), bias=False),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.key())
def test_the_onnx_probe_computes_what_the_torch_layer_computes(shape):
    """Same op, same output shape: the ONNX probe is the layer (weights aside)."""
    layer = torch_probe(shape).eval()
    model = onnx_probe(shape, batch=3)
    weights = {init.name: init for init in model.graph.initializer}

    with torch.no_grad():
        w = torch.from_numpy(numpy_helper.to_array(weights["w"]).copy())
        layer.weight.copy_(w.T if shape.kind == "linear" and shape.spatial else w)
        if layer.bias is not None:
            layer.bias.zero_()
    size = (3, *shape.spatial, shape.in_channels)
    if shape.kind != "linear":
        size = (3, shape.in_channels, *shape.spatial)
    x = torch.randn(size)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = layer(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["ort-cpu", "torch-cpu"])  # openvino: tests/bench
def test_a_probe_is_timed_on_the_backend(backend):
    ms = time_probe(SHAPES[0], backend, batch=2, threads=1)
    assert 0 < ms < 1000


def test_default_steps_are_block_widths():
    assert default_step("ort-cuda") == 8
    assert default_step("ort-cpu") in (4, 8, 16)
    assert default_step("torch-cpu") == default_step("ort-cpu")
