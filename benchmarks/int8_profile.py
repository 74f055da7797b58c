"""Where an INT8 graph's time goes against its float graph: onnxruntime's per-node profile, by part.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_profile.py [--model efficientdet_d0] [--calls 20]
        [--out benchmarks/results/int8_profile_<processor>]

The model's demo weights (as ``benchmarks/int8.py``: ``runs/demo`` for D0; random weights with
``--smoke`` or when missing, said in the record) are exported at the model's native size and quantized
with every network node in int8 (rule ``none``; calibrated on ``--calibration-images`` shapes training
images), then each graph runs ``--calls`` times on one shapes validation image (batch 1, ``--threads``,
after 3 untimed calls) with onnxruntime's profiler on. Kernel times are summed per call and grouped:
convolutions (1x1, depthwise, other), SiLU (float: onnxruntime's fused ``QuickGelu``, or ``Sigmoid`` and
``Mul`` of two same-shaped 4-d tensors; int8: ``QLinearSigmoid`` and the ``QLinearMul`` of same-shaped
inputs), gates (squeeze-excitation: the sigmoid of a ``[B, C, 1, 1]`` gate and a 4-d ``Mul`` / ``QLinearMul`` of
differently shaped inputs),
layout reorders, quantize / dequantize, and the rest. Prints a markdown table and writes it with a JSON
record (``--out`` without suffix). The figures are per-op kernel times under the profiler, whose totals run
a little above an unprofiled call: read them as shares, and time the graphs with ``benchmarks/int8.py``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import scaledet  # noqa: E402
from benchmarks.machine import describe, processor_info  # noqa: E402
from benchmarks.record import write_results  # noqa: E402
from scaledet.data import shapes_split  # noqa: E402
from scaledet.export import OnnxDetector, export_onnx  # noqa: E402
from scaledet.inference.quantize import quantize_onnx  # noqa: E402

PARTS = ("conv 1x1", "conv depthwise", "conv other", "SiLU", "gates (sigmoid, broadcast Mul)", "layout reorders",
         "quantize / dequantize", "other")


def _node_attributes(optimized_path: Path) -> dict[str, dict]:
    """``{node name: {"group": g, "kernel": (kh, kw)}}`` of onnxruntime's optimised graph."""
    import onnx
    from onnx import helper

    attributes = {}
    for node in onnx.load(str(optimized_path)).graph.node:
        values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attributes[node.name] = {"group": values.get("group", 1), "kernel": tuple(values.get("kernel_shape", ()))}
    return attributes


def part_of(op: str, attributes: dict, shapes: list[list[int]]) -> str:
    """The :data:`PARTS` entry of one profiled kernel (``op`` type, the node's attributes, its input shapes)."""
    if "Conv" in op:
        if attributes.get("group", 1) != 1:
            return "conv depthwise"
        return "conv 1x1" if attributes.get("kernel") == (1, 1) else "conv other"
    if op == "QuickGelu":
        return "SiLU"
    if op in ("Sigmoid", "QLinearSigmoid"):  # of a [B, C, 1, 1] (NHWC: [B, 1, 1, C]) gate, or of a feature map
        gate = bool(shapes) and len(shapes[0]) == 4 and sum(dim > 1 for dim in shapes[0][1:]) <= 1
        return "gates (sigmoid, broadcast Mul)" if gate else "SiLU"
    if op in ("Mul", "QLinearMul"):
        tensors = [shape for shape in shapes if len(shape) == 4]  # QLinearMul: x, scale, zero point, y, ...
        if len(tensors) != 2:
            return "other"  # e.g. a product with a scalar weight
        return "SiLU" if tensors[0] == tensors[1] else "gates (sigmoid, broadcast Mul)"  # NCHW or NHWC alike
    if op in ("ReorderInput", "ReorderOutput", "Transpose"):
        return "layout reorders"
    if op in ("QuantizeLinear", "DequantizeLinear"):
        return "quantize / dequantize"
    return "other"


