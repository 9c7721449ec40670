"""ONNX export of a generator with the fixed signature, checked by onnx.checker and against torch."""

from simulacra_services.training.export.onnx_export import (
    OPSET,
    PARITY_SAMPLES,
    PARITY_TOLERANCE,
    ExportResult,
    ParityError,
    export_generator,
)

__all__ = ["OPSET", "PARITY_SAMPLES", "PARITY_TOLERANCE", "ExportResult", "ParityError", "export_generator"]
