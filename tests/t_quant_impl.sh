#!/bin/sh
# t_quant_impl: FB_QUANT_IMPL is read the same way by every kernel (quant/simd_cpu.h): unset
# and empty both give the CPU's best paths; "scalar" and an unknown value give scalar
# everywhere; a cap selects that level (or lower) in every kernel at once.
. tests/lib.sh
T="$BUILD/tests/test_formats"
best=$(env -u FB_QUANT_IMPL "$T" --impl)
empty=$(FB_QUANT_IMPL= "$T" --impl)
[ "$best" = "$empty" ] && ok || fail "FB_QUANT_IMPL='' gives '$empty', unset gives '$best'"
all_scalar="fp8=scalar nvfp4=scalar w4a16=scalar bf16-widen=scalar"
for v in scalar bogus AVX2; do
    got=$(FB_QUANT_IMPL=$v "$T" --impl)
    [ "$got" = "$all_scalar" ] && ok || fail "FB_QUANT_IMPL=$v gives '$got'"
done
case "$best" in
*neon*)   # aarch64: NEON everywhere, and an x86 cap is scalar
    [ "$best" = "fp8=neon nvfp4=neon w4a16=neon bf16-widen=neon" ] && ok || fail "aarch64 best '$best'"
    got=$(FB_QUANT_IMPL=neon "$T" --impl); [ "$got" = "$best" ] && ok || fail "neon cap gives '$got'"
    got=$(FB_QUANT_IMPL=avx2 "$T" --impl); [ "$got" = "$all_scalar" ] && ok || fail "avx2 cap on aarch64 gives '$got'" ;;
*avx*)    # x86-64: an avx2 cap gives avx2 in all three kernels, a neon cap scalar
    got=$(FB_QUANT_IMPL=avx2 "$T" --impl)
    [ "$got" = "fp8=avx2 nvfp4=avx2 w4a16=avx2 bf16-widen=scalar" ] && ok || fail "avx2 cap gives '$got'"
    got=$(FB_QUANT_IMPL=avx512 "$T" --impl); [ "$got" = "$best" ] && ok || fail "avx512 cap gives '$got', best '$best'"
    got=$(FB_QUANT_IMPL=neon "$T" --impl); [ "$got" = "$all_scalar" ] && ok || fail "neon cap on x86 gives '$got'" ;;
*)  ok ;;  # a CPU without SIMD paths: nothing more to compare
esac
echo "t_quant_impl: $best"
finish
