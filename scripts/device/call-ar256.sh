#!/bin/sh
# A device call: auto-round 0.16.1 on one full-size MiniMax-M2 block at 256 experts (2 layers, the
# second the steady state), then fourbit on the same block and card (tf32 60 iterations, bf16 200, a whole layer:
# its per-shape GEMM choice warms up). `h100` as the argument: an 80 GB card, where auto-round runs
# out of memory at 256 experts with the batch of 8 in one piece, and also as 2 x 4 or 4 x 2
# (measured 2026-12-07: 78 GiB in use in layer 0's first forward), so it runs with its own memory
# setting, low_gpu_mem_usage, and the batch as 4 x 2 with gradient_accumulate_steps 2 (the same
# SignSGD step; peak 72.9 GiB); without: the batch in one piece, which needs an H200 (kind
# nvidia-h200, needs_h200). `iters` as a second argument: auto-round's measured steps per layer
# (default 20; the projection to 200 uses their median).
# Usage: scripts/device/make-devdeps.sh; the wheels the device lacks into .whl/ (git-ignored):
# auto-round==0.16.1 datasets dill multiprocess pydantic pydantic-core annotated-types
# typing-inspection (pip download --no-deps --only-binary=:all: --python-version 3.12 ..., as
# /work/.library/device/README.md says); then `bash scripts/device/call-ar256.sh [h100]` with carry
# [".devdeps", ".whl"]. Its outputs land in $OUT.
. .devdeps/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit
(make -j16 CUDA_ARCH="-gencode arch=compute_90,code=sm_90" build/bench/bench_cuda_autoround > $OUT/build.log 2>&1) &
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
B="--batch-size 8"
[ "${1:-}" = h100 ] && B="--batch-size 4 --grad-acc 2 --low-gpu-mem" && export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
timeout 300 python3 scripts/bench-autoround-ref.py --experts 256 --layers 2 --iters ${2:-20} $B --json $OUT/ar256.json \
    > $OUT/ar256.log 2>&1; echo "ar rc=$?"
grep -v "^step" $OUT/ar256.log | tail -25; grep "^step" $OUT/ar256.log | tail -8
wait; test -x build/bench/bench_cuda_autoround || { tail -30 $OUT/build.log; exit 1; }
for x in "tf32 60" "bf16 200"; do set -- $x; echo "== fourbit 256 $1 $2 iterations"
  timeout 100 build/bench/bench_cuda_autoround --experts 256 --gemm $1 --iters $2 2>&1 | tail -8 | tee -a $OUT/fb256.txt; done
