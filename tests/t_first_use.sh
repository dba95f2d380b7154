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
if [ -f models/tiny-qwen3-moe/config.json ]; then  # every family of the architecture table
    expect_rc 1 "Qwen3-MoE dry run without gate ignore" -- "$BIN/nvfp4-quantize" --dry-run --recipe "$T_TMP/nogate-a16.yaml" models/tiny-qwen3-moe "$T_TMP/o5"
    expect_out "^  \[ignore.gate\] .*mlp.gate" "Qwen3-MoE: the mlp.gate named up front"
    expect_rc 0 "Qwen3-MoE shipped recipe still plans" -- "$BIN/nvfp4-quantize" --dry-run --recipe recipes/qwen3-moe-nvfp4a16.yaml models/tiny-qwen3-moe "$T_TMP/o5"
fi

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
# item 4: statistics carry the source's identity; another model's are refused unless --force
"$BIN/fp8-dequant" -q $M "$T_TMP/bf16" || fail "fp8-dequant"
expect_rc 0 "FP8 statistics on the BF16 copy (same model)" -- "$BIN/nvfp4-quantize" -q --recipe recipes/minimax.yaml --calib "$T_TMP/stats.safetensors" "$T_TMP/bf16" "$T_TMP/q4a"
cp -r "$T_TMP/bf16" "$T_TMP/other"
# another model: the first byte of layer 2's o_proj flipped (offsets from the safetensors header)
name=model.layers.2.self_attn.o_proj.weight
fn="$T_TMP/other/$(sed -n "s/.*\"$name\": *\"\([^\"]*\)\".*/\1/p" "$T_TMP/other/model.safetensors.index.json")"
hl=$(od -An -t u8 -N8 "$fn" | tr -d ' ')
off=$(dd if="$fn" bs=1 skip=8 count="$hl" 2>/dev/null | sed -n "s/.*\"$name\":{[^}]*\"data_offsets\":\[\([0-9]*\),.*/\1/p")
[ -n "$off" ] && ok || fail "offset of $name in $fn"
pos=$((8 + hl + off))
b=$(od -An -t u1 -j "$pos" -N1 "$fn" | tr -d ' ')
printf "$(printf '\\%03o' $((b ^ 1)))" | dd of="$fn" bs=1 seek="$pos" conv=notrunc 2>/dev/null
cmp -s "$fn" "$T_TMP/bf16/$(basename "$fn")" && fail "the byte was not flipped" || ok
"$BIN/calibrate" -q --model "$T_TMP/other" --dataset $D --samples 4 -o "$T_TMP/stats-other.safetensors" || fail "calibrate other"
expect_rc 1 "another model's statistics" -- "$BIN/nvfp4-quantize" -q --recipe recipes/minimax.yaml --calib "$T_TMP/stats-other.safetensors" $M "$T_TMP/q4b"
expect_out "statistics made from another model .*the weights of layer 2 differ" "message names the first layer that differs"
expect_out "or pass --force" "message says how to override"
nothing_left "$T_TMP/q4b" "identity refusal"
expect_rc 0 "--force uses them" -- "$BIN/nvfp4-quantize" -q --force --recipe recipes/minimax.yaml --calib "$T_TMP/stats-other.safetensors" $M "$T_TMP/q4b"
expect_out "warning: .*another model.*--force: used anyway" "--force warns"
sed 's/"rope_theta": *[0-9.e+]*/"rope_theta": 12345.0/' $M/config.json > "$T_TMP/cfg.json"
cmp -s "$T_TMP/cfg.json" $M/config.json && fail "config edit" || ok
cp -r "$T_TMP/bf16" "$T_TMP/other-cfg"; cp "$T_TMP/cfg.json" "$T_TMP/other-cfg/config.json"
expect_rc 1 "statistics of a model with another config" -- "$BIN/nvfp4-quantize" -q --recipe recipes/minimax.yaml --calib "$T_TMP/stats.safetensors" "$T_TMP/other-cfg" "$T_TMP/q4c"
expect_out "its config.json differs" "message says the config differs"
expect_rc 0 "a statistics file without identity (older calibrate)" -- "$BIN/nvfp4-quantize" -q --recipe recipes/minimax.yaml --calib tests/golden/model-quant/calib-stats.safetensors $M "$T_TMP/q4d"
expect_out "records no source identity" "older statistics: a warning that it cannot be checked"

