// bench_gptq.c: the CPU cost of GPTQ per Linear at MiniMax-M2's full size (calib/gptq.h), the
// pieces the quantizers' layer loop (jobs/tune.h) spends its tuning time on.
//
//   build/bench/bench_gptq [--tokens N] [--threads T]
//
// For an expert w1 ([1536, 3072], Hessian 3072 x 3072) and an expert w2 ([3072, 1536], Hessian
// 1536 x 1536), NVFP4 and int4 group 128, actorder static: the Hessian accumulation over N tokens
// (default 2048, one calibration sequence), then fb_gptq_quantize, each timed on this machine in
// this run. Then the projection to one full layer (256 experts x {w1, w3, w2} + attention, one
// GPTQ each, as the loop runs them today) and to 62 layers. Weights and inputs are random
// (a hash), correlated inputs as calibration activations are; the Hessian is positive definite.
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
    double hess_s, gptq_s;
} timing;

static timing one(size_t R, size_t C, size_t ntok, fb_gptq_qtype qt) {
    timing t;
    float *W = fb_aligned_alloc(R * C * sizeof(float) + 64), *X = fb_aligned_alloc(ntok * C * sizeof(float) + 64);
    float *H = fb_aligned_alloc(C * C * sizeof(float) + 64);
    for (size_t i = 0; i < R * C; i++) W[i] = 0.02f * rnd();
    // correlated inputs: a random walk across channels plus noise
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
    t.hess_s = fb_now() - t0;
    size_t G = qt == FB_GPTQ_INT4 ? 128 : 16;
    float *sc = fb_malloc(R * (C / G) * sizeof(float));
    float g = qt == FB_GPTQ_NVFP4 ? fb_nvfp4_global_scale(fb_nvfp4_absmax(W, R * C)) : 0;
    for (size_t r = 0; r < R; r++)
        for (size_t k = 0; k < C / G; k++) {
            float m = 0;
            for (size_t i = 0; i < G; i++) m = fmaxf(m, fabsf(W[r * C + k * G + i]));
            sc[r * (C / G) + k] = qt == FB_GPTQ_INT4 ? m / 7.5f : m / 6.0f * g;
        }
    fb_gptq_opts o = {.qtype = qt, .group = G, .global_scale = g, .actorder = 1, .blocksize = 128, .percdamp = 0.01};
    fb_gptq_result res;
    fb_err err;
    t0 = fb_now();
    if (fb_gptq_quantize(W, R, C, H, sc, &o, &res, &err)) fprintf(stderr, "gptq: %s\n", err.msg);
    t.gptq_s = fb_now() - t0;
    free(W); free(X); free(H); free(sc);
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
        printf("  %-34s Hessian over %zu tokens %.2f s, GPTQ %.2f s\n", L[i].name, ntok, t[i].hess_s, t[i].gptq_s);
    }
    // one layer, NVFP4: 512 GPTQs of the w1 kind (w1, w3), 256 of the w2 kind, attention about 4
    // more of the w1 kind (q/k/v/o: 6144x3072, 1024x3072 x2, 3072x6144; counted as 5 w1-sized).
    double layer = 517 * t[0].gptq_s + 256 * t[1].gptq_s;
    printf("  projection, one full layer (NVFP4, one GPTQ per Linear as the loop runs them): %.0f s; 62 layers: %.1f h\n",
           layer, 62 * layer / 3600);
    return 0;
}
