// quant_simd.c: AVX2 and AVX-512 (x86-64) and NEON (aarch64) fast paths of the NVFP4
// (nvfp4.h) and W4A16 / AutoRound (w4a16.h) quantizers (quant_simd.h). Private to nvfp4.c /
// w4a16.c, which pick one at run time (simd_cpu.h); each must give exactly the bytes of the scalar
// reference (tests/test_nvfp4.c, tests/test_w4a16.c check it on random, heavy-tailed,
// edge-case and all-bf16 inputs).
//
// Exactness. Every arithmetic step is the same IEEE f32 operation as in the reference, in
// the same order (divisions stay divisions: vdivps is correctly rounded), and the roundings
// to bf16 / fp8 e4m3 are done on the bits exactly like quant/formats.h. Inputs are finite
// (callers reject NaN/Inf), so min/max never see a NaN. The build uses -ffp-contract=off and
// no fast-math flags; the intrinsics below never fuse a multiply and an add.
//
// Layout of the work: a row is cut into chunks of up to CHUNK groups; for each chunk, (1) the
// group maxima, (2) the group scales for 8/16 groups at once, (3) the element step per group.
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quant/quant_simd.h"

#include "common/fb.h"
#include "quant/formats.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define T_AVX2 __attribute__((target("avx2")))
#define T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

#define CHUNK 64  // groups per chunk (a multiple of 16)

// fp16(1e-5): the magnitude floor of an AutoRound scale (see w4a16.c).
#define AR_THRESH_F16 0x00A8u

static inline float bf16r(float x) { return fb_bf16_to_f32(fb_f32_to_bf16(x)); }

// ---- absmax --------------------------------------------------------------------------------

T_AVX2 float fb_qsimd_absmax_avx2(const float *x, size_t n) {
    const __m256i mask = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_max_epu32(a0, _mm256_and_si256(_mm256_loadu_si256((const void *)(x + i)), mask));
        a1 = _mm256_max_epu32(a1, _mm256_and_si256(_mm256_loadu_si256((const void *)(x + i + 8)), mask));
        a2 = _mm256_max_epu32(a2, _mm256_and_si256(_mm256_loadu_si256((const void *)(x + i + 16)), mask));
        a3 = _mm256_max_epu32(a3, _mm256_and_si256(_mm256_loadu_si256((const void *)(x + i + 24)), mask));
    }
    a0 = _mm256_max_epu32(_mm256_max_epu32(a0, a1), _mm256_max_epu32(a2, a3));
    uint32_t lanes[8], m = 0;
    _mm256_storeu_si256((void *)lanes, a0);
    for (int k = 0; k < 8; k++) m = lanes[k] > m ? lanes[k] : m;
    for (; i < n; i++) {
        uint32_t b = fb_f32_bits(x[i]) & 0x7FFFFFFFu;
        m = b > m ? b : m;
    }
    return fb_bits_f32(m);
}

T_AVX512 float fb_qsimd_absmax_avx512(const float *x, size_t n) {
    const __m512i mask = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_max_epu32(a0, _mm512_and_si512(_mm512_loadu_si512(x + i), mask));
        a1 = _mm512_max_epu32(a1, _mm512_and_si512(_mm512_loadu_si512(x + i + 16), mask));
        a2 = _mm512_max_epu32(a2, _mm512_and_si512(_mm512_loadu_si512(x + i + 32), mask));
        a3 = _mm512_max_epu32(a3, _mm512_and_si512(_mm512_loadu_si512(x + i + 48), mask));
    }
    a0 = _mm512_max_epu32(_mm512_max_epu32(a0, a1), _mm512_max_epu32(a2, a3));
    uint32_t m = _mm512_reduce_max_epu32(a0);
    for (; i < n; i++) {
        uint32_t b = fb_f32_bits(x[i]) & 0x7FFFFFFFu;
        m = b > m ? b : m;
    }
    return fb_bits_f32(m);
}

// ---- NVFP4 ---------------------------------------------------------------------------------

// bf16 round-to-nearest-even of finite f32 lanes, on the bits (as fb_f32_to_bf16).
T_AVX2 static inline __m256 bf16r_256(__m256 x) {
    __m256i u = _mm256_castps_si256(x);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
    return _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32((int)0xFFFF0000u)));
}
T_AVX512 static inline __m512 bf16r_512(__m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    return _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32((int)0xFFFF0000u)));
}