# item 7: an already-quantized checkpoint given as the source
"$BIN/nvfp4-quantize" -q --recipe recipes/minimax-nvfp4a16.yaml $M "$T_TMP/q7" || fail "nvfp4a16"
"$BIN/w4a16-quantize" -q --format auto_round --recipe recipes/minimax-w4a16.yaml $M "$T_TMP/q7ar" || fail "autoround"
expect_rc 1 "NVFP4 checkpoint as a source" -- "$BIN/nvfp4-quantize" --recipe recipes/minimax-nvfp4a16.yaml "$T_TMP/q7" "$T_TMP/o7"
expect_out "already quantized \(compressed-tensors nvfp4-pack-quantized\); pass the FP8 or BF16 source" "names what it is"
grep -q "block scale" "$T_TMP/out" && fail "still the block-scale message" || ok
expect_rc 1 "AutoRound checkpoint as a source" -- "$BIN/w4a16-quantize" --recipe recipes/minimax-w4a16.yaml "$T_TMP/q7ar" "$T_TMP/o7"
expect_out "already quantized \(auto-round" "AutoRound named"
expect_rc 1 "fp8-dequant of a quantized checkpoint" -- "$BIN/fp8-dequant" "$T_TMP/q7" "$T_TMP/o7"
expect_out "already quantized" "fp8-dequant"
expect_rc 1 "calibrate on a quantized checkpoint" -- "$BIN/calibrate" --model "$T_TMP/q7" --dataset $D -o "$T_TMP/s7"
expect_out "already quantized" "calibrate"
nothing_left "$T_TMP/o7" "quantized source"

# item 9: a killed run restarted without --resume says what it discarded; --resume with a
# changed recipe says why it rewrites
Q="$BIN/nvfp4-quantize --threads 1 --max-shard-size 1MB"
FOURBIT_FAULT_KILL_AFTER_WRITES=200 $Q -q --recipe recipes/minimax-nvfp4a16.yaml $M "$T_TMP/o9" >/dev/null 2>&1
ls "$T_TMP/o9.partial/"*.safetensors >/dev/null 2>&1 && ok || fail "killed run left finished shards"
expect_rc 0 "restart without --resume" -- $Q -q --recipe recipes/minimax-nvfp4a16.yaml $M "$T_TMP/o9"
expect_out "o9.partial held [0-9]+ finished shard\(s\) of an interrupted run: started over without them \(rerun with --resume" "the discarded shards are mentioned"
rm -rf "$T_TMP/o9"
FOURBIT_FAULT_KILL_AFTER_WRITES=200 $Q -q --recipe recipes/minimax-nvfp4a16.yaml $M "$T_TMP/o9" >/dev/null 2>&1
{ echo "# edited"; cat recipes/minimax-nvfp4a16.yaml; } > "$T_TMP/edited.yaml"
expect_rc 0 "--resume with a changed recipe" -- $Q -q --resume --recipe "$T_TMP/edited.yaml" $M "$T_TMP/o9"
expect_out "--resume: model-00001-of-[0-9]+.safetensors of the earlier run is rewritten: its header differs \(the recipe" "why the shards are rewritten"
expect_out "\(and [0-9]+ more\)" "how many"
rm -rf "$T_TMP/o9"
FOURBIT_FAULT_KILL_AFTER_WRITES=200 $Q -q --recipe recipes/minimax-nvfp4a16.yaml $M "$T_TMP/o9" >/dev/null 2>&1
expect_rc 0 "--resume unchanged" -- $Q -q --resume --recipe recipes/minimax-nvfp4a16.yaml $M "$T_TMP/o9"
grep -q "rewritten" "$T_TMP/out" && fail "an unchanged resume reports rewrites" || ok

# item 10: --calib with a weight-only scheme is refused, not silently ignored; w4a16-quantize has none
expect_rc 1 "NVFP4A16 with --calib" -- "$BIN/nvfp4-quantize" --recipe recipes/minimax-nvfp4a16.yaml --calib "$T_TMP/stats.safetensors" $M "$T_TMP/o10"
expect_out "used only by NVFP4 \(W4A4\).*scheme is NVFP4A16" "message says why"
expect_rc 1 "NVFP4A16 dry run with --calib" -- "$BIN/nvfp4-quantize" --dry-run --recipe recipes/minimax-nvfp4a16.yaml --calib "$T_TMP/stats.safetensors" $M "$T_TMP/o10"
nothing_left "$T_TMP/o10" "--calib refusal"
expect_rc 2 "w4a16-quantize --calib" -- "$BIN/w4a16-quantize" --recipe recipes/minimax-w4a16.yaml --calib "$T_TMP/stats.safetensors" $M "$T_TMP/o10"
expect_rc 0 "w4a16-quantize --help" -- "$BIN/w4a16-quantize" --help
grep -q -- "--calib" "$T_TMP/out" && fail "w4a16-quantize --help lists --calib" || ok
expect_rc 0 "nvfp4-quantize --help" -- "$BIN/nvfp4-quantize" --help
expect_out "-c, --calib STATS" "nvfp4-quantize still has --calib"

