// bench_autoround.c: AutoRound SignRound (calib/autoround.h) on one full-size MiniMax-M2 expert
// MLP (hidden 3072, intermediate 1536: gate/up [1536, 3072], down [3072, 1536]), every one of
// 2048 calibration tokens routed to it (8 samples x 256 tokens, batch_size 8: each iteration
// sees all 2048 tokens), on the CPU (OpenBLAS threads).
//
//   build/bench/bench_autoround [--iters N] [--tokens T]      (defaults 200, 2048)
//
// Prints the wall time, the time per iteration, the achieved GEMM rate (8 GEMMs of
// 2 x tokens x 3072 x 1536 FLOP per iteration: 3 forward, 5 backward) and the MSE before / after.
// Synthetic weights and inputs from a fixed hash; the target is the FP expert's own output.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "calib/autoround.h"

static float rnd(uint64_t *s) {  // roughly normal: sum of 4 uniforms, centred
    float a = 0;
    for (int i = 0; i < 4; i++) {
        *s = *s * 6364136223846793005ull + 1442695040888963407ull;
        a += (float)(*s >> 40) / (float)(1u << 24);
    }
    return (a - 2.0f) * 1.7f;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    int iters = 200;
    size_t tokens = 2048, H = 3072, FF = 1536;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--tokens")) tokens = (size_t)atol(argv[i + 1]);
    }
    if (iters < 1 || tokens < 8 || tokens % 8) {
        fprintf(stderr, "usage: bench_autoround [--iters N >= 1] [--tokens T, a multiple of 8]\n");
        return 2;
    }
    size_t seq = tokens / 8;
    uint64_t s = 20261207;
    float *x = malloc(tokens * H * sizeof(float)), *route = malloc(tokens * sizeof(float));
    for (size_t i = 0; i < tokens * H; i++) x[i] = rnd(&s);
    for (size_t i = 0; i < tokens; i++) route[i] = 0.125f + 0.5f * (float)(i % 7) / 7.0f;
    fb_ar_expert ex;
    fb_ar_linear *ls[3] = {&ex.gate, &ex.up, &ex.down};
    for (int j = 0; j < 3; j++) {
        size_t R = j == 2 ? H : FF, C = j == 2 ? FF : H;
        float *w = malloc(R * C * sizeof(float));
        for (size_t i = 0; i < R * C; i++) w[i] = 0.02f * rnd(&s);
        *ls[j] = (fb_ar_linear){.w = w, .rows = R, .cols = C, .scale = malloc(R * C / FB_AR_GROUP * sizeof(float)),
                                .q = malloc(R * C)};
    }
    fb_ar_opts o = {.iters = iters, .batch_size = 8, .seed = 42};
    fb_ar_result res;
    fb_err err;
    double t0 = now();
    if (fb_autoround_tune_moe(x, 8, seq, H, route, 1, NULL, &ex, &o, &res, &err)) {
        fprintf(stderr, "bench_autoround: %s\n", err.msg);
        return 1;
    }
    double dt = now() - t0;
    double flop = 8.0 * 2.0 * (double)tokens * (double)H * (double)FF * iters;
    printf("autoround expert MLP [3072 x 1536], %zu tokens, %d iterations: %.1f s wall, %.3f s/iteration, "
           "%.1f GFLOP/s in the GEMMs' share; MSE RTN %.4g -> %.4g (best iteration %d)\n",
           tokens, iters, dt, dt / iters, flop / dt * 1e-9, res.rtn_mse, res.final_mse, res.best_iter);
    for (int j = 0; j < 3; j++) { free(ls[j]->w); free(ls[j]->scale); free(ls[j]->q); }
    free(x); free(route);
    return 0;
}
