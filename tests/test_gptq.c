// test_gptq.c: GPTQ for one Linear (calib/gptq.h) against llm-compressor 0.14.0.1's own
// functions (scripts/gen-gptq-golden.py -> tests/golden/gptq/): the same Hessian in, the same
// fake-quantized weights out. The reference factorizes in f32 through LAPACK, fourbit in f64,
// so an element may land on the neighbouring quantization level where the error feedback
// carries a rounding difference: the test requires >= 99% of the elements identical, the rest
// one level apart at most, and the loss within 1% (measured: every element identical, the
// losses equal to 6 digits). The Hessian accumulation is compared too.
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "calib/gptq.h"
#include "io/safetensors.h"
#include "quant/formats.h"
#include "test.h"

#define GOLD GOLDEN_DIR "/gptq/gptq_golden.safetensors"

static float *get(fb_st_file *f, const char *name, size_t *n) {
    const fb_st_tensor *t = fb_st_find(f, name);
    if (!t || t->dtype != FB_F32) return NULL;
    void *p;
    fb_err err;
    if (fb_st_read_all(f, t, &p, &err)) return NULL;
    if (n) *n = (size_t)t->nelem;
    return p;
}


// ---- the factored entry (fb_gptq_factorize + fb_gptq_quantize_factored) -------------------------
// fb_gptq_quantize was one function before the split; it is now the two. These checks hold the
// split to its contract: a factor reused for any number of weights, in any order, from any number
// of threads, gives each weight exactly (bytes, loss, flags) what fb_gptq_quantize gives it alone.

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float urand(void) {  // uniform in [-1, 1), xorshift64
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
}

// fb_gptq_quantize on copies of W and H (H must stay unmodified too): the expected result.
static void plain(const float *W0, size_t R, size_t C, const float *H0, const float *sc, const fb_gptq_opts *o,
                  float *W, fb_gptq_result *res) {
    float *H = malloc(C * C * sizeof(float));
    memcpy(H, H0, C * C * sizeof(float));
    memcpy(W, W0, R * C * sizeof(float));
    fb_err err;
    REQUIRE(fb_gptq_quantize(W, R, C, H, sc, o, res, &err) == 0, "%s", err.msg);
    CHECK(!memcmp(H, H0, C * C * sizeof(float)), "fb_gptq_quantize leaves H unmodified");
    free(H);
}

// The factored result of W0 with f equals `want` (bytes), its loss and flags `wr`'s.
static void same_as(const char *label, const float *W0, size_t R, size_t C, const fb_gptq_factor *f,
                    const float *sc, const fb_gptq_opts *o, const float *want, const fb_gptq_result *wr) {
    float *W = malloc(R * C * sizeof(float));
    memcpy(W, W0, R * C * sizeof(float));
    fb_gptq_result res;
    fb_err err;
    REQUIRE(fb_gptq_quantize_factored(W, R, C, f, sc, o, &res, &err) == 0, "%s: %s", label, err.msg);
    size_t diff = 0, first = R * C;
    for (size_t i = 0; i < R * C; i++)
        if (memcmp(&W[i], &want[i], sizeof(float)) != 0 && diff++ == 0) first = i;
    CHECK(diff == 0 && res.loss == wr->loss && res.rtn_fallback == wr->rtn_fallback &&
              res.dead_columns == wr->dead_columns,
          "%s: factored vs fb_gptq_quantize: %zu of %zu weights differ (first [%zu]: %.9g vs %.9g), loss %.17g vs "
          "%.17g, fallback %d/%d, dead %zu/%zu", label, diff, R * C, first, first < R * C ? W[first] : 0.0,
          first < R * C ? want[first] : 0.0, res.loss, wr->loss, res.rtn_fallback, wr->rtn_fallback,
          res.dead_columns, wr->dead_columns);
    free(W);
}