def profile(path: Path, feed: dict, calls: int, threads: int, folder: Path) -> dict:
    """Per-call kernel milliseconds of ``path`` by :data:`PARTS` and by op type, and the median call time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = threads, 3
    options.enable_profiling, options.profile_file_prefix = True, str(folder / path.stem)
    options.optimized_model_filepath = str(folder / f"optimized_{path.name}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    events = json.loads(Path(session.end_profiling()).read_text())
    attributes = _node_attributes(folder / f"optimized_{path.name}")
    parts, ops = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"].get("op_name", "?")
        shapes = [next(iter(entry.values())) for entry in event["args"].get("input_type_shape", [])]
        node = event["name"][: -len("_kernel_time")]
        parts[part_of(op, attributes.get(node, {}), shapes)] += event["dur"]
        ops[op] += event["dur"]
    per_call = 1e3 * (calls + 3)  # microseconds summed over every profiled call -> milliseconds per call
    return {"median_ms": round(sorted(times)[calls // 2] * 1e3, 2),
            "kernel_ms": round(sum(parts.values()) / per_call, 2),
            "parts_ms": {part: round(parts[part] / per_call, 2) for part in PARTS},
            "top_ops_ms": {op: round(us / per_call, 2) for op, us in ops.most_common(12)}}


def markdown(record: dict) -> str:
    float_parts, int8_parts = record["float"]["parts_ms"], record["int8"]["parts_ms"]
    lines = [f"## {record['model']} {record['size']} px, {record['threads']} thread(s): float vs INT8 (rule none) "
             "kernel time per call", "", f"Processor: {describe(record['processor'])}", "",
             "| part | float ms | int8 ms | int8 / float |", "|---|---:|---:|---:|"]
    for part in PARTS:
        ratio = f"{int8_parts[part] / float_parts[part]:.2f}" if float_parts[part] else "-"
        lines.append(f"| {part} | {float_parts[part]:.2f} | {int8_parts[part]:.2f} | {ratio} |")
    lines.append(f"| **all kernels** | **{record['float']['kernel_ms']:.2f}** | **{record['int8']['kernel_ms']:.2f}** "
                 f"| {record['int8']['kernel_ms'] / record['float']['kernel_ms']:.2f} |")
    lines += ["", f"Median call under the profiler: float {record['float']['median_ms']:.1f} ms, int8 "
              f"{record['int8']['median_ms']:.1f} ms. Weights: {record['weights']}. Command: `{record['command']}` "
              f"({record['time_utc']} UTC)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientdet_d0")
    parser.add_argument("--size", type=int, help="input size (default the model's native one)")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="random weights at 64 px, 2 calls: checks the script")
    parser.add_argument("--out", help="results path without suffix (default benchmarks/results/int8_profile_<kind>)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.calls, args.calibration_images = args.size or 64, 2, 2
    torch.set_num_threads(args.threads)
    size = args.size or scaledet.create_model(args.model).image_size[0]
    folder = Path("runs/demo" if args.model == "efficientdet_d0" else f"runs/demo_{args.model.removeprefix('efficientdet_')}")
    weights = folder / "weights.safetensors"
    if weights.exists() and not args.smoke:
        model, used = scaledet.load(weights, image_size=size), str(weights)
    else:
        model, used = scaledet.create_model(args.model, num_classes=4, image_size=size).eval(), "random"
        print(f"{weights} not used: random weights (detections are noise; the kernel times still hold)", flush=True)
    calibration = [shapes_split("train", num_images=args.calibration_images, image_size=size)[i][0]
                   for i in range(args.calibration_images)]
    with tempfile.TemporaryDirectory(prefix="scaledet-int8-profile-") as tmp:
        tmp = Path(tmp)
        float_path = export_onnx(model, tmp / "float.onnx")
        quantize_onnx(float_path, tmp / "int8.onnx", calibration, rules=["none"], threads=args.threads, progress=print)
        runner = OnnxDetector(float_path, threads=args.threads)
        batch = runner.model.preprocess([shapes_split("val", num_images=1, image_size=size)[0][0]])
        feed = {name: value.numpy() for name, value in runner.model.export_feeds(batch).items()}
        results = {name: profile(tmp / f"{name}.onnx", feed, args.calls, args.threads, tmp) for name in ("float", "int8")}
    info = processor_info()
    record = {"model": args.model, "size": size, "threads": args.threads, "calls": args.calls, "weights": used,
              "processor": info, "command": "python benchmarks/int8_profile.py " + " ".join(argv),
              "time_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), **results}
    table = markdown(record)
    print(table)
    kind = info["kind"] + ("-smoke" if args.smoke else "")
    write_results(Path(args.out or f"benchmarks/results/int8_profile_{kind}"), record, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
