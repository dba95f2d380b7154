// test_formats.c: number formats against PyTorch (tests/golden/fp8/codes.safetensors, made by
// scripts/gen-fp8-golden.py): all 256 e4m3fn and e5m2 codes decoded, f32 -> bf16 and f32 -> f16
// rounding (ties, subnormals, overflow, NaN), f32 -> e4m3 after the quantizers' clamp; the
// BF16 widening fast path against the scalar one on every bf16 pattern; which fast paths the
// kernels chose (printed; the CPU's best unless FB_QUANT_IMPL says otherwise).
//
//   test_formats --impl   prints the chosen paths only (tests/t_quant_impl.sh)
#include <math.h>
#include <stdlib.h>

#include "io/checkpoint.h"
#include "quant/formats.h"
#include "quant/fp8block.h"
#include "quant/nvfp4.h"
#include "quant/w4a16.h"
#include "test.h"

static void print_impl(FILE *f) {
    fprintf(f, "fp8=%s nvfp4=%s w4a16=%s bf16-widen=%s\n", fb_fp8_dequant_impl(), fb_nvfp4_impl(),
            fb_w4a16_impl(), fb_bf16_widen_impl());
}

// Every bf16 bit pattern through fb_to_f32 at every length 0..40 and source misalignment
// 0..7 elements, against the per-element widening.
static void test_widen(void) {
    uint16_t *src = fb_malloc(65536 * 2 + 64);
    float *dst = fb_malloc(65536 * 4 + 64);
    for (uint32_t b = 0; b < 65536; b++) src[b] = (uint16_t)b;
    size_t bad = 0;
    CHECK(fb_to_f32(FB_BF16, src, dst, 65536) == 0, "widen all");
    for (uint32_t b = 0; b < 65536; b++) bad += fb_f32_bits(dst[b]) != (b << 16);
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; n <= 40; n++) {
            for (size_t i = 0; i < n + 1; i++) dst[i] = -1.0f;
            fb_to_f32(FB_BF16, src + 1000 * off + off, dst, n);
            for (size_t i = 0; i < n; i++) bad += fb_f32_bits(dst[i]) != (uint32_t)src[1000 * off + off + i] << 16;
            bad += dst[n] != -1.0f;  // nothing written past n
        }
    CHECK(bad == 0, "bf16 widening (%s): %zu elements differ from the scalar widening", fb_bf16_widen_impl(), bad);
    free(src);
    free(dst);
}

// Without FB_QUANT_IMPL every kernel takes the CPU's best path: NEON on aarch64, AVX2 or
// better on x86-64 with AVX2. A build that silently falls back to scalar fails here.
static void test_best_path(void) {
    print_impl(stderr);
    const char *cap = getenv("FB_QUANT_IMPL");
    if (cap && *cap) return;
#if defined(__aarch64__)
    const char *want = "neon";
    CHECK(!strcmp(fb_fp8_dequant_impl(), want) && !strcmp(fb_nvfp4_impl(), want) &&
              !strcmp(fb_w4a16_impl(), want) && !strcmp(fb_bf16_widen_impl(), want),
          "aarch64: every kernel on NEON");
#elif defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        CHECK(strcmp(fb_fp8_dequant_impl(), "scalar") && strcmp(fb_nvfp4_impl(), "scalar") &&
                  strcmp(fb_w4a16_impl(), "scalar"),
              "x86-64 with AVX2: no kernel on the scalar path");
#endif
}

