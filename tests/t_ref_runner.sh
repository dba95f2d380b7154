#!/bin/sh
# t_ref_runner: the ref-runner CLI on the embedded model against quantized versions of it made
# here with nvfp4-quantize (NVFP4A16, and NVFP4 W4A4 from `calibrate` statistics) and
# w4a16-quantize (compressed-tensors and AutoRound): usage errors (2), bad input (1), the model
# against itself (KL exactly 0, top-1 100%), each quantized model (small positive KL, high
# top-1, cosines near 1), thresholds from the command line and from a recipe (exit 1 when
# exceeded), W4A4 activation emulation (larger KL than weight-only; refused without input
# scales), --device cuda without a GPU.
. tests/lib.sh
RR="$BIN/ref-runner"
M=models/tiny-minimax-m2
if ! ls $M/*.safetensors >/dev/null 2>&1; then
    echo "t_ref_runner: $M absent, skipped"; ok; finish; exit $?
fi
D=tests/golden/model-quant/calib-ids.jsonl   # held-out-style text ids, 8 samples
cat > "$T_TMP/text.jsonl" <<'J'
{"text": "The chomp function removes the trailing newline from a string, and returns the number of characters removed."}
{"messages": [{"role": "user", "content": "How do I open a file for reading in Python?"}, {"role": "assistant", "content": "Use open(path) in a with statement: with open(path) as f: data = f.read()"}]}
J

# json FIELD: a number or boolean from the last command's --json output
json() { sed -n "s/^  \"$1\": \\([^,]*\\),\\{0,1\\}$/\\1/p" "$T_TMP/out" | head -1; }
# awk_check EXPR DESC: evaluates an awk condition on numbers substituted into EXPR
awk_check() { if awk "BEGIN { exit !($1) }"; then ok; else fail "$2 ($1)"; fi; }

expect_rc 0 "--help" -- "$RR" --help
expect_out "--emulate-w4a4" "--help lists options"
expect_rc 2 "no arguments" -- "$RR"
expect_rc 2 "no data" -- "$RR" -r $M --quantized $M
expect_rc 2 "bad device" -- "$RR" -r $M --quantized $M -d $D --device tpu
expect_rc 2 "bad --min-top1" -- "$RR" -r $M --quantized $M -d $D --min-top1 2
expect_rc 1 "missing quantized" -- "$RR" -r $M --quantized "$T_TMP/nope" -d $D --device cpu
expect_out "nope" "message names the path"
expect_rc 1 "missing data" -- "$RR" -r $M --quantized $M -d "$T_TMP/nope.jsonl" --device cpu
echo '{"input_ids": [1, 5000]}' > "$T_TMP/bad.jsonl"
expect_rc 1 "id outside the vocabulary" -- "$RR" -r $M --quantized $M -d "$T_TMP/bad.jsonl" --device cpu
expect_out "bad.jsonl:1" "message names the line"

# the model against itself
expect_rc 0 "self" -- "$RR" -r $M --quantized $M -d $D --device cpu --json --max-kld 0 --min-top1 1
[ "$(json kld_mean)" = "0.0" ] && [ "$(json kld_max)" = "0.0" ] && ok || fail "self: KL $(json kld_mean) max $(json kld_max), want exactly 0"
[ "$(json top1)" = "1.0" ] && ok || fail "self: top-1 $(json top1), want 1"
[ "$(json pass)" = "true" ] && ok || fail "self: pass"
expect_rc 0 "text and chat records, table" -- "$RR" -r $M --quantized $M -d "$T_TMP/text.jsonl" --device cpu
expect_out "top-1 agreement  100.00%" "table"

# quantized versions
"$BIN/nvfp4-quantize" -q --recipe recipes/minimax-nvfp4a16.yaml $M "$T_TMP/nvfp4a16" || fail "nvfp4a16 quantize"
"$BIN/w4a16-quantize" -q --recipe recipes/minimax-w4a16.yaml $M "$T_TMP/w4a16" || fail "w4a16 quantize"
"$BIN/w4a16-quantize" -q --recipe recipes/minimax-w4a16.yaml --format auto_round $M "$T_TMP/ar" || fail "auto_round quantize"
"$BIN/calibrate" -q --model $M --dataset $D -o "$T_TMP/calib.safetensors" || fail "calibrate"
"$BIN/nvfp4-quantize" -q --recipe recipes/minimax.yaml --calib "$T_TMP/calib.safetensors" $M "$T_TMP/nvfp4" || fail "nvfp4 quantize"
for q in nvfp4a16:nvfp4a16 w4a16:w4a16 ar:auto_round nvfp4:nvfp4; do
    dir=${q%%:*}; fmt=${q#*:}
    expect_rc 0 "$dir report" -- "$RR" -r $M --quantized "$T_TMP/$dir" -d $D --device cpu --json
    [ "$(json format)" = "\"$fmt\"" ] && ok || fail "$dir: format $(json format)"
    kl=$(json kld_mean); t1=$(json top1); p99=$(json kld_p99); mx=$(json kld_max); med=$(json kld_median)
    awk_check "$kl > 0 && $kl < 0.5" "$dir: mean KL $kl small and positive"
    awk_check "$med <= $p99 && $p99 <= $mx && $kl <= $mx" "$dir: median <= p99 <= max"
    awk_check "$t1 >= 0.6 && $t1 < 1.0001" "$dir: top-1 $t1 high"
    pr=$(json ppl_reference); pq=$(json ppl_quantized)
    awk_check "$pq > 0.8 * $pr && $pq < 1.5 * $pr" "$dir: perplexity $pq near the reference's $pr"
    cmin=$(sed -n 's/.*"cos_mean": \([0-9.]*\).*/\1/p' "$T_TMP/out" | sort -n | head -1)
    [ -z "$cmin" ] && cmin=$(grep -A2 '"cos_mean"' "$T_TMP/out" | sed -n 's/.*"cos_mean": \([0-9.e-]*\),*/\1/p' | sort -n | head -1)
    awk_check "$cmin > 0.95 && $cmin < 1" "$dir: per-layer cosine $cmin near 1"
