#!/bin/sh
# A device call (an 80 GB H100): auto-round 0.16.1 at MiniMax-M2's 256 experts with its own memory
# setting (batch 8 as 2 x 4, gradient_accumulate_steps 2; batch 8 in one piece runs out of memory
# on this card), then fourbit on the same block and card (tf32; bf16 over 40 iterations).
# Usage: as call-ar256.sh (.devdeps/ and .whl/ carried), kind nvidia-h100-x1. Outputs in $OUT.
. .devdeps/env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit
(make -j16 CUDA_ARCH="-gencode arch=compute_90,code=sm_90" build/bench/bench_cuda_autoround > $OUT/build.log 2>&1) &
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
timeout 330 python3 scripts/bench-autoround-ref.py --experts 256 --layers 2 --iters 3 --batch-size 4 --grad-acc 2 \
    --json $OUT/ar256-acc2.json > $OUT/ar256-acc2.log 2>&1; echo "ar rc=$?"
grep -v "^step" $OUT/ar256-acc2.log | grep -E "Error|error|projected|iter_median|peak|wall_s" | tail -20; grep "^step" $OUT/ar256-acc2.log | tail -8
wait; test -x build/bench/bench_cuda_autoround || { tail -30 $OUT/build.log; exit 1; }
for x in "tf32 10" "bf16 40"; do set -- $x; echo "== fourbit 256 $1 $2 iterations"
  timeout 100 build/bench/bench_cuda_autoround --experts 256 --gemm $1 --iters $2 2>&1 | tail -8 | tee -a $OUT/fb256.txt; done
