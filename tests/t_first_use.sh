#!/bin/sh
# t_first_use: what a first-time user met in issue 17's walkthrough -- checks that passed when
# they should not, and the frictions -- each with the behaviour that replaced it.
. tests/lib.sh
M=models/tiny-minimax-m2
if ! ls $M/*.safetensors >/dev/null 2>&1; then
    echo "t_first_use: $M absent, skipped"; ok; finish; exit $?
fi
D=tests/golden/model-quant/calib-ids.jsonl
nothing_left() { [ ! -e "$1" ] && [ ! -e "$1.partial" ] && ok || fail "$2: something left behind at $1"; }

# item 5: a recipe that forgets the router gates is refused up front, dry run included, for
# W4A4 too (it used to plan "gate quantize NVFP4", exit 0, then blame the statistics file)
printf 'default_stage:\n  default_modifiers:\n    QuantizationModifier:\n      targets: [Linear]\n      scheme: NVFP4\n      ignore: [lm_head]\n' > "$T_TMP/nogate.yaml"
sed 's/NVFP4$/NVFP4A16/' "$T_TMP/nogate.yaml" > "$T_TMP/nogate-a16.yaml"
sed 's/NVFP4$/W4A16/' "$T_TMP/nogate.yaml" > "$T_TMP/nogate-w4.yaml"
"$BIN/calibrate" -q --model $M --dataset $D --samples 4 -o "$T_TMP/stats.safetensors" || fail "calibrate"
expect_rc 1 "W4A4 dry run without gate ignore" -- "$BIN/nvfp4-quantize" --dry-run --recipe "$T_TMP/nogate.yaml" $M "$T_TMP/o5"
expect_out "^  \[ignore.gate\] the router gate is matched" "dry run: [ignore.gate] on its own line"
expect_out "^    fix: add \"re:\.\*block_sparse_moe\\\\.gate\\$\"" "dry run: the fix on its own line"
expect_rc 1 "W4A4 run without gate ignore" -- "$BIN/nvfp4-quantize" --recipe "$T_TMP/nogate.yaml" --calib "$T_TMP/stats.safetensors" $M "$T_TMP/o5"
expect_out "\[ignore.gate\]" "W4A4 run: the gate named, not the statistics"
grep -q "no input absmax" "$T_TMP/out" && fail "W4A4 run blames the statistics file" || ok
nothing_left "$T_TMP/o5" "gate refusal"
expect_rc 1 "NVFP4A16 without gate ignore" -- "$BIN/nvfp4-quantize" --recipe "$T_TMP/nogate-a16.yaml" $M "$T_TMP/o5"
expect_out "^  \[ignore.gate\]" "NVFP4A16: one finding per line"
expect_rc 1 "W4A16 dry run without gate ignore" -- "$BIN/w4a16-quantize" --dry-run --recipe "$T_TMP/nogate-w4.yaml" $M "$T_TMP/o5"
expect_out "\[ignore.gate\]" "W4A16 dry run refused"
expect_rc 0 "the shipped recipe still plans" -- "$BIN/nvfp4-quantize" --dry-run --recipe recipes/minimax.yaml $M "$T_TMP/o5"

# item 6: a shard file given where a checkpoint directory is wanted
SH=$M/model-00001-of-00002.safetensors
expect_rc 1 "fp8-dequant on a shard file" -- "$BIN/fp8-dequant" $SH "$T_TMP/o6"
expect_out "is a file of the checkpoint directory $M; pass the directory" "fp8-dequant names the directory"
nothing_left "$T_TMP/o6" "fp8-dequant shard"
expect_rc 1 "nvfp4-quantize on a shard file" -- "$BIN/nvfp4-quantize" --recipe recipes/minimax-nvfp4a16.yaml $SH "$T_TMP/o6"
expect_out "pass the directory" "nvfp4-quantize names the directory"
expect_rc 1 "calibrate on a shard file" -- "$BIN/calibrate" --model $SH --dataset $D -o "$T_TMP/s6"
expect_out "pass the directory" "calibrate names the directory"
expect_rc 1 "validate-ignore-list on a shard file" -- "$BIN/validate-ignore-list" $SH
expect_out "is one file of the checkpoint directory $M, not a checkpoint" "validator says what the file is"
grep -q "stale" "$T_TMP/out" && fail "validator reports a config it never read" || ok
expect_rc 1 "validate-ignore-list --recipe on a shard file" -- "$BIN/validate-ignore-list" --recipe recipes/minimax.yaml $SH
expect_out "pass the directory" "preview names the directory"
expect_rc 0 "st-diff still compares shard files" -- "$BIN/st-diff" $SH $SH
finish
