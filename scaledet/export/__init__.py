"""Export to ONNX with post-processing inside the graph, and an onnxruntime runner."""

from scaledet.export.onnx import OnnxDetector, export_onnx, onnxruntime_detector

__all__ = ["OnnxDetector", "export_onnx", "onnxruntime_detector"]
