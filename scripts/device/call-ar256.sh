#!/bin/sh
# A device call (H200: auto-round does not fit 256 experts on an H100): fourbit at 256 experts, 64 samples (tf32, bf16), then auto-round 0.16.1 on the same block, 2 layers
# Usage: scripts/device/make-devdeps.sh; the wheels the device lacks into .whl/ (git-ignored):
# auto-round==0.16.1 datasets dill multiprocess pydantic pydantic-core annotated-types
# typing-inspection (pip download --no-deps --only-binary=:all: --python-version 3.12 ..., as
# /work/.library/device/README.md says); then `bash scripts/device/call-ar256.sh` with carry
# [".devdeps", ".whl"], kind nvidia-h200, needs_h200. Its outputs land in $OUT.
. .devdeps/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit
(make -j16 CUDA_ARCH="-gencode arch=compute_90,code=sm_90" build/bench/bench_cuda_autoround) > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
for g in tf32 bf16; do echo "== fourbit $g"; timeout 120 build/bench/bench_cuda_autoround --experts 256 --gemm $g --iters 20 2>&1 | tail -9 | tee $OUT/fb256-$g.txt; done
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
timeout 400 python3 scripts/bench-autoround-ref.py --experts 256 --layers 2 --iters 5 --json $OUT/ar256.json > $OUT/ar256.log 2>&1; echo "ar rc=$?"
grep -v "^step" $OUT/ar256.log | tail -25; grep "^step" $OUT/ar256.log | tail -12
