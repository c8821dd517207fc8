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

import numpy as np
import torch
import torch.nn as nn

from slimfx.ir.contexts import RewriteContext, SinkFold
from slimfx.rules.slicing import sliced_shell


def _index(positions: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(positions, dtype=np.int64))


def gather(tensor: torch.Tensor, rows: np.ndarray | None, cols: np.ndarray | None = None):
    """``tensor[rows][:, cols]``, a new tensor (``None``: the whole axis).

    Rows, then columns, each with ``index_select``: a column of a kernel-shaped tensor is a
    whole kernel slice. A 2-d tensor's columns are single elements, which one advanced-
    indexing gather copies 2.5 times faster (the 400 MB first classifier layer of
    torchvision's vgg16_bn, most of its pass time: ``benchmarks/pass_time.py``).
    """
    out = tensor.detach()
    if cols is None or out.dim() < 2:
        return out.clone() if rows is None else out.index_select(0, _index(rows))
    if out.dim() == 2 and rows is not None:
        return out[_index(rows)[:, None], _index(cols)[None, :]]
    if rows is not None:
        out = out.index_select(0, _index(rows))
    return out.index_select(1, _index(cols))


def _fold_scales(fold: SinkFold, dtype: torch.dtype) -> torch.Tensor:
    """``(carriers + 1, contributions)``: row ``k`` scales the pruned inputs folded into
    carrier column ``k``, the last row those folded into the bias; column ``j`` is the
    input ``fold.contrib[j]``."""
    columns = np.asarray(fold.carrier_columns, dtype=np.int64)
    scales = np.zeros((len(columns) + 1, len(fold.contrib)))
    direct = fold.partner < 0
    carried = np.flatnonzero(~direct)
    if len(carried):
        slot = np.searchsorted(columns, fold.partner[carried])  # carrier columns ascend
        if not np.array_equal(columns[np.minimum(slot, len(columns) - 1)], fold.partner[carried]):
            raise AssertionError("a pruned channel is paired with a column that is no carrier")
        scales[slot, carried] = fold.value[carried] / fold.carrier_value[carried]
    scales[-1, direct] = fold.value[direct]
    return torch.from_numpy(scales).to(dtype)  # float64 ratios, rounded once


def fold_weights(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    rows: np.ndarray | None,
    fold: SinkFold,
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A consumer's new weight and bias (see the module docstring).

    Parameters
    ----------
    weight : Tensor
        Original ``(out, in, *kernel)``.
    bias : Tensor or None
        Original ``(out,)``.
    rows : numpy.ndarray or None
        Output channels that stay (``None``: all).
    fold : SinkFold
        Input slicing and constants, from :meth:`RewriteContext.sink_fold`.
    dtype : torch.dtype or None
        Of the result and of the arithmetic (``None``: the weight's). A float64 rebuild is
        exact; a float32 one rounds like any float32 layer.

    Returns
    -------
    (weight, bias)
        New tensors; ``bias`` is created when a fold needs one and the layer had none.

    Notes
    -----
    All folded sums come from one product of the kept rows' weights on the pruned inputs
    that carry a constant with a small matrix of scale factors (one row per carrier, one
    for the bias): only those weights are read.
    """
    dtype = dtype or weight.dtype
    source = weight.detach()
    # a kernel-shaped weight's kept rows are copied once and both column sets taken from
    # them; a 2-d weight's are taken from the source in one gather each (see gather). Only
    # what is gathered is converted to ``dtype``: a gather rounds nothing, and a float64
    # rebuild of a float32 model then converts the kept part of a large layer, not all of it
    flat = source.dim() == 2
    kept_rows = source if flat or rows is None else gather(source, rows)
    rows_left = rows if flat else None
    new_weight = gather(kept_rows, rows_left, fold.kept).to(dtype)
    new_weight = new_weight.contiguous(memory_format=_memory_format(weight))
    new_bias = None if bias is None else gather(bias, rows).to(dtype)
    if not fold.active:
        return new_weight, new_bias
    scales = _fold_scales(fold, dtype)
    # (kept out, contributions, *kernel)
    pruned = gather(kept_rows, rows_left, fold.contrib).to(dtype)
    kernel = math.prod(weight.shape[2:])
    sums = torch.matmul(scales, pruned.reshape(pruned.shape[0], pruned.shape[1], kernel))
    for k, column in enumerate(fold.carrier_columns.tolist()):
        new_weight[:, column] = sums[:, k].reshape(new_weight[:, column].shape)
    if (fold.partner < 0).any():
        into_bias = sums[:, -1].sum(1)
        new_bias = into_bias if new_bias is None else new_bias + into_bias
    return new_weight, new_bias


def _memory_format(weight: torch.Tensor) -> torch.memory_format:
    """The layout to give the new weight: channels-last stays channels-last."""
    if weight.is_contiguous():
        return torch.contiguous_format
    if weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if weight.dim() == 5 and weight.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def slice_consumer(
    module: nn.Module,
    node,
    ctx: RewriteContext,
    in_attr: str,
    out_attr: str,
    transposed: bool = False,
) -> nn.Module:
    """A new convolution/linear layer: kept outputs, kept inputs, pruned constants folded.

    Carrier output channels (this layer produces a group with a carrier) get zero weights
    and bias: the BatchNorm after them outputs the carrier's constant whatever they compute.
    ``transposed``: the weight is ``(in, out, *kernel)`` (a transposed convolution).
    """
    rows = ctx.kept(node)
    fold = ctx.sink_fold(node, node.args[0])
    source = module.weight.transpose(0, 1) if transposed else module.weight
    weight, bias = fold_weights(source, module.bias, rows, fold, ctx.dtype)
    carrier_rows = _index(np.flatnonzero(ctx.carriers(node)))
    weight[carrier_rows] = 0
    if bias is not None:
        bias[carrier_rows] = 0
    sizes = {in_attr: weight.shape[1], out_attr: weight.shape[0]}
    if transposed:
        weight = weight.transpose(0, 1).contiguous()
    return sliced_shell(module, sizes, weight=weight, bias=bias)


def slice_grouped(conv: nn.Module, node, ctx: RewriteContext) -> nn.Module:
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
    source = conv.weight.detach()
    weights, extra = [], torch.zeros(len(rows), dtype=dtype)
    contrib_block = fold.contrib // size_in
    for b in range(groups):
        rows_b = rows[(rows >= b * size_out) & (rows < (b + 1) * size_out)]
        cols_b = cols[(cols >= b * size_in) & (cols < (b + 1) * size_in)] - b * size_in
        weights.append(gather(source, rows_b, cols_b).to(dtype))
        mine = np.flatnonzero(contrib_block == b)
        if len(mine):
            block = gather(source, rows_b, fold.contrib[mine] - b * size_in).to(dtype)
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
