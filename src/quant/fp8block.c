// fp8block.c: block-scaled FP8 dequantization; see fp8block.h.
//
// Fast path: inside one tile every element shares the scale s, so the 256 possible results
// bf16(lut[b] * s) are computed once per (tile, call) and each element becomes one table
// lookup. The table entries are computed with exactly the reference expression, so the fast
// path is bit-identical by construction; tests compare it with the scalar loop anyway.
#include "quant/fp8block.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "quant/formats.h"
#include "quant/simd_cpu.h"

#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

// ---- SIMD rows: decode e4m3 by bits, one f32 multiply, RNE to bf16 in integer arithmetic ----
// e4m3 byte b -> f32: the 7 magnitude bits shifted to the f32 mantissa/exponent position give
// 2^(e-127)(1+m/8) for normals and m*2^-129 for subnormals (an f32 denormal); times 2^120
// (exact) that is the e4m3 value; the sign is OR-ed in. The product with the scale is the same
// single IEEE multiply as the reference; the bf16 rounding is (u + 0x7FFF + lsb) >> 16, done
// on integers so no DAZ/FTZ conversion instruction is involved. NaN codes are detected and
// the chunk is redone by the table path (which writes 0x7FC0 like the reference).

typedef unsigned (*row_fn)(const uint8_t *, size_t, float, uint16_t *);

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw"))) static unsigned row_avx512(const uint8_t *w, size_t n, float s,
                                                                         uint16_t *out) {
    const __m512 k120 = _mm512_set1_ps(0x1p120f), vs = _mm512_set1_ps(s);
    const __m512i m7f = _mm512_set1_epi32(0x7F), m80 = _mm512_set1_epi32(0x80), r = _mm512_set1_epi32(0x7FFF),
                  one = _mm512_set1_epi32(1);
    __mmask16 nan = 0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w + i)));
        __m512i mag = _mm512_and_si512(b, m7f);
        nan |= _mm512_cmpeq_epi32_mask(mag, m7f);
        __m512 v = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(mag, 20)), k120);
        v = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(v), _mm512_slli_epi32(_mm512_and_si512(b, m80), 24)));
        __m512i u = _mm512_castps_si512(_mm512_mul_ps(v, vs));
        __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
        u = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, r), lsb), 16);
        _mm256_storeu_si256((__m256i *)(out + i), _mm512_cvtepi32_epi16(u));
    }
    unsigned bad = nan != 0;
    for (; i < n; i++) {
        bad |= (w[i] & 0x7Fu) == 0x7Fu;
        out[i] = fb_f32_to_bf16(fb_e4m3_lut[w[i]] * s);
    }
    return bad;
}

__attribute__((target("avx2"))) static unsigned row_avx2(const uint8_t *w, size_t n, float s, uint16_t *out) {
    const __m256 k120 = _mm256_set1_ps(0x1p120f), vs = _mm256_set1_ps(s);
    const __m256i m7f = _mm256_set1_epi32(0x7F), m80 = _mm256_set1_epi32(0x80), r = _mm256_set1_epi32(0x7FFF),
                  one = _mm256_set1_epi32(1);
    __m256i nan = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i res[2];
        for (int h = 0; h < 2; h++) {
            __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(w + i + 8 * h)));
            __m256i mag = _mm256_and_si256(b, m7f);
            nan = _mm256_or_si256(nan, _mm256_cmpeq_epi32(mag, m7f));
            __m256 v = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(mag, 20)), k120);
            v = _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(v), _mm256_slli_epi32(_mm256_and_si256(b, m80), 24)));
            __m256i u = _mm256_castps_si256(_mm256_mul_ps(v, vs));
            __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
            res[h] = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, r), lsb), 16);
        }
        // packus works per 128-bit lane: fix the order afterwards.
        __m256i p = _mm256_packus_epi32(res[0], res[1]);
        p = _mm256_permute4x64_epi64(p, 0xD8);
        _mm256_storeu_si256((__m256i *)(out + i), p);
    }
    unsigned bad = !_mm256_testz_si256(nan, nan);
    for (; i < n; i++) {
        bad |= (w[i] & 0x7Fu) == 0x7Fu;
        out[i] = fb_f32_to_bf16(fb_e4m3_lut[w[i]] * s);
    }
    return bad;
}
#endif  // __x86_64__

#if defined(__aarch64__)
// The tail of a row (fewer than 16 elements): the reference expression, NaN codes flagged.
static unsigned row_tail(const uint8_t *w, size_t n, float s, uint16_t *out) {
    unsigned bad = 0;
    for (size_t i = 0; i < n; i++) {
        bad |= (w[i] & 0x7Fu) == 0x7Fu;
        out[i] = fb_f32_to_bf16(fb_e4m3_lut[w[i]] * s);
    }
    return bad;
}

