// quant_simd.c: placeholder (fast paths come next)
#include <stddef.h>
#include <stdint.h>
int fb_qsimd_have_avx2(void) { return 0; }
int fb_qsimd_have_avx512(void) { return 0; }
float fb_qsimd_absmax_avx2(const float *x, size_t n) { (void)x; (void)n; return 0; }
float fb_qsimd_absmax_avx512(const float *x, size_t n) { (void)x; (void)n; return 0; }
void fb_qsimd_nvfp4_avx2(const float *w, size_t nrows, size_t cols, float g, uint8_t *packed, uint8_t *scale) {}
void fb_qsimd_nvfp4_avx512(const float *w, size_t nrows, size_t cols, float g, uint8_t *packed, uint8_t *scale) {}
void fb_qsimd_w4a16_avx2(const float *w, size_t nrows, size_t cols, size_t group, int32_t *packed, uint16_t *scale) {}
void fb_qsimd_w4a16_avx512(const float *w, size_t nrows, size_t cols, size_t group, int32_t *packed, uint16_t *scale) {}
void fb_qsimd_autoround_avx2(const float *w, size_t nrows, size_t cols, size_t group, size_t o0, size_t ld, int32_t *qweight, uint16_t *scales) {}
void fb_qsimd_autoround_avx512(const float *w, size_t nrows, size_t cols, size_t group, size_t o0, size_t ld, int32_t *qweight, uint16_t *scales) {}
