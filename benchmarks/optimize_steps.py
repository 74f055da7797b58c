"""Optimised fp32 with and without one of ``optimize()``'s CPU steps, interleaved, per model.

For each registered model (random weights, seed 0, its native input size, batch 1): the optimised
fp32 detector as :func:`scaledet.optimize` builds it against the same detector with one step turned
off, timed in alternation; their detections are compared as sets
(:func:`scaledet.inference.compare.compare_detection_sets`, scores within 1e-4, boxes within 1e-2 px).
The steps (``--step``):

* ``winograd``: 3x3 stride-1 convs routed to NNPACK's F(6x6, 3x3) or our F(2x2, 3x3) where this machine
  measured one faster (:mod:`scaledet.inference.winograd`); off = ``winograd=False`` (oneDNN everywhere).
  The routing is measured afresh (``SCALEDET_CACHE`` points to a new temporary folder here), so the
  table says what this machine decides at this thread count; with any other step off, both detectors
  read that one measurement, so they route the same convs.
* ``fuse_residual``: torchvision ResNet blocks with their add and ReLUs fused into oneDNN's convolutions
  (:mod:`scaledet.inference.residual`); off = ``fuse_residual=False``.

    OMP_NUM_THREADS=1 python benchmarks/optimize_steps.py --step fuse_residual --threads 1 --json OUT.json
    OMP_NUM_THREADS=2 python benchmarks/optimize_steps.py --step winograd --threads 2 --models detr_r50

(``python benchmarks/winograd.py ...`` is ``--step winograd``.) Prints a table and the processor;
``--json`` writes the rows (for ``winograd`` with every per-conv measurement). Time it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
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
STEPS = ("winograd", "fuse_residual")


def step_details(step: str, with_step: OptimizedDetector, without: OptimizedDetector) -> dict:
    """What the step changed in this model: the table's detail column (``summary``) and the JSON's fields."""
    if step == "winograd":
        chosen = dict(Counter(row[1] for rows in with_step.winograd_timings.values() for row in rows))
        candidates = len(winograd_candidates(without.model))
        summary = f"{candidates} 3x3 stride-1 convs, {with_step.winograd} routed"
        if candidates:
            summary += "; kernels chosen (conv x input size): " + ", ".join(
                f"{kernel} {count}" for kernel, count in sorted(chosen.items()))
        return {"summary": summary, "candidates": candidates, "routed": with_step.winograd, "chosen": chosen,
                "measured": with_step.winograd_timings}
    return {"summary": f"{with_step.fused_blocks} ResNet blocks fused", "fused_blocks": with_step.fused_blocks}


def compare(name: str, step: str, runs: int) -> dict:
    torch.manual_seed(0)
    model = scaledet.create_model(name).eval()
    start = time.perf_counter()
    with_step = OptimizedDetector(model)
    build_s = time.perf_counter() - start
    without = OptimizedDetector(model, **{step: False})
    detectors = {"without": without, "with": with_step}
    medians, outputs = time_interleaved(detectors, example_image(model, torch.device("cpu")), runs)
    agreement = compare_detection_sets(outputs["without"], outputs["with"], 1e-4, 1e-2)
    return {
        "model": name, "input": list(model.input_size()), "step": step,
        "without_ms": round(medians["without"], 1), "with_ms": round(medians["with"], 1),
        "speedup": round(medians["without"] / medians["with"], 3), "build_s": round(build_s, 1),
        "equal_as_sets": agreement.passed, "max_score_diff": agreement.max_score_diff,
        "max_box_diff": agreement.max_box_diff, "unexplained": agreement.unexplained,
        **step_details(step, with_step, without),
    }


def main(argv: list[str] | None = None, prog: str = "python benchmarks/optimize_steps.py") -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", choices=STEPS, default="winograd")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=8, help="timed rounds per detector (median reported)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:  # the Winograd routing measured afresh, once per model
        os.environ["SCALEDET_CACHE"] = cache
        rows = [compare(name, args.step, args.runs) for name in args.models]
    info = processor_info()
    print(f"optimised fp32 with and without {args.step!r}, batch 1, {args.threads} thread(s), interleaved medians "
          f"of {args.runs}; {describe(info)}")
    print("| model | input | what the step changed | without ms | with ms | speed-up "
          "| detections equal as sets (max score / box diff) |")
    print("|---|---|---|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row['model']} | {row['input'][0]}x{row['input'][1]} | {row['summary']} "
              f"| {row['without_ms']} | {row['with_ms']} | {row['speedup']:.2f}x | {row['equal_as_sets']} "
              f"({row['max_score_diff']:.1e} / {row['max_box_diff']:.1e} px, {row['unexplained']} unexplained) |")
    if args.json:
        record = {"step": args.step, "threads": args.threads, "runs": args.runs, "processor": info,
                  "torch": torch.__version__,
                  "command": " ".join([prog, *(argv if argv is not None else sys.argv[1:])]),
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
