"""Does ``scaledet.optimize``'s CPU layout rule hold on this processor? EfficientDet-D0 at 512, batch 1:
effdet's ``DetBenchPredict``, our eager model and our optimised fp32 model under each alternative
choice, same weights, interleaved medians.

Variants: the 1x1-conv oneDNN routing threshold (:data:`scaledet.inference.optimize.ONEDNN_POINTWISE_MIN_NUMEL`:
the default, never, always, 4096, 131072 elements) with channels_last, and the default threshold or no
routing without channels_last. ``--profile`` adds a torch.profiler op table of the default optimised
model. Run it once per kernel family (emulate an AVX2-only machine on an AVX-512 one with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``):

    OMP_NUM_THREADS=1 python -m benchmarks.optimize_layout --threads 1 --json OUT.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.machine import describe, processor_info
from benchmarks.reference import effdet_reference
from scaledet.inference.benchmark import Engine, time_engines

optimize_module = importlib.import_module("scaledet.inference.optimize")


def layout_variant(label: str, model, threshold: int, channels_last: bool) -> Engine:
    """An engine running ``optimize(model)`` with the routing threshold ``threshold`` and channels_last
    on or off (module settings swapped in for the call only)."""
    fast = optimize_module.optimize(model)
    if not channels_last:
        fast.model.to(memory_format=torch.contiguous_format)

    def run(images):
        saved = optimize_module.ONEDNN_POINTWISE_MIN_NUMEL, optimize_module._channels_last
        optimize_module.ONEDNN_POINTWISE_MIN_NUMEL = threshold
        if not channels_last:
            optimize_module._channels_last = lambda x: x.contiguous()
        try:
            return fast(images)
        finally:
            optimize_module.ONEDNN_POINTWISE_MIN_NUMEL, optimize_module._channels_last = saved
    return Engine(label, run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    reference, model = effdet_reference("efficientdet_d0", "cpu", Path(tempfile.mkdtemp()))
    image = torch.rand(3, 512, 512, generator=torch.Generator().manual_seed(0))
    default = optimize_module.ONEDNN_POINTWISE_MIN_NUMEL
    never = 1 << 62
    engines = [reference, Engine("ours eager", model)]
    for label, threshold, channels_last in [(f"opt: route > {default}, channels_last (default)", default, True),
                                           ("opt: no routing, channels_last", never, True),
                                           ("opt: route all, channels_last", 0, True),
                                           ("opt: route > 4096, channels_last", 4096, True),
                                           ("opt: route > 131072, channels_last", 131072, True),
                                           (f"opt: route > {default}, NCHW", default, False),
                                           ("opt: no routing, NCHW", never, False)]:
        engines.append(layout_variant(label, model, threshold, channels_last))
    time_engines(engines, [image], batch_size=1, runs=args.runs, warmup=args.warmup, device="cpu")
    times = {engine.name: engine.times[1] for engine in engines}
    reference_ms = statistics.median(times[reference.name]) * 1e3
    machine = processor_info()
    print(f"{describe(machine)}; {args.threads} thread(s); D0 512 batch 1; medians of {args.runs}, interleaved")
    print("| engine | median ms | x effdet |\n|---|---:|---:|")
    rows = []
    for name, values in times.items():
        ms = statistics.median(values) * 1e3
        rows.append({"engine": name, "median_ms": round(ms, 2), "vs_effdet": round(ms / reference_ms, 3)})
        print(f"| {name} | {ms:.1f} | {ms / reference_ms:.3f} |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        fast = optimize_module.optimize(model)
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(5):
                fast([image])
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": "python -m benchmarks.optimize_layout " + " ".join(
            sys.argv[1:] if argv is None else argv), "machine": machine, "threads": args.threads,
            "runs": args.runs, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
