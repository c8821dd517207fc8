"""Output shapes of common layers, computed from their settings instead of run.

Shape propagation runs the traced graph on the ``meta`` device; PyTorch's meta kernels for
convolution and pooling are Python code that costs tens of microseconds a call. For the
layers every CNN is made of, the output shape is a formula of the input shape and the
layer's settings. :func:`output_shape` returns it, or ``None`` whenever the input does not
fit the layer or the case is unusual, so that the caller runs the layer and gets PyTorch's
own result or error message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch.nn as nn

Shape = tuple[int, ...]

_BATCHNORM_RANKS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}

DROPOUT_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

# elementwise layers (exact types: a subclass may change its forward)
_ELEMENTWISE = frozenset(
    {
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.SiLU,
        nn.Hardswish,
        nn.Hardsigmoid,
        nn.Sigmoid,
        nn.Tanh,
        nn.GELU,
        nn.ELU,
        nn.Mish,
        nn.Identity,
        *DROPOUT_MODULES,
    }
)


def _tuple(value, n: int) -> tuple[int, ...] | None:
    if isinstance(value, int):
        return (value,) * n
    if isinstance(value, Sequence) and len(value) == n and all(isinstance(v, int) for v in value):
        return tuple(value)
    if isinstance(value, Sequence) and len(value) == 1 and isinstance(value[0], int):
        return (value[0],) * n
    return None


def _window(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool) -> int:
    """Output length of a sliding window (PyTorch's formula, ``ceil_mode`` included)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def _spatial(input_shape: Shape, dims: int) -> tuple[Shape, Shape] | None:
    """(leading dims, spatial dims), or None when the rank is not batched ``dims``-d."""
    if len(input_shape) != dims + 2:
        return None
    return tuple(input_shape[:2]), tuple(input_shape[2:])


def _conv(conv: nn.modules.conv._ConvNd, shape: Shape) -> Shape | None:
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        return None
    dims = len(conv.kernel_size)
    split = _spatial(shape, dims)
    if split is None or shape[1] != conv.in_channels:
        return None
    (batch, _), spatial = split
    if conv.padding == "same":
        return (batch, conv.out_channels, *spatial)
    padding = (0,) * dims if conv.padding == "valid" else _tuple(conv.padding, dims)
    stride, dilation = _tuple(conv.stride, dims), _tuple(conv.dilation, dims)
    if padding is None or stride is None or dilation is None:
        return None
    out = [
        _window(s, k, st, p, d, ceil=False)
        for s, k, st, p, d in zip(spatial, conv.kernel_size, stride, padding, dilation, strict=True)
    ]
    return (batch, conv.out_channels, *out) if min(out) > 0 else None


def _pool(pool: nn.Module, shape: Shape, dims: int) -> Shape | None:
    split = _spatial(shape, dims)
    if split is None:
        return None
    lead, spatial = split
    kernel = _tuple(pool.kernel_size, dims)
    stride = _tuple(pool.stride if pool.stride is not None else pool.kernel_size, dims)
    padding = _tuple(pool.padding, dims)
    dilation = _tuple(getattr(pool, "dilation", 1), dims)
    if None in (kernel, stride, padding, dilation):
        return None
    if any(p > k // 2 for p, k in zip(padding, kernel, strict=True)):
        return None  # PyTorch refuses this: let it say so
    if any(s < d * (k - 1) + 1 for s, k, d in zip(spatial, kernel, dilation, strict=True)):
        return None  # a window larger than the input: some pooling kernels refuse it
    out = [
        _window(s, k, st, p, d, pool.ceil_mode)
        for s, k, st, p, d in zip(spatial, kernel, stride, padding, dilation, strict=True)
    ]
    return (*lead, *out) if min(out) > 0 else None


def _adaptive(pool: nn.Module, shape: Shape, dims: int) -> Shape | None:
    split = _spatial(shape, dims)
    if split is None or min(split[1]) <= 0:
        return None
    size = pool.output_size
    wanted = (size,) * dims if isinstance(size, int) or size is None else tuple(size)
    if len(wanted) != dims:
        return None
    out = [s if w is None else w for w, s in zip(wanted, split[1], strict=True)]
    return (*split[0], *out)


def _linear(linear: nn.Linear, shape: Shape) -> Shape | None:
    if len(shape) < 1 or shape[-1] != linear.in_features:
        return None
    return (*shape[:-1], linear.out_features)


def _batchnorm(bn: nn.modules.batchnorm._BatchNorm, shape: Shape) -> Shape | None:
    ranks = _BATCHNORM_RANKS.get(type(bn))
    if ranks is None or len(shape) not in ranks or shape[1] != bn.num_features:
        return None
    return shape


def _flatten(flatten: nn.Flatten, shape: Shape) -> Shape | None:
    rank = len(shape)
    if rank == 0:
        return None
    start = flatten.start_dim % rank
    end = flatten.end_dim % rank
    if start > end:
        return None
    return (*shape[:start], math.prod(shape[start : end + 1]), *shape[end + 1 :])


_POOLS: dict[type, Callable[[nn.Module, Shape], Shape | None]] = {
    nn.MaxPool1d: lambda m, s: _pool(m, s, 1),
    nn.MaxPool2d: lambda m, s: _pool(m, s, 2),
    nn.MaxPool3d: lambda m, s: _pool(m, s, 3),
    nn.AvgPool1d: lambda m, s: _pool(m, s, 1),
    nn.AvgPool2d: lambda m, s: _pool(m, s, 2),
    nn.AvgPool3d: lambda m, s: _pool(m, s, 3),
    nn.AdaptiveAvgPool1d: lambda m, s: _adaptive(m, s, 1),
    nn.AdaptiveAvgPool2d: lambda m, s: _adaptive(m, s, 2),
    nn.AdaptiveAvgPool3d: lambda m, s: _adaptive(m, s, 3),
    nn.AdaptiveMaxPool2d: lambda m, s: None if m.return_indices else _adaptive(m, s, 2),
}


def output_shape(module: nn.Module, input_shape: Shape) -> Shape | None:
    """The shape ``module`` returns for an input of ``input_shape``, or ``None``.

    ``None`` means: not one of the layers known here, or an input the layer would refuse
    (wrong channel count, rank, a window larger than the input): run the layer instead.
    """
    kind = type(module)
    if kind in _ELEMENTWISE:
        return tuple(input_shape)
    if kind in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        return _conv(module, tuple(input_shape))
    if kind in _BATCHNORM_RANKS:
        return _batchnorm(module, tuple(input_shape))
    if kind is nn.Linear:
        return _linear(module, tuple(input_shape))
    if kind is nn.Flatten:
        return _flatten(module, tuple(input_shape))
    pool = _POOLS.get(kind)
    if pool is not None and not getattr(module, "return_indices", False):
        return pool(module, tuple(input_shape))
    return None