// 4 lanes: magnitude already at f32 bits 20..26 after the << 16, sign at bit 31.
static inline uint16x4_t cvt4_neon(uint16x4_t mag, uint16x4_t sgn, float32x4_t vs) {
    float32x4_t v = vmulq_f32(vreinterpretq_f32_u32(vshll_n_u16(mag, 16)), vdupq_n_f32(0x1p120f));
    v = vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(v), vshll_n_u16(sgn, 16)));
    uint32x4_t u = vreinterpretq_u32_f32(vmulq_f32(v, vs));
    uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    return vshrn_n_u32(vaddq_u32(vaddq_u32(u, vdupq_n_u32(0x7FFF)), lsb), 16);
}

// The same steps on 4 f32 lanes at a time, 16 bytes per iteration. vshrn_n_u32(t, 16) is the
// final >> 16 and the narrowing to bf16 bits in one instruction. AArch64 Linux runs with
// FPCR.FZ clear, so the e4m3 subnormals built as f32 denormals survive the multiplies.
static unsigned row_neon(const uint8_t *w, size_t n, float s, uint16_t *out) {
    const float32x4_t vs = vdupq_n_f32(s);
    const uint8x16_t m7f = vdupq_n_u8(0x7F), m80 = vdupq_n_u8(0x80);
    uint8x16_t nan = vdupq_n_u8(0);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        uint8x16_t b = vld1q_u8(w + i);
        uint8x16_t mag = vandq_u8(b, m7f);
        nan = vorrq_u8(nan, vceqq_u8(mag, m7f));
        // The magnitude bits go to bits 20..26 of an f32 as in the x86 kernels (<< 4 while
        // widening to u16, << 16 while widening to u32: vshll does both steps at once); the
        // sign byte goes to bit 31 the same way (0x80 << 8 << 16).
        uint16x8_t mlo = vshll_n_u8(vget_low_u8(mag), 4), mhi = vshll_high_n_u8(mag, 4);
        uint8x16_t sg = vandq_u8(b, m80);
        uint16x8_t slo = vshll_n_u8(vget_low_u8(sg), 8), shi = vshll_high_n_u8(sg, 8);
        vst1q_u16(out + i, vcombine_u16(cvt4_neon(vget_low_u16(mlo), vget_low_u16(slo), vs),
                                        cvt4_neon(vget_high_u16(mlo), vget_high_u16(slo), vs)));
        vst1q_u16(out + i + 8, vcombine_u16(cvt4_neon(vget_low_u16(mhi), vget_low_u16(shi), vs),
                                            cvt4_neon(vget_high_u16(mhi), vget_high_u16(shi), vs)));
    }
    return (vmaxvq_u8(nan) != 0) | row_tail(w + i, n - i, s, out + i);
}
#endif  // __aarch64__

typedef struct row_impl {
    const char *name;
    row_fn row;  // NULL: the per-tile table path
} row_impl;

static row_impl pick_row(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (fb_qsimd_allowed("avx512") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))
        return (row_impl){"avx512", row_avx512};
    if (fb_qsimd_allowed("avx2") && __builtin_cpu_supports("avx2")) return (row_impl){"avx2", row_avx2};
#elif defined(__aarch64__)
    if (fb_qsimd_allowed("neon") && fb_qsimd_have_neon()) return (row_impl){"neon", row_neon};
#endif
    return (row_impl){"scalar", NULL};
}
static row_impl g_impl;
static row_fn g_row;
static pthread_once_t g_row_once = PTHREAD_ONCE_INIT;
static void init_row(void) {
    g_impl = pick_row();
    g_row = g_impl.row;
}

const char *fb_fp8_dequant_impl(void) {
    pthread_once(&g_row_once, init_row);
    return g_impl.name;
}

int64_t fb_fp8_dequant_bf16_ref(const uint8_t *w, const float *scale, uint64_t r0, size_t nrows,
                                size_t cols, size_t bm, size_t bn, uint16_t *out) {
    fb_formats_init();
    size_t sc = (cols + bn - 1) / bn;
    int64_t first_nan = -1;
    for (size_t r = 0; r < nrows; r++) {
        const float *srow = scale + ((r0 + r) / bm) * sc;
        for (size_t c = 0; c < cols; c++) {
            uint8_t b = w[r * cols + c];
            if (first_nan < 0 && fb_e4m3_is_nan(b)) first_nan = (int64_t)(r * cols + c);
            float prod = fb_e4m3_lut[b] * srow[c / bn];
            out[r * cols + c] = fb_f32_to_bf16(prod);
        }
    }
    return first_nan;
}

