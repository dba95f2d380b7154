#!/bin/sh
# Cross-builds fourbit for aarch64 (DGX Spark's Grace CPU, any arm64 Linux) on an x86-64
# Debian 12 machine and runs the tests under qemu-user. No arm64 hardware and no binfmt_misc
# registration are needed.
#
#   scripts/cross-aarch64.sh            install what is missing (root), build, run every test
#   scripts/cross-aarch64.sh --install  only install the cross toolchain, qemu and :arm64 packages
#   scripts/cross-aarch64.sh --kernels  build, then only the kernel and format tests (fast)
#
# How the binaries run. The :arm64 -dev packages pull in libc6:arm64, which puts the aarch64
# loader at /lib/ld-linux-aarch64.so.1 and the libraries under /lib/aarch64-linux-gnu, so
# qemu-aarch64-static runs the dynamically linked binaries as they are: loader, libc and
# libraries all come from one Debian release. QEMU_LD_PREFIX / -L are deliberately NOT pointed
# at the cross sysroot /usr/aarch64-linux-gnu (its libc is another build than libc6:arm64;
# mixing the two hangs threaded programs). Without binfmt_misc the kernel cannot exec an
# aarch64 file, so the tests, which exec the tools (and t_*.sh, which exec test binaries), run
# against $BUILD-qemu/: one small shell wrapper per binary that execs qemu-aarch64-static on the
# real one. tests/run-tests.sh is used unchanged with BUILD pointing there.
set -eu
cd "$(dirname "$0")/.."
CROSS=aarch64-linux-gnu-
BUILD=${BUILD:-build-aarch64}
QEMU=${QEMU:-qemu-aarch64-static}
# The packages (cross gcc, qemu-user-static, the :arm64 -dev libraries) are listed in
# scripts/install-deps.sh --aarch64, which installs what is missing when run as root.
if [ "$(id -u)" = 0 ]; then sh scripts/install-deps.sh --aarch64; else sh scripts/install-deps.sh --aarch64 --check; fi
[ "${1:-}" = "--install" ] && exit 0

JOBS=$(nproc 2>/dev/null || echo 2)
TESTS=$(for f in tests/test_*.c; do t=${f#tests/}; echo "$BUILD/tests/${t%.c}"; done)
# shellcheck disable=SC2086
make -j"$JOBS" CROSS=$CROSS BUILD="$BUILD" all $TESTS

# The wrappers: $BUILD-qemu/{bin,tests}/<name> -> qemu on $BUILD/{bin,tests}/<name>.
Q="$BUILD-qemu"
rm -rf "$Q"
mkdir -p "$Q/bin" "$Q/tests"
ROOT=$(pwd)
QPATH=$(command -v "$QEMU")
for d in bin tests; do
    for f in "$BUILD/$d"/*; do
        [ -f "$f" ] && [ -x "$f" ] || continue
        printf '#!/bin/sh\nexec %s %s "$@"\n' "$QPATH" "$ROOT/$f" > "$Q/$d/${f##*/}"
        chmod +x "$Q/$d/${f##*/}"
    done
done
"$Q/tests/test_formats" --impl | sed 's/^/cross-aarch64: /'

if [ "${1:-}" = "--kernels" ]; then
    rc=0
    for t in test_formats test_fp8 test_nvfp4 test_w4a16; do
        BUILD="$Q" "$Q/tests/$t" > "$Q/$t.log" 2>&1 || rc=1
        tail -n 1 "$Q/$t.log"
    done
    exit $rc
fi
BUILD="$Q" sh tests/run-tests.sh
