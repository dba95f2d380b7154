// test_w4a16.c: W4A16 kernels against the real reference tools (compressed-tensors 0.19
// pack-quantized; auto-round 0.16 model-free RTN with auto_round:auto_gptq packing), from
// tests/golden/ct_golden.safetensors and tests/golden/quant/quant_golden.safetensors
// (scripts/gen-quant-golden.py), spec values, and fast path == reference on random,
// heavy-tailed and edge-case inputs.
#include <math.h>
#include <string.h>

#include "io/safetensors.h"
#include "quant/formats.h"
#include "quant/w4a16.h"
#include "test.h"

static fb_st_file *open_golden(const char *path) {
    fb_err err;
    fb_st_file *f = NULL;
    REQUIRE(fb_st_open(path, &f, &err) == 0, "%s", err.msg);
    return f;
}

// The whole tensor `name` (NULL if absent); *n gets its element count.
static void *load(const fb_st_file *f, const char *name, uint64_t *n) {
    const fb_st_tensor *t = fb_st_find(f, name);
    if (!t) return NULL;
    void *buf = NULL;
    fb_err err;
    REQUIRE(fb_st_read_all(f, t, &buf, &err) == 0, "%s", err.msg);
    if (n) *n = t->nelem;
    return buf;
}

static float *load_bf16_as_f32(const fb_st_file *f, const char *name, uint64_t *rows,
                               uint64_t *cols) {
    const fb_st_tensor *t = fb_st_find(f, name);
    REQUIRE(t && t->dtype == FB_BF16 && t->ndim == 2, "%s: missing or not 2-D BF16", name);
    uint16_t *b = load(f, name, NULL);
    float *x = fb_malloc(t->nelem * sizeof(float));
    for (uint64_t i = 0; i < t->nelem; i++) x[i] = fb_bf16_to_f32(b[i]);
    free(b);
    *rows = (uint64_t)t->shape[0];
    *cols = (uint64_t)t->shape[1];
    return x;
}

// Element comparison (elements of `esize` bytes) printing the first mismatches.
static size_t cmp_elems(const char *what, const void *exp, const void *got, size_t n,
                        size_t esize) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t a = 0, b = 0;
        memcpy(&a, (const char *)exp + i * esize, esize);
        memcpy(&b, (const char *)got + i * esize, esize);
        if (a != b) {
            if (bad < 5)
                fprintf(stderr, "  %s: element %zu: expected 0x%0*llx, got 0x%0*llx\n", what, i,
                        (int)(2 * esize), (unsigned long long)a, (int)(2 * esize),
                        (unsigned long long)b);
            bad++;
        }
    }
    if (bad) fprintf(stderr, "  %s: %zu of %zu elements differ\n", what, bad, n);
    return bad;
}

