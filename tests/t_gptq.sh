#!/bin/sh
# t_gptq: GPTQModifier recipes in nvfp4-quantize / w4a16-quantize on the embedded model: usage
# (a recipe that tunes needs --dataset, exit 2; --dataset with a round-to-nearest recipe, exit 2),
# the --dry-run plan naming GPTQ or RTN per module (a chained recipe mixes them), refusals
# (--format auto_round, split jobs), and a small end-to-end run: validated output, --json
# summary (one Hessian factorization per distinct Hessian and layer), the untuned modules
# byte-identical to a round-to-nearest run, the tuned ones not,
# determinism; NVFP4 W4A4 input scales observed in the same pass (== calibrate + --calib). The
# comparison with llm-compressor's GPTQ is test_gptq_model.
. tests/lib.sh
M=models/tiny-minimax-m2
[ -d "$M" ] || { echo "t_gptq.sh: no $M"; ok; finish; exit $?; }
Q4="$BIN/w4a16-quantize"; QN="$BIN/nvfp4-quantize"
R4=recipes/minimax-gptq-w4a16.yaml
IDS=tests/golden/gptq-model/calib-ids.jsonl

expect_rc 2 "GPTQ recipe without --dataset" -- "$Q4" --recipe $R4 $M "$T_TMP/o1"
expect_out "GPTQModifier.*--dataset" "the message says what is missing"
[ ! -e "$T_TMP/o1" ] && [ ! -e "$T_TMP/o1.partial" ] && ok || fail "nothing written on a usage error"
expect_rc 2 "--dataset with an RTN recipe" -- "$Q4" --recipe recipes/minimax-w4a16.yaml --dataset $IDS $M "$T_TMP/o2"
expect_out "round-to-nearest: drop --dataset" "the message says why"
expect_rc 0 "--help" -- "$QN" --help
expect_out "--dataset" "--help lists --dataset"

# the plan: GPTQ per module (a dry run needs no data)
expect_rc 0 "dry run" -- "$Q4" --recipe $R4 --dry-run $M "$T_TMP/o3"
expect_out "self_attn.q_proj.weight +quantize W4A16 +GPTQ target" "attention tuned"
expect_out "experts.\*.w2.weight +quantize W4A16 +GPTQ" "experts tuned"
expect_out "GPTQ \(block_size 128, dampening_frac 0.01, actorder weight/static\): 112 of" "GPTQ summary line"
# chained: the QuantizationModifier quantizes, the GPTQModifier tunes the experts but expert 0
cat > "$T_TMP/chain.yaml" <<'Y'
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      targets: [Linear]
      scheme: W4A16
      ignore: [lm_head, 're:.*block_sparse_moe\.gate$']
  gptq_modifiers:
    GPTQModifier:
      targets: ['re:.*experts.*']
      ignore: ['re:.*experts\.0\..*']
      actorder: null
Y
expect_rc 0 "chained dry run" -- "$Q4" --recipe "$T_TMP/chain.yaml" --dry-run -v $M "$T_TMP/o4"
expect_out "layers.0.self_attn.q_proj.weight +quantize W4A16 +RTN +target" "attention stays RTN"
expect_out "layers.0.block_sparse_moe.experts.0.w1.weight +quantize W4A16 +RTN" "expert 0 ignored by GPTQ"
expect_out "layers.0.block_sparse_moe.experts.1.w1.weight +quantize W4A16 +GPTQ" "expert 1 tuned"
expect_out ": 84 of the quantized modules are tuned" "84 = 4 layers x 7 experts x 3"
expect_rc 1 "GPTQ with --format auto_round" -- "$Q4" --recipe $R4 --format auto_round --dataset $IDS $M "$T_TMP/o5"
expect_out "auto_round with a GPTQModifier is not supported" "says why"
expect_rc 1 "GPTQ with split jobs" -- "$Q4" --recipe $R4 --dataset $IDS --shard-count 2 --shard-index 0 $M "$T_TMP/o6"
expect_out "split jobs" "says why"
printf '{"input_ids": [1, 2, 99999]}\n' > "$T_TMP/bad.jsonl"
expect_rc 1 "an id outside the vocabulary" -- "$Q4" --recipe $R4 --dataset "$T_TMP/bad.jsonl" $M "$T_TMP/o7"
expect_out "bad.jsonl:1" "names the line"
[ ! -e "$T_TMP/o7" ] && [ ! -e "$T_TMP/o7.partial" ] && ok || fail "nothing left behind after bad data"

