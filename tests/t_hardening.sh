#!/bin/sh
# t_hardening: issue 12, hostile and mistaken inputs that used to run away or exit 0 with a
# wrong result. Every case runs under a time limit and (where memory was the failure) an
# address-space limit, so that the old behaviour fails the test instead of hanging it.
. tests/lib.sh
M=models/tiny-minimax-m2
VAL="$BIN/validate-ignore-list"
# run_limited SECONDS KIB cmd...: the command under `timeout` and `ulimit -v`
run_limited() {
    s=$1; kb=$2; shift 2
    ( ulimit -v "$kb" 2>/dev/null; exec timeout -k 2 "$s" "$@" )
}
# ulimit -v and ASan do not mix (ASan reserves terabytes of address space): the memory bound
# is only applied to the plain build.
case "$BUILD" in *san*) MEM=unlimited ;; *) MEM=2000000 ;; esac

# ---- items 3 and 4: YAML alias expansion and deep nesting (recipe.c) ----
{
    echo "modifiers:"
    echo "  QuantizationModifier:"
    echo "    scheme: NVFP4"
    echo "    targets: [Linear]"
    echo "    args:"
    echo "      a0: &a0 [x, x, x, x, x, x, x, x, x, x]"
    i=1
    while [ $i -le 9 ]; do
        p=$((i - 1))
        echo "      a$i: &a$i [*a$p, *a$p, *a$p, *a$p, *a$p, *a$p, *a$p, *a$p, *a$p, *a$p]"
        i=$((i + 1))
    done
} > "$T_TMP/laughs.yaml"
expect_rc 1 "alias bomb refused" -- run_limited 20 "$MEM" "$VAL" --recipe "$T_TMP/laughs.yaml" "$M"
expect_out "laughs.yaml:[0-9]+: .*more than 100000 YAML nodes" "alias bomb: message names the file, line and limit"

awk 'BEGIN { for (i = 0; i < 200000; i++) printf "["; printf "\n" }' > "$T_TMP/deep.yaml"
expect_rc 1 "200k nested [ refused" -- run_limited 20 "$MEM" "$VAL" --recipe "$T_TMP/deep.yaml" "$M"
expect_out "deep.yaml:1: .*nesting too deep" "deep nesting: message names the file and line"

# ---- item 1: a regex that PCRE2 gives up on is an error, not "no match" (match.c) ----
sed "s/ignore: \[lm_head, /ignore: [lm_head, 're:(?:.|.){0,26}Z|.*o_proj\$', /" recipes/minimax-w4a16.yaml > "$T_TMP/rx.yaml"
grep -q "0,26" "$T_TMP/rx.yaml" || fail "rx.yaml not made"
expect_rc 1 "catastrophic regex: plan refused" -- run_limited 30 "$MEM" "$BIN/w4a16-quantize" --recipe "$T_TMP/rx.yaml" --dry-run "$M" "$T_TMP/rx-out"
expect_out "regex '.*0,26.*' could not be matched against 'model\.[a-z_.0-9]+': match limit" "message names the pattern, the name and the limit"
expect_rc 1 "catastrophic regex: validator refuses" -- run_limited 30 "$MEM" "$VAL" --recipe "$T_TMP/rx.yaml" "$M"
expect_out "regex-limit|match limit" "validator names the limit"

