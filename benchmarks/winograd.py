"""Optimised fp32 with and without Winograd 3x3 convolutions, interleaved, per model.

For each registered model (random weights, seed 0, its native input size, batch 1): the optimised
fp32 detector as :func:`scaledet.optimize` builds it (3x3 stride-1 convs routed to NNPACK's F(6x6, 3x3)
or our F(2x2, 3x3) where this machine measured one faster, :mod:`scaledet.inference.winograd`) against
the same detector with ``winograd=False`` (oneDNN everywhere), timed in alternation; their detections
are compared as sets (:func:`scaledet.inference.compare.compare_detection_sets`, scores within 1e-4,
boxes within 1e-2 px).
The routing is measured afresh (``SCALEDET_OPTIMIZE_CACHE=0`` is set here), so the table says what
this machine decides at this thread count.

    OMP_NUM_THREADS=1 python benchmarks/winograd.py --threads 1 --json OUT.json
    OMP_NUM_THREADS=2 python benchmarks/winograd.py --threads 2 --models detr_r50

Prints a table and the processor; ``--json`` writes the rows and every per-conv measurement. Time it
on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import scaledet  # noqa: E402
from benchmarks.machine import describe, processor_info  # noqa: E402
from scaledet.inference.compare import compare_detection_sets  # noqa: E402
from scaledet.inference.optimize import OptimizedDetector, example_image, time_interleaved  # noqa: E402
from scaledet.inference.winograd import winograd_candidates  # noqa: E402

MODELS = ("detr_r50", "retinanet_r50_fpn", "rtdetr_r18vd", "efficientdet_d0")


def compare(name: str, runs: int) -> dict:
    torch.manual_seed(0)
    model = scaledet.create_model(name).eval()
    start = time.perf_counter()
    routed = OptimizedDetector(model)
    build_s = time.perf_counter() - start
    plain = OptimizedDetector(model, winograd=False)
    detectors = {"onednn": plain, "winograd": routed}
    medians, outputs = time_interleaved(detectors, example_image(model, torch.device("cpu")), runs)
    agreement = compare_detection_sets(outputs["onednn"], outputs["winograd"], 1e-4, 1e-2)
    return {
        "model": name, "input": list(model.input_size()),
        "candidates": len(winograd_candidates(plain.model)), "routed": routed.winograd,
        "onednn_ms": round(medians["onednn"], 1), "winograd_ms": round(medians["winograd"], 1),
        "speedup": round(medians["onednn"] / medians["winograd"], 3), "build_s": round(build_s, 1),
        "equal_as_sets": agreement.passed, "max_score_diff": agreement.max_score_diff,
        "max_box_diff": agreement.max_box_diff, "unexplained": agreement.unexplained,
        "chosen": dict(Counter(row[1] for rows in routed.winograd_timings.values() for row in rows)),
        "measured": routed.winograd_timings,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=8, help="timed rounds per detector (median reported)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    os.environ["SCALEDET_OPTIMIZE_CACHE"] = "0"  # measure the routing afresh
    torch.set_num_threads(args.threads)
    rows = [compare(name, args.runs) for name in args.models]
    info = processor_info()
    print(f"optimised fp32, batch 1, {args.threads} thread(s), interleaved medians of {args.runs}; {describe(info)}")
    print("| model | input | 3x3 stride-1 convs | routed | kernels chosen (conv x input size) | oneDNN only ms "
          "| with Winograd ms | speed-up | detections equal as sets (max score / box diff) |")
    print("|---|---|---:|---:|---|---:|---:|---:|---|")
    for row in rows:
        chosen = ", ".join(f"{kernel} {count}" for kernel, count in sorted(row["chosen"].items()))
        print(f"| {row['model']} | {row['input'][0]}x{row['input'][1]} | {row['candidates']} | {row['routed']} "
              f"| {chosen} "
              f"| {row['onednn_ms']} | {row['winograd_ms']} | {row['speedup']:.2f}x | {row['equal_as_sets']} "
              f"({row['max_score_diff']:.1e} / {row['max_box_diff']:.1e} px, {row['unexplained']} unexplained) |")
    if args.json:
        record = {"threads": args.threads, "runs": args.runs, "processor": info, "torch": torch.__version__,
                  "command": " ".join(["python benchmarks/winograd.py", *(argv if argv is not None else sys.argv[1:])]),
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
