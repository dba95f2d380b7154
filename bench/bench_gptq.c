// bench_gptq.c: the CPU cost of GPTQ per Linear at MiniMax-M2's full size (calib/gptq.h), the
// pieces the quantizers' layer loop (jobs/tune.h) spends its tuning time on.
//
//   build/bench/bench_gptq [--tokens N] [--threads T]
//
// For an expert w1 ([1536, 3072], Hessian 3072 x 3072) and an expert w2 ([3072, 1536], Hessian
// 1536 x 1536), NVFP4 and int4 group 128, actorder static: the Hessian accumulation over N tokens
// (default 2048, one calibration sequence), fb_gptq_quantize (factorization and update in one call,
// as the loop ran every Linear before issue 16's shared factorization), then the same weight as
// fb_gptq_factorize + fb_gptq_quantize_factored (the two ways alternating, twice each, the faster
// kept; the results compared byte for byte), each timed on this machine in this run; and the
// factorization of an o_proj-sized Hessian (6144 x 6144). Then the projection to one full layer
// (256 experts x {w1, w3, w2} + attention) both ways: one whole GPTQ per Linear (before), and one
// factorization per distinct Hessian as the loop now runs it (q/k/v one, o_proj one, the MoE input
// one for all 512 w1/w3, each w2 its own), with the factorization total printed separately; and to
// 62 layers. Weights and inputs are random (a hash), correlated inputs as calibration activations
// are; the Hessian is positive definite.
#include <math.h>
#include <string.h>

#include "calib/forward.h"
#include "calib/gptq.h"
#include "common/fb.h"
#include "quant/nvfp4.h"

static uint64_t st = 88172645463325252ull;
static float rnd(void) {
    st ^= st << 13, st ^= st >> 7, st ^= st << 17;
    return (float)((double)(st >> 11) / 9007199254740992.0 - 0.5);
}

typedef struct timing {
    double hess_s, gptq_s, factor_s, update_s;
} timing;

// Correlated inputs [ntok x C] (a random walk across channels plus noise) and their Hessian.
static float *make_hessian(size_t C, size_t ntok, double *secs) {
    float *X = fb_aligned_alloc(ntok * C * sizeof(float) + 64), *H = fb_aligned_alloc(C * C * sizeof(float) + 64);
    for (size_t r = 0; r < ntok; r++) {
        float a = 0;
        for (size_t c = 0; c < C; c++) {
            a = 0.9f * a + rnd();
            X[r * C + c] = a + 0.1f * rnd();
        }
    }
    memset(H, 0, C * C * sizeof(float));
    double t0 = fb_now();
    fb_gptq_hessian_add(H, C, X, ntok);
    fb_gptq_hessian_scale(H, C, 1);
    *secs = fb_now() - t0;
    free(X);
    return H;
}

static const fb_gptq_opts OPTS = {.actorder = 1, .blocksize = 128, .percdamp = 0.01};

static timing one(size_t R, size_t C, size_t ntok, fb_gptq_qtype qt) {
    timing t;
    float *W = fb_aligned_alloc(R * C * sizeof(float) + 64), *W2 = fb_aligned_alloc(R * C * sizeof(float) + 64);
    for (size_t i = 0; i < R * C; i++) W[i] = 0.02f * rnd();
    float *H = make_hessian(C, ntok, &t.hess_s);
    size_t G = qt == FB_GPTQ_INT4 ? 128 : 16;
    float *sc = fb_malloc(R * (C / G) * sizeof(float));
    float g = qt == FB_GPTQ_NVFP4 ? fb_nvfp4_global_scale(fb_nvfp4_absmax(W, R * C)) : 0;
    for (size_t r = 0; r < R; r++)
        for (size_t k = 0; k < C / G; k++) {
            float m = 0;
            for (size_t i = 0; i < G; i++) m = fmaxf(m, fabsf(W[r * C + k * G + i]));
            sc[r * (C / G) + k] = qt == FB_GPTQ_INT4 ? m / 7.5f : m / 6.0f * g;
        }
    fb_gptq_opts o = OPTS;
    o.qtype = qt, o.group = G, o.global_scale = g;
    fb_gptq_result res;
    fb_err err;
    // Each way twice, alternating, the faster of the two kept: the first call of a run pays for
    // OpenBLAS's thread start and the first page faults, which a layer of 773 solves does not.
    float *W0 = fb_aligned_alloc(R * C * sizeof(float) + 64);
    memcpy(W0, W, R * C * sizeof(float));
    t.gptq_s = t.factor_s = t.update_s = 1e30;
    for (int rep = 0; rep < 2; rep++) {
        memcpy(W, W0, R * C * sizeof(float)), memcpy(W2, W0, R * C * sizeof(float));
        double t0 = fb_now();
        if (fb_gptq_quantize(W, R, C, H, sc, &o, &res, &err)) fprintf(stderr, "gptq: %s\n", err.msg);
        t.gptq_s = fmin(t.gptq_s, fb_now() - t0);
        fb_gptq_factor *f = NULL;
        t0 = fb_now();
        if (fb_gptq_factorize(H, C, &o, &f, &err)) fprintf(stderr, "gptq factorize: %s\n", err.msg);
        t.factor_s = fmin(t.factor_s, fb_now() - t0);
        t0 = fb_now();
        if (f && fb_gptq_quantize_factored(W2, R, C, f, sc, &o, &res, &err)) fprintf(stderr, "gptq: %s\n", err.msg);
        t.update_s = fmin(t.update_s, fb_now() - t0);
        if (memcmp(W, W2, R * C * sizeof(float)) != 0) fprintf(stderr, "bench_gptq: factored != fb_gptq_quantize\n");
        fb_gptq_factor_free(f);
    }
    free(W); free(W0); free(W2); free(H); free(sc);
    return t;
}