# ---- item 2 (and issue 17 item 14): outputs never overwrite inputs; calibrate -o needs --force ----
CAL="$BIN/calibrate"
printf '{"text": "hello world, a short sample"}\n{"text": "another one"}\n' > "$T_TMP/d.jsonl"
SH="$M/model-00001-of-00002.safetensors"
sum0=$(cksum < "$SH")
expect_rc 1 "calibrate -o onto a model shard" -- "$CAL" --model "$M" --dataset "$T_TMP/d.jsonl" -o "$SH" --force --samples 1 --layers 1 -q
expect_out "-o .*model-00001-of-00002.safetensors (is|lies inside) the input" "message names the output and the input"
[ "$(cksum < "$SH")" = "$sum0" ] && ok || fail "the shard was modified"
ln -s "$(pwd)/$M" "$T_TMP/mlink"
expect_rc 1 "calibrate -o into the model through a symlink" -- "$CAL" --model "$M" --dataset "$T_TMP/d.jsonl" -o "$T_TMP/mlink/stats.safetensors" --samples 1 --layers 1 -q
expect_out "lies inside the input" "symlink resolved"
[ ! -e "$M/stats.safetensors" ] && ok || { fail "wrote into the model"; rm -f "$M/stats.safetensors"; }
expect_rc 1 "--dump-tokens onto the dataset" -- "$CAL" --model "$M" --dataset "$T_TMP/d.jsonl" --dump-tokens "$T_TMP/d.jsonl" -q
expect_out "--dump-tokens .*d.jsonl is the input" "dump: message"
grep -q "hello world" "$T_TMP/d.jsonl" && ok || fail "the dataset was overwritten"
expect_rc 1 "--dump-tokens onto the tokenizer (hard link)" -- sh -c "ln '$T_TMP/d.jsonl' '$T_TMP/hl.jsonl' && exec '$CAL' --model '$M' --dataset '$T_TMP/d.jsonl' --dump-tokens '$T_TMP/hl.jsonl' -q --force"
expect_out "same file as the input" "hard link: message"
echo keep > "$T_TMP/old.st"
expect_rc 1 "calibrate -o onto an existing file without --force" -- "$CAL" --model "$M" --dataset "$T_TMP/d.jsonl" -o "$T_TMP/old.st" --samples 1 --layers 1 -q
expect_out "exists \(use --force" "message says --force"
[ "$(cat "$T_TMP/old.st")" = keep ] && ok || fail "existing -o file replaced without --force"
expect_rc 0 "calibrate -o with --force replaces it" -- "$CAL" --model "$M" --dataset "$T_TMP/d.jsonl" -o "$T_TMP/old.st" --force --samples 1 --layers 1 -q
[ "$(cat "$T_TMP/old.st")" != keep ] && ok || fail "--force did not replace the file"
expect_rc 1 "fp8-dequant DST inside SRC" -- "$BIN/fp8-dequant" -q "$M" "$M/out"
expect_out "DST .*lies inside the input" "fp8-dequant: message"
[ ! -e "$M/out" ] && [ ! -e "$M/out.partial" ] && ok || fail "fp8-dequant wrote into SRC"
mkdir -p "$T_TMP/outer" && cp -r "$M" "$T_TMP/outer/m"
expect_rc 1 "fp8-dequant SRC inside DST (--force would delete it)" -- "$BIN/fp8-dequant" -q --force "$T_TMP/outer/m" "$T_TMP/outer"
expect_out "input .* lies inside DST" "SRC inside DST: message"
[ -f "$T_TMP/outer/m/config.json" ] && ok || fail "SRC deleted"
expect_rc 1 "w4a16-quantize DST = recipe" -- "$BIN/w4a16-quantize" -q --force --recipe "$T_TMP/rx.yaml" "$M" "$T_TMP/rx.yaml"
expect_out "DST .*rx.yaml is the input" "quantize: recipe named"