# small run (4 samples x 64 tokens): chained recipe, compared with plain RTN
expect_rc 0 "chained GPTQ run" -- "$Q4" --recipe "$T_TMP/chain.yaml" --dataset $IDS --samples 4 --seq-len 64 --no-shuffle -t 2 --json $M "$T_TMP/g1"
expect_out '"gptq":\{"algorithm":"GPTQ","tuned_modules":84,"rtn_fallbacks":0,"samples":4,"tokens":256' "--json gptq summary"
# one factorization per distinct Hessian and layer: every expert's w1/w3 share the MoE input's, each
# w2 has its own: 4 layers x (1 + 7), not one per tuned module (84)
expect_out '"factorizations":32,"calibrate_s"' "each distinct Hessian factorized once per layer"
expect_out "layer 3: 21 modules tuned \(GPTQ\)" "progress per layer"
cat > "$T_TMP/rtn.yaml" <<'Y'
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      targets: [Linear]
      scheme: W4A16
      ignore: [lm_head, 're:.*block_sparse_moe\.gate$']
Y
expect_rc 0 "RTN run" -- "$Q4" -q --recipe "$T_TMP/rtn.yaml" -t 2 $M "$T_TMP/r1"
# untuned modules (attention, expert 0) and every scale: identical to RTN; tuned codes: not
"$BIN/st-diff" --json "$T_TMP/g1" "$T_TMP/r1" > "$T_TMP/diff.json" 2>/dev/null
grep -o '"name": "[^"]*"' "$T_TMP/diff.json" | sed 's/"name": //; s/"//g' > "$T_TMP/differ.txt"
if grep -Eq 'self_attn|experts\.0\.|weight_scale' "$T_TMP/differ.txt"; then
    fail "an untuned module or a scale differs from RTN: $(grep -E 'self_attn|experts\.0\.|weight_scale' "$T_TMP/differ.txt" | head -3)"
