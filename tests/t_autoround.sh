#!/bin/sh
# t_autoround: AutoRoundModifier recipes in w4a16-quantize on the embedded model (jobs/tune.h's
# AutoRound loop): usage, the --dry-run plan, refusals (NVFP4, experts of a layer tuned only in
# part), and small end-to-end runs (8 samples x 64 tokens, 10 iterations): validated output in both
# formats, --json summary, provenance, the untuned modules byte-identical to round-to-nearest and
# the tuned ones not, every code and scale the tuning's (auto_round: fp16 scales decode to s * q),
# a lower KL than round-to-nearest on held-out tokens, determinism, --expert-group. The comparison
# with auto-round 0.16.1 on 64 x 256 tokens and 200 iterations is BENCHMARKS.md's (2.5 min here).
. tests/lib.sh
M=models/tiny-minimax-m2
[ -d "$M" ] || { echo "t_autoround.sh: no $M"; ok; finish; exit $?; }
Q4="$BIN/w4a16-quantize"; QN="$BIN/nvfp4-quantize"
IDS=tests/golden/gptq-model/calib-ids.jsonl
EV=tests/golden/gptq-model/eval-ids.jsonl
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
expect_rc 2 "AutoRound recipe without --dataset" -- "$Q4" --recipe "$T_TMP/ar.yaml" $M "$T_TMP/o1"
expect_out "AutoRoundModifier.*--dataset" "the message names the modifier and what is missing"
[ ! -e "$T_TMP/o1" ] && [ ! -e "$T_TMP/o1.partial" ] && ok || fail "nothing written on a usage error"
expect_rc 0 "dry run" -- "$Q4" --recipe "$T_TMP/ar.yaml" --dry-run $M "$T_TMP/o2"
expect_out "self_attn.q_proj.weight +quantize W4A16 +AutoRound target" "attention tuned"
expect_out "AutoRound \(SignRound: iters 10, batch_size 4, lr 0.1, seed 42\): 112 of" "summary line"
# NVFP4 is not tuned by fourbit's AutoRound
cat > "$T_TMP/arn.yaml" <<'Y'
quant_stage:
  quant_modifiers:
    AutoRoundModifier:
      scheme: NVFP4A16
      ignore: [lm_head, 're:.*block_sparse_moe\.gate$']
Y
expect_rc 1 "AutoRound NVFP4A16" -- "$QN" --recipe "$T_TMP/arn.yaml" --dataset $IDS $M "$T_TMP/o3"
expect_out "AutoRound tunes W4A16 \(int4 symmetric, group_size 128\)" "says what it tunes"
[ ! -e "$T_TMP/o3" ] && [ ! -e "$T_TMP/o3.partial" ] && ok || fail "nothing left behind"
# the experts of a layer are tuned jointly: all or none
cat > "$T_TMP/part.yaml" <<'Y'
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      scheme: W4A16
      ignore: [lm_head, 're:.*block_sparse_moe\.gate$']
    AutoRoundModifier:
      targets: ['re:.*experts.*']
      ignore: ['re:.*experts\.0\.w2$']
      iters: 2
Y
expect_rc 1 "experts tuned in part" -- "$Q4" --recipe "$T_TMP/part.yaml" --dataset $IDS --samples 2 --seq-len 32 --no-shuffle -t 2 $M "$T_TMP/o4"
expect_out "expert 0's FB_ROLE_W_DOWN|expert 0's w_down|expert 0.* is not tuned while others are" "names the expert"
[ ! -e "$T_TMP/o4" ] && ok || fail "no output after the refusal"