static int64_t find_nan(const uint8_t *w, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (fb_e4m3_is_nan(w[i])) return (int64_t)i;
    return -1;
}

static int64_t dequant_bf16_table(const uint8_t *w, const float *scale, uint64_t r0, size_t nrows, size_t cols,
                                  size_t bm, size_t bn, uint16_t *out);

int64_t fb_fp8_dequant_bf16(const uint8_t *w, const float *scale, uint64_t r0, size_t nrows,
                            size_t cols, size_t bm, size_t bn, uint16_t *out) {
    fb_formats_init();
    pthread_once(&g_row_once, init_row);
    if (!g_row) return dequant_bf16_table(w, scale, r0, nrows, cols, bm, bn, out);
    size_t sc = (cols + bn - 1) / bn;
    unsigned bad = 0;
    for (size_t r = 0; r < nrows; r++) {
        const float *srow = scale + ((r0 + r) / bm) * sc;
        const uint8_t *wp = w + r * cols;
        uint16_t *op = out + r * cols;
        for (size_t tj = 0; tj < sc; tj++) {
            size_t c0 = tj * bn, c1 = c0 + bn < cols ? c0 + bn : cols;
            bad |= g_row(wp + c0, c1 - c0, srow[tj], op + c0);
        }
    }
    // NaN codes: the table path writes the reference's 0x7FC0 and finds the first index.
    return bad ? dequant_bf16_table(w, scale, r0, nrows, cols, bm, bn, out) : -1;
}

static int64_t dequant_bf16_table(const uint8_t *w, const float *scale, uint64_t r0, size_t nrows, size_t cols,
                                  size_t bm, size_t bn, uint16_t *out) {
    size_t sc = (cols + bn - 1) / bn;
    uint16_t table[256];
    unsigned nanflag = 0;
    size_t r = 0;
    while (r < nrows) {
        uint64_t rb = (r0 + r) / bm;
        size_t rend = (size_t)((rb + 1) * bm - r0);  // rows of this call in tile-row rb
        if (rend > nrows) rend = nrows;
        const float *srow = scale + rb * sc;
        for (size_t tj = 0; tj < sc; tj++) {
            float s = srow[tj];
            for (int b = 0; b < 256; b++) table[b] = fb_f32_to_bf16(fb_e4m3_lut[b] * s);
            size_t c0 = tj * bn, c1 = c0 + bn < cols ? c0 + bn : cols;
            for (size_t rr = r; rr < rend; rr++) {
                const uint8_t *wp = w + rr * cols;
                uint16_t *op = out + rr * cols;
                unsigned acc = 0;
                for (size_t c = c0; c < c1; c++) {
                    uint8_t b = wp[c];
                    op[c] = table[b];
                    acc |= ((b & 0x7Fu) == 0x7Fu);
                }
                nanflag |= acc;
            }
        }
        r = rend;
    }
    return nanflag ? find_nan(w, nrows * cols) : -1;
}

int64_t fb_fp8_dequant_f32(const uint8_t *w, const float *scale, uint64_t r0, size_t nrows,
                           size_t cols, size_t bm, size_t bn, float *out) {
    // The bf16 values are produced in the first half of `out`, then widened in place from the
    // end: writing float i overwrites bf16 slots 2i and 2i+1, both >= i, so already read.
    // The halves are read with memcpy (character access), so no type-based aliasing
    // assumption can reorder them across the float stores.
    unsigned char *bytes = (unsigned char *)out;
    int64_t nan = fb_fp8_dequant_bf16(w, scale, r0, nrows, cols, bm, bn, (uint16_t *)(void *)out);
    size_t n = nrows * cols;
#if defined(__aarch64__)
    // 8 at a time from the end: the 16 bf16 bytes at 2i are loaded before the 32 f32 bytes
    // at 4i >= 2i are stored, and no later (lower) load reaches 4i; NEON is on whenever the
    // row kernel is.
    if (g_row == row_neon)
        for (; n >= 8; n -= 8) {
            uint16x8_t h = vld1q_u16((const uint16_t *)(const void *)(bytes + 2 * (n - 8)));
            uint32_t *o = (uint32_t *)(void *)(bytes + 4 * (n - 8));
            vst1q_u32(o, vshll_n_u16(vget_low_u16(h), 16));
            vst1q_u32(o + 4, vshll_high_n_u16(h, 16));
        }
#endif
    for (size_t i = n; i-- > 0;) {
        uint16_t h;
        memcpy(&h, bytes + 2 * i, 2);
        float f = fb_bf16_to_f32(h);
        memcpy(bytes + 4 * i, &f, 4);
    }
    return nan;
}