done
eval "$(sed -n 's/^  "ppl_reference": \([^,]*\),$/pr_last=\1/p' "$T_TMP/out")"

# thresholds
expect_rc 1 "--max-kld exceeded" -- "$RR" -r $M --quantized "$T_TMP/w4a16" -d $D --device cpu --max-kld 1e-9
expect_out "exceeds --max-kld" "message names the threshold"
expect_rc 1 "--min-top1 not met" -- "$RR" -r $M --quantized "$T_TMP/w4a16" -d $D --device cpu --min-top1 1
expect_out "below --min-top1" "message names the threshold"
expect_rc 0 "within thresholds" -- "$RR" -r $M --quantized "$T_TMP/w4a16" -d $D --device cpu --max-kld 10 --min-top1 0.1
expect_out "check: mean KL .* ok" "table shows the check"
sed 's/max_kld: .*/max_kld: 0.000001/' recipes/minimax-w4a16.yaml > "$T_TMP/strict.yaml"
grep -q 'max_kld: 0.000001' "$T_TMP/strict.yaml" || fail "strict recipe"
expect_rc 1 "recipe threshold" -- "$RR" -r $M --quantized "$T_TMP/w4a16" -d $D --device cpu --recipe "$T_TMP/strict.yaml"
expect_rc 0 "command line overrides the recipe" -- "$RR" -r $M --quantized "$T_TMP/w4a16" -d $D --device cpu --recipe "$T_TMP/strict.yaml" --max-kld 10 --min-top1 0
expect_rc 1 "bad recipe" -- "$RR" -r $M --quantized "$T_TMP/w4a16" -d $D --device cpu --recipe "$T_TMP/nope.yaml"

# W4A4 activation emulation: the default for a W4A4 checkpoint (issue 17 item 2), and said so
expect_rc 0 "nvfp4 --no-emulate-w4a4" -- "$RR" -r $M --quantized "$T_TMP/nvfp4" -d $D --device cpu --json --no-emulate-w4a4
kw=$(json kld_mean)
[ "$(json emulate_w4a4)" = false ] && [ "$(json view)" = '"weight-only"' ] && ok || fail "--no-emulate-w4a4: emulate $(json emulate_w4a4) view $(json view)"
expect_rc 0 "nvfp4 --emulate-w4a4" -- "$RR" -r $M --quantized "$T_TMP/nvfp4" -d $D --device cpu --json --emulate-w4a4
ke=$(json kld_mean); nb=$(json w4a4_blocks_emulated)
awk_check "$ke > $kw && $ke < 1" "W4A4 emulation: KL $ke above weight-only $kw"
awk_check "$nb > 0" "W4A4 blocks emulated: $nb"
expect_rc 0 "nvfp4 by default" -- "$RR" -r $M --quantized "$T_TMP/nvfp4" -d $D --device cpu --json
[ "$(json kld_mean)" = "$ke" ] && [ "$(json emulate_w4a4)" = true ] && [ "$(json view)" = '"w4a4"' ] && ok ||
    fail "W4A4 checkpoint not emulated by default: KL $(json kld_mean) (emulated $ke), emulate $(json emulate_w4a4)"