# experts only (chained): attention stays round-to-nearest, byte for byte
cat > "$T_TMP/chain.yaml" <<'Y'
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      scheme: W4A16
      ignore: [lm_head, 're:.*block_sparse_moe\.gate$']
    AutoRoundModifier:
      targets: ['re:.*experts.*']
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
expect_rc 0 "chained AutoRound run" -- "$Q4" --recipe "$T_TMP/chain.yaml" $D --json $M "$T_TMP/c1"
expect_out '"autoround":\{"algorithm":"AutoRound","tuned_modules":96,"rtn_fallbacks":0,"samples":8,"tokens":512' "--json summary"
expect_out "layer 3: 24 modules tuned \(AutoRound" "progress per layer"
# the loop's time split (passes before tuning, tuning, passes after, each layer's outputs written):
# each part > 0 and their sum within the loop's own seconds; the weights' loading is part of tuning
grep -o '"autoround":{[^}]*}' "$T_TMP/out" | tr ',' '\n' | sed 's/[{}"]//g' > "$T_TMP/split"
awk -F: '{v[$1] = $2} END {s = v["calibrate_s"] + v["tune_s"] + v["propagate_s"] + v["write_s"];
    exit !(v["calibrate_s"] > 0 && v["tune_s"] > 0 && v["propagate_s"] > 0 && v["write_s"] > 0 && s <= v["seconds"] + 1e-3 &&
           v["load_s"] > 0 && v["load_s"] <= v["tune_s"])}' "$T_TMP/split" \
    && ok || fail "--json: calibrate_s / tune_s / propagate_s / write_s / load_s missing or inconsistent: $(tr '\n' ' ' < "$T_TMP/split")"
expect_rc 0 "RTN run" -- "$Q4" -q --recipe "$T_TMP/rtn.yaml" -t 2 $M "$T_TMP/r1"
"$BIN/st-diff" --json "$T_TMP/c1" "$T_TMP/r1" > "$T_TMP/diff.json" 2>/dev/null
grep -o '"name": "[^"]*"' "$T_TMP/diff.json" | sed 's/"name": //; s/"//g' > "$T_TMP/differ.txt"
if grep -q self_attn "$T_TMP/differ.txt"; then fail "attention differs from RTN: $(grep self_attn "$T_TMP/differ.txt" | head -2)"; else ok; fi
[ "$(grep -c 'experts.*weight_packed' "$T_TMP/differ.txt")" -ge 90 ] && ok || fail "tuned codes: only $(grep -c 'experts.*weight_packed' "$T_TMP/differ.txt") of 96 differ from RTN"
[ "$(grep -c 'experts.*weight_scale' "$T_TMP/differ.txt")" -ge 90 ] && ok || fail "tuned scales: only $(grep -c 'experts.*weight_scale' "$T_TMP/differ.txt") of 96 differ from RTN"
grep -q '^# AutoRound: 96 modules tuned on 8 samples (512 tokens)' "$T_TMP/c1/recipe.yaml" && ok || fail "recipe.yaml notes the tuning data"
grep -q '"fourbit.tuning":"AutoRound"' "$T_TMP"/c1/*.safetensors && ok || fail "provenance: fourbit.tuning AutoRound"
grep -q '"fourbit.tuning_device":"cpu"' "$T_TMP"/c1/*.safetensors && grep -q '^# AutoRound: .*, device cpu$' "$T_TMP/c1/recipe.yaml" \
    && ok || fail "provenance: tuned on the cpu (shard metadata, recipe.yaml)"
expect_rc 0 "validate (pack-quantized)" -- "$BIN/validate-ignore-list" "$T_TMP/c1"

# Under qemu-user (CI's aarch64 step) every tuning run takes minutes; the end-to-end checks below
# exercise no architecture-specific code (BLAS and scalar C) and run natively only.
case "$BUILD" in *qemu*) echo "t_autoround: qemu-user build: end-to-end tuning checks skipped (run natively)"; finish; exit $?;; esac

# iters 0 against auto-round 0.16.1 itself (tests/golden/autoround-model: its iters=0 export on the
# same 64 x 256 calibration ids; it searched in float32 on that CPU): the kept tensors of layers 0
# and 3 (q/k/v/o, expert 0; qweight, qzeros, scales) byte-identical but where the imatrix's last
# bits (f32 sums in another order, three layers deep) move a search to another candidate
sed 's/iters: 10/iters: 0/' "$T_TMP/ar.yaml" > "$T_TMP/ar0g.yaml"
expect_rc 0 "iters 0, 64 x 256 ids" -- "$Q4" -q --recipe "$T_TMP/ar0g.yaml" --format auto_round --dataset $IDS --samples 64 --seq-len 256 --no-shuffle -t 2 $M "$T_TMP/g0"
"$BIN/st-diff" --common tests/golden/autoround-model/kept-iters0.safetensors "$T_TMP/g0" > "$T_TMP/g0.txt" 2>&1
eq=$(sed -n 's/.*tensors compared (bytes), \([0-9]*\) equal.*/\1/p' "$T_TMP/g0.txt")
[ "${eq:-0}" -ge 36 ] && ok || fail "iters 0 vs auto-round: $eq of 42 kept tensors byte-identical (want >= 36): $(tail -1 "$T_TMP/g0.txt")"
if grep -q '^  model.layers.0.*differ' "$T_TMP/g0.txt"; then fail "iters 0 vs auto-round: layer 0 differs: $(grep '^  model.layers.0' "$T_TMP/g0.txt" | head -2)"; else ok; fi
if grep -q '^  .*experts.*differ' "$T_TMP/g0.txt"; then fail "iters 0 vs auto-round: an expert differs"; else ok; fi

