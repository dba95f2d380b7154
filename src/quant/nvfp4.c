// nvfp4.c: NVFP4 quantization (see nvfp4.h). The scalar reference kernels live here; the
// AVX2 / AVX-512 / NEON fast paths are in quant_simd.c and are chosen once per process.
#include "quant/nvfp4.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#include "common/fb.h"
#include "quant/formats.h"
#include "quant/quant_simd.h"
#include "quant/simd_cpu.h"

static inline float bf16r(float x) { return fb_bf16_to_f32(fb_f32_to_bf16(x)); }

// E2M1 magnitudes by index; the table the nibble decodes through.
static const float fp4_mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

float fb_nvfp4_absmax_ref(const float *x, size_t n) {
    uint32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t a = fb_f32_bits(x[i]) & 0x7FFFFFFFu;  // order-preserving for |x|, NaN on top
        if (a > m) m = a;
    }
    return fb_bits_f32(m);
}

float fb_nvfp4_global_scale(float amax) {
    if (isnan(amax)) return 1.0f;                     // nan_to_num(nan=1)
    float a = fmaxf(fabsf(amax), 0x1p-126f);          // clamp(min=finfo(bf16).tiny)
    float r = bf16r(1.0f / a);                        // Tensor.__rdiv__: reciprocal() in bf16
    float g = bf16r(r * 2688.0f);                     // ... times 448*6, in bf16
    return isfinite(g) ? g : 1.0f;                    // nan_to_num(posinf=1)
}

float fb_nvfp4_fused_global_scale(const float *amax, size_t n) {
    FB_ASSERT(n >= 1);
    float m = fabsf(amax[0]);
    for (size_t i = 1; i < n; i++) {
        if (isnan(amax[i])) m = amax[i];
        else if (!isnan(m) && fabsf(amax[i]) > m) m = fabsf(amax[i]);
    }
    return fb_nvfp4_global_scale(m);
}

float fb_nvfp4_input_global_scale(float act_absmax) {
    return fb_nvfp4_global_scale(bf16r(fabsf(act_absmax)));
}

uint8_t fb_nvfp4_fp4_nibble(float y) {
    y = fminf(fmaxf(y, -FB_NVFP4_FP4_MAX), FB_NVFP4_FP4_MAX);
    float a = fabsf(y);
    // cast_to_fp4's table: ties at 0.25, 0.75, ... go to the even mantissa (round half even)
    unsigned idx = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) +
                   (a >= 3.5f) + (a > 5.0f);
    return (uint8_t)(idx | (y < 0.0f ? 8u : 0u));
}

float fb_nvfp4_fp4_value(uint8_t nibble) {
    float v = fp4_mag[nibble & 7];
    return (nibble & 8) ? -v : v;
}

// The fp8 block scale of a 16-group whose max |w| is m: returns the e4m3 code and sets *s3
// to its value (0.125 for a zero scale, code 0x20).
static inline uint8_t group_scale(float m, float g, float *s3) {
    float s1 = bf16r(m / 6.0f);
    float s2 = g * s1;
    if (s2 > FB_NVFP4_FP8_MAX) s2 = FB_NVFP4_FP8_MAX;
    uint8_t code = fb_f32_to_e4m3(s2);
    float v = fb_e4m3_to_f32(code);
    if (v == 0.0f) {
        v = FB_NVFP4_SCALE_EPS;
        code = 0x20;  // 0.125 = 2^-3: E = 4, M = 0
    }
    *s3 = v;
    return code;
}

void fb_nvfp4_quantize_rows_ref(const float *w, size_t nrows, size_t cols, float g,
                                uint8_t *packed, uint8_t *scale) {
    FB_ASSERT(cols % FB_NVFP4_GROUP == 0);
    fb_formats_init();
    size_t ng = cols / FB_NVFP4_GROUP;
    for (size_t r = 0; r < nrows; r++) {
        const float *row = w + r * cols;
        for (size_t k = 0; k < ng; k++) {
            const float *x = row + k * FB_NVFP4_GROUP;
            float m = fb_nvfp4_absmax_ref(x, FB_NVFP4_GROUP), s3;
            scale[r * ng + k] = group_scale(m, g, &s3);
            float t = s3 / g;  // "scale = scale / global_scale"
            uint8_t *o = packed + r * (cols / 2) + k * (FB_NVFP4_GROUP / 2);
            for (int i = 0; i < FB_NVFP4_GROUP; i += 2) {
                uint8_t lo = fb_nvfp4_fp4_nibble(x[i] / t);      // "scaled = x / scale"
                uint8_t hi = fb_nvfp4_fp4_nibble(x[i + 1] / t);
                o[i / 2] = (uint8_t)(lo | (hi << 4));
            }
        }
    }
}

// Dequantization goes through a 16-entry table per group: entry n = BF16(fp4(n) * (s3/g)),
// exactly the per-element formula, computed 16 times instead of 16 times per group.
static inline void dequant_lut(uint8_t scale_code, float g, float lut[16]) {
    float t = fb_e4m3_to_f32(scale_code) / g;  // "scale = scale / global_scale"
    for (int n = 0; n < 16; n++) lut[n] = bf16r(fb_nvfp4_fp4_value((uint8_t)n) * t);
}