// Group scales of 8 groups from their maxima m (spec §1.2): e4m3 codes into *code (as int32
// lanes) and the element divisors t = s3/g into *t.
T_AVX2 static inline void nv_scales_256(__m256 m, __m256 g, __m256i *code, __m256 *t) {
    __m256 s1 = bf16r_256(_mm256_div_ps(m, _mm256_set1_ps(6.0f)));
    __m256 s2 = _mm256_min_ps(_mm256_mul_ps(g, s1), _mm256_set1_ps(448.0f));
    // normal e4m3 (s2 >= 2^-6): RNE to 3 mantissa bits on the f32 bits
    __m256i a = _mm256_castps_si256(s2);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(a, 20), _mm256_set1_epi32(1));
    __m256i r = _mm256_and_si256(_mm256_add_epi32(a, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFFF))),
                                 _mm256_set1_epi32((int)0xFFF00000u));
    __m256i cn = _mm256_sub_epi32(_mm256_srli_epi32(r, 20), _mm256_set1_epi32(960));  // (e-120)<<3|m
    // subnormal e4m3 (s2 < 2^-6): multiples of 2^-9, RNE
    __m256 q = _mm256_round_ps(_mm256_mul_ps(s2, _mm256_set1_ps(512.0f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 vs = _mm256_mul_ps(q, _mm256_set1_ps(1.0f / 512.0f));
    __m256i cs = _mm256_cvtps_epi32(q);
    __m256 isn = _mm256_cmp_ps(s2, _mm256_set1_ps(0x1p-6f), _CMP_GE_OQ);
    __m256 s3 = _mm256_blendv_ps(vs, _mm256_castsi256_ps(r), isn);
    __m256i c = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(cs), _mm256_castsi256_ps(cn), isn));
    __m256 z = _mm256_cmp_ps(s3, _mm256_setzero_ps(), _CMP_EQ_OQ);  // zero scale -> 0.125
    s3 = _mm256_blendv_ps(s3, _mm256_set1_ps(0.125f), z);
    c = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(c), _mm256_castsi256_ps(_mm256_set1_epi32(0x20)), z));
    *code = c;
    *t = _mm256_div_ps(s3, g);
}

T_AVX512 static inline void nv_scales_512(__m512 m, __m512 g, __m512i *code, __m512 *t) {
    __m512 s1 = bf16r_512(_mm512_div_ps(m, _mm512_set1_ps(6.0f)));
    __m512 s2 = _mm512_min_ps(_mm512_mul_ps(g, s1), _mm512_set1_ps(448.0f));
    __m512i a = _mm512_castps_si512(s2);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(a, 20), _mm512_set1_epi32(1));
    __m512i r = _mm512_and_si512(_mm512_add_epi32(a, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFFF))),
                                 _mm512_set1_epi32((int)0xFFF00000u));
    __m512i cn = _mm512_sub_epi32(_mm512_srli_epi32(r, 20), _mm512_set1_epi32(960));
    __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(s2, _mm512_set1_ps(512.0f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 vs = _mm512_mul_ps(q, _mm512_set1_ps(1.0f / 512.0f));
    __m512i cs = _mm512_cvtps_epi32(q);
    __mmask16 isn = _mm512_cmp_ps_mask(s2, _mm512_set1_ps(0x1p-6f), _CMP_GE_OQ);
    __m512 s3 = _mm512_mask_blend_ps(isn, vs, _mm512_castsi512_ps(r));
    __m512i c = _mm512_mask_blend_epi32(isn, cs, cn);
    __mmask16 z = _mm512_cmp_ps_mask(s3, _mm512_setzero_ps(), _CMP_EQ_OQ);
    s3 = _mm512_mask_blend_ps(z, s3, _mm512_set1_ps(0.125f));
    *code = _mm512_mask_blend_epi32(z, c, _mm512_set1_epi32(0x20));
    *t = _mm512_div_ps(s3, g);
}

// FP4 nibbles of 8 lanes of w / t (spec §0.1, §1.3).
T_AVX2 static inline __m256i nv_nibbles_256(__m256 w, __m256 t) {
    __m256 y = _mm256_div_ps(w, t);
    y = _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(-6.0f)), _mm256_set1_ps(6.0f));
    __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), y);
    __m256i idx = _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(0.25f), _CMP_GT_OQ));
#define NV_STEP(thr, pred) \
    idx = _mm256_add_epi32(idx, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(thr), pred)))
    NV_STEP(0.75f, _CMP_GE_OQ); NV_STEP(1.25f, _CMP_GT_OQ); NV_STEP(1.75f, _CMP_GE_OQ);
    NV_STEP(2.5f, _CMP_GT_OQ); NV_STEP(3.5f, _CMP_GE_OQ); NV_STEP(5.0f, _CMP_GT_OQ);
#undef NV_STEP
    idx = _mm256_sub_epi32(_mm256_setzero_si256(), idx);  // masks are -1: negate the count
    __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_LT_OQ));
    return _mm256_or_si256(idx, _mm256_and_si256(neg, _mm256_set1_epi32(8)));
}

