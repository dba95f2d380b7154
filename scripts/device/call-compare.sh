#!/bin/sh
# A device call (H100 or H200): correctness (test_cutune incl. bf16, t_cutune), then speed: main (old) vs this branch
# Usage: scripts/device/make-devdeps.sh; git diff main -- src bench tools tests > .devdeps/new.patch
# (the change under test, reversed on the device to build "old"); then run `bash
# scripts/device/call-compare.sh` with carry [".devdeps"]. Its outputs land in $OUT. bf16 runs take 40
# iterations: cuBLAS's per-shape algorithm choice for the experts' bf16 GEMMs warms up over the first
# few dozen (BENCHMARKS.md, fourth pass), so 10 overstate its steady state.
. .devdeps/env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
A='-gencode arch=compute_90,code=sm_90'
R=$(pwd)
mkdir -p /tmp/old && tar cf - --exclude=./build --exclude=./.whl --exclude=./.devdeps . | tar xf - -C /tmp/old && (cd /tmp/old && patch -s -R -p1 < $R/.devdeps/new.patch) || exit 1
(make -j16 CUDA_ARCH="$A" build/bench/bench_cuda_autoround build/tests/test_cutune all > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }) &
(cd /tmp/old && make -j8 CUDA_ARCH="$A" build/bench/bench_cuda_autoround > $OUT/build-old.log 2>&1 || tail -30 $OUT/build-old.log) &
wait
timeout 150 build/tests/test_cutune > $OUT/test_cutune.log 2>&1; echo "test_cutune rc=$?"; grep -E "FAIL|passed|tune |grad|fixed" $OUT/test_cutune.log | tail -20
b() { echo "== $*"; timeout 100 "$@" 2>&1 | tail -9; }
NEW=build/bench/bench_cuda_autoround OLD=/tmp/old/build/bench/bench_cuda_autoround
b $NEW --experts 256 --samples 16 --gemm tf32 --iters 10 | tee -a $OUT/bench.txt
b $NEW --experts 256 --samples 16 --gemm bf16 --iters 40 | tee -a $OUT/bench.txt
b $OLD --experts 256 --samples 16 --gemm tf32 --iters 10 | tee -a $OUT/bench.txt
b $NEW --experts 128 --samples 16 --gemm bf16 --iters 40 | tee -a $OUT/bench.txt
b $NEW --experts 128 --samples 16 --gemm tf32 --iters 10 | tee -a $OUT/bench.txt
b $OLD --experts 128 --samples 16 --gemm tf32 --iters 10 | tee -a $OUT/bench.txt
b $OLD --experts 128 --samples 16 --gemm bf16 --iters 40 | tee -a $OUT/bench.txt
BUILD=build timeout 120 sh tests/t_cutune.sh > $OUT/t_cutune.log 2>&1; tail -4 $OUT/t_cutune.log
