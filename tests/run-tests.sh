#!/bin/sh
# Runs every test binary (build/tests/test_*) and shell test (tests/t_*.sh) from the repo
# root, sums their "N passed, N failed" lines and prints the total last. Exit 1 on any failure.
: "${BUILD:=build}"
export BUILD
pass=0; fail=0; bad=""
for t in "$BUILD"/tests/test_* tests/t_*.sh; do
    [ -e "$t" ] || continue
    case "$t" in *.sh) cmd="sh $t" ;; *) cmd="$t" ;; esac
    out=$($cmd 2>&1); rc=$?
    line=$(printf '%s\n' "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    p=$(printf '%s' "$line" | sed -E 's/.* ([0-9]+) passed, ([0-9]+) failed.*/\1/')
    f=$(printf '%s' "$line" | sed -E 's/.* ([0-9]+) passed, ([0-9]+) failed.*/\2/')
    [ -n "$line" ] || { p=0; f=1; }
    if [ "$rc" != 0 ] && [ "$f" = 0 ]; then f=1; fi
    pass=$((pass + p)); fail=$((fail + f))
    if [ "$rc" != 0 ]; then
        bad="$bad $t"
        printf '%s\n' "$out" | tail -n 40 | sed 's/^/    /'
        echo "FAILED: $t (exit $rc)"
    else
        echo "ok   $t: $p checks"
    fi
done
echo
[ -z "$bad" ] || echo "failed:$bad"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ] && [ "$pass" -gt 0 ]
