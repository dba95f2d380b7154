// simd_cpu.h: private to the quantization kernels (fp8block.c, formats.c, nvfp4.c, w4a16.c,
// qformat_modelopt.c): which SIMD fast paths this process may use (simd_cpu.c). The fast paths
// themselves are declared in quant_simd.h (ModelOpt's in qformat_modelopt.c).
//
// FB_QUANT_IMPL in the environment caps the choice, read the same way by every kernel:
//   unset or empty   the best fast path this CPU runs
//   scalar           the scalar reference (for FP8 dequant: its per-tile lookup table)
//   avx2             at most AVX2 (x86-64)
//   avx512           at most AVX-512, else AVX2 (x86-64)
//   neon             NEON (aarch64)
//   anything else    scalar: a misspelt cap must not silently test the path it meant to avoid
// A cap naming the other architecture's level also gives scalar.
#ifndef FB_QUANT_SIMD_CPU_H
#define FB_QUANT_SIMD_CPU_H

// 1 when FB_QUANT_IMPL lets a kernel use `level` ("avx2", "avx512", "neon"); whether the CPU
// has it is asked separately (fb_qsimd_have_*). Reads the environment on every call: callers
// decide once per process.
int fb_qsimd_allowed(const char *level);

#if defined(__x86_64__)
// 1 when the CPU has AVX2; AVX-512 F/BW/VL/DQ (the set the AVX-512 kernels are built for).
int fb_qsimd_have_avx2(void);
int fb_qsimd_have_avx512(void);
#endif

#if defined(__aarch64__)
// 1 when the CPU has Advanced SIMD (architectural on AArch64 Linux; asked of the kernel anyway).
int fb_qsimd_have_neon(void);
#endif

#endif
