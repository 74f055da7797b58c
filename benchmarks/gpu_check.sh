#!/usr/bin/env bash
# The checks only a CUDA machine can make, as one short script for a lent GPU (minutes of device time):
#   1. tests/test_cuda.py + the CUDA cases of tests/test_optimize.py: every model's GPU detections equal
#      its CPU ones, fp16 mixed-precision training steps, `scaledet train --device cuda --amp` end to end;
#   2. the default recipe on the GPU: `scaledet train` on the shapes data, fp32 and --amp, same budget;
#   3. the GPU latency table of benchmarks/run_gpu.sh (eager + optimised fp16/bf16 vs effdet fp32), and
#      torch.compile for D0 if time is left.
# Each stage has its own time cap and the next one runs whatever happens; logs and tables go to OUT.
#   bash benchmarks/gpu_check.sh OUT          (PYTHON=... picks the interpreter; default python3)
# Scale it down on a CPU to try the script itself: GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh /tmp/x
# All stages take longer than one 10-minute device call (2026-12-04 on an H200: tests/test_cuda.py alone,
# 60 tests, took 309 s with -n 8, the D0-D4 table 122 s, D5 alone 61 s, D5-D7x did not finish in 160 s):
# pick stages with GPU_CHECK_STAGES (default "tests train bench compile"; "bench_large" adds D5-D7x).
set -u
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_check.sh OUT}
mkdir -p "$out"
py=${PYTHON:-python3}
device=${GPU_CHECK_DEVICE:-cuda}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
work=$(mktemp -d)
if [ "$device" = cuda ]; then precisions="fp16 bf16"; batches="1 32"; minutes=0.75; tests_n=8
else precisions="bf16"; batches="1"; minutes=0.1; tests_n=2; fi

stages=" ${GPU_CHECK_STAGES:-tests train bench compile} "
wants() { [[ $stages == *" $1 "* ]]; }

stage() {  # stage NAME CAP_SECONDS COMMAND...: run with a time cap, log to OUT/NAME.log, say how it ended
    local name=$1 cap=$2 start=$SECONDS
    shift 2
    echo "== $name (cap ${cap}s): $*" | tee -a "$out/$name.log"
    timeout "$cap" "$@" >> "$out/$name.log" 2>&1
    echo "== $name rc=$? in $((SECONDS - start)) s" | tee -a "$out/$name.log"
}

{ date -u; nvidia-smi 2>&1 | head -15; lscpu | grep -E "Model name|^CPU\(s\)";
  "$py" -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, \
'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"; } > "$out/env.log" 2>&1
cat "$out/env.log"

wants tests && stage tests 300 "$py" -m pytest -q -p no:cacheprovider -n "$tests_n" tests/test_cuda.py tests/test_optimize.py -k cuda

for arm in fp32 amp; do
    wants train || break
    flag=$([ $arm = amp ] && echo --amp || echo --no-amp)
    stage "train_$arm" 110 "$py" -m scaledet train --model efficientdet_d0 --train shapes:train --val shapes:val \
        --image-size 128 --epochs 6 --max-minutes "$minutes" --device "$device" "$flag" --out "$work/$arm" --no-progress
    cat "$work/$arm/metrics.json" >> "$out/train_$arm.log" 2>/dev/null
done

# two runs (D0-D4, D5-D7x), each writing its JSON when done, so a cut-off keeps the first table
bench() {  # bench NAME MODELS...: the latency table of these models, JSON in OUT/gpu_NAME.json
    local name=$1
    shift
    # shellcheck disable=SC2086
    stage bench 300 "$py" -m benchmarks.bench_reference --device "$device" --models "$@" \
        --batch-sizes $batches --precision $precisions --no-onnx --runs 10 --warmup 3 --json "$out/gpu_$name.json"
}
if [ "$device" = cuda ]; then
    wants bench && bench efficientdet_d0_d4 efficientdet_d0 efficientdet_d1 efficientdet_d2 efficientdet_d3 efficientdet_d4
    wants bench_large && bench efficientdet_d5_d7x efficientdet_d5 efficientdet_d6 efficientdet_d7 efficientdet_d7x
else
    wants bench && bench efficientdet_d0 efficientdet_d0  # scaled down: the script itself, not a table
fi
# shellcheck disable=SC2086
wants compile && stage compile 100 "$py" -m benchmarks.bench_reference --device "$device" --models efficientdet_d0 \
    --batch-sizes $batches --precision $precisions --compile --no-onnx --runs 10 --warmup 3
rm -rf "$work"
