#!/bin/sh
# A device call: llm-compressor 0.14.0.1's GPTQ (oneshot GPTQModifier, W4A16 g128, act-order
# static, all-experts calibration: its default) on full-size synthetic MiniMax-M2 layers at 256
# experts, 64 x 2048 tokens (scripts/bench-gptq-ref.py; layer 2 is the steady state), then fourbit's
# GPTQ work for one such layer on the same card (build/bench/bench_cuda_gptq).
# Usage: scripts/device/make-devdeps.sh; the wheels the device lacks into .whl/ (git-ignored), as
# /work/.library/device/README.md says (pip download --no-deps --only-binary=:all: --python-version
# 3.12 ...): llmcompressor==0.14.0.1 compressed-tensors==0.19.0 loguru==0.7.3 datasets==5.2.0
# dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
# typing-inspection==0.4.5 (the device image has torch, triton, transformers 5.17, accelerate and
# the rest); then `bash scripts/device/call-gptq-ref.sh [layers]` with carry [".devdeps", ".whl"].
# Its outputs land in $OUT.
. .devdeps/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit
(make -j16 CUDA_ARCH="-gencode arch=compute_90,code=sm_90" build/bench/bench_cuda_gptq > $OUT/build.log 2>&1) &
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
timeout 400 python3 scripts/bench-gptq-ref.py --layers ${1:-2} --json $OUT/gptq-ref.json > $OUT/gptq-ref.log 2>&1; echo "llm-compressor rc=$?"
grep -E "^subgraph|^linearized|solve [0-9]+ x|Error|error:|Traceback|OutOfMemory" $OUT/gptq-ref.log | grep -v "METRIC" | sort | uniq -c | sort -rn | head -12
grep -E "^subgraph" $OUT/gptq-ref.log; tail -c 1500 $OUT/gptq-ref.log
wait; test -x build/bench/bench_cuda_gptq || { tail -30 $OUT/build.log; exit 1; }
echo "== fourbit bench_cuda_gptq (256 experts, 64 x 2048)"
timeout 120 build/bench/bench_cuda_gptq 2>&1 | tail -25 | tee $OUT/fb-gptq.txt
