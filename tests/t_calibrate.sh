#!/bin/sh
# t_calibrate: the calibrate CLI on a random tiny checkpoint (written by
# `test_forward --write-fixture`, BF16 + one FP8 block-scaled tensor): usage errors (2), bad
# input (1, naming the line), sample selection (--dump-tokens, truncation, --skip-long, seeds),
# a full run (statistics file, --json summary), determinism; the embedded model when present.
. tests/lib.sh
CAL="$BIN/calibrate"
FX="$T_TMP/fx"
TOKJ=models/tiny-minimax-m2/tokenizer.json  # the fixture has no tokenizer; ids < 50 only
mkdir -p "$FX"
"$BUILD/tests/test_forward" --write-fixture "$FX" || { fail "fixture"; finish; exit 1; }

# dataset: 12 samples of 1..12 tokens (ids 1..), one blank line
i=1
while [ $i -le 12 ]; do
    ids=$(seq -s ', ' 1 $i)
    echo "{\"input_ids\": [$ids]}"
    [ $i = 6 ] && echo ""
    i=$((i + 1))
done > "$T_TMP/d.jsonl"

expect_rc 0 "--help" -- "$CAL" --help
expect_out "--seq-len" "--help lists options"
expect_rc 2 "no arguments" -- "$CAL"
expect_rc 2 "no output" -- "$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/d.jsonl"
expect_rc 2 "bad template" -- "$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/d.jsonl" -o "$T_TMP/s" --template llama
expect_rc 2 "bad samples" -- "$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/d.jsonl" -o "$T_TMP/s" --samples 0
expect_rc 1 "missing model" -- "$CAL" --model "$T_TMP/nope" --dataset "$T_TMP/d.jsonl" -o "$T_TMP/s"
expect_rc 1 "missing dataset" -- "$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/nope.jsonl" -o "$T_TMP/s"

# bad lines name the line
{ head -3 "$T_TMP/d.jsonl"; echo '{"input_ids": [1, 2,'; } > "$T_TMP/bad.jsonl"
expect_rc 1 "invalid JSON line" -- "$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/bad.jsonl" -o "$T_TMP/s" --samples 100
expect_out "bad.jsonl:4" "message names line 4"
echo '{"input_ids": [1, 999]}' > "$T_TMP/bad2.jsonl"
expect_rc 1 "id outside the vocabulary" -- "$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/bad2.jsonl" -o "$T_TMP/s"
expect_out "bad2.jsonl:1: .*999" "message names the line and the id"
echo '{"ids": [1]}' > "$T_TMP/bad3.jsonl"
expect_rc 1 "no known field" -- "$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/bad3.jsonl" -o "$T_TMP/s"

# sample selection
expect_rc 0 "dump tokens" -- "$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/d.jsonl" --samples 100 --seq-len 5 --dump-tokens "$T_TMP/tok.jsonl"
n=$(wc -l < "$T_TMP/tok.jsonl")
[ "$n" = 12 ] && ok || fail "dump: $n samples, want 12 (blank line skipped)"
long=$(grep -c '5, 6' "$T_TMP/tok.jsonl")
[ "$long" = 0 ] && ok || fail "truncation to --seq-len 5"
expect_rc 0 "skip long" -- "$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/d.jsonl" --samples 100 --seq-len 5 --skip-long --dump-tokens "$T_TMP/tok2.jsonl"
n=$(wc -l < "$T_TMP/tok2.jsonl")
[ "$n" = 5 ] && ok || fail "--skip-long: $n samples, want 5"
"$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/d.jsonl" --samples 4 --seed 1 --dump-tokens "$T_TMP/s1a" 2>/dev/null
"$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/d.jsonl" --samples 4 --seed 1 --dump-tokens "$T_TMP/s1b" 2>/dev/null
"$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/d.jsonl" --samples 4 --seed 2 --dump-tokens "$T_TMP/s2" 2>/dev/null
cmp -s "$T_TMP/s1a" "$T_TMP/s1b" && ok || fail "same seed, same samples"
cmp -s "$T_TMP/s1a" "$T_TMP/s2" && fail "different seeds, same samples" || ok