int main(int argc, char **argv) {
    size_t ntok = 2048;
    int threads = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tokens")) ntok = (size_t)atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
    }
    fb_blas_threads(threads);
    printf("bench_gptq: %zu tokens, %d BLAS thread(s)\n", ntok, threads);
    static const struct { const char *name; size_t R, C; fb_gptq_qtype qt; } L[] = {
        {"expert w1 [1536, 3072] NVFP4", 1536, 3072, FB_GPTQ_NVFP4},
        {"expert w2 [3072, 1536] NVFP4", 3072, 1536, FB_GPTQ_NVFP4},
        {"expert w1 [1536, 3072] int4 g128", 1536, 3072, FB_GPTQ_INT4},
    };
    timing t[3];
    for (int i = 0; i < 3; i++) {
        t[i] = one(L[i].R, L[i].C, ntok, L[i].qt);
        printf("  %-34s Hessian over %zu tokens %.2f s, GPTQ %.2f s = factorize %.2f s + quantize_factored %.2f s\n",
               L[i].name, ntok, t[i].hess_s, t[i].gptq_s, t[i].factor_s, t[i].update_s);
    }
    // o_proj's input Hessian, 6144 x 6144: its factorization alone
    double hs, fo;
    float *Ho = make_hessian(6144, ntok, &hs);
    fb_gptq_factor *f = NULL;
    fb_err err;
    double t0 = fb_now();
    if (fb_gptq_factorize(Ho, 6144, &OPTS, &f, &err)) fprintf(stderr, "gptq factorize: %s\n", err.msg);
    fo = fb_now() - t0;
    fb_gptq_factor_free(f);
    free(Ho);
    printf("  %-34s Hessian over %zu tokens %.2f s, factorize %.2f s\n", "o_proj input (6144 columns)", ntok, hs, fo);
    // one layer, NVFP4: 512 GPTQs of the w1 kind (w1, w3), 256 of the w2 kind, attention about 4
    // more of the w1 kind (q/k/v/o: 6144x3072, 1024x3072 x2, 3072x6144; counted as 5 w1-sized).
    double before = 517 * t[0].gptq_s + 256 * t[1].gptq_s;
    // now: the same updates; factorizations: q/k/v's and the MoE input's (3072), o_proj's (6144),
    // 256 w2 (1536)
    double fact = 2 * t[0].factor_s + fo + 256 * t[1].factor_s, upd = 517 * t[0].update_s + 256 * t[1].update_s;
    printf("  projection, one full layer (NVFP4), one GPTQ per Linear (before): %.0f s; 62 layers: %.1f h\n", before,
           62 * before / 3600);
    printf("  projection, one full layer (NVFP4), one factorization per distinct Hessian (now): %.0f s "
           "(factorizations %.0f s: 3 + 256; updates %.0f s: 773); 62 layers: %.1f h; %.2fx less time\n",
           fact + upd, fact, upd, 62 * (fact + upd) / 3600, before / (fact + upd));
    return 0;
}
