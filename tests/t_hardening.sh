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

finish
