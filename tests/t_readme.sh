#!/bin/sh
# t_readme: the README's "Quick start" block runs as written after `make` (issue 17 item 11),
# with its /tmp/m2-* paths moved into this test's directory and build/bin into $BUILD/bin;
# `make install` puts the tools and recipes under DESTDIR/PREFIX.
. tests/lib.sh
M=models/tiny-minimax-m2
if ! ls $M/*.safetensors >/dev/null 2>&1; then
    echo "t_readme: $M absent, skipped"; ok; finish; exit $?
fi
sed -n '/^## Quick start/,/^## /p' README.md | sed -n '/^```sh$/,/^```$/p' | sed '1d;$d' > "$T_TMP/block.sh"
grep -q '^fp8-dequant ' "$T_TMP/block.sh" && ok || fail "no Quick start block in README.md"
grep -q 'build/bin' "$T_TMP/block.sh" && ok || fail "the block does not say where the tools are"
# `make` has run already (make test); the rest runs as written
sed -e '/^make$/d' -e "s|/tmp/m2-|$T_TMP/m2-|g" -e "s|\$PWD/build/bin|\$PWD/$BUILD/bin|" "$T_TMP/block.sh" > "$T_TMP/run.sh"
if [ -x "$BIN/ref-runner" ]; then :; else sed -i '/^ref-runner /d' "$T_TMP/run.sh"; fi
expect_rc 0 "README Quick start as written" -- sh -e "$T_TMP/run.sh"
expect_out "OK \(loadable\)" "validate-ignore-list verdict"
grep -q "^## Measured quality" "$T_TMP/m2-nvfp4/README.md" && ok || fail "ref-runner --card"

# make install with PREFIX and DESTDIR. Not on a directory of qemu wrappers
# (scripts/cross-aarch64.sh: $BUILD holds no library): make would build native tools over the
# wrappers, and every later test would run x86 code instead of aarch64.
if [ -f "$BUILD/libfourbit.a" ]; then
    expect_rc 0 "make install" -- make -s install BUILD="$BUILD" PREFIX=/opt/fourbit DESTDIR="$T_TMP/pkg"
    for t in fp8-dequant calibrate nvfp4-quantize w4a16-quantize validate-ignore-list st-diff; do
        [ -x "$T_TMP/pkg/opt/fourbit/bin/$t" ] && ok || fail "make install: no $t"
    done
    [ -f "$T_TMP/pkg/opt/fourbit/share/fourbit/recipes/minimax.yaml" ] && ok || fail "make install: no recipes"
    expect_rc 0 "installed tool runs" -- "$T_TMP/pkg/opt/fourbit/bin/nvfp4-quantize" --version
    expect_out "^nvfp4-quantize [0-9]+\.[0-9]+" "--version"
else
    echo "t_readme: $BUILD holds wrappers, not a build: make install not run here"
fi
finish
