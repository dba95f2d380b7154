// quant_simd.h: the AVX2 / AVX-512 / NEON fast paths of the NVFP4 and W4A16 / AutoRound
// quantizers (quant_simd.c), private to nvfp4.c and w4a16.c, which choose one per process
// (simd_cpu.h). Each has the signature and gives exactly the bytes of its scalar reference
// (nvfp4.h, w4a16.h; tests/test_nvfp4.c, tests/test_w4a16.c). The W4A16 / AutoRound kernels
// need group % 8 == 0 (w4a16.c hands other groups to the reference).
#ifndef FB_QUANT_QUANT_SIMD_H
#define FB_QUANT_QUANT_SIMD_H

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__)
float fb_qsimd_absmax_avx2(const float *x, size_t n);
float fb_qsimd_absmax_avx512(const float *x, size_t n);
void fb_qsimd_nvfp4_avx2(const float *w, size_t nrows, size_t cols, float g, uint8_t *packed,
                         uint8_t *scale);
void fb_qsimd_nvfp4_avx512(const float *w, size_t nrows, size_t cols, float g,
                           uint8_t *packed, uint8_t *scale);
#elif defined(__aarch64__)
float fb_qsimd_absmax_neon(const float *x, size_t n);
void fb_qsimd_nvfp4_neon(const float *w, size_t nrows, size_t cols, float g, uint8_t *packed,
                         uint8_t *scale);
#endif

#if defined(__x86_64__)
void fb_qsimd_w4a16_avx2(const float *w, size_t nrows, size_t cols, size_t group,
                         int32_t *packed, uint16_t *scale);
void fb_qsimd_w4a16_avx512(const float *w, size_t nrows, size_t cols, size_t group,
                           int32_t *packed, uint16_t *scale);
void fb_qsimd_autoround_avx2(const float *w, size_t nrows, size_t cols, size_t group,
                             size_t o0, size_t ld, int32_t *qweight, uint16_t *scales);
void fb_qsimd_autoround_avx512(const float *w, size_t nrows, size_t cols, size_t group,
                               size_t o0, size_t ld, int32_t *qweight, uint16_t *scales);
#elif defined(__aarch64__)
void fb_qsimd_w4a16_neon(const float *w, size_t nrows, size_t cols, size_t group,
                         int32_t *packed, uint16_t *scale);
void fb_qsimd_autoround_neon(const float *w, size_t nrows, size_t cols, size_t group,
                             size_t o0, size_t ld, int32_t *qweight, uint16_t *scales);
#endif

#endif
