"""slimfx — network slimming as a verified torch.fx compiler pass.

>>> import torch, slimfx
>>> from slimfx.models import VGG
>>> res = slimfx.slim(VGG(depth=11), torch.randn(1, 3, 32, 32), percent=0.5)
>>> res.module        # a smaller torch.fx.GraphModule, verified against res.reference

The passes behind :func:`slim` are public too: :func:`trace`, :func:`analyze`,
:func:`propagate_constants`, :func:`plan`, :func:`rewrite`, :func:`verify` (and more in
:mod:`slimfx.passes`); :class:`SlimOptions` holds every setting.
"""

from slimfx.api import slim
from slimfx.errors import (
    CheckpointError,
    EquivalenceError,
    PlanError,
    SlimfxError,
    TraceError,
    UnsupportedError,
)
from slimfx.export.onnx import export_onnx
from slimfx.export.quantize import QuantizeOptions
from slimfx.ir.channel_graph import ChannelGraph, ChannelGroup
from slimfx.ir.constant_tables import ConstantTables
from slimfx.ir.options import Mode, SlimOptions
from slimfx.ir.plan import GroupPlan, SlimPlan
from slimfx.passes.analyze import analyze
from slimfx.passes.constant_propagation import propagate_constants
from slimfx.passes.plan import plan
from slimfx.passes.rewrite import rewrite
from slimfx.passes.trace import trace
from slimfx.passes.verify import masked_reference, verify
from slimfx.report import SlimReport
from slimfx.result import SlimResult

__version__ = "0.1.0"

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "CheckpointError",
    "ConstantTables",
    "EquivalenceError",
    "GroupPlan",
    "Mode",
    "PlanError",
    "QuantizeOptions",
    "SlimOptions",
    "SlimPlan",
    "SlimReport",
    "SlimResult",
    "SlimfxError",
    "TraceError",
    "UnsupportedError",
    "analyze",
    "export_onnx",
    "masked_reference",
    "plan",
    "propagate_constants",
    "rewrite",
    "slim",
    "trace",
    "verify",
]
