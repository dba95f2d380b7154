// formats.c: decode tables and conversions; see formats.h.
#include "quant/formats.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#include "quant/simd_cpu.h"

#if defined(__aarch64__)
#include <arm_neon.h>
#endif

float fb_e4m3_lut[256];
float fb_e5m2_lut[256];

static void build_tables(void) {
    for (int b = 0; b < 256; b++) {
        int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
        float v;
        if ((b & 0x7F) == 0x7F) v = NAN;
        else if (e == 0) v = ldexpf((float)m / 8.0f, -6);
        else v = ldexpf(1.0f + (float)m / 8.0f, e - 7);
        fb_e4m3_lut[b] = s ? -v : v;

        e = (b >> 2) & 31; m = b & 3;
        if (e == 31) v = m ? NAN : INFINITY;
        else if (e == 0) v = ldexpf((float)m / 4.0f, -14);
        else v = ldexpf(1.0f + (float)m / 4.0f, e - 15);
        fb_e5m2_lut[b] = s ? -v : v;
    }
}

static pthread_once_t once = PTHREAD_ONCE_INIT;
void fb_formats_init(void) { pthread_once(&once, build_tables); }

uint16_t fb_f32_to_f16(float f) {
    uint32_t x = fb_f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7E00u;   // NaN
    if (a >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 rounds to Inf
    if (a >= 0x38800000u) {                       // normal half
        uint32_t r = a + 0xFFFu + ((a >> 13) & 1u) - 0x38000000u;  // rebias 127 -> 15
        return sign | (uint16_t)(r >> 13);
    }
    if (a < 0x33000000u) return sign;             // < 2^-25: rounds to zero
    // subnormal half: value = a * 2^24 rounded to integer, RNE
    uint32_t e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u;
    int shift = (int)(126 - e);                   // 14 - (e-127) + 13 - 1 ... -> mantissa shift
    // half subnormal unit is 2^-24; f = m * 2^(e-150); q = f / 2^-24 = m * 2^(e-126)
    shift = (int)(126 - e);
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return sign | (uint16_t)q;
}

float fb_f16_to_f32(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 0x3FFu;
    if (e == 31) return fb_bits_f32(s | 0x7F800000u | (m << 13));
    if (e == 0) {
        float v = ldexpf((float)m, -24);
        return s ? -v : v;
    }
    return fb_bits_f32(s | ((e + 112u) << 23) | (m << 13));
}

uint8_t fb_f32_to_e4m3(float f) {
    uint32_t x = fb_f32_bits(f);
    uint8_t sign = (uint8_t)((x >> 24) & 0x80u);
    uint32_t a = x & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7F;
    // torch: values >= 480 (the midpoint past 448 rounds up out of range) become NaN
    if (a >= 0x43F00000u) return sign | 0x7F;
    if (a < 0x3C800000u) {  // below min normal 2^-6: subnormal, unit 2^-9
        float q = fb_bits_f32(a) * 512.0f;  // exact scaling by a power of two
        float r = nearbyintf(q);            // default rounding mode: ties to even
        return sign | (uint8_t)r;           // r in 0..8; 8 = min normal code 0x08, as wanted
    }
    uint32_t r = a + 0x7FFFFu + ((a >> 20) & 1u);  // RNE to 3 mantissa bits
    uint32_t e = (r >> 23) - 120u;                  // rebias 127 -> 7
    return sign | (uint8_t)((e << 3) | ((r >> 20) & 7u));
}

int fb_load_f32(fb_dtype dt, const void *buf, uint64_t i, float *out) {
    const unsigned char *p = buf;
    uint16_t h;
    switch (dt) {
    case FB_F32: memcpy(out, p + 4 * i, 4); return 0;
    case FB_BF16: memcpy(&h, p + 2 * i, 2); *out = fb_bf16_to_f32(h); return 0;
    case FB_F16: memcpy(&h, p + 2 * i, 2); *out = fb_f16_to_f32(h); return 0;
    case FB_F64: { double d; memcpy(&d, p + 8 * i, 8); *out = (float)d; return 0; }
    case FB_F8_E4M3: fb_formats_init(); *out = fb_e4m3_lut[p[i]]; return 0;
    case FB_F8_E5M2: fb_formats_init(); *out = fb_e5m2_lut[p[i]]; return 0;
    case FB_F8_E8M0: *out = fb_e8m0_to_f32(p[i]); return 0;
    default: return -1;
    }
}

#if defined(__aarch64__)
static int widen_neon;
static pthread_once_t widen_once = PTHREAD_ONCE_INIT;
static void pick_widen(void) { widen_neon = fb_qsimd_allowed("neon") && fb_qsimd_have_neon(); }
#endif

const char *fb_bf16_widen_impl(void) {
#if defined(__aarch64__)
    pthread_once(&widen_once, pick_widen);
    if (widen_neon) return "neon";
#endif
    return "scalar";
}

int fb_to_f32(fb_dtype dt, const void *src, float *dst, size_t n) {
    const unsigned char *p = src;
    switch (dt) {
    case FB_F32: memcpy(dst, src, n * 4); return 0;
    case FB_BF16: {
        size_t i = 0;
#if defined(__aarch64__)
        // The widening is a 16-bit shift into the top half: vshll does 8 elements in two.
        pthread_once(&widen_once, pick_widen);
        if (widen_neon)
            for (; i + 8 <= n; i += 8) {
                uint16x8_t h = vld1q_u16((const uint16_t *)(const void *)(p + 2 * i));
                vst1q_f32(dst + i, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16)));
                vst1q_f32(dst + i + 4, vreinterpretq_f32_u32(vshll_high_n_u16(h, 16)));
            }
#endif
        for (; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = fb_bf16_to_f32(h); }
        return 0;
    }
    case FB_F16:
        for (size_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = fb_f16_to_f32(h); }
        return 0;
    case FB_F64:
        for (size_t i = 0; i < n; i++) { double d; memcpy(&d, p + 8 * i, 8); dst[i] = (float)d; }
        return 0;
    case FB_F8_E4M3: fb_formats_init(); for (size_t i = 0; i < n; i++) dst[i] = fb_e4m3_lut[p[i]]; return 0;
    case FB_F8_E5M2: fb_formats_init(); for (size_t i = 0; i < n; i++) dst[i] = fb_e5m2_lut[p[i]]; return 0;
    case FB_F8_E8M0: for (size_t i = 0; i < n; i++) dst[i] = fb_e8m0_to_f32(p[i]); return 0;
    default: return -1;
    }
}

