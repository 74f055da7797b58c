"""Train the small from-scratch DETR of ``detr_shapes.yaml`` on the shapes data for 15 minutes and
record wall time and COCO AP to a JSON file.

    python benchmarks/detr_shapes.py [--json benchmarks/results/detr_shapes.json] [--minutes 15]

The DETR issue asks for the AP50 a small DETR reaches from scratch within a 15-minute CPU budget,
to compare with EfficientDet-D0 on the same data (``demo.py``). See ``record.py`` for the record.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from record import record_run

CONFIG = Path(__file__).with_name("detr_shapes.yaml")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/detr_shapes.json", help="where to write the record")
    parser.add_argument("--out", default="runs/detr_shapes", help="the training output folder")
    parser.add_argument("--minutes", type=float, default=15.0, help="training wall-time budget")
    args = parser.parse_args()
    arguments = ["train", "--config", str(CONFIG), "--max-minutes", f"{args.minutes:g}", "--out", args.out]
    return record_run(arguments, args.out, args.json, {"wall_time_s": 60 * args.minutes + 120})


if __name__ == "__main__":
    sys.exit(main())
