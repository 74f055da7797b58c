"""scaledet export: write a detector as ONNX with post-processing and NMS inside the graph.

Example: ``scaledet export --model efficientdet_d0 --weights coco --output d0.onnx --check``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name (default: from --weights)")
    parser.add_argument("--weights", help="our .safetensors, a reference checkpoint or 'coco' (default: random)")
    parser.add_argument("--format", default="onnx", choices=["onnx"])
    parser.add_argument("--output", help="output file (default: <model>.onnx)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    parser.add_argument("--image-size", type=int, help="model input size override")
    parser.add_argument("--check", action="store_true",
                        help="run onnxruntime and eager on two random images and report the largest differences")


def run(args: argparse.Namespace) -> int:
    import torch

    from scaledet.commands.predict import load_detector
    from scaledet.export import OnnxDetector, export_onnx
    from scaledet.inference.compare import detection_differences

    try:
        model = load_detector(argparse.Namespace(weights=args.weights, model=args.model, image_size=args.image_size,
                                                 device="cpu", optimize=False, precision="fp32"))
        if isinstance(model, OnnxDetector):
            raise ValueError("--weights is already an ONNX file")
        output = Path(args.output or f"{model.config['model']}.onnx")
        path = export_onnx(model, output, opset=args.opset)
    except ValueError as error:
        print(f"scaledet export: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {args.opset})")
    if args.check:
        generator = torch.Generator().manual_seed(0)
        images = [torch.rand(3, 480, 640, generator=generator), torch.rand(3, 500, 375, generator=generator)]
        with torch.no_grad():
            reference = model(images)
        diff = detection_differences(reference, OnnxDetector(path)(images))
        print("onnxruntime vs eager: " + ", ".join(f"{k}={v:.3g}" for k, v in diff.items()))
    return 0