int64_t fb_find_nonfinite(fb_dtype dt, const void *buf, size_t n, int also_inf) {
    const unsigned char *p = buf;
    for (size_t i = 0; i < n; i++) {
        int bad = 0;
        switch (dt) {
        case FB_F8_E4M3: bad = fb_e4m3_is_nan(p[i]); break;
        case FB_F8_E5M2: bad = also_inf ? (p[i] & 0x7F) >= 0x7C : fb_e5m2_is_nan(p[i]); break;
        case FB_F8_E8M0: bad = p[i] == 0xFF; break;
        case FB_BF16: case FB_F16: {
            uint16_t h; memcpy(&h, p + 2 * i, 2);
            uint16_t a = h & 0x7FFF, inf = dt == FB_BF16 ? 0x7F80 : 0x7C00;
            bad = also_inf ? a >= inf : a > inf;
            break;
        }
        case FB_F32: {
            uint32_t u; memcpy(&u, p + 4 * i, 4);
            bad = also_inf ? (u & 0x7FFFFFFFu) >= 0x7F800000u : (u & 0x7FFFFFFFu) > 0x7F800000u;
            break;
        }
        case FB_F64: {
            double d; memcpy(&d, p + 8 * i, 8);
            bad = also_inf ? !isfinite(d) : isnan(d);
            break;
        }
        default: return -1;
        }
        if (bad) return (int64_t)i;
    }
    return -1;
}
