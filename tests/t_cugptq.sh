#!/bin/sh
# t_cugptq: GPTQModifier recipes with --device cuda (each Linear's GPTQ solve on the GPU,
# cuda/cugptq.h; the Hessians still come from the CPU engine's calibration pass) on the embedded
# model: usage refusals (an unknown device; a recipe with no tuning modifier, in w4a16-quantize and
# nvfp4-quantize); then a small run (4 samples x 64 tokens) of minimax-gptq-w4a16.yaml: with a
# GPU it finishes, validates, and its packed codes agree with the CPU run's: at most MAX_WORDS_PCT
# percent of the 884,736 packed int32 words (8 codes each) differ, i.e. at most ~1% of the codes
# if every flipped code sits in its own word (test_cugptq.c's per-element bound, where the
# reasons are given), and at most a quarter of the words in which round-to-nearest differs from
# the CPU's GPTQ; the NVFP4A16 recipe's GPU run validates too. Without a GPU (or in a build without
# CUDA) it fails with exit 1 saying so and writes no DST.
. tests/lib.sh
M=models/tiny-minimax-m2
[ -d "$M" ] || { echo "t_cugptq.sh: no $M"; ok; finish; exit $?; }
Q4="$BIN/w4a16-quantize"; QN="$BIN/nvfp4-quantize"
IDS=tests/golden/gptq-model/calib-ids.jsonl
R4=recipes/minimax-gptq-w4a16.yaml
RN=recipes/minimax-gptq-nvfp4a16.yaml
WORDS=884736
MAX_WORDS_PCT=8
D="--dataset $IDS --samples 4 --seq-len 64 --no-shuffle -t 2"
expect_rc 2 "unknown device" -- "$Q4" --recipe $R4 $D --device tpu $M "$T_TMP/o1"
expect_out "--device must be cpu or cuda, got 'tpu'" "names the bad value"
expect_rc 2 "cuda with a round-to-nearest recipe (w4a16)" -- "$Q4" --recipe recipes/minimax-w4a16.yaml --device cuda $M "$T_TMP/o1"
expect_out "GPTQModifier's or an AutoRoundModifier's tuning" "names what --device cuda runs"
expect_rc 2 "cuda with a round-to-nearest recipe (nvfp4)" -- "$QN" --recipe recipes/minimax-nvfp4a16.yaml --device cuda $M "$T_TMP/o1"
expect_out "GPTQModifier's or an AutoRoundModifier's tuning" "names what --device cuda runs"
expect_rc 2 "--gemm with a GPTQ recipe" -- "$Q4" --recipe $R4 $D --device cuda --gemm tf32 $M "$T_TMP/o1"
expect_out "no AutoRoundModifier \(GPTQ on the GPU computes in f32\)" "says why"
[ ! -e "$T_TMP/o1" ] && [ ! -e "$T_TMP/o1.partial" ] && ok || fail "nothing written on a usage error"
expect_rc 0 "nvfp4-quantize --help" -- "$QN" --help
expect_out "GPTQModifier: where each Linear's GPTQ solve runs" "--help lists --device for GPTQ"
expect_rc 0 "GPTQ on the CPU" -- "$Q4" -q --recipe $R4 $D $M "$T_TMP/c1"
"$Q4" --recipe $R4 $D --device cuda $M "$T_TMP/g1" >"$T_TMP/out" 2>&1; rc=$?
if [ "$rc" = 0 ]; then
    echo "t_cugptq: GPU run finished"
    expect_rc 0 "validate the GPU GPTQ output" -- "$BIN/validate-ignore-list" "$T_TMP/g1"
    grep -q '"fourbit.tuning_device":"cuda"' "$T_TMP"/g1/*.safetensors && ok || fail "provenance: fourbit.tuning_device cuda"
    expect_rc 0 "round-to-nearest for comparison" -- "$Q4" -q --recipe recipes/minimax-w4a16.yaml -t 2 $M "$T_TMP/r1"
    "$BIN/st-diff" --json --max-report 0 "$T_TMP/g1" "$T_TMP/c1" > "$T_TMP/gc.json" 2>/dev/null
    "$BIN/st-diff" --json --max-report 0 "$T_TMP/r1" "$T_TMP/c1" > "$T_TMP/rc.json" 2>/dev/null
    gc=$(grep -o '"mismatches": [0-9]*' "$T_TMP/gc.json" | awk '{s += $2} END {print s + 0}')
    rcw=$(grep -o '"mismatches": [0-9]*' "$T_TMP/rc.json" | awk '{s += $2} END {print s + 0}')
    echo "t_cugptq: packed words differing from the CPU's GPTQ: GPU $gc, round-to-nearest $rcw (of $WORDS)"
    [ "$gc" -le $((WORDS * MAX_WORDS_PCT / 100)) ] && [ $((gc * 4)) -le "$rcw" ] && ok ||
        fail "GPU GPTQ codes: $gc of $WORDS packed words differ from the CPU's (limit ${MAX_WORDS_PCT}% and a quarter of RTN's $rcw)"
    expect_rc 0 "NVFP4A16 GPTQ on the GPU" -- "$QN" -q --recipe $RN $D --device cuda $M "$T_TMP/g2"
    expect_rc 0 "validate it" -- "$BIN/validate-ignore-list" "$T_TMP/g2"
elif [ "$rc" = 1 ] && grep -Eq "no usable GPU|no CUDA support" "$T_TMP/out"; then
    echo "t_cugptq: no GPU here: $(grep -Eo 'no usable GPU.*|no CUDA support.*' "$T_TMP/out" | head -1)"
    ok
    [ ! -e "$T_TMP/g1" ] && [ ! -e "$T_TMP/g1.partial" ] && ok || fail "a DST after the failure"
else
    fail "--device cuda: exit $rc"; sed 's/^/    | /' "$T_TMP/out" | head -20 >&2
fi
finish