// Random weights [R, C] (~0.02), observer scales (INT4: bf16(absmax / 8); NVFP4: the e4m3 value of
// gs * absmax / 6 with gs = 448 * 6 / the tensor's absmax), written into W, sc, *gs.
static void rand_weight(float *W, size_t R, size_t C, fb_gptq_qtype qt, size_t G, float *sc, float *gs) {
    for (size_t i = 0; i < R * C; i++) W[i] = 0.02f * (urand() + urand());
    float amax = 0;
    for (size_t i = 0; i < R * C; i++) amax = fmaxf(amax, fabsf(W[i]));
    *gs = qt == FB_GPTQ_NVFP4 ? 448.0f * 6.0f / amax : 0;
    for (size_t r = 0; r < R; r++)
        for (size_t g = 0; g < C / G; g++) {
            float a = 0;
            for (size_t k = 0; k < G; k++) a = fmaxf(a, fabsf(W[r * C + g * G + k]));
            float s = qt == FB_GPTQ_INT4 ? fb_bf16_to_f32(fb_f32_to_bf16(a / 8.0f))
                                         : fb_e4m3_lut[fb_f32_to_e4m3(fminf(*gs * a / 6.0f, 448.0f))];
            sc[r * (C / G) + g] = s > 0 ? s : (qt == FB_GPTQ_INT4 ? 1e-5f : 0.125f);
        }
}

// A Hessian from correlated inputs (x = z M + noise over 4 samples of 64 tokens); the columns in
// `dead` (a list ending at C) get no input at all.
static void rand_hessian(float *H, size_t C, const size_t *dead) {
    const size_t NS = 4, T = 64, K = 16;
    float *M = malloc(K * C * sizeof(float)), *x = malloc(T * C * sizeof(float));
    for (size_t i = 0; i < K * C; i++) M[i] = urand();
    memset(H, 0, C * C * sizeof(float));
    for (size_t s = 0; s < NS; s++) {
        for (size_t t = 0; t < T; t++) {
            float z[16];
            for (size_t k = 0; k < K; k++) z[k] = urand();
            for (size_t j = 0; j < C; j++) {
                float a = 0.3f * urand();
                for (size_t k = 0; k < K; k++) a += z[k] * M[k * C + j] * 0.25f;
                x[t * C + j] = a;
            }
            for (const size_t *d = dead; *d < C; d++) x[t * C + *d] = 0;
        }
        fb_gptq_hessian_add(H, C, x, T);
    }
    fb_gptq_hessian_scale(H, C, NS);
    free(M), free(x);
}

#define NW 4       // weights sharing one factor
#define NTHR 4     // threads sharing one factor

typedef struct shared_job {
    const fb_gptq_factor *f;
    const fb_gptq_opts *o;
    size_t R, C;
    const float *W0, *sc;
    float *W;               // [R x C] result
    fb_gptq_result res;
    int rc;
    fb_err err;
} shared_job;

static void *shared_run(void *arg) {
    shared_job *j = arg;
    for (int rep = 0; rep < 3; rep++) {  // several passes: more chances to overlap the others
        memcpy(j->W, j->W0, j->R * j->C * sizeof(float));
        j->rc = fb_gptq_quantize_factored(j->W, j->R, j->C, j->f, j->sc, j->o, &j->res, &j->err);
        if (j->rc) break;
    }
    return NULL;
}