# everything tuned, both formats; lower KL than RTN on held-out tokens. The whole block is one
# unit (joint): 20 iterations (lr 1/20; with 10 the steps are too coarse for the block's loss:
# measured KL 0.0326 against RTN's 0.0321 in auto_round format, 0.0229 with 20).
sed 's/iters: 10/iters: 20/' "$T_TMP/ar.yaml" > "$T_TMP/ar20.yaml"
expect_rc 0 "AutoRound run" -- "$Q4" -q --recipe "$T_TMP/ar20.yaml" $D $M "$T_TMP/a1"
expect_rc 0 "AutoRound run, auto_round format" -- "$Q4" -q --recipe "$T_TMP/ar20.yaml" --format auto_round $D $M "$T_TMP/a2"
expect_rc 0 "validate (auto_round)" -- "$BIN/validate-ignore-list" "$T_TMP/a2"
expect_rc 0 "RTN, auto_round format" -- "$Q4" -q --recipe "$T_TMP/rtn.yaml" --format auto_round -t 2 $M "$T_TMP/r2"
kl() { "$BIN/ref-runner" --reference $M --quantized "$1" --data $EV --samples 8 --seq-len 128 -t 2 2>&1 | sed -n 's/.*KL divergence *mean \([0-9.e-]*\).*/\1/p'; }
k_r=$(kl "$T_TMP/r1"); k_a=$(kl "$T_TMP/a1"); k_r2=$(kl "$T_TMP/r2"); k_a2=$(kl "$T_TMP/a2")
awk -v a="$k_a" -v r="$k_r" 'BEGIN { exit !(a > 0 && r > 0 && a < 0.9 * r) }' && ok || fail "pack-quantized: AutoRound KL $k_a not below 0.9 x RTN's $k_r"
awk -v a="$k_a2" -v r="$k_r2" 'BEGIN { exit !(a > 0 && r > 0 && a < 0.9 * r) }' && ok || fail "auto_round: AutoRound KL $k_a2 not below 0.9 x RTN's $k_r2"
# the auto_round scales are the tuned fp16 ones, pack-quantized stores them in bf16: the two
# dequantize to weights within bf16's rounding of the scale (|q| <= 8: 8 * 2^-9 relative)
awk -v a="$k_a" -v b="$k_a2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 0.1 * a) }' && ok || fail "the two formats' KL differ too much: $k_a vs $k_a2"
# grouped experts: another approximation of the joint loss, still tuned
expect_rc 0 "--expert-group 3" -- "$Q4" -q --recipe "$T_TMP/ar.yaml" $D --expert-group 3 $M "$T_TMP/a3"
k_a3=$(kl "$T_TMP/a3")
awk -v a="$k_a3" -v r="$k_r" 'BEGIN { exit !(a > 0 && a < 0.9 * r) }' && ok || fail "--expert-group 3: KL $k_a3 vs RTN $k_r"
"$BIN/st-diff" -q "$T_TMP/a1" "$T_TMP/a3" >/dev/null 2>&1 && fail "--expert-group 3 changed nothing" || ok
# iters 0: auto-round's RTN mode. Routed experts plain RTN: byte-identical to fourbit's own
# round-to-nearest auto_round output (auto-round's rtn_int_sym); attention: the optimized RTN
# weighted by its input's imatrix, other scales. disable_opt_rtn: everything plain RTN.
sed 's/iters: 10/iters: 0/' "$T_TMP/ar.yaml" > "$T_TMP/ar0.yaml"
expect_rc 0 "iters 0 dry run" -- "$Q4" --recipe "$T_TMP/ar0.yaml" --dry-run $M "$T_TMP/o5"
expect_out "AutoRound iters 0 \(auto-round's RTN mode: attention optimized RTN" "iters 0 summary line"
expect_rc 0 "iters 0 run" -- "$Q4" -q --recipe "$T_TMP/ar0.yaml" --format auto_round $D $M "$T_TMP/z1"
"$BIN/st-diff" --json "$T_TMP/z1" "$T_TMP/r2" 2>/dev/null | grep -o '"name": "[^"]*"' > "$T_TMP/zd.txt"
if grep -q experts "$T_TMP/zd.txt"; then fail "iters 0: an expert differs from plain RTN: $(grep experts "$T_TMP/zd.txt" | head -2)"; else ok; fi
[ "$(grep -c 'self_attn.*scales' "$T_TMP/zd.txt")" -ge 12 ] && ok || fail "iters 0: the optimized RTN changed only $(grep -c 'self_attn.*scales' "$T_TMP/zd.txt") of 16 attention scale tensors"
printf '      disable_opt_rtn: true\n' >> "$T_TMP/ar0.yaml"
expect_rc 0 "iters 0, disable_opt_rtn" -- "$Q4" -q --recipe "$T_TMP/ar0.yaml" --format auto_round $D $M "$T_TMP/z2"
expect_rc 0 "disable_opt_rtn == plain RTN, byte for byte" -- "$BIN/st-diff" -q "$T_TMP/z2" "$T_TMP/r2"
# resume at layer granularity: SIGINT once layer 1 is written (small shards: several per layer),
# --resume continues from the staged input of the first layer with unwritten outputs; the result
# equals an uninterrupted run byte for byte, and no state file is left in the output. A damaged
# state file is refused by its digest and the loop starts again from layer 0 (shards kept).
sed 's/iters: 10/iters: 40/' "$T_TMP/ar.yaml" > "$T_TMP/ar40.yaml"
K="--recipe $T_TMP/ar40.yaml $D --max-shard-size 600KB"
expect_rc 0 "uninterrupted run" -- "$Q4" -q $K $M "$T_TMP/k0"
kill_after_layer1() {  # $1: DST, $2: the signal (INT unless given); prints the exit status
    # the log removed first: the loop below must not read the previous run's "layer 1" line
    # before this run's redirection has truncated the file (that killed runs at their start)
    rm -f "$T_TMP/kerr"
    "$Q4" $K $M "$1" 2> "$T_TMP/kerr" & pid=$!
    i=0
    while ! grep -q "layer 1: .*tuned" "$T_TMP/kerr" 2>/dev/null && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
    kill -"${2:-INT}" $pid 2>/dev/null; wait $pid; echo $?
}
rc=$(kill_after_layer1 "$T_TMP/k1")
[ "$rc" = 130 ] && ok || fail "interrupted run: exit $rc, want 130 (the run ended before the signal?)"
ls "$T_TMP/k1.partial"/fourbit-layer-state-*.bin >/dev/null 2>&1 && ok || fail "no layer state staged in k1.partial"
expect_rc 0 "--resume" -- "$Q4" $K --resume $M "$T_TMP/k1"
expect_out "resuming the layer loop at layer [12] from its staged input" "says where it resumes"
if grep -q "layer 0: .*tuned" "$T_TMP/out"; then fail "layer 0 was tuned again"; else ok; fi
expect_rc 0 "resumed == uninterrupted, byte for byte" -- "$BIN/st-diff" -q "$T_TMP/k1" "$T_TMP/k0"
ls "$T_TMP/k1"/fourbit-layer-state-* >/dev/null 2>&1 && fail "a layer state file left in the output" || ok
rc=$(kill_after_layer1 "$T_TMP/k2")
[ "$rc" = 130 ] && ok || fail "second interrupted run: exit $rc, want 130"
for f in "$T_TMP/k2.partial"/fourbit-layer-state-*.bin; do  # damage the data, not the header
    printf 'XXXX' | dd of="$f" bs=1 seek=$(($(stat -c %s "$f") - 8)) conv=notrunc 2>/dev/null