else ok; fi
n=$(grep -c 'weight_packed' "$T_TMP/differ.txt")
[ "$n" = 84 ] || [ "$n" -ge 80 ] && ok || fail "tuned packed tensors differing from RTN: $n of 84 (want all, or nearly)"
grep -q 'fourbit.tuning' "$T_TMP"/g1/*.safetensors && ok || fail "provenance: fourbit.tuning in __metadata__"
grep -q '^# GPTQ: 84 modules tuned on 4 samples (256 tokens)' "$T_TMP/g1/recipe.yaml" && ok || fail "recipe.yaml notes the tuning data"
expect_rc 0 "validate the output" -- "$BIN/validate-ignore-list" "$T_TMP/g1"
# NVFP4 W4A4 under a plain QuantizationModifier with --dataset: input scales observed in the
# quantizer's own layer loop, one read of the checkpoint; byte-identical to calibrate + --calib on
# the same tokens (tests/golden/model-quant: calib-stats.safetensors was made from calib-ids.jsonl)
MQ=tests/golden/model-quant
expect_rc 0 "W4A4 in one pass" -- "$QN" -q --recipe recipes/minimax.yaml --dataset $MQ/calib-ids.jsonl --samples 8 -t 2 $M "$T_TMP/w1"
expect_rc 0 "W4A4 from --calib" -- "$QN" -q --recipe recipes/minimax.yaml --calib $MQ/calib-stats.safetensors -t 2 $M "$T_TMP/w2"
expect_rc 0 "one pass == calibrate + --calib, byte for byte" -- "$BIN/st-diff" "$T_TMP/w1" "$T_TMP/w2"
grep -q '^# input scales (NVFP4 W4A4): observed in the quantizer' "$T_TMP/w1/recipe.yaml" && ok || fail "recipe.yaml says where the input scales came from"
expect_rc 1 "--dataset and --calib together" -- "$QN" --recipe recipes/minimax.yaml --dataset $MQ/calib-ids.jsonl --calib $MQ/calib-stats.safetensors $M "$T_TMP/w3"
expect_out "pass one of the two" "says why"
expect_rc 2 "--dataset with NVFP4A16 (weight-only RTN)" -- "$QN" --recipe recipes/minimax-nvfp4a16.yaml --dataset $MQ/calib-ids.jsonl $M "$T_TMP/w4"

# the second architecture (Qwen3-MoE fixture), NVFP4A16, `GPTQModifier: {}` after a
# QuantizationModifier: every scale and fused global scale equals round-to-nearest's, the codes do not
Q3=models/tiny-qwen3-moe
if [ -d $Q3 ]; then
    cat > "$T_TMP/q3.yaml" <<'Y'
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      targets: [Linear]
      scheme: NVFP4A16
      ignore: [lm_head, 're:.*mlp\.gate$']
  gptq_modifiers:
    GPTQModifier: {}
Y
    expect_rc 0 "Qwen3-MoE GPTQ" -- "$QN" -q --recipe "$T_TMP/q3.yaml" --dataset tests/golden/qwen3-moe/quant/calib-ids.jsonl -t 1 $Q3 "$T_TMP/q1"
    expect_rc 0 "Qwen3-MoE RTN" -- "$QN" -q --recipe recipes/qwen3-moe-nvfp4a16.yaml -t 1 $Q3 "$T_TMP/q2"
    "$BIN/st-diff" --json "$T_TMP/q1" "$T_TMP/q2" 2>/dev/null | grep -o '"name": "[^"]*"' > "$T_TMP/qd.txt"
    if grep -v weight_packed "$T_TMP/qd.txt" | grep -q .; then fail "Qwen3: a scale differs from RTN: $(grep -v weight_packed "$T_TMP/qd.txt" | head -2)"; else ok; fi
    [ "$(grep -c weight_packed "$T_TMP/qd.txt")" -ge 100 ] && ok || fail "Qwen3: GPTQ changed only $(grep -c weight_packed "$T_TMP/qd.txt") packed tensors of 112"
fi

# resume at layer granularity (jobs/tune.h): SIGINT once layer 1 is written, --resume continues
# from the staged input of the first layer with unwritten outputs, byte-identical to one run
# (natively only: under qemu-user a run takes minutes and the signal's timing is not meaningful)
case "$BUILD" in *qemu*) RESUME=0 ;; *) RESUME=1 ;; esac
if [ $RESUME = 1 ]; then
K="--recipe $R4 --dataset $IDS --samples 16 --no-shuffle -t 2 --max-shard-size 600KB"
expect_rc 0 "uninterrupted GPTQ run" -- "$Q4" -q $K $M "$T_TMP/k0"
rm -f "$T_TMP/kerr"  # no earlier log for the loop below to read before the redirection truncates it
"$Q4" $K $M "$T_TMP/k1" 2> "$T_TMP/kerr" & pid=$!
i=0
while ! grep -q "layer 1: .*tuned" "$T_TMP/kerr" 2>/dev/null && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
kill -INT $pid 2>/dev/null; wait $pid; rc=$?
[ "$rc" = 130 ] && ok || fail "interrupted GPTQ run: exit $rc, want 130"
expect_rc 0 "GPTQ --resume" -- "$Q4" $K --resume $M "$T_TMP/k1"
expect_out "resuming the layer loop at layer [12] from its staged input" "says where it resumes"
expect_rc 0 "resumed GPTQ == uninterrupted, byte for byte" -- "$BIN/st-diff" -q "$T_TMP/k1" "$T_TMP/k0"
fi

# the same thread count gives the same bytes (another count changes OpenBLAS's blocking of the
# projection GEMMs, hence the Hessians' last bits: calib/forward.h)
expect_rc 0 "same run again" -- "$Q4" -q --recipe "$T_TMP/chain.yaml" --dataset $IDS --samples 4 --seq-len 64 --no-shuffle -t 2 $M "$T_TMP/g2"
expect_rc 0 "deterministic" -- "$BIN/st-diff" -q "$T_TMP/g1" "$T_TMP/g2"
finish
