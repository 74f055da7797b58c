"""``scaledet bench`` with the reference ports' engines beside ours (from a source checkout).

    python -m benchmarks.bench_reference --models efficientdet_d0 detr_r50 --threads 1 --json OUT.json

Takes every ``scaledet bench`` option; each model gets its reference engine first (effdet's
``DetBenchPredict`` for EfficientDet, transformers' ``DetrForObjectDetection`` for DETR and
``RTDetrForObjectDetection`` for RT-DETR (``--models rtdetr_r18vd``), see
:mod:`benchmarks.reference`) and our engines load the reference's weights, so the table's
``x reference`` column and the equality lines compare the same network. ``--no-reference`` times
ours only (as ``scaledet bench``). ``benchmarks/run_cpu.sh`` and ``run_gpu.sh`` run this. As
``scaledet bench``, it prints the processor beside the table, labels every row with the processor
kind and keeps one table per kind in ``--json`` / ``--markdown``.
"""

from __future__ import annotations

import argparse
import sys

from scaledet.commands import bench

from benchmarks.reference import reference_engine

PROG = "python -m benchmarks.bench_reference"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    bench.add_arguments(parser)
    parser.add_argument("--no-reference", action="store_true", help="skip effdet / transformers")
    args = parser.parse_args(argv)
    if args.weights and not args.no_reference:
        parser.error("--weights: the reference engines make their own weights (ours load them); "
                     "add --no-reference to time a file of ours")
    return bench.run(args, reference=None if args.no_reference else reference_engine,
                     command=" ".join([PROG, *argv]))


if __name__ == "__main__":
    sys.exit(main())