// compressed-tensors pack-quantized: "<p>.weight" -> "<p><infix>.weight_{packed,scale,shape}"
static void check_ct(const fb_st_file *f, const char *p, const char *infix) {
    char name[256], pk[256], sc[256], sh[256], dq[256];
    snprintf(name, sizeof name, "%s.weight", p);
    snprintf(pk, sizeof pk, "%s%s.weight_packed", p, infix);
    snprintf(sc, sizeof sc, "%s%s.weight_scale", p, infix);
    snprintf(sh, sizeof sh, "%s%s.weight_shape", p, infix);
    snprintf(dq, sizeof dq, "%s%s.dequant", p, infix);
    uint64_t rows, cols, npk, nsc, nsh;
    float *w = load_bf16_as_f32(f, name, &rows, &cols);
    int32_t *epk = load(f, pk, &npk);
    uint16_t *esc = load(f, sc, &nsc);
    int64_t *esh = load(f, sh, &nsh);
    REQUIRE(epk && esc && esh, "%s: golden outputs missing", name);
    REQUIRE(npk == rows * cols / 8 && nsc == rows * cols / 128 && nsh == 2, "%s: shapes", p);
    CHECK(esh[0] == (int64_t)rows && esh[1] == (int64_t)cols, "%s = [rows, cols]", sh);
    int32_t *pp = fb_malloc(npk * 4);
    uint16_t *ss = fb_malloc(nsc * 2);
    for (int fast = 0; fast < 2; fast++) {
        memset(pp, 0xAA, npk * 4);
        memset(ss, 0xAA, nsc * 2);
        if (fast) fb_w4a16_quantize_rows(w, rows, cols, 128, pp, ss);
        else fb_w4a16_quantize_rows_ref(w, rows, cols, 128, pp, ss);
        char what[300];
        snprintf(what, sizeof what, "%s (%s)", pk, fast ? fb_w4a16_impl() : "ref");
        CHECK(cmp_elems(what, epk, pp, npk, 4) == 0, "%s", what);
        snprintf(what, sizeof what, "%s (%s)", sc, fast ? fb_w4a16_impl() : "ref");
        CHECK(cmp_elems(what, esc, ss, nsc, 2) == 0, "%s", what);
    }
    uint16_t *edq = load(f, dq, NULL);
    if (edq) {
        float *d = fb_malloc(rows * cols * sizeof(float));
        uint16_t *db = fb_malloc(rows * cols * 2);
        fb_w4a16_dequant_rows(epk, esc, rows, cols, 128, d);
        for (uint64_t i = 0; i < rows * cols; i++) db[i] = (uint16_t)(fb_f32_bits(d[i]) >> 16);
        CHECK(cmp_elems(dq, edq, db, rows * cols, 2) == 0, "%s", dq);
        free(d);
        free(db);
        free(edq);
    }
    free(w); free(epk); free(esc); free(esh); free(pp); free(ss);
}

// AutoRound: "<p>.weight" -> "<p>.ar.{qweight,qzeros,scales}"; the weight is also quantized
// in two row ranges into the same transposed tensors (the streaming use).
static void check_ar(const fb_st_file *f, const char *p) {
    char name[256], qw[256], qz[256], sc[256];
    snprintf(name, sizeof name, "%s.weight", p);
    snprintf(qw, sizeof qw, "%s.ar.qweight", p);
    snprintf(qz, sizeof qz, "%s.ar.qzeros", p);
    snprintf(sc, sizeof sc, "%s.ar.scales", p);
    uint64_t rows, cols, nqw, nqz, nsc;
    float *w = load_bf16_as_f32(f, name, &rows, &cols);
    int32_t *eqw = load(f, qw, &nqw), *eqz = load(f, qz, &nqz);
    uint16_t *esc = load(f, sc, &nsc);
    REQUIRE(eqw && eqz && esc, "%s: golden AutoRound outputs missing", p);
    REQUIRE(nqw == rows * cols / 8 && nsc == rows * cols / 128 &&
                nqz == cols / 128 * ((rows + 7) / 8), "%s: AutoRound shapes", p);
    int32_t *q = fb_malloc(nqw * 4), *z = fb_malloc(nqz * 4);
    uint16_t *s = fb_malloc(nsc * 2);
    for (int fast = 0; fast < 2; fast++) {
        memset(q, 0xAA, nqw * 4);
        memset(s, 0xAA, nsc * 2);
        size_t split = rows / 3;  // two row ranges, second one first
        if (fast) {
            fb_autoround_quantize_rows(w + split * cols, rows - split, cols, 128, split, rows,
                                       q, s);
            fb_autoround_quantize_rows(w, split, cols, 128, 0, rows, q, s);
        } else {
            fb_autoround_quantize_rows_ref(w + split * cols, rows - split, cols, 128, split,
                                           rows, q, s);
            fb_autoround_quantize_rows_ref(w, split, cols, 128, 0, rows, q, s);
        }
        char what[300];
        snprintf(what, sizeof what, "%s (%s)", qw, fast ? fb_w4a16_impl() : "ref");
        CHECK(cmp_elems(what, eqw, q, nqw, 4) == 0, "%s", what);
        snprintf(what, sizeof what, "%s (%s)", sc, fast ? fb_w4a16_impl() : "ref");
        CHECK(cmp_elems(what, esc, s, nsc, 2) == 0, "%s", what);
    }
    fb_autoround_qzeros(cols, rows, 128, 1, z);
    CHECK(cmp_elems(qz, eqz, z, nqz, 4) == 0, "%s", qz);
    // dequant: scale * q, exact; it must requantize to the same codes
    float *d = fb_malloc(rows * cols * sizeof(float));
    fb_autoround_dequant_rows(eqw, esc, rows, cols, 128, 0, rows, d);
    size_t bad = 0;
    for (uint64_t o = 0; o < rows; o++)
        for (uint64_t c = 0; c < cols; c++) {
            float sv = fb_f16_to_f32(esc[(c / 128) * rows + o]);
            int code = (int)(((uint32_t)eqw[(c / 8) * rows + o] >> (4 * (c % 8))) & 15);
            float e = sv * (float)(code - 8), v = d[o * cols + c];
            if (!(v == e || (isnan(v) && isnan(e)))) bad++;  // Inf scale * 0 = NaN
        }
    CHECK(bad == 0, "%s: dequant differs in %zu elements", p, bad);
    free(d); free(w); free(eqw); free(eqz); free(esc); free(q); free(z); free(s);
}