done
expect_rc 0 "--resume with damaged states" -- "$Q4" $K --resume $M "$T_TMP/k2"
expect_out "no usable layer state to resume from .*digest mismatch" "says why it starts over"
expect_rc 0 "still byte-identical" -- "$BIN/st-diff" -q "$T_TMP/k2" "$T_TMP/k0"
# a crash (SIGKILL: no handler runs) once layer 1 is done: the next layer's input is staged before
# its shards can finish (fb_tune_layer_end), so whatever the moment of the kill, --resume
# continues from staged state (before, a signal between a layer's last shard and the next
# layer's staging left nothing to resume from and the loop started again at layer 0)
rc=$(kill_after_layer1 "$T_TMP/k3" KILL)
[ "$rc" = 137 ] && ok || fail "killed run: exit $rc, want 137 (the run ended before the signal?)"
expect_rc 0 "--resume after SIGKILL" -- "$Q4" $K --resume $M "$T_TMP/k3"
expect_out "resuming the layer loop at layer [12] from its staged input" "resumes from staged state after a crash"
expect_rc 0 "resumed after SIGKILL == uninterrupted" -- "$BIN/st-diff" -q "$T_TMP/k3" "$T_TMP/k0"
# the second architecture (Qwen3-MoE fixture: random weights, hidden 128): tuned, valid, closer to
# the source than RTN on its calibration ids (no held-out text exists for this random model)
Q3=models/tiny-qwen3-moe
if [ -d $Q3 ]; then
    QI=tests/golden/qwen3-moe/quant/calib-ids.jsonl
    sed "s/block_sparse_moe/mlp/" "$T_TMP/ar.yaml" > "$T_TMP/q3a.yaml"
    sed "s/block_sparse_moe/mlp/" "$T_TMP/rtn.yaml" > "$T_TMP/q3r.yaml"
    expect_rc 0 "Qwen3-MoE AutoRound" -- "$Q4" -q --recipe "$T_TMP/q3a.yaml" --dataset $QI -t 2 $Q3 "$T_TMP/q3a"
    expect_rc 0 "Qwen3-MoE RTN" -- "$Q4" -q --recipe "$T_TMP/q3r.yaml" -t 2 $Q3 "$T_TMP/q3r"
    expect_rc 0 "Qwen3-MoE AutoRound validates" -- "$BIN/validate-ignore-list" "$T_TMP/q3a"
    q3kl() { "$BIN/ref-runner" --reference $Q3 --quantized "$1" --data $QI -t 2 2>&1 | sed -n 's/.*KL divergence *mean \([0-9.e-]*\).*/\1/p'; }
    k3r=$(q3kl "$T_TMP/q3r"); k3a=$(q3kl "$T_TMP/q3a")
    awk -v a="$k3a" -v r="$k3r" 'BEGIN { exit !(a > 0 && r > 0 && a < 0.5 * r) }' && ok || fail "Qwen3-MoE: AutoRound KL $k3a not below 0.5 x RTN's $k3r"
