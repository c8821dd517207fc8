"""Exporting slim models: ONNX written atomically and checked against onnxruntime; a
``torch.export`` archive checked loaded back; ``torch.compile`` checked against eager."""

from slimfx.export.onnx import ExportResult, export_onnx
from slimfx.export.pt2 import CompileCheck, Pt2Result, check_compiled, export_pt2
from slimfx.export.quantize import QuantizeOptions, QuantizeReport

__all__ = [
    "CompileCheck",
    "ExportResult",
    "Pt2Result",
    "QuantizeOptions",
    "QuantizeReport",
    "check_compiled",
    "export_onnx",
    "export_pt2",
]
