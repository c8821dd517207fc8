"""Slicing a consumer (convolution or linear layer) and folding pruned constants into it.

A pruned input channel ``p`` that carries the constant ``v_p`` contributes ``W[:, p] * v_p``
to every output. Folding keeps that contribution:

* into the weights on the group's carrier column ``q`` (which carries ``c_q``):
  ``W'[:, q] = sum_p W[:, p] * v_p / c_q`` — exact at zero-padded borders too;
* into the bias: ``b' = b + sum_p sum_kernel W[:, p] * v_p`` — exact when nothing pads.

Sums run in the target dtype; a float64 rebuild (which verification uses) is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from slimfx.rules.slicing import sliced_shell


def _index(positions: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(positions, dtype=np.int64))


def _is_all(positions: np.ndarray | None, size: int) -> bool:
    return positions is None or (
        len(positions) == size and np.array_equal(positions, np.arange(size))
    )


def _run_length(cols: np.ndarray, size: int) -> int:
    """``k`` when ``cols`` are whole aligned runs ``c*k .. c*k+k-1`` (a flatten's features)."""
    if len(cols) < 2:
        return 1
    breaks = np.flatnonzero(np.diff(cols) != 1)
    k = int(breaks[0]) + 1 if len(breaks) else len(cols)
    if k == 1 or size % k or len(cols) % k:
        return 1
    runs = cols.reshape(-1, k)
    if np.all(runs[:, 0] % k == 0) and np.all(np.diff(runs, axis=1) == 1):
        return k
    return 1


def _select_columns(tensor: torch.Tensor, rows: np.ndarray | None, cols: np.ndarray):
    """``tensor[rows][:, cols]`` (``rows=None``: every row).

    ``index_select`` along dim 0 copies contiguous slices; along dim 1 it copies element by
    element. So a contiguous kernel-shaped tensor ``(R, C, *kernel)`` is viewed as
    ``(R * C, kernel)`` and its ``(row, column)`` slices are picked along dim 0, in one copy.
    Columns in whole aligned runs (a flatten's features) are copied run by run.
    """
    k = _run_length(cols, tensor.shape[1])
    if k == 1 and tensor.dim() >= 3 and tensor.is_contiguous():
        out_size, in_size = tensor.shape[0], tensor.shape[1]
        row_index = np.arange(out_size) if rows is None else rows
        picked = tensor.reshape(out_size * in_size, -1).index_select(
            0, _flat_index(row_index, cols, in_size)
        )
        return picked.reshape(len(row_index), len(cols), *tensor.shape[2:])
    if rows is not None:
        tensor = tensor.index_select(0, _index(rows))
    if k == 1:
        return tensor.index_select(1, _index(cols))
    blocks = tensor.reshape(tensor.shape[0], tensor.shape[1] // k, k, *tensor.shape[2:])
    picked = blocks.index_select(1, _index(cols[::k] // k))
    return picked.reshape(tensor.shape[0], len(cols), *tensor.shape[2:])


def gather(tensor: torch.Tensor, rows: np.ndarray | None, cols: np.ndarray | None = None):
    """``tensor[rows][:, cols]``, a new tensor (``None`` or every index: the whole axis)."""
    tensor = tensor.detach()
    all_rows = _is_all(rows, tensor.shape[0])
    all_cols = cols is None or tensor.dim() < 2 or _is_all(cols, tensor.shape[1])
    if all_rows and all_cols:
        return tensor.clone()
    if all_cols:
        return tensor.index_select(0, _index(rows))
    return _select_columns(tensor, None if all_rows else rows, cols)


def _flat_index(rows: np.ndarray, cols: np.ndarray, size: int) -> torch.Tensor:
    """Positions of ``(row, col)`` slices in a ``(R * size, K)`` view, row-major."""
    flat = np.asarray(rows, dtype=np.int64)[:, None] * size + np.asarray(cols)[None, :]
    return torch.from_numpy(flat.ravel())


_CHUNK_BYTES = 1 << 19  # rows copied at a time while folding: stays in a core's cache


#: numpy dtypes the fold scales are built in directly (others are converted from float64)
_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


def _fold_scales(fold, in_size: int, dtype: torch.dtype) -> torch.Tensor:
    """``(carriers + 1, in)``: row ``k`` scales the inputs folded into carrier column ``k``,
    the last row those folded into the bias."""
    columns = np.asarray(fold.carrier_columns, dtype=np.int64)
    scales = np.zeros((len(columns) + 1, in_size), dtype=_NUMPY_FLOATS.get(dtype, np.float64))
    direct = fold.partner < 0
    carried = np.flatnonzero(~direct)
    if len(carried):
        slot = np.searchsorted(columns, fold.partner[carried])  # carrier columns ascend
        if not np.array_equal(columns[np.minimum(slot, len(columns) - 1)], fold.partner[carried]):
            raise AssertionError("a pruned channel is paired with a column that is no carrier")
        ratio = fold.value[carried] / fold.carrier_value[carried]  # float64, then rounded
        scales[slot, fold.contrib[carried]] = ratio  # pruned positions are distinct
    if len(carried) < len(direct):
        scales[-1, fold.contrib[direct]] = fold.value[direct]
    out = torch.from_numpy(scales)
    return out if out.dtype == dtype else out.to(dtype)


def _kept_block_and_sums(source, rows, cols, scales, out=None):
    """``(source[rows][:, cols], sums)`` with ``sums[o] = scales @ source[rows][o]``.

    A convolution's kept rows are copied a few at a time into one small buffer; the kept
    columns and the sums are both taken from it while it is in cache, so every kept row is
    read from memory once and no temporary the size of the layer is allocated. ``out``, a
    contiguous tensor of the kept block's shape, receives the kept block of a convolution
    (one whose kernel has more than one element).
    """
    out_size, in_size = source.shape[0], source.shape[1]
    row_index = np.arange(out_size) if rows is None else np.asarray(rows, dtype=np.int64)
    col_index = np.arange(in_size) if cols is None else np.asarray(cols, dtype=np.int64)
    n_rows, n_cols = len(row_index), len(col_index)
    if source.dim() < 3 or not source.is_contiguous() or math.prod(source.shape[2:]) == 1:
        kept_rows = source if _is_all(rows, out_size) else gather(source, row_index)
        sums = (kept_rows.reshape(n_rows, in_size) @ scales.T).unsqueeze(2)
        return gather(kept_rows, None, cols), sums
    kernel = tuple(source.shape[2:])
    k_size = math.prod(kernel)
    new_weight = torch.empty((n_rows, n_cols, *kernel), dtype=source.dtype) if out is None else out
    flat_weight = new_weight.view(n_rows * n_cols, k_size)
    sums = torch.empty((n_rows, scales.shape[0], k_size), dtype=source.dtype)
    step = max(1, min(n_rows, _CHUNK_BYTES // (in_size * k_size * source.element_size())))
    rows_t = torch.from_numpy(row_index)
    full_chunk = _flat_index(np.arange(step), col_index, in_size)
    if step == n_rows:  # a small layer: its kept rows are the buffer
        block = source.index_select(0, rows_t).view(n_rows, in_size, k_size)
        torch.index_select(block.view(n_rows * in_size, k_size), 0, full_chunk, out=flat_weight)
        torch.bmm(scales.expand(n_rows, -1, -1), block, out=sums)
        return new_weight, sums
    buffer = torch.empty((step, in_size, k_size), dtype=source.dtype)
    for start in range(0, n_rows, step):
        stop = min(n_rows, start + step)
        block = buffer[: stop - start]
        torch.index_select(source, 0, rows_t[start:stop], out=block.view(-1, in_size, *kernel))
        local = full_chunk if stop - start == step else full_chunk[: (stop - start) * n_cols]
        flat_out = flat_weight[start * n_cols : stop * n_cols]
        torch.index_select(block.view((stop - start) * in_size, k_size), 0, local, out=flat_out)
        torch.bmm(scales.expand(stop - start, -1, -1), block, out=sums[start:stop])
    return new_weight, sums


@dataclass
class FoldedLayer:
    """A consumer's new weight and bias, and the work that computes their values.

    Attributes
    ----------
    weight : Tensor
        ``(kept out, kept in, *kernel)``.
    bias : Tensor or None
        ``(kept out,)``; created when a fold needs one and the layer had none.
    fill : callable or None
        Writes the values of ``weight`` and ``bias`` in place; ``None`` when they are
        computed already.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    fill: Callable[[], None] | None = None


def folded_layer(weight, bias, rows, fold, dtype) -> FoldedLayer:
    """The consumer's new weight and bias (see the module docstring).

    Parameters
    ----------
    weight : Tensor
        Original ``(out, in, *kernel)``.
    bias : Tensor or None
        Original ``(out,)``.
    rows : numpy.ndarray
        Output channels that stay.
    fold : SinkFold
        Input slicing and constants, from ``RewriteContext.sink_fold``.
    dtype : torch.dtype or None
        Of the result and of the arithmetic (``None``: the weight's). A float64 rebuild is
        exact; a float32 one rounds like any float32 layer.

    Returns
    -------
    FoldedLayer
        For a convolution that folds constants, its tensors are allocated and ``fill``
        computes them: a caller can build the layer at once and copy the weights later,
        together with other layers'.

    Notes
    -----
    All folded sums come from one matrix product of the kept rows with a small matrix of
    scale factors (one row per carrier, one for the bias), taken while the kept rows are
    copied: the weights are read once, and nothing the size of the pruned part is copied.
    """
    dtype = dtype or weight.dtype
    memory_format = _memory_format(weight)
    new_bias = None if bias is None else gather(bias, rows).to(dtype)
    if not fold.active:
        source = weight.detach().to(dtype).contiguous()
        new_weight = gather(source, rows, fold.kept)
        return FoldedLayer(new_weight.contiguous(memory_format=memory_format), new_bias)
    n_rows = weight.shape[0] if rows is None else len(rows)
    into_bias = bool((fold.partner < 0).any())
    if into_bias and new_bias is None:
        new_bias = torch.zeros(n_rows, dtype=dtype, device=weight.device)

    def compute(out: torch.Tensor | None = None) -> torch.Tensor:
        source = weight.detach().to(dtype).contiguous()
        scales = _fold_scales(fold, source.shape[1], dtype)
        new_weight, sums = _kept_block_and_sums(source, rows, fold.kept, scales, out=out)
        _write_sums(new_weight, new_bias, sums, fold, into_bias)
        return new_weight

    kernel = tuple(weight.shape[2:])
    if memory_format != torch.contiguous_format or math.prod(kernel) < 2:
        return FoldedLayer(compute().contiguous(memory_format=memory_format), new_bias)
    n_cols = weight.shape[1] if fold.kept is None else len(fold.kept)
    new_weight = torch.empty((n_rows, n_cols, *kernel), dtype=dtype, device=weight.device)

    def fill() -> None:
        compute(out=new_weight)

    return FoldedLayer(new_weight, new_bias, fill)


def fold_weights(weight, bias, rows, fold, dtype):
    """:func:`folded_layer`, computed now: ``(weight, bias)``."""
    layer = folded_layer(weight, bias, rows, fold, dtype)
    if layer.fill is not None:
        layer.fill()
    return layer.weight, layer.bias


def _write_sums(new_weight, new_bias, sums, fold, into_bias: bool) -> None:
    """Folded sums into the carrier columns and (``into_bias``) the bias, in place."""
    kernel_shape = new_weight.shape[:1] + new_weight.shape[2:]
    for k, column in enumerate(fold.carrier_columns.tolist()):
        new_weight.select(1, column).copy_(sums.select(1, k).view(kernel_shape))
    if into_bias:
        new_bias.add_(sums[:, -1].sum(1))


def _memory_format(weight: torch.Tensor) -> torch.memory_format:
    """The layout to give the new weight: channels-last stays channels-last."""
    if weight.is_contiguous():
        return torch.contiguous_format
    if weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if weight.dim() == 5 and weight.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def slice_consumer(module: nn.Module, node, ctx, in_attr: str, out_attr: str) -> nn.Module:
    """A new convolution/linear layer: kept outputs, kept inputs, pruned constants folded.

    Carrier output channels (this layer produces a group with a carrier) get zero weights
    and bias: the BatchNorm after them outputs the carrier's constant whatever they compute.

    The layer is returned at once; the copying of its weights is handed to ``ctx.defer``,
    which the rewrite runs before it returns.
    """
    rows = ctx.kept(node)
    fold = ctx.sink_fold(node, node.args[0])
    layer = folded_layer(module.weight, module.bias, rows, fold, ctx.dtype)
    carriers = ctx.carriers(node)

    def finish() -> None:
        if layer.fill is not None:
            layer.fill()
        if carriers.any():
            carrier_rows = _index(np.flatnonzero(carriers))
            layer.weight.index_fill_(0, carrier_rows, 0)
            if layer.bias is not None:
                layer.bias.index_fill_(0, carrier_rows, 0)

    ctx.defer(finish)
    sizes = {in_attr: layer.weight.shape[1], out_attr: layer.weight.shape[0]}
    return sliced_shell(module, sizes, weight=layer.weight, bias=layer.bias)


def slice_grouped(conv: nn.Module, node, ctx) -> nn.Module:
    """A grouped convolution keeping its group count: each block keeps as many channels.

    Output block ``b`` sees only input block ``b``; pruned inputs' constants are folded into
    the bias of their own block's outputs (the plan allows no carrier for such groups and
    no constant at a zero-padded grouped convolution).
    """
    groups = conv.groups
    rows = ctx.kept(node)
    fold = ctx.sink_fold(node, node.args[0])
    size_in, size_out = conv.in_channels // groups, conv.out_channels // groups
    cols = fold.kept if fold.kept is not None else np.arange(conv.in_channels)
    dtype = ctx.dtype or conv.weight.dtype
    source = conv.weight.detach().to(dtype)
    weights, extra = [], torch.zeros(len(rows), dtype=dtype)
    contrib_block = fold.contrib // size_in
    for b in range(groups):
        rows_b = rows[(rows >= b * size_out) & (rows < (b + 1) * size_out)]
        cols_b = cols[(cols >= b * size_in) & (cols < (b + 1) * size_in)] - b * size_in
        weights.append(gather(source, rows_b, cols_b))
        mine = np.flatnonzero(contrib_block == b)
        if len(mine):
            block = gather(source, rows_b, fold.contrib[mine] - b * size_in)
            block = block.reshape(block.shape[0], block.shape[1], -1).sum(2)
            start = int(np.searchsorted(rows, b * size_out))
            extra[start : start + len(rows_b)] += block @ torch.as_tensor(
                fold.value[mine], dtype=dtype
            )
    counts = {w.shape for w in weights}
    if len(counts) != 1:
        raise AssertionError(f"{node.name}: blocks keep different widths {sorted(counts)}")
    weight = torch.cat(weights, 0)
    bias = None if conv.bias is None else gather(conv.bias, rows).to(dtype)
    if len(fold.contrib):
        bias = extra if bias is None else bias + extra
    sizes = {"in_channels": weight.shape[1] * groups, "out_channels": weight.shape[0]}
    return sliced_shell(conv, sizes, weight=weight, bias=bias)
