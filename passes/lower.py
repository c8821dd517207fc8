"""Lowering for export: ops PyTorch's ONNX exporters refuse, rewritten as equivalent ops.

Both exporters refuse adaptive pooling whose output size does not divide the input size
("output size that are not factor of input size"). With static input shapes (the trace
records them) such a pooling is a fixed set of windows: output cell ``i`` of a dim of size
``n`` pooled to ``m`` covers ``floor(i*n/m) .. ceil((i+1)*n/m)``, as PyTorch defines
adaptive pooling. Max and average over a box are separable, so the lowered op pools one dim
at a time: per window a slice reduced with ``amax``/``mean``, the windows concatenated.
These are slices, reductions and a concatenation, which every exporter handles.

:func:`lower_for_export` returns a new GraphModule (the input is not modified) in which
every such node calls :func:`adaptive_pool_windows`; nodes whose sizes divide, whose input
shape is unknown, or that return indices are left as they are. The export check compares
onnxruntime with the unlowered module, so the lowering is verified on every export.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

#: Function or module class → ("max" | "avg", spatial dims).
_ADAPTIVE_FUNCTIONS = {
    F.adaptive_max_pool1d: ("max", 1),
    F.adaptive_max_pool2d: ("max", 2),
    F.adaptive_max_pool3d: ("max", 3),
    F.adaptive_avg_pool1d: ("avg", 1),
    F.adaptive_avg_pool2d: ("avg", 2),
    F.adaptive_avg_pool3d: ("avg", 3),
    torch.adaptive_avg_pool1d: ("avg", 1),
    torch.adaptive_max_pool1d: ("max", 1),
}
_ADAPTIVE_MODULES = {
    nn.AdaptiveMaxPool1d: ("max", 1),
    nn.AdaptiveMaxPool2d: ("max", 2),
    nn.AdaptiveMaxPool3d: ("max", 3),
    nn.AdaptiveAvgPool1d: ("avg", 1),
    nn.AdaptiveAvgPool2d: ("avg", 2),
    nn.AdaptiveAvgPool3d: ("avg", 3),
}


def windows(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows: ``(start, stop)`` of each of ``out`` cells."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def adaptive_pool_windows(
    x: torch.Tensor, mode: str, dims: tuple[int, ...], cells: tuple[tuple, ...]
) -> torch.Tensor:
    """Adaptive pooling over fixed windows: ``cells[k]`` are the ``(start, stop)`` windows of
    tensor dim ``dims[k]``; ``mode`` is ``"max"`` or ``"avg"``."""
    for dim, spans in zip(dims, cells, strict=True):
        pieces = []
        for start, stop in spans:
            part = x.narrow(dim, start, stop - start)
            pieces.append(
                part.amax(dim, keepdim=True) if mode == "max" else part.mean(dim, keepdim=True)
            )
        x = torch.cat(pieces, dim)
    return x


def lower_for_export(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` with every adaptive pooling that exporters refuse lowered (module docstring).

    Returns ``gm`` itself when nothing needs lowering.
    """
    plans = {}
    for node in gm.graph.nodes:
        spec = _adaptive_spec(gm, node)
        if spec is not None:
            plans[node.name] = spec
    if not plans:
        return gm
    lowered = copy.deepcopy(gm)
    for node in list(lowered.graph.nodes):
        if node.name not in plans:
            continue
        mode, dims, cells = plans[node.name]
        with lowered.graph.inserting_after(node):
            new = lowered.graph.call_function(
                adaptive_pool_windows, (node.args[0], mode, dims, cells)
            )
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        lowered.graph.erase_node(node)
    lowered.graph.lint()
    lowered.delete_all_unused_submodules()
    lowered.recompile()
    return lowered


def _adaptive_spec(gm: fx.GraphModule, node: fx.Node):
    """``(mode, dims, windows)`` for an adaptive pooling that needs lowering, else ``None``."""
    if node.op == "call_function" and node.target in _ADAPTIVE_FUNCTIONS:
        mode, ndim = _ADAPTIVE_FUNCTIONS[node.target]
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        if node.kwargs.get("return_indices") or (len(node.args) > 2 and node.args[2]):
            return None
    elif node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if type(module) not in _ADAPTIVE_MODULES or getattr(module, "return_indices", False):
            return None
        mode, ndim = _ADAPTIVE_MODULES[type(module)]
        size = module.output_size
    else:
        return None
    source = node.args[0] if node.args else None
    meta = source.meta.get("tensor_meta") if isinstance(source, fx.Node) else None
    shape = tuple(getattr(meta, "shape", ()) or ())
    if len(shape) < ndim + 1 or not all(isinstance(s, int) for s in shape):
        return None
    spatial = shape[-ndim:]
    out = (size,) * ndim if isinstance(size, int) else tuple(size)
    if len(out) != ndim:
        return None
    out = tuple(n if o is None else int(o) for n, o in zip(spatial, out, strict=True))
    if all(n % o == 0 for n, o in zip(spatial, out, strict=True)):
        return None  # exporters handle these
    dims = tuple(range(len(shape) - ndim, len(shape)))
    cells = tuple(tuple(windows(n, o)) for n, o in zip(spatial, out, strict=True))
    return mode, dims, cells
