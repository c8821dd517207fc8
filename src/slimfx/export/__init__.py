"""Exporting slim models: ONNX written atomically and checked against onnxruntime."""

from slimfx.export.onnx import ExportResult, export_onnx

__all__ = ["ExportResult", "export_onnx"]