// 8 nibble lanes (values 0..15) -> one little-endian u32: lane i in bits 4i..4i+3.
T_AVX2 static inline uint32_t pack8_256(__m256i c) {
    __m256i p = _mm256_or_si256(c, _mm256_srli_epi64(c, 28));  // byte 0 of each qword
    p = _mm256_shuffle_epi8(p, _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                -1, -1, -1, -1, 0, 8, -1, -1, -1, -1, -1, -1,
                                                -1, -1, -1, -1, -1, -1, -1, -1));
    uint32_t lo = (uint32_t)_mm_cvtsi128_si32(_mm256_castsi256_si128(p));
    uint32_t hi = (uint32_t)_mm_cvtsi128_si32(_mm256_extracti128_si256(p, 1));
    return (lo & 0xFFFFu) | (hi << 16);
}

T_AVX2 static inline float hmax_256(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

T_AVX2 void fb_qsimd_nvfp4_avx2(const float *w, size_t nrows, size_t cols, float g,
                                uint8_t *packed, uint8_t *scale) {
    const size_t ng = cols / 16;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 gv = _mm256_set1_ps(g);
    float mx[CHUNK], tt[CHUNK];
    int32_t cc[CHUNK];
    for (size_t r = 0; r < nrows; r++) {
        const float *row = w + r * cols;
        uint8_t *prow = packed + r * (cols / 2), *srow = scale + r * ng;
        for (size_t k0 = 0; k0 < ng; k0 += CHUNK) {
            size_t nk = ng - k0 < CHUNK ? ng - k0 : CHUNK;
            for (size_t k = 0; k < nk; k++) {
                const float *x = row + (k0 + k) * 16;
                __m256 a = _mm256_and_ps(_mm256_loadu_ps(x), absmask);
                __m256 b = _mm256_and_ps(_mm256_loadu_ps(x + 8), absmask);
                mx[k] = hmax_256(_mm256_max_ps(a, b));
            }
            for (size_t k = nk; k % 8; k++) mx[k] = 0.0f;
            for (size_t k = 0; k < nk; k += 8) {
                __m256i c;
                __m256 t;
                nv_scales_256(_mm256_loadu_ps(mx + k), gv, &c, &t);
                _mm256_storeu_si256((void *)(cc + k), c);
                _mm256_storeu_ps(tt + k, t);
            }
            for (size_t k = 0; k < nk; k++) {
                const float *x = row + (k0 + k) * 16;
                __m256 t = _mm256_set1_ps(tt[k]);
                uint32_t lo = pack8_256(nv_nibbles_256(_mm256_loadu_ps(x), t));
                uint32_t hi = pack8_256(nv_nibbles_256(_mm256_loadu_ps(x + 8), t));
                uint64_t v = (uint64_t)lo | ((uint64_t)hi << 32);
                memcpy(prow + (k0 + k) * 8, &v, 8);
                srow[k0 + k] = (uint8_t)cc[k];
            }
        }
    }
}

T_AVX512 void fb_qsimd_nvfp4_avx512(const float *w, size_t nrows, size_t cols, float g,
                                    uint8_t *packed, uint8_t *scale) {
    const size_t ng = cols / 16;
    const __m512 gv = _mm512_set1_ps(g);
    const __m512i one = _mm512_set1_epi32(1);
    float mx[CHUNK], tt[CHUNK];
    for (size_t r = 0; r < nrows; r++) {
        const float *row = w + r * cols;
        uint8_t *prow = packed + r * (cols / 2), *srow = scale + r * ng;
        for (size_t k0 = 0; k0 < ng; k0 += CHUNK) {
            size_t nk = ng - k0 < CHUNK ? ng - k0 : CHUNK;
            for (size_t k = 0; k < nk; k++)
                mx[k] = _mm512_reduce_max_ps(_mm512_abs_ps(_mm512_loadu_ps(row + (k0 + k) * 16)));
            for (size_t k = nk; k % 16; k++) mx[k] = 0.0f;
            for (size_t k = 0; k < nk; k += 16) {
                __m512i c;
                __m512 t;
                nv_scales_512(_mm512_loadu_ps(mx + k), gv, &c, &t);
                _mm512_storeu_ps(tt + k, t);
                __mmask16 keep = (__mmask16)(nk - k >= 16 ? 0xFFFF : (1u << (nk - k)) - 1);
                _mm512_mask_cvtepi32_storeu_epi8(srow + k0 + k, keep, c);
            }
            for (size_t k = 0; k < nk; k++) {
                __m512 y = _mm512_div_ps(_mm512_loadu_ps(row + (k0 + k) * 16), _mm512_set1_ps(tt[k]));
                y = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(-6.0f)), _mm512_set1_ps(6.0f));
                __m512 a = _mm512_abs_ps(y);
                __m512i idx = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(a, _mm512_set1_ps(0.25f), _CMP_GT_OQ), one);
#define NV_STEP(thr, pred) \
    idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(a, _mm512_set1_ps(thr), pred), idx, one)
                NV_STEP(0.75f, _CMP_GE_OQ); NV_STEP(1.25f, _CMP_GT_OQ); NV_STEP(1.75f, _CMP_GE_OQ);
                NV_STEP(2.5f, _CMP_GT_OQ); NV_STEP(3.5f, _CMP_GE_OQ); NV_STEP(5.0f, _CMP_GT_OQ);
#undef NV_STEP
                idx = _mm512_mask_or_epi32(idx, _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_LT_OQ),
                                           idx, _mm512_set1_epi32(8));
                __m512i p = _mm512_or_si512(idx, _mm512_srli_epi64(idx, 28));
                _mm_storel_epi64((void *)(prow + (k0 + k) * 8), _mm512_cvtepi64_epi8(p));
            }
        }
    }
}