expect_rc 0 "nvfp4 table" -- "$RR" -r $M --quantized "$T_TMP/nvfp4" -d $D --device cpu
expect_out "activations: W4A4 emulated.*--no-emulate-w4a4" "the table says W4A4 is emulated and how to turn it off"
expect_rc 0 "nvfp4 table, weight-only" -- "$RR" -r $M --quantized "$T_TMP/nvfp4" -d $D --device cpu --no-emulate-w4a4
expect_out "activations: bf16 .*Hopper" "the table says weight-only"
expect_rc 2 "both emulation flags" -- "$RR" -r $M --quantized "$T_TMP/nvfp4" -d $D --emulate-w4a4 --no-emulate-w4a4
expect_rc 0 "nvfp4a16 is not emulated" -- "$RR" -r $M --quantized "$T_TMP/nvfp4a16" -d $D --device cpu --json
[ "$(json emulate_w4a4)" = false ] && ok || fail "nvfp4a16 emulated"

# swapped arguments (item 8) and -q meaning --quiet as in every other tool (item 12)
expect_rc 1 "quantized checkpoint as --reference" -- "$RR" -r "$T_TMP/nvfp4" --quantized $M -d $D --device cpu
expect_out "reference is a quantized checkpoint \(nvfp4\).*swapped" "message says the arguments look swapped"
expect_rc 0 "-q is --quiet" -- "$RR" -q -r $M --quantized $M -d $D --device cpu
[ -s "$T_TMP/out" ] && fail "-q printed: $(head -3 "$T_TMP/out")" || ok

# --card: the measured table appended to the model card (issue 14 part 3)
cp "$T_TMP/nvfp4/README.md" "$T_TMP/card-before.md"
# (the tiny model misses minimax.yaml's thresholds: exit 1, and the card says FAIL)
expect_rc 1 "--card" -- "$RR" -r $M --quantized "$T_TMP/nvfp4" -d $D --device cpu --card "$T_TMP/nvfp4" --recipe recipes/minimax.yaml
grep -q "^## Measured quality (ref-runner)" "$T_TMP/nvfp4/README.md" && grep -q "KL divergence mean" "$T_TMP/nvfp4/README.md" &&
    grep -q "W4A4-emulated" "$T_TMP/nvfp4/README.md" && grep -q "check top-1 >= 0.9 | FAIL" "$T_TMP/nvfp4/README.md" &&
    head -c "$(wc -c < "$T_TMP/card-before.md")" "$T_TMP/nvfp4/README.md" | cmp -s - "$T_TMP/card-before.md" && ok ||
    fail "--card: table not appended after the card"
"$RR" -q -r $M --quantized "$T_TMP/nvfp4" -d $D --device cpu --card "$T_TMP/nvfp4" --no-emulate-w4a4 >/dev/null 2>&1
[ "$(grep -c '^## Measured quality' "$T_TMP/nvfp4/README.md")" = 1 ] && grep -q "weight-only" "$T_TMP/nvfp4/README.md" && ok ||
    fail "--card twice: one table, the latest"
"$BIN/validate-ignore-list" "$T_TMP/nvfp4" >/dev/null 2>&1 && ok || fail "the card edit leaves the checkpoint valid (README.md is not in the manifest)"
echo "# my own card" > "$T_TMP/own.md"; mkdir -p "$T_TMP/own"; cp "$T_TMP/own.md" "$T_TMP/own/README.md"
expect_rc 1 "--card on a card fourbit did not write" -- "$RR" -r $M --quantized "$T_TMP/nvfp4" -d $D --device cpu --card "$T_TMP/own"
expect_out "not a model card written by fourbit" "message"
cmp -s "$T_TMP/own.md" "$T_TMP/own/README.md" && ok || fail "a foreign card was edited"
expect_rc 1 "--emulate-w4a4 without input scales" -- "$RR" -r $M --quantized "$T_TMP/nvfp4a16" -d $D --device cpu --emulate-w4a4
expect_out "input_global_scale" "message says why"

# --layers: hidden states only
expect_rc 0 "--layers 2" -- "$RR" -r $M --quantized "$T_TMP/nvfp4a16" -d $D --device cpu --json --layers 2
[ "$(json layers)" = 2 ] && [ "$(json scored)" = 0 ] && ok || fail "--layers 2: $(json layers) layers, $(json scored) scored"

# CUDA: a clear refusal where there is no GPU (or no CUDA build); agreement where there is one
if "$RR" -r $M --quantized $M -d $D --device cuda --json > "$T_TMP/out" 2>&1; then
    [ "$(json kld_mean)" = "0.0" ] && ok || fail "cuda self: KL $(json kld_mean)"
    expect_rc 0 "cuda nvfp4a16" -- "$RR" -r $M --quantized "$T_TMP/nvfp4a16" -d $D --device cuda --cuda-f32 --json
    awk_check "$(json kld_mean) > 0 && $(json kld_mean) < 0.5" "cuda nvfp4a16 KL $(json kld_mean)"
else
    grep -Eq "no CUDA|CUDA device|without" "$T_TMP/out" && ok || { fail "--device cuda without a GPU: unclear message"; cat "$T_TMP/out" >&2; }
fi
finish
