// formats.h: number formats, bit-exact with PyTorch (spec/fp8-safetensors-perf.md §3).
//
//   F8_E4M3 (float8_e4m3fn): s eeee mmm, bias 7, no Inf, NaN = 0x7F/0xFF, max 448.
//   F8_E5M2 (float8_e5m2):   s eeeee mm, bias 15, IEEE-like (Inf 0x7C, NaN 0x7D..0x7F).
//   F8_E8M0 (float8_e8m0fnu): 2^(x-127), 0xFF = NaN.
//   BF16 from f32: round to nearest, ties to even; NaN -> 0x7FC0 (PyTorch's scalar path).
//   F16 (IEEE binary16) both ways, round to nearest even, subnormals kept.
//   FP4 E2M1 (NVFP4 elements): values {0, .5, 1, 1.5, 2, 3, 4, 6} and their negatives.
// Decoding tables are built on first use (thread-safe: fb_formats_init() is idempotent and
// called by every entry point that needs the tables).
#ifndef FB_QUANT_FORMATS_H
#define FB_QUANT_FORMATS_H

#include <stdint.h>
#include <string.h>

#include "common/dtype.h"

// 256-entry decode tables (NaN codes decode to a quiet NaN with the sign kept).
extern float fb_e4m3_lut[256];
extern float fb_e5m2_lut[256];
void fb_formats_init(void);

static inline uint32_t fb_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float fb_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline int fb_e4m3_is_nan(uint8_t b) { return (b & 0x7F) == 0x7F; }
static inline int fb_e5m2_is_nan(uint8_t b) { return (b & 0x7F) > 0x7C; }

// f32 -> bf16 bits, round to nearest even; NaN -> 0x7FC0 | sign (torch scalar c10 path keeps
// 0x7FC0 for every NaN).
static inline uint16_t fb_f32_to_bf16(float f) {
    uint32_t u = fb_f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
static inline float fb_bf16_to_f32(uint16_t h) { return fb_bits_f32((uint32_t)h << 16); }

// f32 -> IEEE half bits (RNE, overflow to Inf, subnormals kept, NaN -> 0x7E00|sign).
uint16_t fb_f32_to_f16(float f);
float fb_f16_to_f32(uint16_t h);

// f32 -> e4m3fn byte as torch's .to(float8_e4m3fn): RNE, |x| > 448 rounding past it -> NaN
// (0x7F|sign). Quantizers clamp to +-448 first.
uint8_t fb_f32_to_e4m3(float f);
static inline float fb_e4m3_to_f32(uint8_t b) { return fb_e4m3_lut[b]; }

static inline float fb_e8m0_to_f32(uint8_t b) {
    if (b == 0xFF) return fb_bits_f32(0x7FC00000u);
    if (b == 0) return fb_bits_f32(0x00400000u);  // 2^-127, an f32 subnormal
    return fb_bits_f32((uint32_t)b << 23);
}

// Reads element i of a buffer of a floating dtype (BF16, F16, F32, F64, F8_E4M3, F8_E5M2,
// F8_E8M0) as f32 (F64 is rounded to f32). Returns 0 on success, -1 for a non-float dtype.
int fb_load_f32(fb_dtype dt, const void *buf, uint64_t i, float *out);

// Converts n elements of a floating buffer to f32 (exact for every dtype but F64).
// Returns -1 for an unsupported dtype.
int fb_to_f32(fb_dtype dt, const void *src, float *dst, size_t n);

// The BF16 -> f32 widening fb_to_f32 uses: "neon" (aarch64) or "scalar" (a loop the compiler
// may vectorize). Chosen once per process; FB_QUANT_IMPL caps it (quant/simd_cpu.h).
const char *fb_bf16_widen_impl(void);

// Index of the first NaN (or, with also_inf, NaN or Inf) among n elements of a floating
// buffer, or -1 when there is none (or the dtype is not floating).
int64_t fb_find_nonfinite(fb_dtype dt, const void *buf, size_t n, int also_inf);

#endif