static void test_golden(void) {
    fb_st_file *f = open_golden(GOLDEN_DIR "/ct_golden.safetensors");
    check_ct(f, "w4a16.rand_a", "");
    check_ct(f, "w4a16.special", "");
    fb_st_close(f);

    f = open_golden(GOLDEN_DIR "/quant/quant_golden.safetensors");
    static const char *cases[] = {"heavy.0", "outliers.0", "zero_rows.0", "subnormal.0",
                                  "tiny.0", "huge.0", "ties.0", "all_zero.0", "fused_qkv.0", "fused_qkv.1",
                                  "fused_qkv.2", "fused_w13.0", "fused_w13.1"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        check_ct(f, cases[i], ".w4a16");
        check_ar(f, cases[i]);
    }
    fb_st_close(f);
}

static void test_spec_values(void) {
    // §6.2 example: row [0.5, 1.5, ..., 7.5] with s = 1 packs to 0xFEECCAA8 (ties to even)
    float w[128] = {0};
    for (int i = 0; i < 8; i++) w[i] = 0.5f + (float)i;
    w[8] = 7.5f;  // sets m = 7.5 -> s = BF16(7.5/7.5) = 1
    int32_t p[16];
    uint16_t s[1];
    fb_w4a16_quantize_rows_ref(w, 1, 128, 128, p, s);
    CHECK(s[0] == 0x3F80, "scale 1.0, got 0x%04x", s[0]);
    CHECK((uint32_t)p[0] == 0xFEECCAA8u, "pack 0x%08x", (uint32_t)p[0]);
    // zero group -> 2^-7, all codes 8
    memset(w, 0, sizeof w);
    w[3] = -0.0f;
    fb_w4a16_quantize_rows_ref(w, 1, 128, 128, p, s);
    CHECK(s[0] == 0x3C00, "zero group scale 2^-7, got 0x%04x", s[0]);
    CHECK((uint32_t)p[0] == 0x88888888u, "zero group codes");
    // AutoRound sign rule: positive side >= negative side -> negative scale; max maps to -8
    memset(w, 0, sizeof w);
    w[0] = 1.0f;
    w[1] = -1.0f;
    int32_t qw[16];
    uint16_t sc[1];
    fb_autoround_quantize_rows_ref(w, 1, 128, 128, 0, 1, qw, sc);
    CHECK(sc[0] == 0xB000, "tie -> scale -0.125 (0xb000), got 0x%04x", sc[0]);
    CHECK(((uint32_t)qw[0] & 0xFF) == 0xF0, "1.0 -> code 0 (q=-8), -1.0 -> code 15 (q=+8->7)");
    w[1] = -2.0f;
    fb_autoround_quantize_rows_ref(w, 1, 128, 128, 0, 1, qw, sc);
    CHECK(sc[0] == 0x3400, "negative side larger -> +0.25, got 0x%04x", sc[0]);
    memset(w, 0, sizeof w);
    fb_autoround_quantize_rows_ref(w, 1, 128, 128, 0, 1, qw, sc);
    CHECK(sc[0] == 0x00A8, "zero group -> +fp16(1e-5), got 0x%04x", sc[0]);
    int32_t z[4];
    fb_autoround_qzeros(256, 9, 128, 1, z);
    CHECK(z[0] == 0x77777777 && z[3] == 0x77777777, "qzeros 0x77777777");
    fb_autoround_qzeros(128, 8, 128, 0, z);
    CHECK((uint32_t)z[0] == 0x88888888u, "direct qzeros");
    int32_t gi[256];
    fb_autoround_g_idx(256, 128, gi);
    CHECK(gi[0] == 0 && gi[127] == 0 && gi[128] == 1 && gi[255] == 1, "g_idx");
}

