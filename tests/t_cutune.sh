#!/bin/sh
# t_cutune: w4a16-quantize --device cuda (AutoRound's block tuning on the GPU, cuda/cutune.h) on
# the embedded model: usage refusals (an unknown device, with --expert-group, a recipe without an
# AutoRoundModifier); then a small run (8 samples x 64 tokens, 10 iterations): with a GPU it
# finishes, validates, its tuned experts differ from round-to-nearest and its KL on held-out tokens
# is within 5% of the same tuning on the CPU's; without one (or in a
# build without CUDA) it fails with exit 1 saying so and writes no DST. The numerics against the
# CPU's are tests/test_cutune.c's.
. tests/lib.sh
M=models/tiny-minimax-m2
[ -d "$M" ] || { echo "t_cutune.sh: no $M"; ok; finish; exit $?; }
Q4="$BIN/w4a16-quantize"
IDS=tests/golden/gptq-model/calib-ids.jsonl
cat > "$T_TMP/ar.yaml" <<'Y'
quant_stage:
  quant_modifiers:
    AutoRoundModifier:
      targets: [Linear]
      scheme: W4A16
      ignore: [lm_head, 're:.*block_sparse_moe\.gate$']
      iters: 10
      batch_size: 4
Y
cat > "$T_TMP/rtn.yaml" <<'Y'
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      targets: [Linear]
      scheme: W4A16
      ignore: [lm_head, 're:.*block_sparse_moe\.gate$']
