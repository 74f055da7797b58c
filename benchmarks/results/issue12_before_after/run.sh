#!/usr/bin/env bash
# Same machine, one after the other: the bench of the commit before issue 12 (65f0a46) and of HEAD.
set -e
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
PY=/work/main/.venv/bin/python
for model in efficientdet_d0 detr_r50; do
  runs=20; [ $model = detr_r50 ] && runs=10
  (cd /work/scratch/old && PYTHONPATH=/work/scratch/old $PY -m scaledet.cli bench --models $model --batch-sizes 1 --runs $runs --warmup 2 --threads 1 --precision fp32 bf16 --json /work/scratch/bench_old_$model.json) 2>&1 | grep -v "Warn\|rename_mapping\|Skipping\|torch.onnx"
  (cd /work/main && $PY -m benchmarks.bench_reference --models $model --batch-sizes 1 --runs $runs --warmup 2 --threads 1 --precision fp32 bf16 --json /work/scratch/bench_new_$model.json) 2>&1 | grep -v "Warn\|rename_mapping\|Skipping\|torch.onnx"
done