// ---- W4A16, compressed-tensors ----------------------------------------------------------------

// The bf16 scale of a group with max |w| = m (w4a16.c ct_scale).
static inline float ct_scale(float m) {
    float s = bf16r(m / 7.5f);
    return s == 0.0f ? 0x1p-7f : s;
}

// Offset-binary codes of 8 lanes: round(clamp(BF16(w / s), -8, 7)) + 8.
T_AVX2 static inline __m256i ct_codes_256(__m256 w, __m256 s) {
    __m256 y = bf16r_256(_mm256_div_ps(w, s));
    y = _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(-8.0f)), _mm256_set1_ps(7.0f));
    y = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_add_epi32(_mm256_cvtps_epi32(y), _mm256_set1_epi32(8));
}
T_AVX512 static inline __m512i ct_codes_512(__m512 w, __m512 s) {
    __m512 y = bf16r_512(_mm512_div_ps(w, s));
    y = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(-8.0f)), _mm512_set1_ps(7.0f));
    y = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_add_epi32(_mm512_cvtps_epi32(y), _mm512_set1_epi32(8));
}

// 16 code lanes -> 8 bytes = two packed words (lane 2j low nibble of byte j).
T_AVX512 static inline uint64_t pack16_512(__m512i c) {
    __m512i p = _mm512_or_si512(c, _mm512_srli_epi64(c, 28));
    return (uint64_t)_mm_cvtsi128_si64(_mm512_cvtepi64_epi8(p));
}

T_AVX2 void fb_qsimd_w4a16_avx2(const float *w, size_t nrows, size_t cols, size_t group,
                                int32_t *packed, uint16_t *scale) {
    const size_t ng = cols / group;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (size_t r = 0; r < nrows; r++) {
        const float *row = w + r * cols;
        int32_t *prow = packed + r * (cols / 8);
        for (size_t k = 0; k < ng; k++) {
            const float *x = row + k * group;
            __m256 m = _mm256_setzero_ps();
            for (size_t i = 0; i < group; i += 8)
                m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + i), absmask));
            float s = ct_scale(hmax_256(m));
            scale[r * ng + k] = fb_f32_to_bf16(s);
            __m256 sv = _mm256_set1_ps(s);
            for (size_t i = 0; i < group; i += 8)
                prow[(k * group + i) / 8] = (int32_t)pack8_256(ct_codes_256(_mm256_loadu_ps(x + i), sv));
        }
    }
}