# full run
# pre-tokenized records need no tokenizer (the fixture has none); a text record does, and the
# error names the tokenizer and the record
expect_rc 0 "input_ids without a tokenizer" -- "$CAL" --model "$FX" --dataset "$T_TMP/d.jsonl" --samples 100 --no-shuffle --dump-tokens "$T_TMP/notok.jsonl"
[ "$(wc -l < "$T_TMP/notok.jsonl")" = 12 ] && ok || fail "input_ids without a tokenizer: 12 samples"
{ cat "$T_TMP/d.jsonl"; echo '{"text": "needs a tokenizer"}'; } > "$T_TMP/dt.jsonl"
expect_rc 1 "missing tokenizer" -- "$CAL" --model "$FX" --dataset "$T_TMP/dt.jsonl" -o "$T_TMP/s" --samples 100
expect_out "dt.jsonl:14: .*tokenizer.json: cannot open" "message names the record and the tokenizer"
printf '{"input_ids": [1, 2, 999999]}\n' > "$T_TMP/big.jsonl"
expect_rc 1 "id beyond vocab_size without a tokenizer" -- "$CAL" --model "$FX" --dataset "$T_TMP/big.jsonl" --dump-tokens "$T_TMP/x"
expect_out "big.jsonl:1: token id 999999 .*vocabulary" "message names the line and the vocabulary"
# template choice: usage errors, a template file that does not parse (1, naming file:line)
expect_rc 2 "--chat-template with --template NAME" -- "$CAL" --model "$FX" --dataset "$T_TMP/d.jsonl" --dump-tokens "$T_TMP/x" --template chatml --chat-template "$T_TMP/t.jinja"
printf 'ok\n{%% include "x" %%}\n' > "$T_TMP/bad.jinja"
expect_rc 1 "unsupported template construct" -- "$CAL" --model "$FX" --dataset "$T_TMP/d.jsonl" --dump-tokens "$T_TMP/x" --chat-template "$T_TMP/bad.jinja"
expect_out "bad.jinja:2: unsupported statement 'include'" "message names the template line"
expect_rc 0 "calibrate run" -- "$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/d.jsonl" -o "$T_TMP/stats.safetensors" --samples 10 --json
expect_out '"experts_never_routed"' "json summary"
expect_out '"tokens": [0-9]+' "json token count"
[ -s "$T_TMP/stats.safetensors" ] && ok || fail "statistics file written"
grep -q 'calibration-stats' "$T_TMP/stats.safetensors" && ok || fail "statistics metadata"
grep -q 'block_sparse_moe.experts.7.w2.input_absmax' "$T_TMP/stats.safetensors" && ok || fail "expert absmax names"
"$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/d.jsonl" -o "$T_TMP/stats2.safetensors" --samples 10 --quiet --threads 1 --expert-group 3
cmp -s "$T_TMP/stats.safetensors" "$T_TMP/stats2.safetensors" && ok || fail "statistics differ between runs (threads/expert groups)"
expect_rc 0 "routed-only run" -- "$CAL" --model "$FX" --tokenizer "$TOKJ" --dataset "$T_TMP/d.jsonl" -o "$T_TMP/stats3.safetensors" --samples 10 --routed-only --quiet
grep -q '"routed"' "$T_TMP/stats3.safetensors" && ok || fail "routed-only mode recorded"

# the embedded model, when its weights are there
if [ -f models/tiny-minimax-m2/config.json ] && ls models/tiny-minimax-m2/*.safetensors >/dev/null 2>&1; then
    V=$(sed -n 's/.*"vocab_size": *\([0-9]*\).*/\1/p' models/tiny-minimax-m2/config.json)
    i=0
    while [ $i -lt 4 ]; do
        echo "{\"input_ids\": [$(seq -s ', ' $((i * 40 + 1)) $((i * 40 + 64)))]}"
        i=$((i + 1))
    done > "$T_TMP/m.jsonl"
    expect_rc 0 "embedded model" -- "$CAL" --model models/tiny-minimax-m2 --dataset "$T_TMP/m.jsonl" -o "$T_TMP/tiny.safetensors" --json
    expect_out '"layers": [1-9]' "embedded model summary"
    [ -n "$V" ] && ok
    # chat records through the MiniMax-M2 template and the tokenizer, two files
    cat > "$T_TMP/c1.jsonl" <<'J'
{"messages": [{"role": "user", "content": "What does chomp do in Perl?"}, {"role": "assistant", "content": "It removes the trailing newline."}]}
{"text": "def f(x):\n\treturn x ** 2\n"}
J
    cat > "$T_TMP/c2.jsonl" <<'J'
{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
J
    expect_rc 0 "chat records" -- "$CAL" --model models/tiny-minimax-m2 --dataset "$T_TMP/c1.jsonl,$T_TMP/c2.jsonl" --dump-tokens "$T_TMP/ct.jsonl"
    n=$(wc -l < "$T_TMP/ct.jsonl")
    [ "$n" = 3 ] && ok || fail "chat records: $n samples, want 3"
    # the MiniMax template starts with its BOS ]~!b[ (id 4091 in the tiny tokenizer)
    grep -q '"input_ids": \[4091, ' "$T_TMP/ct.jsonl" && ok || fail "chat rendering starts with ]~!b["
    expect_rc 0 "chat calibration" -- "$CAL" --model models/tiny-minimax-m2 --dataset "$T_TMP/c1.jsonl,$T_TMP/c2.jsonl" -o "$T_TMP/chat.safetensors" --quiet
    grep -q 'models/tiny-minimax-m2/chat_template.jinja' "$T_TMP/chat.safetensors" && ok || fail "provenance names the checkpoint's template"
    # the checkpoint's own template by default: the ids transformers' apply_chat_template
    # (add_generation_prompt=False) + encode gives (scripts/gen-template-golden.py)
    G=tests/golden/templates
    expect_rc 0 "own template" -- "$CAL" --model models/tiny-minimax-m2 --dataset $G/own-template.jsonl --no-shuffle --samples 1000 --seq-len 100000 --dump-tokens "$T_TMP/own.jsonl"
    cmp -s "$T_TMP/own.jsonl" $G/own-template.ids.jsonl && ok || fail "calibrate --dump-tokens differs from apply_chat_template + encode"
    # the same template given as a file
    expect_rc 0 "--chat-template" -- "$CAL" --model models/tiny-minimax-m2 --dataset $G/own-template.jsonl --no-shuffle --samples 1000 --seq-len 100000 --chat-template models/tiny-minimax-m2/chat_template.jinja --dump-tokens "$T_TMP/own2.jsonl"
    cmp -s "$T_TMP/own2.jsonl" $G/own-template.ids.jsonl && ok || fail "--chat-template FILE differs"
    # the built-in port renders this checkpoint's <think> turns differently (the reason for auto)
    expect_rc 0 "built-in template" -- "$CAL" --model models/tiny-minimax-m2 --dataset $G/own-template.jsonl --no-shuffle --samples 1000 --seq-len 100000 --template minimax-m2 --dump-tokens "$T_TMP/own3.jsonl"
    cmp -s "$T_TMP/own3.jsonl" $G/own-template.ids.jsonl && fail "built-in minimax-m2 equals the checkpoint's template here" || ok
fi
finish