static void *load(fb_ckpt *c, const char *name, uint64_t *n) {
    const fb_ckpt_tensor *t = fb_ckpt_find(c, name);
    REQUIRE(t, "golden tensor %s missing", name);
    void *buf;
    fb_err e;
    REQUIRE(fb_st_read_all(fb_ckpt_file(c, t), t->t, &buf, &e) == 0, "%s", e.msg);
    *n = t->t->nelem;
    return buf;
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--impl")) {
        print_impl(stdout);
        return 0;
    }
    fb_formats_init();
    test_best_path();
    test_widen();
    fb_ckpt *c;
    fb_err e;
    REQUIRE(fb_ckpt_open(GOLDEN_DIR "/fp8/codes.safetensors", &c, &e) == 0, "%s", e.msg);
    uint64_t n;
    float *e4 = load(c, "e4m3_decoded", &n);
    int bad = 0;
    for (int b = 0; b < 256; b++) {
        float got = fb_e4m3_to_f32((uint8_t)b);
        int same = isnan(e4[b]) ? isnan(got) && (signbit(got) == signbit(e4[b])) : fb_f32_bits(got) == fb_f32_bits(e4[b]);
        if (!same && bad++ < 5) fprintf(stderr, "e4m3 code 0x%02x: torch %g, fourbit %g\n", b, (double)e4[b], (double)got);
        CHECK(fb_e4m3_is_nan((uint8_t)b) == (isnan(e4[b]) != 0), "NaN detection of code 0x%02x", b);
    }
    CHECK(bad == 0, "%d e4m3 codes decode differently from torch", bad);
    float *e5 = load(c, "e5m2_decoded", &n);
    bad = 0;
    for (int b = 0; b < 256; b++) {
        float got = fb_e5m2_lut[b];
        int same = isnan(e5[b]) ? isnan(got) : fb_f32_bits(got) == fb_f32_bits(e5[b]);
        if (!same && bad++ < 5) fprintf(stderr, "e5m2 code 0x%02x: torch %g, fourbit %g\n", b, (double)e5[b], (double)got);
    }
    CHECK(bad == 0, "%d e5m2 codes decode differently from torch", bad);

    float *v = load(c, "f32_values", &n);
    uint16_t *bf = load(c, "bf16_bits", &n);
    uint16_t *h = load(c, "f16_bits", &n);
    uint8_t *q = load(c, "e4m3_clamped_bits", &n);
    int bad_bf = 0, bad_h = 0, bad_q = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint16_t gb = fb_f32_to_bf16(v[i]);
        // torch's vectorized CPU path writes 0xFFFF for NaN and the scalar path 0x7FC0; fourbit
        // always writes 0x7FC0 (spec §3.2). Compare NaN-ness for NaN inputs.
        int okb = isnan(v[i]) ? (gb & 0x7FFF) > 0x7F80 && ((bf[i] & 0x7FFF) > 0x7F80) : gb == bf[i];
        if (!okb && bad_bf++ < 5) fprintf(stderr, "bf16(%.9g = 0x%08x): torch 0x%04x, fourbit 0x%04x\n", (double)v[i], fb_f32_bits(v[i]), bf[i], gb);
        uint16_t gh = fb_f32_to_f16(v[i]);
        int okh = isnan(v[i]) ? (gh & 0x7FFF) > 0x7C00 : gh == h[i];
        if (!okh && bad_h++ < 5) fprintf(stderr, "f16(%.9g): torch 0x%04x, fourbit 0x%04x\n", (double)v[i], h[i], gh);
        float cl = isnan(v[i]) ? v[i] : v[i] > 448.0f ? 448.0f : v[i] < -448.0f ? -448.0f : v[i];
        uint8_t gq = fb_f32_to_e4m3(cl);
        int okq = isnan(v[i]) ? fb_e4m3_is_nan(gq) : gq == q[i];
        if (!okq && bad_q++ < 5) fprintf(stderr, "e4m3(%.9g): torch 0x%02x, fourbit 0x%02x\n", (double)cl, q[i], gq);
        // round trip through f16 is exact where representable
        float back = fb_f16_to_f32(gh);
        if (!isnan(back) && !isinf(back)) CHECK(fb_f32_to_f16(back) == gh, "f16 round trip 0x%04x", gh);
    }
    CHECK(bad_bf == 0, "%d of %llu bf16 roundings differ from torch", bad_bf, (unsigned long long)n);
    CHECK(bad_h == 0, "%d of %llu f16 roundings differ from torch", bad_h, (unsigned long long)n);
    CHECK(bad_q == 0, "%d of %llu e4m3 encodings differ from torch", bad_q, (unsigned long long)n);
    // Written-out edge cases (spec §3.2 / §3.3 examples).
    CHECK(fb_f32_to_bf16(1.0f + 0x1p-8f) == 0x3F80, "tie to even, down");
    CHECK(fb_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3F82, "tie to even, up");
    CHECK(fb_f32_to_bf16(fb_bits_f32(0x7F7FFFFFu)) == 0x7F80, "max float rounds to Inf");
    CHECK(fb_f32_to_bf16(fb_bits_f32(0x00000001u)) == 0x0000, "smallest subnormal rounds to zero");
    CHECK(fb_f32_to_bf16(fb_bits_f32(0x00018000u)) == 0x0002, "subnormal tie to even up, not flushed");
    CHECK(fb_f32_to_bf16(-0.0f) == 0x8000, "negative zero kept");
    CHECK(fb_f32_to_bf16(NAN) == 0x7FC0, "NaN -> 0x7FC0");
    int64_t at;
    uint16_t vals[4] = {0x3F80, 0x7F80, 0x7FC1, 0};
    at = fb_find_nonfinite(FB_BF16, vals, 4, 0);
    CHECK(at == 2, "first NaN at 2, got %lld", (long long)at);
    at = fb_find_nonfinite(FB_BF16, vals, 4, 1);
    CHECK(at == 1, "first non-finite at 1, got %lld", (long long)at);
    free(e4); free(e5); free(v); free(bf); free(h); free(q);
    fb_ckpt_close(c);
    TEST_MAIN_END();
}