Y
D="--dataset $IDS --samples 8 --seq-len 64 --no-shuffle -t 2"
expect_rc 2 "unknown device" -- "$Q4" --recipe "$T_TMP/ar.yaml" $D --device tpu $M "$T_TMP/o1"
expect_out "--device must be cpu or cuda, got 'tpu'" "names the bad value"
expect_rc 2 "cuda with --expert-group" -- "$Q4" --recipe "$T_TMP/ar.yaml" $D --device cuda --expert-group 2 $M "$T_TMP/o1"
expect_out "--expert-group runs on the CPU only" "says why"
expect_rc 2 "--gemm without --device cuda" -- "$Q4" --recipe "$T_TMP/ar.yaml" $D --gemm tf32 $M "$T_TMP/o1"
expect_out "it needs --device cuda" "says why"
expect_rc 2 "an unknown --gemm" -- "$Q4" --recipe "$T_TMP/ar.yaml" $D --device cuda --gemm fp16 $M "$T_TMP/o1"
expect_out "--gemm must be f32, tf32 or bf16, got 'fp16'" "names the bad value"
expect_rc 2 "cuda without AutoRound" -- "$Q4" --recipe "$T_TMP/rtn.yaml" --device cuda $M "$T_TMP/o1"
expect_out "AutoRoundModifier" "names what --device cuda runs"
[ ! -e "$T_TMP/o1" ] && [ ! -e "$T_TMP/o1.partial" ] && ok || fail "nothing written on a usage error"
# the CPU default is unchanged by the option's presence
expect_rc 0 "--device cpu" -- "$Q4" -q --recipe "$T_TMP/rtn.yaml" --device cpu -t 2 $M "$T_TMP/r1"
"$Q4" --recipe "$T_TMP/ar.yaml" $D --device cuda $M "$T_TMP/g1" >"$T_TMP/out" 2>&1; rc=$?
if [ "$rc" = 0 ]; then
    echo "t_cutune: GPU run finished"
    expect_rc 0 "validate the GPU-tuned output" -- "$BIN/validate-ignore-list" "$T_TMP/g1"
    "$BIN/st-diff" --json "$T_TMP/g1" "$T_TMP/r1" > "$T_TMP/diff.json" 2>/dev/null
    n=$(grep -o '"name": "[^"]*experts[^"]*weight_packed"' "$T_TMP/diff.json" | wc -l)
    [ "$n" -ge 90 ] && ok || fail "GPU-tuned experts: only $n of 96 differ from round-to-nearest"
    # the same tuning on the CPU: with f32 GEMMs the GPU run (the tuner and, since the loop's
    # passes run on the CUDA engine, the layer passes) follows the CPU's arithmetic to f32 rounding,
    # so the two outputs' KL on held-out tokens agree closely
    expect_rc 0 "the same tuning on the CPU" -- "$Q4" -q --recipe "$T_TMP/ar.yaml" $D $M "$T_TMP/c1"
    kl() { "$BIN/ref-runner" --reference $M --quantized "$1" --data tests/golden/gptq-model/eval-ids.jsonl --samples 8 \
        --seq-len 128 -t 2 2>&1 | sed -n 's/.*KL divergence *mean \([0-9.e-]*\).*/\1/p'; }
    k_g=$(kl "$T_TMP/g1"); k_c=$(kl "$T_TMP/c1")
    echo "t_cutune: KL on 8 x 128 held-out tokens: GPU (f32) $k_g, CPU $k_c"
    awk -v g="$k_g" -v c="$k_c" 'BEGIN { d = g - c; if (d < 0) d = -d; exit !(g > 0 && c > 0 && d <= 0.05 * c) }' && ok ||
        fail "GPU (f32) KL $k_g is not within 5% of the CPU's $k_c"
    "$Q4" --json -q --recipe "$T_TMP/ar.yaml" $D --device cuda $M "$T_TMP/g4" > "$T_TMP/g4.json" 2>&1
    grep -o '"autoround":{[^}]*}' "$T_TMP/g4.json" | sed 's/^/t_cutune: /'
    expect_rc 0 "--gemm tf32 (tensor cores)" -- "$Q4" -q --recipe "$T_TMP/ar.yaml" $D --device cuda --gemm tf32 $M "$T_TMP/g2"
    expect_rc 0 "validate the tf32-GEMM output" -- "$BIN/validate-ignore-list" "$T_TMP/g2"
    expect_rc 0 "--gemm bf16 (the experts' operands in bf16)" -- "$Q4" -q --recipe "$T_TMP/ar.yaml" $D --device cuda --gemm bf16 $M "$T_TMP/g3"
    expect_rc 0 "validate the bf16-GEMM output" -- "$BIN/validate-ignore-list" "$T_TMP/g3"
    "$BIN/st-diff" --json "$T_TMP/g3" "$T_TMP/r1" > "$T_TMP/diff3.json" 2>/dev/null
    n=$(grep -o '"name": "[^"]*experts[^"]*weight_packed"' "$T_TMP/diff3.json" | wc -l)
    [ "$n" -ge 90 ] && ok || fail "bf16-GEMM-tuned experts: only $n of 96 differ from round-to-nearest"
    grep -q '"fourbit.tuning_device":"cuda"' "$T_TMP"/g1/*.safetensors && grep -q ', device cuda$' "$T_TMP/g1/recipe.yaml" &&
        grep -q '"fourbit.tuning_device":"cuda (tf32 GEMMs)"' "$T_TMP"/g2/*.safetensors &&
        grep -q '"fourbit.tuning_device":"cuda (bf16 expert GEMMs)"' "$T_TMP"/g3/*.safetensors && ok ||
        fail "provenance: the tuning device (cuda, cuda (tf32 GEMMs), cuda (bf16 expert GEMMs)) in the shards' metadata and recipe.yaml"
elif [ "$rc" = 1 ] && grep -Eq "no usable GPU|no CUDA support" "$T_TMP/out"; then
    echo "t_cutune: no GPU here: $(grep -Eo 'no usable GPU.*|no CUDA support.*' "$T_TMP/out" | head -1)"
    ok
    [ ! -e "$T_TMP/g1" ] && ok || fail "a DST after the failure"
else
    fail "--device cuda: exit $rc"; sed 's/^/    | /' "$T_TMP/out" | head -20 >&2
fi
finish
