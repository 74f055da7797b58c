"""AP of the demo detector on the shapes validation split: eager fp32 vs scaledet.optimize fp32 / bf16.

Needs the weights written by ``scaledet demo`` (``runs/demo/weights.safetensors``). Usage:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bf16_ap.py [--weights runs/demo/weights.safetensors]
        [--val-images 200] [--json benchmarks/results/bf16_ap.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import scaledet
from scaledet.data import shapes_split
from scaledet.evaluation import evaluate_model
from scaledet.weights import read_weights_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="runs/demo/weights.safetensors")
    parser.add_argument("--val-images", type=int, default=200, help="as in scaledet demo")
    parser.add_argument("--json", default="benchmarks/results/bf16_ap.json")
    args = parser.parse_args()
    if not Path(args.weights).exists():
        print(f"{args.weights} not found: run `scaledet demo` first", file=sys.stderr)
        return 1
    config = read_weights_config(args.weights)
    model = scaledet.create_model(config["model"], pretrained=args.weights).eval()
    size = model.image_size[0]
    val = shapes_split("val", num_images=args.val_images, image_size=size)
    rows = {}
    for label, detector in (("eager-fp32", model), ("optimized-fp32", scaledet.optimize(model)),
                            ("optimized-bf16", scaledet.optimize(model, precision="bf16"))):
        start = time.perf_counter()
        stats = evaluate_model(detector, val, batch_size=8)
        rows[label] = {"AP": stats["AP"], "AP50": stats["AP50"], "seconds": time.perf_counter() - start}
        print(f"{label}: AP {stats['AP']:.4f} AP50 {stats['AP50']:.4f} ({rows[label]['seconds']:.1f} s)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"weights": args.weights, "val_images": args.val_images, "results": rows},
                                          indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