T_AVX512 void fb_qsimd_w4a16_avx512(const float *w, size_t nrows, size_t cols, size_t group,
                                    int32_t *packed, uint16_t *scale) {
    if (group % 16) {  // groups of 8, 24, ...: the AVX2 kernel handles them
        fb_qsimd_w4a16_avx2(w, nrows, cols, group, packed, scale);
        return;
    }
    const size_t ng = cols / group;
    for (size_t r = 0; r < nrows; r++) {
        const float *row = w + r * cols;
        int32_t *prow = packed + r * (cols / 8);
        for (size_t k = 0; k < ng; k++) {
            const float *x = row + k * group;
            __m512 m = _mm512_setzero_ps();
            for (size_t i = 0; i < group; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
            float s = ct_scale(_mm512_reduce_max_ps(m));
            scale[r * ng + k] = fb_f32_to_bf16(s);
            __m512 sv = _mm512_set1_ps(s);
            for (size_t i = 0; i < group; i += 16) {
                uint64_t v = pack16_512(ct_codes_512(_mm512_loadu_ps(x + i), sv));
                memcpy(prow + (k * group + i) / 8, &v, 8);
            }
        }
    }
}

// ---- AutoRound -----------------------------------------------------------------------------

// The signed fp16 scale from mx = max(max w, 0) and mn = -min(min w, 0) (w4a16.c ar_scale).
static inline uint16_t ar_scale(float mx, float mn) {
    float v = (mx < mn) ? mn : -mx;
    uint16_t h = fb_f32_to_f16(v / 8.0f);
    if (h & 0x8000u) {
        if ((h & 0x7FFFu) == 0) return AR_THRESH_F16;
        if ((h & 0x7FFFu) < AR_THRESH_F16) return 0x8000u | AR_THRESH_F16;
    } else if (h < AR_THRESH_F16) {
        return AR_THRESH_F16;
    }
    return h;
}

// Codes of 8 lanes: clamp(round(w / s), -8, 7) + 8.
T_AVX2 static inline __m256i ar_codes_256(__m256 w, __m256 s) {
    __m256 q = _mm256_round_ps(_mm256_div_ps(w, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps(-8.0f)), _mm256_set1_ps(7.0f));
    return _mm256_add_epi32(_mm256_cvtps_epi32(q), _mm256_set1_epi32(8));
}
T_AVX512 static inline __m512i ar_codes_512(__m512 w, __m512 s) {
    __m512 q = _mm512_roundscale_ps(_mm512_div_ps(w, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm512_min_ps(_mm512_max_ps(q, _mm512_set1_ps(-8.0f)), _mm512_set1_ps(7.0f));
    return _mm512_add_epi32(_mm512_cvtps_epi32(q), _mm512_set1_epi32(8));
}

T_AVX2 void fb_qsimd_autoround_avx2(const float *w, size_t nrows, size_t cols, size_t group,
                                    size_t o0, size_t ld, int32_t *qweight, uint16_t *scales) {
    fb_formats_init();
    for (size_t r = 0; r < nrows; r++) {
        const float *row = w + r * cols;
        size_t o = o0 + r;
        for (size_t k = 0; k < cols / group; k++) {
            const float *x = row + k * group;
            __m256 hi = _mm256_setzero_ps(), lo = _mm256_setzero_ps();
            for (size_t i = 0; i < group; i += 8) {
                __m256 v = _mm256_loadu_ps(x + i);
                hi = _mm256_max_ps(hi, v);
                lo = _mm256_min_ps(lo, v);
            }
            float mx = hmax_256(hi);
            float mn = hmax_256(_mm256_sub_ps(_mm256_setzero_ps(), lo));
            uint16_t h = ar_scale(mx, mn);
            scales[k * ld + o] = h;
            __m256 sv = _mm256_set1_ps(fb_f16_to_f32(h));
            for (size_t i = 0; i < group; i += 8)
                qweight[((k * group + i) / 8) * ld + o] =
                    (int32_t)pack8_256(ar_codes_256(_mm256_loadu_ps(x + i), sv));
        }
    }
}

T_AVX512 void fb_qsimd_autoround_avx512(const float *w, size_t nrows, size_t cols, size_t group,
                                        size_t o0, size_t ld, int32_t *qweight,
                                        uint16_t *scales) {
    if (group % 16) {
        fb_qsimd_autoround_avx2(w, nrows, cols, group, o0, ld, qweight, scales);
        return;
    }
    fb_formats_init();
    for (size_t r = 0; r < nrows; r++) {
        const float *row = w + r * cols;
        size_t o = o0 + r;
        for (size_t k = 0; k < cols / group; k++) {
            const float *x = row + k * group;
            __m512 hi = _mm512_setzero_ps(), lo = _mm512_setzero_ps();
            for (size_t i = 0; i < group; i += 16) {
                __m512 v = _mm512_loadu_ps(x + i);
                hi = _mm512_max_ps(hi, v);
                lo = _mm512_min_ps(lo, v);
            }
            float mx = _mm512_reduce_max_ps(hi);
            float mn = _mm512_reduce_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), lo));
            uint16_t h = ar_scale(mx, mn);
            scales[k * ld + o] = h;
            __m512 sv = _mm512_set1_ps(fb_f16_to_f32(h));
            for (size_t i = 0; i < group; i += 16) {
                uint64_t v = pack16_512(ar_codes_512(_mm512_loadu_ps(x + i), sv));
                size_t wi = (k * group + i) / 8;
                qweight[wi * ld + o] = (int32_t)(uint32_t)v;
                qweight[(wi + 1) * ld + o] = (int32_t)(uint32_t)(v >> 32);
            }
        }
    }
}

#endif  // __x86_64__

#if defined(__aarch64__)
// ---- NEON (aarch64) --------------------------------------------------------------------------
// The same steps as the AVX2 kernels above on 4 f32 lanes (vdivq_f32 is correctly rounded;
// vrndnq_f32 rounds half to even like nearbyintf in the default mode; AArch64 Linux runs with
// FPCR.FZ clear, so subnormals are kept). SVE is not used: the Grace-class cores of GB10
// implement it at 128 bits, the width of NEON, so it would add predication, not lanes.
#include <arm_neon.h>

