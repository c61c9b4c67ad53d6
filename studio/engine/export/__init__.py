"""Export: write a model in the formats people deploy (pt, checkpoint, TorchScript, ONNX), each reloaded and checked."""
from studio.engine.export.formats import FORMATS, ExportRecord, export_model

__all__ = ["ExportRecord", "FORMATS", "export_model"]