// One random Hessian, NW weights of different shapes on it: sequentially (twice, in two orders)
// and from NTHR threads at once, each equal to its own fb_gptq_quantize.
static void random_shared(const char *label, size_t C, fb_gptq_qtype qt, int actorder, size_t blocksize,
                          const size_t *dead, int want_fallback) {
    size_t G = qt == FB_GPTQ_INT4 ? 128 : 16;
    float *H = malloc(C * C * sizeof(float));
    rand_hessian(H, C, dead);
    if (want_fallback) H[5 * C + 5] = -1e3f;  // not positive definite even after dampening
    size_t ndead = 0;
    for (const size_t *d = dead; *d < C; d++) ndead++;
    static const size_t rows[NW] = {64, 16, 96, 33};
    float *W0[NW], *sc[NW], *want[NW], gs[NW];
    fb_gptq_result wr[NW];
    fb_gptq_opts o[NW];
    for (int k = 0; k < NW; k++) {
        W0[k] = malloc(rows[k] * C * sizeof(float));
        want[k] = malloc(rows[k] * C * sizeof(float));
        sc[k] = malloc(rows[k] * (C / G) * sizeof(float));
        rand_weight(W0[k], rows[k], C, qt, G, sc[k], &gs[k]);
        // group, global scale and block size are the weight's own: they are not the factor's
        o[k] = (fb_gptq_opts){.qtype = qt, .group = G, .global_scale = gs[k], .actorder = actorder,
                              .blocksize = k == 1 ? 32 : blocksize, .percdamp = 0.01};
        plain(W0[k], rows[k], C, H, sc[k], &o[k], want[k], &wr[k]);
        CHECK(wr[k].rtn_fallback == want_fallback && wr[k].dead_columns == ndead, "%s: fallback %d, dead %zu of %zu",
              label, wr[k].rtn_fallback, wr[k].dead_columns, ndead);
    }
    fb_gptq_factor *f;
    fb_err err;
    float *Hc = malloc(C * C * sizeof(float));
    memcpy(Hc, H, C * C * sizeof(float));
    REQUIRE(fb_gptq_factorize(H, C, &o[0], &f, &err) == 0, "%s: %s", label, err.msg);
    CHECK(!memcmp(H, Hc, C * C * sizeof(float)) && fb_gptq_factor_cols(f) == C &&
              fb_gptq_factor_rtn_fallback(f) == want_fallback && fb_gptq_factor_dead_columns(f) == ndead,
          "%s: factorize leaves H unmodified, reports %zu columns, fallback %d, dead %zu", label,
          fb_gptq_factor_cols(f), fb_gptq_factor_rtn_fallback(f), fb_gptq_factor_dead_columns(f));
    char nm[160];
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < NW; i++) {
            int k = pass ? NW - 1 - i : i;
            snprintf(nm, sizeof nm, "%s, weight %d [%zu, %zu], pass %d", label, k, rows[k], C, pass);
            same_as(nm, W0[k], rows[k], C, f, sc[k], &o[k], want[k], &wr[k]);
        }
    // concurrent: NTHR threads, each on its own weight (k % NW), all on f
    shared_job jb[NTHR];
    pthread_t th[NTHR];
    for (int t = 0; t < NTHR; t++) {
        int k = t % NW;
        jb[t] = (shared_job){.f = f, .o = &o[k], .R = rows[k], .C = C, .W0 = W0[k], .sc = sc[k],
                             .W = malloc(rows[k] * C * sizeof(float))};
        REQUIRE(pthread_create(&th[t], NULL, shared_run, &jb[t]) == 0, "thread %d", t);
    }
    for (int t = 0; t < NTHR; t++) pthread_join(th[t], NULL);
    for (int t = 0; t < NTHR; t++) {
        int k = t % NW;
        size_t diff = 0;
        for (size_t i = 0; i < rows[k] * C; i++) diff += memcmp(&jb[t].W[i], &want[k][i], sizeof(float)) != 0;
        CHECK(jb[t].rc == 0 && diff == 0 && jb[t].res.loss == wr[k].loss,
              "%s: thread %d on the shared factor: rc %d (%s), %zu weights differ, loss %.17g vs %.17g", label, t,
              jb[t].rc, jb[t].rc ? jb[t].err.msg : "", diff, jb[t].res.loss, wr[k].loss);
        free(jb[t].W);
    }
    printf("gptq factored %-40s C %zu: %d weights x 2 orders and %d threads on one factor, byte-identical to "
           "fb_gptq_quantize\n", label, C, NW, NTHR);
    fb_gptq_factor_free(f);
    for (int k = 0; k < NW; k++) free(W0[k]), free(sc[k]), free(want[k]);
    free(H), free(Hc);
}

