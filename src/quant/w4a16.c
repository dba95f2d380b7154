// w4a16.c: int4 group quantization, compressed-tensors and AutoRound layouts (see w4a16.h).
// Scalar reference kernels here; the AVX2 / AVX-512 / NEON fast paths are in quant_simd.c.
#include "quant/w4a16.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#include "common/fb.h"
#include "quant/formats.h"
#include "quant/quant_simd.h"
#include "quant/simd_cpu.h"

static inline float bf16r(float x) { return fb_bf16_to_f32(fb_f32_to_bf16(x)); }

static void check_shape(size_t cols, size_t group) {
    FB_ASSERT(group > 0 && cols % group == 0 && cols % 8 == 0);
}

// ---- compressed-tensors pack-quantized ---------------------------------------------------

// The bf16 scale of a group with max |w| = m (calculate_qparams, symmetric int4).
static inline float ct_scale(float m) {
    float s = bf16r(m / 7.5f);
    return s == 0.0f ? FB_W4A16_CT_EPS : s;
}

// The offset-binary code u = q + 8 of one element (forward_helpers._quantize, int8 output).
static inline uint32_t ct_code(float x, float s) {
    float y = bf16r(x / s);                    // bf16 / bf16 -> bf16
    y = fminf(fmaxf(y, -8.0f), 7.0f);          // clamp to [q_min, q_max] first,
    return (uint32_t)((int)nearbyintf(y) + 8); // then torch.round: half to even
}

void fb_w4a16_quantize_rows_ref(const float *w, size_t nrows, size_t cols, size_t group,
                                int32_t *packed, uint16_t *scale) {
    check_shape(cols, group);
    size_t ng = cols / group;
    for (size_t r = 0; r < nrows; r++) {
        const float *row = w + r * cols;
        for (size_t k = 0; k < ng; k++) {
            const float *x = row + k * group;
            float m = 0.0f;
            for (size_t i = 0; i < group; i++) m = fmaxf(m, fabsf(x[i]));
            float s = ct_scale(m);
            scale[r * ng + k] = fb_f32_to_bf16(s);
            for (size_t i = 0; i < group; i += 8) {
                uint32_t word = 0;
                for (int j = 0; j < 8; j++) word |= ct_code(x[i + j], s) << (4 * j);
                packed[r * (cols / 8) + (k * group + i) / 8] = (int32_t)word;
            }
        }
    }
}

void fb_w4a16_pack_rows_fixed(const float *w, size_t nrows, size_t cols, size_t group,
                              const uint16_t *scale, int32_t *packed) {
    check_shape(cols, group);
    size_t ng = cols / group;
    for (size_t r = 0; r < nrows; r++)
        for (size_t k = 0; k < ng; k++) {
            float s = fb_bf16_to_f32(scale[r * ng + k]);
            const float *x = w + r * cols + k * group;
            for (size_t i = 0; i < group; i += 8) {
                uint32_t word = 0;
                for (int j = 0; j < 8; j++) word |= ct_code(x[i + j], s) << (4 * j);
                packed[r * (cols / 8) + (k * group + i) / 8] = (int32_t)word;
            }
        }
}

void fb_w4a16_dequant_rows(const int32_t *packed, const uint16_t *scale, size_t nrows,
                           size_t cols, size_t group, float *out) {
    check_shape(cols, group);
    float lut[16];  // per group: code u -> BF16((u - 8) * s), the per-element formula
    for (size_t r = 0; r < nrows; r++)
        for (size_t k = 0; k < cols / group; k++) {
            float s = fb_bf16_to_f32(scale[r * (cols / group) + k]);
            for (int u = 0; u < 16; u++) lut[u] = bf16r((float)(u - 8) * s);
            for (size_t c = k * group; c < (k + 1) * group; c += 8) {
                uint32_t word = (uint32_t)packed[r * (cols / 8) + c / 8];
                for (int j = 0; j < 8; j++) out[r * cols + c + j] = lut[(word >> (4 * j)) & 15];
            }
        }
}

// ---- AutoRound ---------------------------------------------------------------------------

// fp16(1e-5): the magnitude floor of an AutoRound scale (q_scale_thresh).
#define AR_THRESH_F16 0x00A8u

// The signed fp16 scale of a group with max(max(w),0) = mx and -min(min(w),0) = mn.
static inline uint16_t ar_scale(float mx, float mn) {
    float v = (mx < mn) ? mn : -mx;  // (2*(wmax_abs < wmin_abs) - 1) * max(wmax_abs, wmin_abs)
    uint16_t h = fb_f32_to_f16(v / 8.0f);
    // torch.where(s < 0, clamp(s, max=-thr), clamp(s, min=thr)); -0.0 is not < 0
    if (h & 0x8000u) {
        if ((h & 0x7FFFu) == 0) return AR_THRESH_F16;          // -0.0 -> +thr
        if ((h & 0x7FFFu) < AR_THRESH_F16) return 0x8000u | AR_THRESH_F16;
    } else if (h < AR_THRESH_F16) {
        return AR_THRESH_F16;
    }
    return h;
}

static inline uint32_t ar_code(float x, float s) {
    float q = nearbyintf(x / s);                 // round_() : half to even
    q = fminf(fmaxf(q, -8.0f), 7.0f);            // clamp_(-8, 7)
    return (uint32_t)((int)q + 8);
}