# ---- item 6: a FIFO in place of a shard is refused, not waited on (safetensors.c) ----
mkdir -p "$T_TMP/fifo" && cp "$M"/*.json "$M"/model-00001-of-00002.safetensors "$T_TMP/fifo/"
mkfifo "$T_TMP/fifo/model-00002-of-00002.safetensors"
expect_rc 1 "fp8-dequant with a FIFO shard" -- run_limited 20 "$MEM" "$BIN/fp8-dequant" -q "$T_TMP/fifo" "$T_TMP/fifo-out"
expect_out "model-00002-of-00002.safetensors: not a regular file \(a FIFO\)" "FIFO named"
expect_rc 1 "validate-ignore-list with a FIFO shard" -- run_limited 20 "$MEM" "$VAL" "$T_TMP/fifo"

# ---- item 8: a second run on the same DST is refused while the first holds DST.lock ----
if command -v flock >/dev/null; then
    echo 4242 > "$T_TMP/locked.lock"
    flock "$T_TMP/locked.lock" sleep 3 & holder=$!  # flock(1)'s child holds it: let it end
    sleep 0.3
    expect_rc 1 "second writer on a locked DST" -- run_limited 20 "$MEM" "$BIN/fp8-dequant" -q "$M" "$T_TMP/locked"
    expect_out "locked.partial is in use by another fourbit run \(process 4242" "message names the other process"
    [ ! -e "$T_TMP/locked" ] && ok || fail "the second run wrote DST"
    wait "$holder" 2>/dev/null
    expect_rc 0 "after the holder exits the run goes through" -- "$BIN/fp8-dequant" -q "$M" "$T_TMP/locked"
    [ ! -e "$T_TMP/locked.lock" ] && ok || fail "lock file left behind after a finished run"
else
    fail "flock(1) (util-linux) is missing: cannot test the DST lock"
fi

# ---- item 11: the directory is fsync'ed after renaming the output into place ----
if command -v strace >/dev/null; then
    strace -f -y -qq -e trace=rename,renameat,renameat2,fsync -o "$T_TMP/trace" "$BIN/fp8-dequant" -q "$M" "$T_TMP/synced" >/dev/null 2>&1
    # the last rename is synced.partial -> synced; a later fsync must be on their directory
    awk -v d="$(cd "$T_TMP" && pwd -P)" '
        /rename.*synced\.partial/ { seen = 1; next }
        seen && /fsync\(/ && index($0, "<" d ">") { ok = 1 }
        END { exit ok ? 0 : 1 }' "$T_TMP/trace" && ok || { fail "no fsync of the parent directory after the final rename"; tail -5 "$T_TMP/trace" >&2; }
else
    fail "strace is missing (scripts/install-deps.sh installs it): cannot test directory fsync"
fi

# ---- item 10: JSONL line limit, and only what --seq-len can use is tokenized (dataset.c) ----
awk 'BEGIN { printf "{\"text\": \""; for (i = 0; i < 1700000; i++) printf "lorem ipsum dolor sit amet, consectetur adipiscing elit "; printf "\"}\n" }' > "$T_TMP/huge.jsonl"
expect_rc 1 "a 95 MB JSONL line is refused" -- run_limited 20 "$MEM" "$CAL" --model "$M" --dataset "$T_TMP/huge.jsonl" --seq-len 64 --dump-tokens "$T_TMP/huge-ids.jsonl" -q
expect_out "huge.jsonl:1: line longer than 32 MiB" "line limit named with file:line"
# 2.8 MB of text: with --seq-len 64 only a prefix is tokenized, and its ids are the first ids
# of the whole text's encoding.
awk 'BEGIN { printf "{\"text\": \""; for (i = 0; i < 50000; i++) printf "lorem ipsum dolor sit amet, consectetur adipiscing elit "; printf "\"}\n" }' > "$T_TMP/long.jsonl"
expect_rc 0 "long record, full encoding" -- "$CAL" --model "$M" --dataset "$T_TMP/long.jsonl" --seq-len 16000000 --dump-tokens "$T_TMP/full.jsonl" -q
expect_rc 0 "long record, --seq-len 64" -- run_limited 20 "$MEM" "$CAL" --model "$M" --dataset "$T_TMP/long.jsonl" --seq-len 64 --dump-tokens "$T_TMP/cut.jsonl" -q
full64=$(sed 's/^{"input_ids": \[//; s/\]}$//' "$T_TMP/full.jsonl" | tr -d ' ' | cut -d, -f1-64)
cut64=$(sed 's/^{"input_ids": \[//; s/\]}$//' "$T_TMP/cut.jsonl" | tr -d ' ')
[ -n "$cut64" ] && [ "$full64" = "$cut64" ] && ok || fail "budgeted ids differ from the first 64 of the full encoding"
for L in 1 7 300 4097; do  # cuts at several places of the text
    "$CAL" --model "$M" --dataset "$T_TMP/long.jsonl" --seq-len $L --dump-tokens "$T_TMP/c$L.jsonl" -q
    a=$(sed 's/^{"input_ids": \[//; s/\]}$//' "$T_TMP/full.jsonl" | tr -d ' ' | cut -d, -f1-$L)
    b=$(sed 's/^{"input_ids": \[//; s/\]}$//' "$T_TMP/c$L.jsonl" | tr -d ' ')
    [ "$a" = "$b" ] && ok || fail "--seq-len $L: ids differ from the full encoding's prefix"
done

# ---- item 5: SIGINT stops a long run promptly with exit 130 and writes nothing (cancel.c) ----
awk 'BEGIN { for (i = 0; i < 400; i++) { printf "{\"text\": \""; for (k = 0; k < 30; k++) printf "word%d more text here ", (i * k) % 97; printf "\"}\n" } }' > "$T_TMP/many.jsonl"
# The SIGINT is sent once calibrate holds the model shards open (it has installed its handler by then)
# (a fixed delay raced with a slow start, e.g. under qemu-user); at most 60 s.
sigint_when_reading() {  # cmd...: runs it, SIGINT once it holds a model shard open, output in $T_TMP/out
    "$@" >"$T_TMP/out" 2>&1 &
    p=$!
    n=0
    while [ $n -lt 600 ] && kill -0 $p 2>/dev/null; do
        ls -l /proc/$p/fd 2>/dev/null | grep -q "model-0000" && break
        sleep 0.1
        n=$((n + 1))
    done
    sleep 0.3
    kill -INT $p 2>/dev/null
    wait $p
}
expect_rc 130 "calibrate interrupted by SIGINT" -- sigint_when_reading "$CAL" --model "$M" --dataset "$T_TMP/many.jsonl" --samples 400 --seq-len 256 -o "$T_TMP/int.st" -q --threads 1
expect_out "interrupted" "says it was interrupted"
[ ! -e "$T_TMP/int.st" ] && [ ! -e "$T_TMP/int.st.tmp" ] && ok || fail "an interrupted calibrate left a file"
# a ^C while writing: exit 130, DST not created, DST.partial kept; --resume completes it, byte
# for byte what an uninterrupted run writes (SIGINT raised by the writer's fault injection
# at its 3rd payload write)
W4="$BIN/w4a16-quantize"
expect_rc 0 "uninterrupted quantize" -- "$W4" -q --threads 1 --max-shard-size 1MB --recipe recipes/minimax-w4a16.yaml "$M" "$T_TMP/q-ref"
expect_rc 130 "SIGINT while writing" -- env FOURBIT_FAULT_KILL_AFTER_WRITES=3 FOURBIT_FAULT_SIGNAL=2 "$W4" --threads 1 --max-shard-size 1MB --recipe recipes/minimax-w4a16.yaml "$M" "$T_TMP/q-int"
expect_out "interrupted; finished shards are kept in .*q-int.partial" "says what is kept"
[ ! -e "$T_TMP/q-int" ] && [ -d "$T_TMP/q-int.partial" ] && [ ! -e "$T_TMP/q-int.lock" ] && ok || fail "after SIGINT: want only q-int.partial"
expect_rc 0 "--resume after SIGINT" -- "$W4" -q --resume --threads 1 --max-shard-size 1MB --recipe recipes/minimax-w4a16.yaml "$M" "$T_TMP/q-int"
# (README.md, the model card, carries the date and wall time of its run: not compared)
diff -r -x README.md "$T_TMP/q-ref" "$T_TMP/q-int" >/dev/null && ok || fail "resumed output differs from the uninterrupted run"

finish