// What the factored entry refuses, the weight untouched.
static void refusals(void) {
    size_t C = 32, R = 4;
    float H[32 * 32] = {0}, W[4 * 32], sc[4];
    for (size_t i = 0; i < C; i++) H[i * C + i] = 1.0f;
    for (size_t i = 0; i < R * C; i++) W[i] = (float)((int)(i % 7) - 3) * 0.01f;
    for (size_t i = 0; i < R; i++) sc[i] = 0.005f;
    float w0[4 * 32];
    memcpy(w0, W, sizeof W);
    fb_gptq_opts o = {.qtype = FB_GPTQ_INT4, .group = 32, .actorder = 1, .percdamp = 0.01};
    fb_gptq_result res;
    fb_err err;
    fb_gptq_factor *f = (fb_gptq_factor *)&err;  // must be reset to NULL on failure
    CHECK(fb_gptq_factorize(H, 0, &o, &f, &err) == -1 && !f && strstr(err.msg, "0 columns"),
          "factorize: a 0-column Hessian refused (%s)", err.msg);
    fb_gptq_opts on = o;
    on.percdamp = NAN;
    CHECK(fb_gptq_factorize(H, C, &on, &f, &err) == -1 && !f && strstr(err.msg, "dampening"),
          "factorize: a NaN dampening fraction refused (%s)", err.msg);
    REQUIRE(fb_gptq_factorize(H, C, &o, &f, &err) == 0, "%s", err.msg);
    CHECK(fb_gptq_quantize_factored(W, R, C, NULL, sc, &o, &res, &err) == -1 && strstr(err.msg, "no factor") &&
              !memcmp(W, w0, sizeof W), "quantize_factored: no factor refused (%s)", err.msg);
    CHECK(fb_gptq_quantize_factored(W, R * 2, C / 2, f, sc, &(fb_gptq_opts){.qtype = FB_GPTQ_INT4, .group = 16,
              .actorder = 1, .percdamp = 0.01}, &res, &err) == -1 && strstr(err.msg, "32-column Hessian for a [8, 16]") &&
              !memcmp(W, w0, sizeof W), "quantize_factored: a factor of another width refused (%s)", err.msg);
    fb_gptq_opts oa = o;
    oa.actorder = 0;
    CHECK(fb_gptq_quantize_factored(W, R, C, f, sc, &oa, &res, &err) == -1 && strstr(err.msg, "actorder 1") &&
              !memcmp(W, w0, sizeof W), "quantize_factored: a factor made with another actorder refused (%s)", err.msg);
    oa = o;
    oa.percdamp = 0.1;
    CHECK(fb_gptq_quantize_factored(W, R, C, f, sc, &oa, &res, &err) == -1 && strstr(err.msg, "dampening 0.1") &&
              !memcmp(W, w0, sizeof W), "quantize_factored: a factor made with another dampening refused (%s)", err.msg);
    oa = o;
    oa.percdamp = -1;  // the default, 0.01: the same factor
    CHECK(fb_gptq_quantize_factored(W, R, C, f, sc, &oa, &res, &err) == 0, "percdamp < 0 is 0.01 (%s)", err.msg);
    memcpy(W, w0, sizeof W);
    oa = o;
    oa.group = 24;
    CHECK(fb_gptq_quantize_factored(W, R, C, f, sc, &oa, &res, &err) == -1 && strstr(err.msg, "group 24") &&
              !memcmp(W, w0, sizeof W), "quantize_factored: 32 columns in groups of 24 refused (%s)", err.msg);
    oa = (fb_gptq_opts){.qtype = FB_GPTQ_NVFP4, .group = 16, .actorder = 1, .percdamp = 0.01};
    CHECK(fb_gptq_quantize_factored(W, R, C, f, sc, &oa, &res, &err) == -1 && strstr(err.msg, "global scale") &&
              !memcmp(W, w0, sizeof W), "quantize_factored: NVFP4 without a global scale refused (%s)", err.msg);
    fb_gptq_factor_free(f);
    fb_gptq_factor_free(NULL);
}