fi
# -v: the block is one unit, its loss reported once; with --expert-group the old units
sed 's/iters: 10/iters: 2/' "$T_TMP/ar.yaml" > "$T_TMP/ar2.yaml"
expect_rc 0 "-v joint" -- "$Q4" -v --recipe "$T_TMP/ar2.yaml" $D $M "$T_TMP/v1"
expect_out "layer 0 model.layers.0.self_attn.q_proj.weight +AutoRound block-output \(all its Linears jointly\) MSE" "one loss per block"
[ "$(grep -c 'AutoRound .*MSE' "$T_TMP/out")" = 4 ] && ok || fail "-v joint: $(grep -c 'AutoRound .*MSE' "$T_TMP/out") MSE lines, want 4 (one per layer)"
expect_rc 0 "-v grouped" -- "$Q4" -v --recipe "$T_TMP/ar2.yaml" $D --expert-group 4 $M "$T_TMP/v2"
expect_out "self_attn.o_proj.weight +AutoRound output MSE" "per-Linear attention units"
expect_out "AutoRound experts' block-output MSE" "grouped experts"
# determinism (same thread count)
expect_rc 0 "same run again" -- "$Q4" -q --recipe "$T_TMP/ar20.yaml" $D $M "$T_TMP/a4"
expect_rc 0 "deterministic" -- "$BIN/st-diff" -q "$T_TMP/a1" "$T_TMP/a4"
echo "t_autoround: KL on 8 x 128 held-out tokens: RTN $k_r / $k_r2 (auto_round), AutoRound $k_a / $k_a2, grouped $k_a3"
finish
