"""The layers a latency table measures, and their widths under a plan.

Every convolution and linear layer of the traced model is a *layer* of the latency model
(:class:`TimedLayer`): its shape at full width (:class:`LayerShape`) and the channel layouts
of its input and output, so that the widths it keeps under any choice of kept channels
(:class:`slimfx.ir.layout.KeepTable`) are two mask counts. A depthwise convolution stays
depthwise (its ``groups`` follows its width); a grouped one keeps its groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch.fx as fx
import torch.nn as nn

from slimfx.ir.channel_graph import ChannelGraph
from slimfx.ir.layout import KeepTable, Layout

#: Layer kinds: the ONNX op and the PyTorch module a probe is built from.
KINDS = ("conv", "conv_transpose", "linear")


@dataclass(frozen=True)
class LayerShape:
    """One layer as a probe measures it (widths may be those of a slim model).

    Attributes
    ----------
    kind : {"conv", "conv_transpose", "linear"}
    in_channels, out_channels : int
    kernel, stride, padding, dilation, output_padding : tuple of int
        Per spatial dim (empty for a linear layer).
    groups : int
    spatial : tuple of int
        The input's sizes between batch and channels (conv: ``H, W``); for a linear layer,
        the sizes between batch and features (tokens), usually empty.
    bias : bool
    """

    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    output_padding: tuple[int, ...] = ()
    groups: int = 1
    spatial: tuple[int, ...] = ()
    bias: bool = True

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def fit(self, in_channels: int, out_channels: int) -> tuple[int, int]:
        """The widths the layer really gets when its axes keep these many channels: a
        depthwise convolution has one width, a grouped one as many channels per group."""
        if self.depthwise:
            width = min(in_channels, out_channels)
            return width, width
        if self.groups > 1:
            in_channels = max(self.groups, in_channels - in_channels % self.groups)
        return in_channels, out_channels

    def at(self, in_channels: int, out_channels: int) -> LayerShape:
        """The same layer with other widths (a depthwise one stays depthwise)."""
        groups = in_channels if self.depthwise else self.groups
        return replace(self, in_channels=in_channels, out_channels=out_channels, groups=groups)

    def key(self) -> str:
        """A stable text key of the shape (the cache's key, with the batch size)."""
        parts = [
            self.kind,
            f"{self.in_channels}x{self.out_channels}",
            "k" + "x".join(map(str, self.kernel)),
            "s" + "x".join(map(str, self.stride)),
            "p" + "x".join(map(str, self.padding)),
            "d" + "x".join(map(str, self.dilation)),
            "op" + "x".join(map(str, self.output_padding)),
            f"g{self.groups}",
            "in" + "x".join(map(str, self.spatial)),
            "b" if self.bias else "nb",
        ]
        return "-".join(parts)

    def macs(self) -> int:
        """Multiply-accumulates per sample."""
        if self.kind == "linear":
            return math.prod(self.spatial) * self.in_channels * self.out_channels
        fan_in = self.in_channels // self.groups * math.prod(self.kernel)
        if self.kind == "conv":
            out = [
                (s + 2 * p - d * (k - 1) - 1) // st + 1
                for s, k, st, p, d in zip(
                    self.spatial, self.kernel, self.stride, self.padding, self.dilation, strict=True
                )
            ]
            return math.prod(out) * self.out_channels * fan_in
        return (
            math.prod(self.spatial)
            * self.in_channels
            * (self.out_channels // self.groups)
            * (math.prod(self.kernel))
        )


@dataclass(frozen=True)
class TimedLayer:
    """A convolution or linear layer of the traced model, with its channel layouts.

    Attributes
    ----------
    node : str
        The fx node.
    module : str
        The module's qualified name.
    shape : LayerShape
        At full width.
    in_layout, out_layout : Layout or None
        Channel layouts of its input and output (``None``: not tracked, never pruned).
    in_area, out_area : int
        Positions per channel of its input and output (``H * W`` of a convolution).
    """

    node: str
    module: str
    shape: LayerShape
    in_layout: Layout | None
    out_layout: Layout | None
    in_area: int = 1
    out_area: int = 1

    @property
    def in_groups(self) -> list[int]:
        return [] if self.in_layout is None else self.in_layout.group_ids()

    @property
    def out_groups(self) -> list[int]:
        return [] if self.out_layout is None else self.out_layout.group_ids()

    def widths(self, keep: KeepTable) -> tuple[int, int]:
        """Input and output widths when ``keep`` says which channels stay."""
        cin = (
            self.shape.in_channels
            if self.in_layout is None
            else int(keep.mask(self.in_layout).sum())
        )
        cout = (
            self.shape.out_channels
            if self.out_layout is None
            else int(keep.mask(self.out_layout).sum())
        )
        return self.shape.fit(cin, cout)


def timed_layers(cg: ChannelGraph) -> list[TimedLayer]:
    """Every convolution and linear layer of ``cg.gm`` with a known input shape, in graph order."""
    layers = []
    for node in cg.gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = cg.gm.get_submodule(str(node.target))
        shape = _shape(node, module)
        if shape is None:
            continue
        in_layout = cg.layout(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        out_layout = cg.layout(node)
        if in_layout is not None and len(in_layout) != shape.in_channels:
            in_layout = None
        if out_layout is not None and len(out_layout) != shape.out_channels:
            out_layout = None
        out_meta = node.meta.get("tensor_meta")
        out_shape = tuple(getattr(out_meta, "shape", ()) or ())
        in_area = math.prod(shape.spatial)
        out_area = math.prod(out_shape[2:] if shape.kind != "linear" else out_shape[1:-1])
        layers.append(
            TimedLayer(node.name, str(node.target), shape, in_layout, out_layout, in_area, out_area)
        )
    return layers


def _shape(node: fx.Node, module: nn.Module) -> LayerShape | None:
    source = node.args[0] if node.args else None
    meta = getattr(source, "meta", {}).get("tensor_meta") if isinstance(source, fx.Node) else None
    in_shape = tuple(getattr(meta, "shape", ()) or ())
    if len(in_shape) < 2:
        return None
    if isinstance(module, nn.Linear):
        return LayerShape(
            "linear",
            module.in_features,
            module.out_features,
            spatial=tuple(int(s) for s in in_shape[1:-1]),
            bias=module.bias is not None,
        )
    if not isinstance(module, nn.modules.conv._ConvNd) or isinstance(module.padding, str):
        return None
    if module.padding_mode != "zeros":
        return None
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    return LayerShape(
        "conv_transpose" if transposed else "conv",
        module.in_channels,
        module.out_channels,
        kernel=tuple(module.kernel_size),
        stride=tuple(module.stride),
        padding=tuple(module.padding),
        dilation=tuple(module.dilation),
        output_padding=tuple(module.output_padding) if transposed else (),
        groups=module.groups,
        spatial=tuple(int(s) for s in in_shape[2:]),
        bias=module.bias is not None,
    )
