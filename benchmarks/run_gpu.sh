#!/usr/bin/env bash
# GPU benchmark of issue 5 (needs a CUDA machine): D0-D7x at batch 1 and 32 in fp16 / bf16, eager and compiled,
# against effdet DetBenchPredict (fp32 eager; benchmarks/bench_reference.py). Usage: bash benchmarks/run_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
.venv/bin/python -m benchmarks.bench_reference --device cuda \
    --models efficientdet_d0 efficientdet_d1 efficientdet_d2 efficientdet_d3 efficientdet_d4 efficientdet_d5 \
             efficientdet_d6 efficientdet_d7 efficientdet_d7x \
    --batch-sizes 1 32 --precision fp16 bf16 --compile --no-onnx --runs 20 --warmup 5 \
    --json benchmarks/results/gpu_efficientdet.json --markdown benchmarks/results/gpu_efficientdet.md
