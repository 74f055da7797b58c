"""Run `scaledet demo` and record its wall time and COCO AP to a JSON file.

    python benchmarks/demo.py [--json benchmarks/results/demo.json] [-- extra demo flags]

Target (the training issue): at most 10 minutes wall, AP50 >= 0.80 and AP >= 0.50 on the
held-out shapes split. See ``record.py`` for what the record holds.
"""

from __future__ import annotations

import argparse
import sys

from record import record_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/demo.json", help="where to write the record")
    parser.add_argument("--out", default="runs/demo", help="the demo's output folder")
    parser.add_argument("demo_args", nargs="*", help="extra flags for `scaledet demo` (after --)")
    args = parser.parse_args()
    target = {"wall_time_s": 600, "AP50": 0.80, "AP": 0.50}
    return record_run(["demo", "--out", args.out, *args.demo_args], args.out, args.json, target)


if __name__ == "__main__":
    sys.exit(main())