#define CHUNK 64  // groups per chunk (a multiple of 4)
#define AR_THRESH_F16 0x00A8u

static inline float bf16r(float x) { return fb_bf16_to_f32(fb_f32_to_bf16(x)); }

float fb_qsimd_absmax_neon(const float *x, size_t n) {
    const uint32x4_t mask = vdupq_n_u32(0x7FFFFFFF);
    uint32x4_t a0 = vdupq_n_u32(0), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = vmaxq_u32(a0, vandq_u32(vld1q_u32((const uint32_t *)(const void *)(x + i)), mask));
        a1 = vmaxq_u32(a1, vandq_u32(vld1q_u32((const uint32_t *)(const void *)(x + i + 4)), mask));
        a2 = vmaxq_u32(a2, vandq_u32(vld1q_u32((const uint32_t *)(const void *)(x + i + 8)), mask));
        a3 = vmaxq_u32(a3, vandq_u32(vld1q_u32((const uint32_t *)(const void *)(x + i + 12)), mask));
    }
    uint32_t m = vmaxvq_u32(vmaxq_u32(vmaxq_u32(a0, a1), vmaxq_u32(a2, a3)));
    for (; i < n; i++) {
        uint32_t b = fb_f32_bits(x[i]) & 0x7FFFFFFFu;
        m = b > m ? b : m;
    }
    return fb_bits_f32(m);
}

// bf16 round-to-nearest-even of finite f32 lanes, on the bits (as fb_f32_to_bf16).
static inline float32x4_t bf16r_neon(float32x4_t x) {
    uint32x4_t u = vreinterpretq_u32_f32(x);
    uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    u = vaddq_u32(u, vaddq_u32(lsb, vdupq_n_u32(0x7FFF)));
    return vreinterpretq_f32_u32(vandq_u32(u, vdupq_n_u32(0xFFFF0000u)));
}

// Group scales of 4 groups from their maxima m (nv_scales_256, spec §1.2).
static inline void nv_scales_neon(float32x4_t m, float32x4_t g, uint32x4_t *code, float32x4_t *t) {
    float32x4_t s1 = bf16r_neon(vdivq_f32(m, vdupq_n_f32(6.0f)));
    float32x4_t s2 = vminq_f32(vmulq_f32(g, s1), vdupq_n_f32(448.0f));
    uint32x4_t a = vreinterpretq_u32_f32(s2);
    uint32x4_t lsb = vandq_u32(vshrq_n_u32(a, 20), vdupq_n_u32(1));
    uint32x4_t r = vandq_u32(vaddq_u32(a, vaddq_u32(lsb, vdupq_n_u32(0x7FFFF))), vdupq_n_u32(0xFFF00000u));
    uint32x4_t cn = vsubq_u32(vshrq_n_u32(r, 20), vdupq_n_u32(960));  // (e-120)<<3|m
    float32x4_t q = vrndnq_f32(vmulq_f32(s2, vdupq_n_f32(512.0f)));
    float32x4_t vs = vmulq_f32(q, vdupq_n_f32(1.0f / 512.0f));
    uint32x4_t cs = vreinterpretq_u32_s32(vcvtq_s32_f32(q));
    uint32x4_t isn = vcgeq_f32(s2, vdupq_n_f32(0x1p-6f));
    float32x4_t s3 = vbslq_f32(isn, vreinterpretq_f32_u32(r), vs);
    uint32x4_t c = vbslq_u32(isn, cn, cs);
    uint32x4_t z = vceqq_f32(s3, vdupq_n_f32(0.0f));  // zero scale -> 0.125, code 0x20
    s3 = vbslq_f32(z, vdupq_n_f32(0.125f), s3);
    *code = vbslq_u32(z, vdupq_n_u32(0x20), c);
    *t = vdivq_f32(s3, g);
}

// FP4 nibbles of 4 lanes of w / t (spec §0.1, §1.3): each true compare is all-ones, so
// subtracting the mask adds 1 to the magnitude index.
static inline uint32x4_t nv_nibbles_neon(float32x4_t w, float32x4_t t) {
    float32x4_t y = vdivq_f32(w, t);
    y = vminq_f32(vmaxq_f32(y, vdupq_n_f32(-6.0f)), vdupq_n_f32(6.0f));
    float32x4_t a = vabsq_f32(y);
    uint32x4_t idx = vsubq_u32(vdupq_n_u32(0), vcgtq_f32(a, vdupq_n_f32(0.25f)));
    idx = vsubq_u32(idx, vcgeq_f32(a, vdupq_n_f32(0.75f)));
    idx = vsubq_u32(idx, vcgtq_f32(a, vdupq_n_f32(1.25f)));
    idx = vsubq_u32(idx, vcgeq_f32(a, vdupq_n_f32(1.75f)));
    idx = vsubq_u32(idx, vcgtq_f32(a, vdupq_n_f32(2.5f)));
    idx = vsubq_u32(idx, vcgeq_f32(a, vdupq_n_f32(3.5f)));
    idx = vsubq_u32(idx, vcgtq_f32(a, vdupq_n_f32(5.0f)));
    uint32x4_t neg = vcltq_f32(y, vdupq_n_f32(0.0f));
    return vorrq_u32(idx, vandq_u32(neg, vdupq_n_u32(8)));
}

