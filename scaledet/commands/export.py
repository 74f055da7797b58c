"""scaledet export: write a detector as ONNX with post-processing and NMS inside the graph.

Example: ``scaledet export --model efficientdet_d0 --weights coco --output d0.onnx --check``.
``--check`` runs the file in onnxruntime and the eager model on the same two images, compares the
detections as sets (:func:`~scaledet.inference.compare.compare_detection_sets`) and prints PASS or
FAIL against ``--score-tol`` / ``--box-tol``; the exit status is 1 on FAIL.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name (default: from --weights)")
    parser.add_argument("--weights", help="our .safetensors, a reference checkpoint (with --model) or 'coco' "
                        "(default: random)")
    parser.add_argument("--format", default="onnx", choices=["onnx"])
    parser.add_argument("--output", help="output file (default: <model>.onnx)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    parser.add_argument("--image-size", type=int, help="model input size override")
    parser.add_argument("--check", action="store_true",
                        help="run onnxruntime and eager on two random images, compare the detections and print "
                             "PASS or FAIL (exit status 1 on FAIL)")
    parser.add_argument("--score-tol", type=float, default=1e-4, help="--check: largest score difference (default 1e-4)")
    parser.add_argument("--box-tol", type=float, default=1e-2,
                        help="--check: largest box coordinate difference in pixels (default 0.01)")


def run(args: argparse.Namespace) -> int:
    import torch

    import scaledet
    from scaledet.export import OnnxDetector, export_onnx
    from scaledet.inference.compare import compare_detection_sets

    try:
        if args.weights and Path(args.weights).suffix == ".onnx":
            raise ValueError("--weights is already an ONNX file")
        model = scaledet.load(args.weights, model=args.model, image_size=args.image_size)
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
        comparison = compare_detection_sets(reference, OnnxDetector(path)(images), args.score_tol, args.box_tol)
        print(f"check, onnxruntime vs eager on {len(images)} images: {comparison.summary()}")
        return 0 if comparison.passed else 1
    return 0