// ---- fast path == reference --------------------------------------------------------------------

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static float unif(void) { return (float)((rnd() >> 40) + 0.5) / 16777216.0f; }
static float bf16_of(float x) { return fb_bf16_to_f32(fb_f32_to_bf16(x)); }

static void fill(float *w, size_t n, int kind) {
    for (size_t i = 0; i < n; i++) {
        float u = unif(), v;
        switch (kind) {
        case 0: v = (u - 0.5f) * 0.1f; break;
        case 1: v = (unif() < 0.5f ? -1 : 1) * 0.01f / powf(u, 0.7f); break;
        case 2: v = fb_bits_f32((uint32_t)(rnd() & 0xFFFF0000u)); break;
        case 3: v = (float)((int)(rnd() % 33) - 16) * 0.25f; break;
        case 4: v = ldexpf((u - 0.5f), (int)(rnd() % 60) - 30); break;
        default: v = (unif() < 0.05f ? 100.0f : 0.01f) * (u - 0.5f); break;
        }
        if (!isfinite(v)) v = 0.0f;
        w[i] = bf16_of(v);
    }
    for (size_t i = 0; i + 128 <= n; i += 128 * 11) memset(w + i, 0, 128 * sizeof(float));
    for (size_t i = 5; i < n; i += 101) w[i] = -0.0f;
    for (size_t i = 7; i < n; i += 173) w[i] = (rnd() & 1 ? -1 : 1) * 0x1p-130f;
}

