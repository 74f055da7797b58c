"""Activation ranges for INT8 (:mod:`scaledet.inference.quantize`): min / max over the calibration images,
then percentile ranges from fixed-bin histograms, written to the calibration cache onnxruntime's
``quantize_static`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy
import torch

from scaledet.export.onnx import session_options

#: the ops onnxruntime's QDQ quantizer handles that sit inside detector networks
QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm", "Add", "Mul", "Sigmoid", "Concat", "Resize", "MaxPool",
                      "AveragePool", "GlobalAveragePool", "Clip", "Relu", "Transpose", "Reshape", "Pad")


#: activation ranges by default: each covers 99.999% of its tensor's calibration values (``None``: the
#: min / max). A percentile keeps one outlier from stretching a range and coarsening every step of it:
#: EfficientDet-D0 trained on the fewshot learnability set lost 0.0171 val AP in int8 with min / max
#: ranges and 0.0002 at 99.999 (Lite0: 0.0001 and -0.0007; on shapes D0 -0.0015 and 0.0029, Lite0
#: 0.0074 and 0.0038: docs/inference.md). The cost: a second pass over the calibration images (D0 at
#: 512 px, 64 images, 2 threads: calibration 72 s instead of 19 s)
DEFAULT_PERCENTILE: float | None = 99.999


#: op types whose tensors keep MinMax ranges: the ``-inf`` padding before a max-pool has no percentile
MINMAX_OP_TYPES = ("Pad", "MaxPool")


class CalibrationFeeds:
    """onnxruntime ``CalibrationDataReader``: one preprocessed image per call (batch 1)."""

    def __init__(self, feeds: list[dict]) -> None:
        self.feeds, self.index = feeds, 0

    def get_next(self) -> dict | None:
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def __len__(self) -> int:
        return len(self.feeds)


def calibrate(prepared: Path, feeds: list[dict], cache: Path, tmp: Path, percentile: float | None) -> set[str]:
    """Ranges of every tensor of :data:`QUANTIZED_OP_TYPES` nodes over ``feeds``, written to ``cache``
    (``quantize_static``'s ``calibration_cache_path``, so each rule reuses them): min / max, then, with
    ``percentile``, the finite ranges of the tensors of the other op types than :data:`MINMAX_OP_TYPES`
    replaced by their percentile ranges (:func:`_percentile_ranges`). Returns the names of tensors whose
    min / max is not finite."""
    from onnxruntime.quantization.calibrate import (CalibrationMethod, TensorData, TensorsData, create_calibrator,
                                                    save_tensors_data)

    calibrator = create_calibrator(prepared, list(QUANTIZED_OP_TYPES), augmented_model_path=str(tmp / "minmax.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
    calibrator.collect_data(CalibrationFeeds(feeds))  # the augmented graph reduces each tensor to its min and max
    ranges = calibrator.compute_data()
    minmax = {name: tuple(float(numpy.asarray(v).reshape(-1)[0]) for v in data.range_value)
              for name, data in ranges.items()}
    unbounded = {name for name, (low, high) in minmax.items() if not numpy.isfinite([low, high]).all()}
    if percentile is not None:
        histogram_ops = [op for op in QUANTIZED_OP_TYPES if op not in MINMAX_OP_TYPES]
        names = _tensors_of(prepared, histogram_ops) & {n for n, (low, high) in minmax.items()
                                                        if n not in unbounded and high > low}
        merged = dict(ranges.items())
        for name, (low, high) in _percentile_ranges(prepared, sorted(names), feeds, minmax, percentile, tmp).items():
            merged[name] = TensorData(lowest=numpy.float32([low]), highest=numpy.float32([high]))
        ranges = TensorsData(CalibrationMethod.MinMax, merged)
    save_tensors_data(ranges, cache)
    return unbounded


def _tensors_of(path: Path, op_types: Sequence[str]) -> set[str]:
    """Names of the float activation tensors (not weights) read or written by ``op_types`` nodes."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    infos = {info.name: info for info in [*graph.value_info, *graph.output, *graph.input]}
    weights = {init.name for init in graph.initializer}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    return {name for node in graph.node if node.op_type in op_types for name in [*node.input, *node.output]
            if name in infos and name not in weights and infos[name].type.tensor_type.elem_type in floats}


#: bins of the percentile histograms, over each tensor's calibration min / max
PERCENTILE_BINS = 16384


def _percentile_ranges(prepared: Path, names: Sequence[str], feeds: list[dict], minmax: dict[str, tuple[float, float]],
                       percentile: float, tmp: Path, bins: int = PERCENTILE_BINS) -> dict[str, tuple[float, float]]:
    """``{tensor: (low, high)}`` covering ``percentile`` % of each tensor's values over ``feeds`` (both
    tails cut equally), from histograms of ``bins`` fixed bins over the tensor's min / max (``minmax``,
    which the first pass measured): one image at a time, so memory holds one image's tensors, and
    every image adds to the same bins (no re-binning when a later image widens a range). Each cut lands
    on the outer edge of its bin, so a range never shrinks past the percentile."""
    import onnx
    import onnxruntime

    model = onnx.load(str(prepared))
    infos = {info.name: info for info in model.graph.value_info}
    inputs = {info.name for info in model.graph.input}
    existing = {info.name for info in model.graph.output}
    for name in names:
        if name not in existing and name not in inputs:
            model.graph.output.append(infos[name])
    augmented = tmp / "histograms.onnx"
    onnx.save(model, str(augmented))
    del model
    options = session_options()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
    fetched = [name for name in names if name not in inputs]
    counts = {name: torch.zeros(bins, dtype=torch.float64) for name in names}
    for feed in feeds:
        values = dict(zip(fetched, session.run(fetched, feed)))
        values.update({name: feed[name] for name in names if name in inputs})
        for name in names:
            low, high = minmax[name]
            data = torch.from_numpy(numpy.ascontiguousarray(values[name], dtype=numpy.float32)).reshape(-1)
            counts[name] += torch.histc(data, bins=bins, min=low, max=high).double()
        del values
    result = {}
    tail = (100.0 - percentile) / 200.0
    for name, count in counts.items():
        low, high = minmax[name]
        cumulative = torch.cumsum(count, 0) / count.sum()
        width = (high - low) / bins
        # the bins holding the low and the high cut
        first = int(torch.searchsorted(cumulative, torch.tensor([tail], dtype=torch.float64)))
        last = int(torch.searchsorted(cumulative, torch.tensor([1.0 - tail], dtype=torch.float64)))
        result[name] = (low + first * width, min(high, low + (min(last, bins - 1) + 1) * width))
    return result
