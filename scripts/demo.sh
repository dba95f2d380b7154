#!/bin/sh
# make demo: the main job on the embedded model (models/tiny-minimax-m2, a trained 4-layer
# MiniMax-M2 in the official FP8 layout), into a fresh demo-out/:
#   FP8 -> BF16 (fp8-dequant)                       the dequantized checkpoint
#   calibration statistics (calibrate)              data/demo-chat.jsonl, the model's own chat template
#   FP8 -> NVFP4 W4A4 (nvfp4-quantize --calib)      recipes/minimax.yaml
#   FP8 -> W4A16 (w4a16-quantize) and AutoRound     recipes/minimax-w4a16.yaml
#   validate-ignore-list on each output
#   ref-runner: KL divergence / top-1 of each quantized model against the source (when built)
# then a summary of what was written.
set -eu
: "${BUILD:=build}"
B=$BUILD/bin
M=models/tiny-minimax-m2
OUT=demo-out
rm -rf "$OUT" "$OUT".partial
mkdir -p "$OUT"
t0=$(date +%s.%N)
step() { printf '\n== %s\n' "$*"; }

step "fp8-dequant $M -> $OUT/bf16"
$B/fp8-dequant -q "$M" "$OUT/bf16"
step "calibrate on data/demo-chat.jsonl (all experts observed on every token)"
$B/calibrate -q -m "$M" -d data/demo-chat.jsonl -o "$OUT/calib-stats.safetensors" --samples 8 --seq-len 256
step "nvfp4-quantize --recipe recipes/minimax.yaml --calib (NVFP4 W4A4) -> $OUT/nvfp4"
$B/nvfp4-quantize -q --recipe recipes/minimax.yaml --calib "$OUT/calib-stats.safetensors" "$M" "$OUT/nvfp4"
step "nvfp4-quantize --recipe recipes/minimax-nvfp4a16.yaml -> $OUT/nvfp4a16"
$B/nvfp4-quantize -q --recipe recipes/minimax-nvfp4a16.yaml "$M" "$OUT/nvfp4a16"
step "w4a16-quantize --recipe recipes/minimax-w4a16.yaml -> $OUT/w4a16 (compressed-tensors) and $OUT/w4a16-autoround"
$B/w4a16-quantize -q --recipe recipes/minimax-w4a16.yaml "$M" "$OUT/w4a16"
$B/w4a16-quantize -q --format auto_round --recipe recipes/minimax-w4a16.yaml "$M" "$OUT/w4a16-autoround"

step "validate-ignore-list"
for d in bf16 nvfp4 nvfp4a16 w4a16 w4a16-autoround; do
    printf '%-18s ' "$d:"
    $B/validate-ignore-list "$OUT/$d" | tail -n 1
done
step "validate-ignore-list catches a broken recipe before quantizing (router gates quantized)"
printf 'default_stage:\n  default_modifiers:\n    QuantizationModifier:\n      targets: [Linear]\n      scheme: NVFP4A16\n      ignore: [lm_head]\n' > "$OUT/broken-recipe.yaml"
if $B/validate-ignore-list --recipe "$OUT/broken-recipe.yaml" "$M" > "$OUT/broken-recipe.txt" 2>&1; then
    echo "unexpected: the broken recipe passed"; exit 1
else
    grep -m1 -E "KeyError|ERROR" "$OUT/broken-recipe.txt" || true
fi

if [ -x "$B/ref-runner" ]; then
    step "ref-runner: each quantized model against the FP8 source on data/demo-chat.jsonl"
    printf '%-18s %10s %10s %12s\n' "" "KL mean" "top-1" "perplexity"
    for d in nvfp4 nvfp4a16 w4a16 w4a16-autoround; do
        emu=""; [ "$d" = nvfp4 ] && emu=--emulate-w4a4
        r=$($B/ref-runner --reference "$M" --quantized "$OUT/$d" --data data/demo-chat.jsonl --samples 8 --seq-len 256 $emu 2>&1) || true
        kl=$(printf '%s\n' "$r" | awk '/KL divergence/ {print $4}')
        top=$(printf '%s\n' "$r" | awk '/top-1 agreement/ {print $3}')
        ppl=$(printf '%s\n' "$r" | awk '/perplexity/ {print $5 " (ref " $3 ")"}')
        printf '%-18s %10s %10s   %s\n' "$d${emu:+ (W4A4)}:" "$kl" "$top" "$ppl"
    done
fi

step "summary"
printf '%-18s %10s  %s\n' "output" "size" "tensors"
for d in bf16 nvfp4 nvfp4a16 w4a16 w4a16-autoround; do
    sz=$(du -sb "$OUT/$d" | cut -f1)
    n=$(grep -c '": "model-' "$OUT/$d/model.safetensors.index.json" || true)
    printf '%-18s %8.2f MB  %s\n' "$d" "$(echo "$sz" | awk '{print $1/1e6}')" "$n"
done
printf '%-18s %8.2f MB  (FP8 source)\n' "$M" "$(du -sb "$M" | cut -f1 | awk '{print $1/1e6}')"
echo "demo finished in $(echo "$(date +%s.%N) $t0" | awk '{printf "%.1f", $1-$2}') s; outputs in $OUT/"
