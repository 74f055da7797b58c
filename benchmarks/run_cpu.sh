#!/usr/bin/env bash
# CPU benchmark of issue 5: ours (eager, optimised fp32/bf16, onnxruntime) vs effdet DetBenchPredict and
# transformers DETR, interleaved medians of 20 runs, one thread each (benchmarks/bench_reference.py is
# `scaledet bench` plus the reference engines). Re-run on a quiet machine with:
#   bash benchmarks/run_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
uptime
.venv/bin/python -m benchmarks.bench_reference --models efficientdet_d0 --batch-sizes 1 8 --runs 20 --warmup 3 --threads 1 \
    --json benchmarks/results/cpu_efficientdet_d0.json --markdown benchmarks/results/cpu_efficientdet_d0.md
uptime
.venv/bin/python -m benchmarks.bench_reference --models detr_r50 --batch-sizes 1 --runs 20 --warmup 2 --threads 1 \
    --json benchmarks/results/cpu_detr_r50.json --markdown benchmarks/results/cpu_detr_r50.md
uptime
# optimize()'s Winograd route for 3x3 convs, with and without, per model (docs/inference.md "Winograd 3x3 convolutions")
.venv/bin/python benchmarks/winograd.py --threads 1 --json benchmarks/results/winograd.json
uptime
# optimize()'s fused ResNet blocks, with and without (docs/inference.md "Fused residual blocks")
.venv/bin/python benchmarks/optimize_steps.py --step fuse_residual --models detr_r50 retinanet_r50_fpn rtdetr_r18vd --threads 1 \
    --json benchmarks/results/fuse_residual.json
uptime