void fb_nvfp4_dequant_rows(const uint8_t *packed, const uint8_t *scale, size_t nrows,
                           size_t cols, float g, float *out) {
    FB_ASSERT(cols % FB_NVFP4_GROUP == 0);
    fb_formats_init();
    size_t ng = cols / FB_NVFP4_GROUP;
    float lut[16];
    for (size_t r = 0; r < nrows; r++)
        for (size_t k = 0; k < ng; k++) {
            dequant_lut(scale[r * ng + k], g, lut);
            const uint8_t *p = packed + r * (cols / 2) + k * (FB_NVFP4_GROUP / 2);
            float *o = out + r * cols + k * FB_NVFP4_GROUP;
            for (int i = 0; i < FB_NVFP4_GROUP / 2; i++) {
                o[2 * i] = lut[p[i] & 15];
                o[2 * i + 1] = lut[p[i] >> 4];
            }
        }
}

void fb_nvfp4_dequant_rows_bf16(const uint8_t *packed, const uint8_t *scale, size_t nrows,
                                size_t cols, float g, uint16_t *out) {
    FB_ASSERT(cols % FB_NVFP4_GROUP == 0);
    fb_formats_init();
    size_t ng = cols / FB_NVFP4_GROUP;
    float lut[16];
    uint16_t lb[16];
    for (size_t r = 0; r < nrows; r++)
        for (size_t k = 0; k < ng; k++) {
            dequant_lut(scale[r * ng + k], g, lut);
            for (int n = 0; n < 16; n++) lb[n] = (uint16_t)(fb_f32_bits(lut[n]) >> 16);
            const uint8_t *p = packed + r * (cols / 2) + k * (FB_NVFP4_GROUP / 2);
            uint16_t *o = out + r * cols + k * FB_NVFP4_GROUP;
            for (int i = 0; i < FB_NVFP4_GROUP / 2; i++) {
                o[2 * i] = lb[p[i] & 15];
                o[2 * i + 1] = lb[p[i] >> 4];
            }
        }
}

// ---- dispatch --------------------------------------------------------------------------------

typedef struct nvfp4_impl {
    const char *name;
    float (*absmax)(const float *x, size_t n);
    void (*quant)(const float *w, size_t nrows, size_t cols, float g, uint8_t *packed,
                  uint8_t *scale);
} nvfp4_impl;

static nvfp4_impl impl;
static pthread_once_t impl_once = PTHREAD_ONCE_INIT;

static void pick_impl(void) {
    fb_formats_init();
    impl = (nvfp4_impl){"scalar", fb_nvfp4_absmax_ref, fb_nvfp4_quantize_rows_ref};
#if defined(__x86_64__)
    if (fb_qsimd_allowed("avx2") && fb_qsimd_have_avx2())
        impl = (nvfp4_impl){"avx2", fb_qsimd_absmax_avx2, fb_qsimd_nvfp4_avx2};
    if (fb_qsimd_allowed("avx512") && fb_qsimd_have_avx512())
        impl = (nvfp4_impl){"avx512", fb_qsimd_absmax_avx512, fb_qsimd_nvfp4_avx512};
#elif defined(__aarch64__)
    if (fb_qsimd_allowed("neon") && fb_qsimd_have_neon())
        impl = (nvfp4_impl){"neon", fb_qsimd_absmax_neon, fb_qsimd_nvfp4_neon};
#endif
}

float fb_nvfp4_absmax(const float *x, size_t n) {
    pthread_once(&impl_once, pick_impl);
    return impl.absmax(x, n);
}

void fb_nvfp4_quantize_rows(const float *w, size_t nrows, size_t cols, float g,
                            uint8_t *packed, uint8_t *scale) {
    FB_ASSERT(cols % FB_NVFP4_GROUP == 0);
    pthread_once(&impl_once, pick_impl);
    impl.quant(w, nrows, cols, g, packed, scale);
}

const char *fb_nvfp4_impl(void) {
    pthread_once(&impl_once, pick_impl);
    return impl.name;
}

// ---- activations -------------------------------------------------------------------------

static inline float bf16r_(float x) { return fb_bf16_to_f32(fb_f32_to_bf16(x)); }

void fb_w4a4_fake_quant_rows(float *x, size_t rows, size_t cols, float gs) {
    FB_ASSERT(cols % 16 == 0);
    fb_formats_init();
    const float r6 = (float)(1.0 / 6.0);  // get_reciprocal(6.0) as the f32 operand
    const float rgs = gs == 0.0f ? 0.0f : 1.0f / gs;
    for (size_t r = 0; r < rows; r++)
        for (size_t c0 = 0; c0 < cols; c0 += 16) {
            float *v = x + r * cols + c0;
            float m = 0.0f;
            for (int i = 0; i < 16; i++) {
                v[i] = bf16r_(v[i]);
                float a = fabsf(v[i]);
                if (a > m) m = a;
            }
            float s = gs * (m * r6);
            s = s > 448.0f ? 448.0f : s < -448.0f ? -448.0f : s;
            s = fb_e4m3_to_f32(fb_f32_to_e4m3(s));
            float d = s * rgs;
            float o = d == 0.0f ? 0.0f : 1.0f / d;
            float bs = s / gs;
            for (int i = 0; i < 16; i++) {
                float q = fb_nvfp4_fp4_value(fb_nvfp4_fp4_nibble(v[i] * o));
                v[i] = bf16r_(q * bs);
            }
        }
}