int main(void) {
    fb_st_file *f;
    fb_err err;
    REQUIRE(fb_st_open(GOLD, &f, &err) == 0, "%s (run scripts/gen-gptq-golden.py)", err.msg);
    size_t nw, nx;
    float *W0 = get(f, "weight", &nw), *X = get(f, "inputs", &nx);
    const fb_st_tensor *tw = fb_st_find(f, "weight"), *tx = fb_st_find(f, "inputs");
    REQUIRE(W0 && X && tw->ndim == 2 && tx->ndim == 3, "golden weight / inputs");
    size_t R = (size_t)tw->shape[0], C = (size_t)tw->shape[1], NS = (size_t)tx->shape[0], T = (size_t)tx->shape[1];
    // The Hessian: 2/NS * sum x x^T, accumulated per sample.
    float *H = calloc(C * C, sizeof(float));
    for (size_t s = 0; s < NS; s++) fb_gptq_hessian_add(H, C, X + s * T * C, T);
    fb_gptq_hessian_scale(H, C, NS);
    float *Hg = get(f, "w4a16_none.hessian", NULL);
    REQUIRE(Hg, "golden hessian");
    double hd = 0, hm = 0;
    for (size_t i = 0; i < C * C; i++) {
        hd = fmax(hd, fabs((double)H[i] - Hg[i]));
        hm = fmax(hm, fabs((double)Hg[i]));
    }
    CHECK(hd <= 1e-5 * hm, "Hessian max diff %.3g (max %.3g)", hd, hm);
    static const struct { const char *key; fb_gptq_qtype qt; size_t group; int actorder; } cases[] = {
        {"w4a16_none", FB_GPTQ_INT4, 128, 0},   {"w4a16_weight", FB_GPTQ_INT4, 128, 1},
        {"w4a16_static", FB_GPTQ_INT4, 128, 1}, {"nvfp4a16_none", FB_GPTQ_NVFP4, 16, 0},
        {"nvfp4a16_weight", FB_GPTQ_NVFP4, 16, 1}, {"nvfp4a16_static", FB_GPTQ_NVFP4, 16, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char nm[128];
        snprintf(nm, sizeof nm, "%s.hessian", cases[c].key);
        float *Hc = get(f, nm, NULL);
        snprintf(nm, sizeof nm, "%s.scale", cases[c].key);
        float *sc = get(f, nm, NULL);
        snprintf(nm, sizeof nm, "%s.out", cases[c].key);
        float *ref = get(f, nm, NULL);
        snprintf(nm, sizeof nm, "%s.loss", cases[c].key);
        float *lref = get(f, nm, NULL);
        snprintf(nm, sizeof nm, "%s.global_scale", cases[c].key);
        float *gs = get(f, nm, NULL);
        REQUIRE(Hc && sc && ref && lref && (cases[c].qt == FB_GPTQ_INT4 || gs), "%s: golden tensors", cases[c].key);
        float *W = malloc(R * C * sizeof(float));
        memcpy(W, W0, R * C * sizeof(float));
        fb_gptq_opts o = {.qtype = cases[c].qt, .group = cases[c].group, .global_scale = gs ? gs[0] : 0,
                          .actorder = cases[c].actorder, .blocksize = 128, .percdamp = 0.01};
        fb_gptq_result res;
        REQUIRE(fb_gptq_quantize(W, R, C, Hc, sc, &o, &res, &err) == 0, "%s", err.msg);
        size_t same = 0, far = 0, NG = C / cases[c].group;
        for (size_t r = 0; r < R; r++)
            for (size_t j = 0; j < C; j++) {
                size_t i = r * C + j;
                if (W[i] == ref[i]) { same++; continue; }
                float s = sc[r * NG + j / cases[c].group];
                if (gs) s /= gs[0];
                // neighbouring level: INT4 steps of s; E2M1 steps are at most 2 s apart
                if (fabs((double)W[i] - ref[i]) > (cases[c].qt == FB_GPTQ_INT4 ? 1.01 : 2.01) * s) far++;
            }
        double lrel = fabs(res.loss - lref[0]) / fabs((double)lref[0]);
        CHECK(same >= (size_t)(0.99 * (double)(R * C)) && far == 0 && lrel < 0.01 && !res.rtn_fallback &&
                  res.dead_columns == 1,
              "%s: %zu/%zu elements identical, %zu more than one level apart, loss %.6g vs %.6g (rel %.2g), "
              "dead %zu", cases[c].key, same, R * C, far, res.loss, (double)lref[0], lrel, res.dead_columns);
        printf("gptq %-16s identical %zu/%zu, loss %.6g (reference %.6g)\n", cases[c].key, same, R * C, res.loss,
               (double)lref[0]);
        // The factored entry on the same case, and a second weight (-W0) on the same factor: each
        // byte-identical to fb_gptq_quantize.
        fb_gptq_factor *fc;
        REQUIRE(fb_gptq_factorize(Hc, C, &o, &fc, &err) == 0, "%s: %s", cases[c].key, err.msg);
        same_as(cases[c].key, W0, R, C, fc, sc, &o, W, &res);
        float *Wn = malloc(R * C * sizeof(float)), *Wnq = malloc(R * C * sizeof(float));
        for (size_t i = 0; i < R * C; i++) Wn[i] = -W0[i];
        fb_gptq_result rn;
        plain(Wn, R, C, Hc, sc, &o, Wnq, &rn);
        snprintf(nm, sizeof nm, "%s, -W on the same factor", cases[c].key);
        same_as(nm, Wn, R, C, fc, sc, &o, Wnq, &rn);
        fb_gptq_factor_free(fc);
        free(Wn), free(Wnq);
        free(W); free(Hc); free(sc); free(ref); free(lref); free(gs);
    }
    // A Hessian that is not positive definite even after dampening falls back to RTN, no NaN.
    {
        size_t n = 32;
        float *Hb = calloc(n * n, sizeof(float)), *Wb = malloc(4 * n * sizeof(float)), *sb = malloc(4 * sizeof(float));
        for (size_t i = 0; i < n; i++) Hb[i * n + i] = i == 3 ? -100.0f : 1.0f;
        for (size_t i = 0; i < 4 * n; i++) Wb[i] = (float)((int)(i % 7) - 3) * 0.01f;
        for (size_t i = 0; i < 4; i++) sb[i] = 0.005f;
        fb_gptq_opts o = {.qtype = FB_GPTQ_INT4, .group = 32};
        fb_gptq_result res;
        REQUIRE(fb_gptq_quantize(Wb, 4, n, Hb, sb, &o, &res, &err) == 0, "%s", err.msg);
        int finite = 1;
        for (size_t i = 0; i < 4 * n; i++) finite &= isfinite(Wb[i]);
        CHECK(res.rtn_fallback && finite, "non-PD Hessian: RTN fallback (%d), finite weights", res.rtn_fallback);
        free(Hb); free(Wb); free(sb);
    }
    // The factored entry on random cases (widths, act-order, dead columns, the non-PD fallback).
    static const size_t none[] = {SIZE_MAX}, dead2[] = {7, 200, SIZE_MAX}, dead1[] = {0, SIZE_MAX};
    random_shared("INT4", 256, FB_GPTQ_INT4, 0, 128, none, 0);
    random_shared("INT4 act-order, 2 dead columns", 384, FB_GPTQ_INT4, 1, 128, dead2, 0);
    random_shared("NVFP4 act-order, block 96, dead column 0", 320, FB_GPTQ_NVFP4, 1, 96, dead1, 0);
    random_shared("NVFP4, non-PD fallback", 256, FB_GPTQ_NVFP4, 0, 128, dead2, 1);
    random_shared("INT4 act-order, non-PD fallback", 256, FB_GPTQ_INT4, 1, 64, none, 1);
    refusals();
    free(W0); free(X); free(H); free(Hg);
    fb_st_close(f);
    TEST_MAIN_END();
}
