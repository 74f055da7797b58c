"""How close an optimised model's convolutions run to the CPU's convolution ceiling.

For one registered model at its native input size, batch 1: the optimised fp32 model with every
convolution through oneDNN (:class:`~scaledet.inference.optimize.OptimizedDetector` with
``winograd=False``; ``benchmarks/winograd.py`` times the Winograd route, the "different algorithm"
below) is run once under ``FlopCounterMode`` for its convolution FLOPs (as
:mod:`scaledet.profiling` counts MACs), then three times under the profiler,
and the time spent in ATen's convolution ops gives the achieved GFLOP/s. Beside it, one large
isolated 3x3 convolution (256 -> 256 channels at 50x67, channels_last, the shape of ResNet's fourth
stage at DETR's input) gives the rate the same kernels reach on their best case. When the model's
convolutions already run near that rate, a speed target below "convolution FLOPs / isolated rate +
everything else" cannot be met in fp32 by scheduling alone, only by fewer FLOPs (bf16, INT8, a
different algorithm).

    OMP_NUM_THREADS=1 python benchmarks/conv_bound.py --model detr_r50 --threads 1
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        OMP_NUM_THREADS=1 python benchmarks/conv_bound.py --model detr_r50 --threads 1   # AVX2 kernels

Prints one line per figure and the processor (with any kernel caps); ``--json`` writes them too.
Time it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import scaledet  # noqa: E402
from benchmarks.machine import describe, processor_info  # noqa: E402
from scaledet.inference.optimize import OptimizedDetector  # noqa: E402


def conv_flops(model: nn.Module, run) -> tuple[float, int]:
    """FLOPs of the convolutions during ``run()`` (:class:`~torch.utils.flop_counter.FlopCounterMode`,
    as :mod:`scaledet.profiling` counts) and how many ``nn.Conv2d`` modules ``model`` (an inference-only
    copy: its parameters are frozen here) has."""
    model.requires_grad_(False)  # as count_macs: the module tracker trips over trainable weights in no_grad
    with FlopCounterMode(display=False) as counter:
        run()
    flops = counter.get_flop_counts()["Global"].get(torch.ops.aten.convolution, 0)
    return float(flops), sum(isinstance(m, nn.Conv2d) for m in model.modules())


def isolated_conv_rate(repeats: int = 7) -> float:
    """GFLOP/s of one 3x3, 256 -> 256 conv at 50x67 (channels_last), median of ``repeats``."""
    x = torch.randn(1, 256, 50, 67).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(256, 256, 3, 3).contiguous(memory_format=torch.channels_last)
    F.conv2d(x, weight, padding=1)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        F.conv2d(x, weight, padding=1)
        times.append(time.perf_counter() - start)
    return 2 * 256 * 9 * 256 * 50 * 67 / statistics.median(times) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="detr_r50")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = scaledet.create_model(args.model).eval()
    optimised = OptimizedDetector(model, "fp32", winograd=False)  # every conv through oneDNN (direct)
    image = torch.rand(3, *model.input_size(), generator=torch.Generator().manual_seed(0))
    flops, calls = conv_flops(optimised, lambda: optimised([image]))
    for _ in range(2):  # warm-up
        optimised([image])
    totals, convs = [], []
    for _ in range(3):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            optimised([image])
            totals.append(time.perf_counter() - start)
        convs.append(sum(e.self_cpu_time_total for e in prof.key_averages() if "convolution" in e.key) / 1e6)
    total, conv = statistics.median(totals), statistics.median(convs)
    figures = {
        "model": args.model, "input": list(model.input_size()), "threads": args.threads,
        "conv_gflop": round(flops / 1e9, 2), "conv_calls": calls,
        "total_ms": round(total * 1e3, 1), "conv_ms": round(conv * 1e3, 1),
        "conv_gflops_per_s": round(flops / conv / 1e9, 1), "isolated_conv_gflops_per_s": round(isolated_conv_rate(), 1),
        "processor": processor_info(), "torch": torch.__version__,
    }
    print(f"{args.model} at {tuple(figures['input'])}, batch 1, optimised fp32, {args.threads} thread(s); "
          f"{describe(figures['processor'])}")
    print(f"  convolutions: {figures['conv_gflop']} GFLOP in {calls} convs, {figures['conv_ms']} ms of "
          f"{figures['total_ms']} ms (profiled) -> {figures['conv_gflops_per_s']} GFLOP/s")
    print(f"  one isolated 3x3 conv 256->256 at 50x67: {figures['isolated_conv_gflops_per_s']} GFLOP/s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