// 8 nibble lanes (values 0..15, lanes 0-3 in a, 4-7 in b) -> one little-endian u32: lane i
// in bits 4i..4i+3. Narrowed to bytes, each u16 holds lanes 2j (low byte) and 2j+1 (high);
// adding it shifted right by 4 puts 2j | (2j+1) << 4 in the low byte (no carries: <= 255).
static inline uint32_t pack8_neon(uint32x4_t a, uint32x4_t b) {
    uint8x8_t c = vmovn_u16(vcombine_u16(vmovn_u32(a), vmovn_u32(b)));
    uint16x4_t p = vreinterpret_u16_u8(c);
    p = vsra_n_u16(p, p, 4);
    return vget_lane_u32(vreinterpret_u32_u8(vmovn_u16(vcombine_u16(p, p))), 0);
}

// 16 nibble lanes -> 8 bytes (lane 2j low nibble of byte j).
static inline uint64_t pack16_neon(uint32x4_t c0, uint32x4_t c1, uint32x4_t c2, uint32x4_t c3) {
    uint8x16_t b = vcombine_u8(vmovn_u16(vcombine_u16(vmovn_u32(c0), vmovn_u32(c1))),
                               vmovn_u16(vcombine_u16(vmovn_u32(c2), vmovn_u32(c3))));
    uint16x8_t p = vreinterpretq_u16_u8(b);
    p = vsraq_n_u16(p, p, 4);
    return vget_lane_u64(vreinterpret_u64_u8(vmovn_u16(p)), 0);
}

void fb_qsimd_nvfp4_neon(const float *w, size_t nrows, size_t cols, float g, uint8_t *packed,
                         uint8_t *scale) {
    const size_t ng = cols / 16;
    const float32x4_t gv = vdupq_n_f32(g);
    float mx[CHUNK], tt[CHUNK];
    uint32_t cc[CHUNK];
    for (size_t r = 0; r < nrows; r++) {
        const float *row = w + r * cols;
        uint8_t *prow = packed + r * (cols / 2), *srow = scale + r * ng;
        for (size_t k0 = 0; k0 < ng; k0 += CHUNK) {
            size_t nk = ng - k0 < CHUNK ? ng - k0 : CHUNK;
            for (size_t k = 0; k < nk; k++) {
                const float *x = row + (k0 + k) * 16;
                float32x4_t m = vmaxq_f32(vmaxq_f32(vabsq_f32(vld1q_f32(x)), vabsq_f32(vld1q_f32(x + 4))),
                                          vmaxq_f32(vabsq_f32(vld1q_f32(x + 8)), vabsq_f32(vld1q_f32(x + 12))));
                mx[k] = vmaxvq_f32(m);
            }
            for (size_t k = nk; k % 4; k++) mx[k] = 0.0f;
            for (size_t k = 0; k < nk; k += 4) {
                uint32x4_t c;
                float32x4_t t;
                nv_scales_neon(vld1q_f32(mx + k), gv, &c, &t);
                vst1q_u32(cc + k, c);
                vst1q_f32(tt + k, t);
            }
            for (size_t k = 0; k < nk; k++) {
                const float *x = row + (k0 + k) * 16;
                float32x4_t t = vdupq_n_f32(tt[k]);
                uint64_t v = pack16_neon(nv_nibbles_neon(vld1q_f32(x), t), nv_nibbles_neon(vld1q_f32(x + 4), t),
                                         nv_nibbles_neon(vld1q_f32(x + 8), t), nv_nibbles_neon(vld1q_f32(x + 12), t));
                memcpy(prow + (k0 + k) * 8, &v, 8);
                srow[k0 + k] = (uint8_t)cc[k];
            }
        }
    }
}

// ---- W4A16 (compressed-tensors) and AutoRound, NEON ------------------------------------------

static inline float ct_scale(float m) {
    float s = bf16r(m / 7.5f);
    return s == 0.0f ? 0x1p-7f : s;
}

