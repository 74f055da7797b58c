"""The reference and our optimised engine each timed alone, in fresh processes, alternated.

    OMP_NUM_THREADS=1 python -m benchmarks.alone --model detr_r50 --rounds 2 --runs 8 --json OUT.json

``python -m benchmarks.bench_reference`` times all engines interleaved in one process, which is
fair to slow drift but not to process state: what the other engines did before (an ONNX export,
an onnxruntime session, freed memory; which of them matters is not pinned down) changes how fast the
eager reference runs in the same process (on an AVX-512 EPYC, 2026-12-06, transformers' DETR R50 took 1401-1998 ms in the same
command with different engines beside it, ours optimised 819-955 ms). Here each engine runs in its own
fresh interpreter, as a user runs it: ``--rounds`` rounds of (reference, ours), each process
building the same random weights (seed 0), warming up twice and timing ``--runs`` calls on one
random image at the model's input size, with ``OMP_NUM_THREADS`` threads (default 1). ``--engine``: ours
as ``scaledet.optimize(model, precision="fp32", engine=...)`` builds it (default ``torch``; ``auto``
measures both once per processor, model and size and reuses the choice from the optimize cache, as
a user's second run does; the choice is printed). Prints each process's median and the ratio of the
medians over rounds; ``--json`` writes them with the processor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from scaledet.inference.optimize import ENGINES as OPTIMIZE_ENGINES

ENGINES = ("reference", "optimized")


def time_one(model_name: str, engine_name: str, runs: int, optimize_engine: str = "torch") -> tuple[list[float], str]:
    """``(milliseconds of runs calls, engine used)`` of one engine, built in this process (after 2 warm-up
    calls); ours through ``optimize(..., engine=optimize_engine)``."""
    import scaledet
    from benchmarks.reference import reference_engine
    from scaledet.inference.benchmark import Engine, time_engines

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="scaledet-alone-") as folder:  # the reference's files, removed after
        found = reference_engine(model_name, "cpu", Path(folder))
        if found is None:
            raise SystemExit(f"{model_name}: no reference engine to time (the note above says why)")
        engine, model = found
        model = model.eval()
        used = "reference"
        if engine_name == "optimized":
            optimized = scaledet.optimize(model, precision="fp32", engine=optimize_engine)
            engine, used = Engine("ours-opt-fp32", optimized), optimized.engine
        images = [torch.rand(3, *model.input_size(), generator=torch.Generator().manual_seed(0))]
        time_engines([engine], images, batch_size=1, runs=runs, warmup=2, device="cpu")
    return [seconds * 1000 for seconds in engine.times[1]], used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="detr_r50")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--engine", default="torch", choices=OPTIMIZE_ENGINES,
                        help="ours: scaledet.optimize(..., engine=...) (default torch)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.child:
        times, used = time_one(args.model, args.child, args.runs, args.engine)
        print(json.dumps({"times_ms": times, "engine": used}))
        return 0

    from benchmarks.machine import describe, processor_info

    medians: dict[str, list[float]] = {name: [] for name in ENGINES}
    used: set[str] = set()
    for round_index in range(args.rounds):
        for name in ENGINES:
            command = [sys.executable, "-m", "benchmarks.alone", "--model", args.model, "--runs", str(args.runs),
                       "--engine", args.engine, "--child", name]
            output = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout
                                .strip().splitlines()[-1])
            median = statistics.median(output["times_ms"])
            medians[name].append(median)
            if name == "optimized":
                used.add(output["engine"])
            print(f"round {round_index + 1}: {name} ({output['engine']}) {median:.1f} ms", flush=True)
    ratio = statistics.median(medians["optimized"]) / statistics.median(medians["reference"])
    info = processor_info()
    print(f"{args.model}, each engine alone in fresh processes, {torch.get_num_threads()} thread(s), "
          f"{describe(info)}: optimised fp32 (engine={args.engine} -> {', '.join(sorted(used))}) / reference = {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "threads": torch.get_num_threads(),
                                         "processor": info, "engine": args.engine, "engine_used": sorted(used),
                                         "medians_ms": medians, "ratio": ratio,
                                         "command": " ".join(["python -m benchmarks.alone", *(argv or sys.argv[1:])]),
                                         "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
