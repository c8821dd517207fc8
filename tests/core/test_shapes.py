"""Computed output shapes equal what the layers return, and unknown or unfit cases say None."""

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from slimfx.shapes import output_shape


def run_shape(module, shape):
    with torch.no_grad():
        return tuple(module.eval()(torch.zeros(shape)).shape)


@settings(max_examples=300, deadline=None)
@given(
    dims=st.sampled_from([1, 2, 3]),
    size=st.integers(1, 12),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 3),
    padding=st.integers(0, 3),
    dilation=st.integers(1, 3),
)
def test_convolution_shapes_match_pytorch(dims, size, kernel, stride, padding, dilation):
    conv = [nn.Conv1d, nn.Conv2d, nn.Conv3d][dims - 1](
        2, 3, kernel, stride=stride, padding=padding, dilation=dilation
    )
    shape = (2, 2, *([size] * dims))
    computed = output_shape(conv, shape)
    try:
        actual = run_shape(conv, shape)
    except RuntimeError:  # the kernel does not fit: the formula must not claim a shape
        assert computed is None
        return
    assert computed == actual


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["max", "avg"]),
    dims=st.sampled_from([1, 2, 3]),
    size=st.integers(1, 13),
    kernel=st.integers(1, 5),
    stride=st.one_of(st.none(), st.integers(1, 4)),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    ceil=st.booleans(),
)
def test_pooling_shapes_match_pytorch(kind, dims, size, kernel, stride, padding, dilation, ceil):
    if kind == "max":
        pool = [nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d][dims - 1](
            kernel, stride, padding, dilation=dilation, ceil_mode=ceil
        )
    else:
        pool = [nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d][dims - 1](
            kernel, stride, padding, ceil_mode=ceil
        )
    shape = (1, 2, *([size] * dims))
    computed = output_shape(pool, shape)
    try:
        actual = run_shape(pool, shape)
    except RuntimeError:
        assert computed is None
        return
    if computed is not None:  # None is allowed: the caller runs the layer
        assert computed == actual


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (nn.AdaptiveAvgPool2d((1, 1)), (2, 4, 7, 5)),
        (nn.AdaptiveAvgPool2d((3, None)), (2, 4, 7, 5)),
        (nn.AdaptiveAvgPool1d(2), (2, 4, 7)),
        (nn.Linear(6, 3), (2, 6)),
        (nn.Linear(6, 3), (2, 5, 6)),
        (nn.Flatten(), (2, 3, 4, 5)),
        (nn.Flatten(2, 3), (2, 3, 4, 5)),
        (nn.BatchNorm2d(3), (2, 3, 4, 4)),
        (nn.BatchNorm1d(3), (2, 3)),
        (nn.ReLU(inplace=True), (2, 3, 4, 4)),
        (nn.Dropout2d(), (2, 3, 4, 4)),
        (nn.Conv2d(3, 5, 3, padding="same"), (2, 3, 6, 6)),
        (nn.Conv2d(3, 5, 3, padding="valid"), (2, 3, 6, 6)),
        (nn.Conv2d(4, 4, 3, groups=4, padding=1, stride=2), (1, 4, 7, 7)),
    ],
)
def test_other_layer_shapes_match_pytorch(module, shape):
    assert output_shape(module, shape) == run_shape(module, shape)


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (nn.Conv2d(3, 5, 3), (1, 4, 8, 8)),  # wrong channel count
        (nn.Conv2d(3, 5, 3), (3, 8, 8)),  # unbatched: left to PyTorch
        (nn.Conv2d(3, 5, 5), (1, 3, 2, 2)),  # kernel larger than the input
        (nn.Linear(6, 3), (2, 5)),
        (nn.BatchNorm2d(3), (2, 4, 4, 4)),
        (nn.MaxPool2d(2, return_indices=True), (1, 3, 4, 4)),
        (nn.ConvTranspose2d(3, 3, 3), (1, 3, 4, 4)),
        (nn.Upsample(scale_factor=2), (1, 3, 4, 4)),
    ],
)
def test_unfit_or_unknown_cases_are_left_to_pytorch(module, shape):
    assert output_shape(module, shape) is None


def test_subclass_of_an_elementwise_layer_is_not_assumed_elementwise():
    class Doubling(nn.ReLU):
        def forward(self, x):
            return torch.cat([x, x], 1)

    assert output_shape(Doubling(), (1, 3, 4, 4)) is None
