# tests/lib.sh: helpers for shell tests (tests/t_*.sh). Source it; call ok/fail/expect_rc;
# end with `finish`, which prints "<name>: N passed, N failed" and sets the exit status.
: "${BUILD:=build}"
BIN="$BUILD/bin"
T_PASS=0; T_FAIL=0
T_NAME=$(basename "$0")
T_TMP=$(mktemp -d "${TMPDIR:-/tmp}/fourbit-test.XXXXXX")
trap 'rm -rf "$T_TMP"' EXIT
ok()   { T_PASS=$((T_PASS + 1)); }
fail() { T_FAIL=$((T_FAIL + 1)); echo "FAIL $T_NAME: $*" >&2; }
# expect_rc WANT DESCRIPTION -- command...: runs it, output in $T_TMP/out, checks the exit code
expect_rc() {
    want=$1; desc=$2; shift 3
    "$@" >"$T_TMP/out" 2>&1; rc=$?
    if [ "$rc" = "$want" ]; then ok; else fail "$desc: exit $rc, want $want"; sed 's/^/    | /' "$T_TMP/out" | head -20 >&2; fi
}
# expect_out PATTERN DESCRIPTION: the last command's output matches the grep -E pattern
expect_out() {
    if grep -Eq -- "$1" "$T_TMP/out"; then ok; else fail "$2: output lacks /$1/"; sed 's/^/    | /' "$T_TMP/out" | head -20 >&2; fi
}
finish() {
    echo "$T_NAME: $T_PASS passed, $T_FAIL failed"
    [ "$T_FAIL" = 0 ] && [ "$T_PASS" -gt 0 ]
}