void fb_autoround_quantize_rows_ref(const float *w, size_t nrows, size_t cols, size_t group,
                                    size_t o0, size_t ld, int32_t *qweight, uint16_t *scales) {
    check_shape(cols, group);
    FB_ASSERT(o0 + nrows <= ld);
    fb_formats_init();
    for (size_t r = 0; r < nrows; r++) {
        const float *row = w + r * cols;
        size_t o = o0 + r;
        for (size_t k = 0; k < cols / group; k++) {
            const float *x = row + k * group;
            float mx = 0.0f, mn = 0.0f;
            for (size_t i = 0; i < group; i++) {
                mx = fmaxf(mx, x[i]);
                mn = fmaxf(mn, -x[i]);
            }
            uint16_t h = ar_scale(mx, mn);
            scales[k * ld + o] = h;
            float s = fb_f16_to_f32(h);
            for (size_t i = 0; i < group; i += 8) {
                uint32_t word = 0;
                for (int j = 0; j < 8; j++) word |= ar_code(x[i + j], s) << (4 * j);
                qweight[((k * group + i) / 8) * ld + o] = (int32_t)word;
            }
        }
    }
}

void fb_autoround_pack_rows_fixed(const float *w, size_t nrows, size_t cols, size_t group, size_t o0,
                                  size_t ld, const uint16_t *scales, int32_t *qweight) {
    check_shape(cols, group);
    FB_ASSERT(o0 + nrows <= ld);
    fb_formats_init();
    for (size_t r = 0; r < nrows; r++) {
        size_t o = o0 + r;
        for (size_t k = 0; k < cols / group; k++) {
            const float *x = w + r * cols + k * group;
            float s = fb_f16_to_f32(scales[k * ld + o]);
            for (size_t i = 0; i < group; i += 8) {
                uint32_t word = 0;
                for (int j = 0; j < 8; j++) word |= ar_code(x[i + j], s) << (4 * j);
                qweight[((k * group + i) / 8) * ld + o] = (int32_t)word;
            }
        }
    }
}

void fb_autoround_qzeros(size_t cols, size_t out, size_t group, int zp_minus_one,
                         int32_t *qzeros) {
    check_shape(cols, group);
    uint32_t v = zp_minus_one ? FB_AUTOROUND_ZEROS_GPTQ : FB_AUTOROUND_ZEROS_DIRECT;
    size_t n = (cols / group) * ((out + 7) / 8);
    for (size_t i = 0; i < n; i++) qzeros[i] = (int32_t)v;
}

void fb_autoround_g_idx(size_t cols, size_t group, int32_t *g_idx) {
    FB_ASSERT(group > 0);
    for (size_t i = 0; i < cols; i++) g_idx[i] = (int32_t)(i / group);
}

void fb_autoround_dequant_rows(const int32_t *qweight, const uint16_t *scales, size_t nrows,
                               size_t cols, size_t group, size_t o0, size_t ld, float *out) {
    check_shape(cols, group);
    FB_ASSERT(o0 + nrows <= ld);
    for (size_t r = 0; r < nrows; r++)
        for (size_t c = 0; c < cols; c++) {
            uint32_t word = (uint32_t)qweight[(c / 8) * ld + o0 + r];
            int q = (int)((word >> (4 * (c % 8))) & 15) - 8;
            out[r * cols + c] = fb_f16_to_f32(scales[(c / group) * ld + o0 + r]) * (float)q;
        }
}

// ---- dispatch ------------------------------------------------------------------------------

typedef struct w4_impl {
    const char *name;
    void (*ct)(const float *w, size_t nrows, size_t cols, size_t group, int32_t *packed,
               uint16_t *scale);
    void (*ar)(const float *w, size_t nrows, size_t cols, size_t group, size_t o0, size_t ld,
               int32_t *qweight, uint16_t *scales);
} w4_impl;

static w4_impl impl;
static pthread_once_t impl_once = PTHREAD_ONCE_INIT;

static void pick_impl(void) {
    fb_formats_init();
    impl = (w4_impl){"scalar", fb_w4a16_quantize_rows_ref, fb_autoround_quantize_rows_ref};
#if defined(__x86_64__)
    if (fb_qsimd_allowed("avx2") && fb_qsimd_have_avx2())
        impl = (w4_impl){"avx2", fb_qsimd_w4a16_avx2, fb_qsimd_autoround_avx2};
    if (fb_qsimd_allowed("avx512") && fb_qsimd_have_avx512())
        impl = (w4_impl){"avx512", fb_qsimd_w4a16_avx512, fb_qsimd_autoround_avx512};
#elif defined(__aarch64__)
    if (fb_qsimd_allowed("neon") && fb_qsimd_have_neon())
        impl = (w4_impl){"neon", fb_qsimd_w4a16_neon, fb_qsimd_autoround_neon};
#endif
}

void fb_w4a16_quantize_rows(const float *w, size_t nrows, size_t cols, size_t group,
                            int32_t *packed, uint16_t *scale) {
    check_shape(cols, group);
    pthread_once(&impl_once, pick_impl);
    // The fast paths pack whole groups into 32-bit words: a group that is not a multiple of 8
    // makes words straddle groups, which the reference handles.
    if (group % 8) fb_w4a16_quantize_rows_ref(w, nrows, cols, group, packed, scale);
    else impl.ct(w, nrows, cols, group, packed, scale);
}

void fb_autoround_quantize_rows(const float *w, size_t nrows, size_t cols, size_t group,
                                size_t o0, size_t ld, int32_t *qweight, uint16_t *scales) {
    check_shape(cols, group);
    FB_ASSERT(o0 + nrows <= ld);
    pthread_once(&impl_once, pick_impl);
    if (group % 8) fb_autoround_quantize_rows_ref(w, nrows, cols, group, o0, ld, qweight, scales);
    else impl.ar(w, nrows, cols, group, o0, ld, qweight, scales);
}

const char *fb_w4a16_impl(void) {
    pthread_once(&impl_once, pick_impl);
    return impl.name;
}
