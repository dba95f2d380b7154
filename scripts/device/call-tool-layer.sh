#!/bin/sh
# A device call: the quantizer end to end on the GPU (first run 2026-12-08 on an H100: BENCHMARKS.md,
# sixth pass). 1. tests/t_cutune.sh (w4a16-quantize --device cuda on the embedded model: validates,
# differs from round-to-nearest, its KL within 5% of the same tuning on the CPU's). 2. One full-size synthetic MiniMax-M2
# layer (bench/gen_minimax_layer: 256 experts, FP8, 3.7 GB on the device's disk) quantized by
# w4a16-quantize --device cuda --gemm `gemm` (second argument, default bf16) with an
# AutoRoundModifier (W4A16, batch 8, `iters` as the first argument, default 50) on 64 x 2048
# random ids: its --json splits the layer loop's time (calibrate_s: the FP chain's pass; tune_s:
# the block's tuning incl. loading its weights; propagate_s: the quantized chain's pass), the
# figure per layer of the tool itself, where bench_cuda_autoround times the tuner alone.
# Usage: scripts/device/make-devdeps.sh; then `bash scripts/device/call-tool-layer.sh [iters]
# [gemm] [notest]` (notest: skip t_cutune) with carry [".devdeps"]. Its outputs land in $OUT.
. .devdeps/env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
make -j16 CUDA_ARCH="-gencode arch=compute_90,code=sm_90" all build/bench/gen_minimax_layer > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
[ -f /tmp/syn/config.json ] || (./build/bench/gen_minimax_layer /tmp/syn > $OUT/gen.log 2>&1) &
if [ "$3" != notest ]; then
    BUILD=build timeout 300 sh tests/t_cutune.sh > $OUT/t_cutune.log 2>&1; echo "t_cutune rc=$?"; grep -E "FAIL|t_cutune" $OUT/t_cutune.log | tail -12
fi
wait; tail -1 $OUT/gen.log 2>/dev/null
awk 'BEGIN { srand(7); for (s = 0; s < 64; s++) { printf "{\"input_ids\": ["; for (t = 0; t < 2048; t++) printf "%s%d", t ? ", " : "", int(rand() * 1024); print "]}" } }' > /tmp/ids.jsonl
cat > /tmp/ar.yaml <<Y
default_stage:
  default_modifiers:
    AutoRoundModifier:
      targets: [Linear]
      scheme: W4A16
      ignore: [lm_head, model.embed_tokens, 're:.*block_sparse_moe\.gate$']
      iters: ${1:-50}
      batch_size: 8
Y
echo "== w4a16-quantize --device cuda --gemm ${2:-bf16}, full-size layer, 64 x 2048, iters ${1:-50}"
TM=; [ -x /usr/bin/time ] && TM="/usr/bin/time -f tool:_%e_s_wall,_peak_RSS_%M_KB"
rm -rf /tmp/synq; $TM ./build/bin/w4a16-quantize --json --recipe /tmp/ar.yaml --dataset /tmp/ids.jsonl --samples 64 --seq-len 2048 \
    --no-shuffle --device cuda --gemm ${2:-bf16} /tmp/syn /tmp/synq > $OUT/tool.json 2> $OUT/tool.err; echo "rc=$?"
grep -v "^\s*$" $OUT/tool.err | grep -E "layer|W4A16|error|tool:" | tail -8
grep -o '"autoround":{[^}]*}' $OUT/tool.json