static void test_fast_vs_ref(void) {
    static const size_t shapes[][3] = {{1, 128, 128}, {3, 256, 128}, {16, 512, 128},
                                       {5, 3072, 128}, {2, 1536, 128}, {7, 96, 32},
                                       {4, 64, 8}, {9, 384, 64}, {3, 96, 24}};
    size_t bad = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (int kind = 0; kind < 6; kind++) {
            size_t rows = shapes[si][0], cols = shapes[si][1], grp = shapes[si][2];
            size_t n = rows * cols, ng = n / grp;
            float *w = fb_malloc(n * sizeof(float));
            fill(w, n, kind);
            // rows with one huge element: a scale overflow to Inf in fp16 (AutoRound)
            if (kind == 5) w[0] = 1e6f;
            int32_t *p0 = fb_malloc(n / 2), *p1 = fb_malloc(n / 2);
            uint16_t *s0 = fb_malloc(ng * 2), *s1 = fb_malloc(ng * 2);
            fb_w4a16_quantize_rows_ref(w, rows, cols, grp, p0, s0);
            fb_w4a16_quantize_rows(w, rows, cols, grp, p1, s1);
            bad += cmp_elems("ct packed", p0, p1, n / 8, 4) + cmp_elems("ct scale", s0, s1, ng, 2);
            // AutoRound, as part of a wider tensor (ld = rows + 3, columns 2..)
            size_t ld = rows + 3;
            int32_t *q0 = fb_calloc(cols / 8 * ld, 4), *q1 = fb_calloc(cols / 8 * ld, 4);
            uint16_t *t0 = fb_calloc(cols / grp * ld, 2), *t1 = fb_calloc(cols / grp * ld, 2);
            fb_autoround_quantize_rows_ref(w, rows, cols, grp, 2, ld, q0, t0);
            fb_autoround_quantize_rows(w, rows, cols, grp, 2, ld, q1, t1);
            bad += cmp_elems("ar qweight", q0, q1, cols / 8 * ld, 4) +
                   cmp_elems("ar scales", t0, t1, cols / grp * ld, 2);
            free(w); free(p0); free(p1); free(s0); free(s1);
            free(q0); free(q1); free(t0); free(t1);
        }
    CHECK(bad == 0, "fast path (%s) differs from the reference in %zu elements",
          fb_w4a16_impl(), bad);

    // every finite bf16 as an element, in groups of 128 with a shared large element
    size_t n = 65536 * 2;
    float *w = fb_malloc(n * sizeof(float));
    size_t m = 0;
    for (int rep = 0; rep < 2; rep++)
        for (uint32_t b = 0; b < 65536; b++) {
            float v = fb_bf16_to_f32((uint16_t)b);
            if (isfinite(v)) w[m++] = v;
        }
    while (m % 1024) w[m++] = 0.0f;
    // sort-ish mixing: the second copy scaled so that groups mix magnitudes
    for (size_t i = 0; i < m; i += 128) w[i] = bf16_of(ldexpf(1.0f, (int)(i / 128 % 200) - 100));
    int32_t *p0 = fb_malloc(m / 2), *p1 = fb_malloc(m / 2);
    uint16_t *s0 = fb_malloc(m / 64), *s1 = fb_malloc(m / 64);
    fb_w4a16_quantize_rows_ref(w, m / 1024, 1024, 128, p0, s0);
    fb_w4a16_quantize_rows(w, m / 1024, 1024, 128, p1, s1);
    CHECK(cmp_elems("all-bf16 ct packed", p0, p1, m / 8, 4) == 0 &&
              cmp_elems("all-bf16 ct scale", s0, s1, m / 128, 2) == 0, "all bf16, ct");
    fb_autoround_quantize_rows_ref(w, m / 1024, 1024, 128, 0, m / 1024, p0, s0);
    fb_autoround_quantize_rows(w, m / 1024, 1024, 128, 0, m / 1024, p1, s1);
    CHECK(cmp_elems("all-bf16 ar qweight", p0, p1, m / 8, 4) == 0 &&
              cmp_elems("all-bf16 ar scales", s0, s1, m / 128, 2) == 0, "all bf16, autoround");
    free(w); free(p0); free(p1); free(s0); free(s1);
}

// pack_fixed (GPTQ's packing): weights already on the grid of stored scales are encoded back to
// exactly the codes they came from: RTN's dequantized weights re-packed with RTN's scales give
// RTN's packed words, over every fill (zero groups, subnormals, signed zeros, outliers).
static void test_pack_fixed(void) {
    size_t bad = 0, rows = 9, cols = 384, grp = 128, n = rows * cols;
    for (int kind = 0; kind < 6; kind++) {
        float *w = fb_malloc(n * sizeof(float)), *dq = fb_malloc(n * sizeof(float));
        fill(w, n, kind);
        int32_t *p0 = fb_malloc(n / 2), *p1 = fb_malloc(n / 2);
        uint16_t *s0 = fb_malloc(n / grp * 2);
        fb_w4a16_quantize_rows_ref(w, rows, cols, grp, p0, s0);
        fb_w4a16_dequant_rows(p0, s0, rows, cols, grp, dq);
        fb_w4a16_pack_rows_fixed(dq, rows, cols, grp, s0, p1);
        bad += cmp_elems("pack_fixed", p0, p1, n / 8, 4);
        free(w); free(dq); free(p0); free(p1); free(s0);
    }
    CHECK(bad == 0, "pack_fixed of dequantized RTN weights differs from RTN's codes in %zu words", bad);
}

int main(void) {
    fprintf(stderr, "w4a16 fast path: %s\n", fb_w4a16_impl());
    test_pack_fixed();
    test_spec_values();
    test_golden();
    test_fast_vs_ref();
    TEST_MAIN_END();
}
