// simd_cpu.c: the FB_QUANT_IMPL policy and the CPU feature checks every quantization kernel
// follows (see simd_cpu.h).
#include "quant/simd_cpu.h"

#include <stdlib.h>
#include <string.h>

int fb_qsimd_allowed(const char *level) {
    const char *cap = getenv("FB_QUANT_IMPL");
    if (!cap || !*cap) return 1;
    if (!strcmp(cap, level)) return 1;
    return !strcmp(cap, "avx512") && !strcmp(level, "avx2");
}

#if defined(__x86_64__)
int fb_qsimd_have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}

int fb_qsimd_have_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

#if defined(__aarch64__)
#include <sys/auxv.h>

#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif

int fb_qsimd_have_neon(void) { return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0; }
#endif