# item 13: calibrate shows what the model sees, and says what it cut or refused
C="$BIN/calibrate --model $M --dataset data/demo-chat.jsonl"
expect_rc 0 "--dump-text" -- $C --samples 2 --seq-len 64 --dump-text -
expect_out '^\{"record":[0-9]+,"tokens":[0-9]+,"text":".*\]~b\]' "rendered text with the template's special tokens"
expect_rc 0 "truncation in the text summary" -- $C --samples 2 --seq-len 16 -o "$T_TMP/s13"
expect_out "warning: 2 of 2 samples truncated to --seq-len 16" "truncation warned"
expect_out "samples truncated to --seq-len 16: 2" "truncation in the summary"
expect_rc 2 "--seq-len past max_position_embeddings" -- $C --seq-len 4096 -o "$T_TMP/s13b"
expect_out "--seq-len 4096 exceeds max_position_embeddings 2048" "message names the limit"
expect_rc 1 "--skip-long dropping everything" -- $C --seq-len 4 --skip-long -o "$T_TMP/s13c"
expect_out "8 longer than 4 tokens dropped by --skip-long.*raise --seq-len" "message says why and what to do"

# item 15: a .json array dataset, --version, an unsupported scheme
printf '[\n  {"text": "a"}\n]\n' > "$T_TMP/arr.json"
expect_rc 1 "pretty JSON array dataset" -- "$BIN/calibrate" --model $M --dataset "$T_TMP/arr.json" -o "$T_TMP/s15"
expect_out "JSON array; the dataset must be JSONL" "hint: JSONL expected"
printf '[{"text": "a"}]\n' > "$T_TMP/arr1.json"
expect_rc 1 "one-line JSON array dataset" -- "$BIN/calibrate" --model $M --dataset "$T_TMP/arr1.json" -o "$T_TMP/s15"
expect_out "a JSON array, not a JSON object: the dataset must be JSONL" "hint: JSONL expected"
for t in fp8-dequant calibrate nvfp4-quantize w4a16-quantize validate-ignore-list st-diff ref-runner; do
    [ -x "$BIN/$t" ] || continue
    expect_rc 0 "$t --version" -- "$BIN/$t" --version
    expect_out "^$t [0-9]+\.[0-9]+\.[0-9]+" "$t --version"
done

printf 'default_stage:\n  default_modifiers:\n    QuantizationModifier:\n      targets: [Linear]\n      scheme: FP8_DYNAMIC\n      ignore: [lm_head]\n' > "$T_TMP/fp8d.yaml"
expect_rc 1 "scheme FP8_DYNAMIC" -- "$BIN/nvfp4-quantize" --dry-run --recipe "$T_TMP/fp8d.yaml" $M "$T_TMP/o15"
expect_out "unsupported scheme FP8_DYNAMIC" "named as an unsupported scheme, not by its strategy"

# item 15: st-diff of an FP8 source against its BF16 dequant recognises the weight/scale pairs
expect_rc 0 "st-diff FP8 source vs its fp8-dequant copy" -- "$BIN/st-diff" $M "$T_TMP/bf16"
expect_out "^EQUAL: .* 0 only in A, 0 only in B" "no weight_scale_inv listed as only in A"
expect_out "112 FP8 block-scaled weights compared dequantized" "the pairs are named"
grep -q "only in A: .*weight_scale_inv" "$T_TMP/out" && fail "st-diff lists weight_scale_inv" || ok
expect_rc 0 "st-diff the other way round" -- "$BIN/st-diff" "$T_TMP/bf16" $M
expect_out "^EQUAL: .* 0 only in A, 0 only in B" "B's scales consumed too"
expect_rc 1 "st-diff FP8 vs a changed BF16 copy" -- "$BIN/st-diff" $M "$T_TMP/other"
expect_out "model.layers.2.self_attn.o_proj.weight\[0, 0\]: " "the changed element is named"
expect_out "model.layers.2.self_attn.o_proj.weight: 1 of [0-9]+ elements differ \(FP8 side dequantized\)" "one element differs"

finish