// Offset-binary codes: round(clamp(BF16(w / s), -8, 7)) + 8.
static inline uint32x4_t ct_codes_neon(float32x4_t w, float32x4_t s) {
    float32x4_t y = bf16r_neon(vdivq_f32(w, s));
    y = vrndnq_f32(vminq_f32(vmaxq_f32(y, vdupq_n_f32(-8.0f)), vdupq_n_f32(7.0f)));
    return vreinterpretq_u32_s32(vaddq_s32(vcvtq_s32_f32(y), vdupq_n_s32(8)));
}

static inline float32x4_t absmax4(const float *x, size_t n) {
    float32x4_t m = vdupq_n_f32(0.0f);
    for (size_t i = 0; i < n; i += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + i)));
    return m;
}

void fb_qsimd_w4a16_neon(const float *w, size_t nrows, size_t cols, size_t group,
                         int32_t *packed, uint16_t *scale) {
    FB_ASSERT(group % 8 == 0);  // w4a16.c gives other groups to the reference
    const size_t ng = cols / group;
    for (size_t r = 0; r < nrows; r++) {
        const float *row = w + r * cols;
        int32_t *prow = packed + r * (cols / 8);
        for (size_t k = 0; k < ng; k++) {
            const float *x = row + k * group;
            float s = ct_scale(vmaxvq_f32(absmax4(x, group)));
            scale[r * ng + k] = fb_f32_to_bf16(s);
            float32x4_t sv = vdupq_n_f32(s);
            size_t i = 0;
            for (; i + 16 <= group; i += 16) {
                const float *y = x + i;
                uint64_t v = pack16_neon(ct_codes_neon(vld1q_f32(y), sv), ct_codes_neon(vld1q_f32(y + 4), sv),
                                         ct_codes_neon(vld1q_f32(y + 8), sv), ct_codes_neon(vld1q_f32(y + 12), sv));
                memcpy(prow + (k * group + i) / 8, &v, 8);
            }
            for (; i < group; i += 8)
                prow[(k * group + i) / 8] =
                    (int32_t)pack8_neon(ct_codes_neon(vld1q_f32(x + i), sv), ct_codes_neon(vld1q_f32(x + i + 4), sv));
        }
    }
}

// The signed fp16 scale from mx = max(max w, 0) and mn = -min(min w, 0) (w4a16.c ar_scale).
static inline uint16_t ar_scale(float mx, float mn) {
    float v = (mx < mn) ? mn : -mx;
    uint16_t h = fb_f32_to_f16(v / 8.0f);
    if (h & 0x8000u) {
        if ((h & 0x7FFFu) == 0) return AR_THRESH_F16;
        if ((h & 0x7FFFu) < AR_THRESH_F16) return 0x8000u | AR_THRESH_F16;
    } else if (h < AR_THRESH_F16) {
        return AR_THRESH_F16;
    }
    return h;
}

// Codes: clamp(round(w / s), -8, 7) + 8.
static inline uint32x4_t ar_codes_neon(float32x4_t w, float32x4_t s) {
    float32x4_t q = vrndnq_f32(vdivq_f32(w, s));
    q = vminq_f32(vmaxq_f32(q, vdupq_n_f32(-8.0f)), vdupq_n_f32(7.0f));
    return vreinterpretq_u32_s32(vaddq_s32(vcvtq_s32_f32(q), vdupq_n_s32(8)));
}

void fb_qsimd_autoround_neon(const float *w, size_t nrows, size_t cols, size_t group, size_t o0,
                             size_t ld, int32_t *qweight, uint16_t *scales) {
    FB_ASSERT(group % 8 == 0);
    fb_formats_init();
    for (size_t r = 0; r < nrows; r++) {
        const float *row = w + r * cols;
        size_t o = o0 + r;
        for (size_t k = 0; k < cols / group; k++) {
            const float *x = row + k * group;
            float32x4_t hi = vdupq_n_f32(0.0f), lo = hi;
            for (size_t i = 0; i < group; i += 4) {
                float32x4_t v = vld1q_f32(x + i);
                hi = vmaxq_f32(hi, v);
                lo = vminq_f32(lo, v);
            }
            float mx = vmaxvq_f32(hi);
            float mn = vmaxvq_f32(vsubq_f32(vdupq_n_f32(0.0f), lo));
            uint16_t h = ar_scale(mx, mn);
            scales[k * ld + o] = h;
            float32x4_t sv = vdupq_n_f32(fb_f16_to_f32(h));
            for (size_t i = 0; i < group; i += 8)
                qweight[((k * group + i) / 8) * ld + o] =
                    (int32_t)pack8_neon(ar_codes_neon(vld1q_f32(x + i), sv), ar_codes_neon(vld1q_f32(x + i + 4), sv));
        }
    }
}
#endif  // __aarch64__
