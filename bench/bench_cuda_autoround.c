// bench_cuda_autoround.c: AutoRound's block tuning on the GPU (cuda/cutune.h) on one full-size
// synthetic MiniMax-M2 decoder block: hidden 3072, 48 heads x 128 on 8 KV heads, rotary 64, q/k
// norm over all heads, 256 experts of 1536, sigmoid router with correction bias, top-8; every
// Linear tuned (4 attention + 768 expert Linears).
//
//   build/bench/bench_cuda_autoround [--iters N] [--samples S] [--seq L] [--batch B] [--experts E]
//                                    [--gemm f32|tf32]   (fb_ar_opts.gemm; default f32)
//                                    (defaults 10, 64, 2048, 8, 256: auto-round's 64 x 2048, batch 8)
//
// Prints the time per iteration, the time for a layer at 200 iterations (measured when N = 200,
// otherwise a projection: setup + the two full-data passes + 200 x the per-iteration time), the
// achieved GEMM rate (the tuner counts 2 m n k of every cuBLAS call it issues) and the device
// memory the tuner allocated (its peak; the CUDA context and cuBLAS workspace come on top).
// Weights are random bf16 values (|w| ~ 0.02, the scale of MiniMax-M2's), the input random, the
// target the input plus noise: the figures are about speed; the MSE values mean nothing.
// Host memory at full size ~40 GB: the weights in f32 with their codes (~18 GB), the tuner's staging
// of the results before it replaces them (as much again) and x and target (3.2 GB).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda/cutune.h"
#include "quant/formats.h"

static float rnd(uint64_t *s) {  // roughly normal: sum of 4 uniforms, centred
    float a = 0;
    for (int i = 0; i < 4; i++) {
        *s = *s * 6364136223846793005ull + 1442695040888963407ull;
        a += (float)(*s >> 40) / (float)(1u << 24);
    }
    return (a - 2.0f) * 1.7f;
}
static float bf(float x) { return fb_bf16_to_f32(fb_f32_to_bf16(x)); }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_cuda_autoround: out of host memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static void make_linear(fb_ar_linear *L, size_t R, size_t C, float amp, uint64_t *s) {
    *L = (fb_ar_linear){.w = xmalloc(R * C * sizeof(float)), .rows = R, .cols = C,
                        .scale = xmalloc(R * C / FB_AR_GROUP * sizeof(float)), .q = xmalloc(R * C)};
    for (size_t i = 0; i < R * C; i++) L->w[i] = bf(amp * rnd(s));
}

int main(int argc, char **argv) {
    long iters = 10, samples = 64, seq = 2048, batch = 8, experts = 256, lanes = 0;
    static const char *GEMM[] = {"f32", "tf32", "bf16"};
    int gemm = FB_AR_GEMM_F32;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--gemm") && i + 1 < argc) {
            gemm = -1;
            for (int g = 0; g < 3; g++)
                if (!strcmp(argv[i + 1], GEMM[g])) gemm = g;
            if (gemm < 0) {
                fprintf(stderr, "bench_cuda_autoround: --gemm f32, tf32 or bf16\n");
                return 2;
            }
            i++;
            continue;
        }
        long *dst = !strcmp(argv[i], "--iters") ? &iters : !strcmp(argv[i], "--samples") ? &samples
                    : !strcmp(argv[i], "--seq") ? &seq : !strcmp(argv[i], "--batch") ? &batch
                    : !strcmp(argv[i], "--experts") ? &experts : !strcmp(argv[i], "--lanes") ? &lanes : NULL;
        char *end = NULL;
        if (!dst || i + 1 >= argc || (*dst = strtol(argv[i + 1], &end, 10), *end)) {
            fprintf(stderr, "usage: bench_cuda_autoround [--iters N] [--samples S] [--seq L] [--batch B] [--experts E] [--lanes N] [--gemm f32|tf32|bf16]\n");
            return 2;
        }
        i++;
    }
    if (iters < 1 || iters > 100000 || samples < 1 || samples > 4096 || seq < 1 || seq > 32768 || batch < 1 ||
        batch > samples || experts < 8 || experts > 1024 || lanes < 0 || lanes > 32) {
        fprintf(stderr, "bench_cuda_autoround: iters 1..100000, samples 1..4096, seq 1..32768, batch 1..samples, "
                        "experts 8..1024, lanes 0..32\n");
        return 2;
    }
    const size_t H = 3072, NH = 48, NKV = 8, HD = 128, FF = 1536, E = (size_t)experts, N = (size_t)(samples * seq);
    fb_model_config c = {.hidden = (int)H, .inter = (int)FF, .n_heads = (int)NH, .n_kv_heads = (int)NKV,
                         .head_dim = (int)HD, .rotary_dim = 64, .rope_theta = 5e6, .eps = 1e-6, .n_experts = (int)E,
                         .top_k = 8, .qk_norm = FB_QKN_ALL_HEADS, .router = FB_ROUTER_SIGMOID_BIAS,
                         .use_routing_bias = 1};
    double t0 = now();
    uint64_t s = 20261207;
    float *ln1 = xmalloc(H * 4), *ln2 = xmalloc(H * 4), *qn = xmalloc(NH * HD * 4), *kn = xmalloc(NKV * HD * 4);
    float *router = xmalloc(E * H * 4), *bias = xmalloc(E * 4);
    for (size_t i = 0; i < H; i++) ln1[i] = bf(1.0f + 0.1f * rnd(&s)), ln2[i] = bf(1.0f + 0.1f * rnd(&s));
    for (size_t i = 0; i < NH * HD; i++) qn[i] = bf(1.0f + 0.1f * rnd(&s));
    for (size_t i = 0; i < NKV * HD; i++) kn[i] = bf(1.0f + 0.1f * rnd(&s));
    for (size_t i = 0; i < E * H; i++) router[i] = bf(0.02f * rnd(&s));
    for (size_t i = 0; i < E; i++) bias[i] = bf(0.01f * rnd(&s));
    fb_ar_linear at[4];
    make_linear(&at[0], NH * HD, H, 0.02f, &s);
    make_linear(&at[1], NKV * HD, H, 0.02f, &s);
    make_linear(&at[2], NKV * HD, H, 0.02f, &s);
    make_linear(&at[3], H, NH * HD, 0.02f, &s);
    fb_ar_expert *ex = xmalloc(E * sizeof *ex);
    for (size_t e = 0; e < E; e++) {
        make_linear(&ex[e].gate, FF, H, 0.02f, &s);
        make_linear(&ex[e].up, FF, H, 0.02f, &s);
        make_linear(&ex[e].down, H, FF, 0.02f, &s);
    }
    float *x = xmalloc(N * H * sizeof(float)), *t = xmalloc(N * H * sizeof(float));
    for (size_t i = 0; i < N * H; i++) x[i] = bf(rnd(&s)), t[i] = x[i] + 0.05f * rnd(&s);
    fb_ar_block b = {.cfg = &c, .ln1 = ln1, .ln2 = ln2, .q_norm = qn, .k_norm = kn, .router = router,
                     .router_bias = bias, .attn = {&at[0], &at[1], &at[2], &at[3]}, .attn_tuned = {1, 1, 1, 1},
                     .experts = ex, .experts_tuned = 1};
    double t1 = now();
    fb_ar_opts o = {.iters = (int)iters, .batch_size = (size_t)batch, .seed = 42, .gemm = gemm, .cuda_lanes = (int)lanes};
    fb_ar_result res;
    fb_err err;
    if (fb_cuda_autoround_tune_block(x, t, (size_t)samples, (size_t)seq, &b, &o, &res, &err)) {
        fprintf(stderr, "bench_cuda_autoround: %s\n", err.msg);
        return 1;
    }
    double t2 = now();
    fb_cutune_info in;
    fb_cuda_autoround_last_info(&in);
    double per_it = in.iters_s / (double)iters, other = (t2 - t1) - in.iters_s;
    printf("cuda autoround block: hidden %zu, %zu experts of %zu (top-8), %ld x %ld tokens, batch %ld, %ld iterations, "
           "%s GEMMs, %ld expert lanes\n", H, E, FF, samples, seq, batch, iters, GEMM[gemm], lanes ? lanes : 4L);
    printf("  host setup (random weights) %.1f s; tune_block %.1f s: setup + uploads + downloads %.1f s, 2 full-data "
           "passes %.2f s, iterations %.2f s\n", t1 - t0, t2 - t1, other - in.full_s, in.full_s, in.iters_s);
    printf("  of the setup etc.: host checks %.2f s, allocations + uploads %.2f s, results back %.2f s\n", in.check_s,
           in.setup_s - in.check_s, in.download_s);
    printf("  per iteration %.3f s (%.2f TFLOP of GEMMs, %.1f TFLOP/s); full passes %.1f TFLOP/s\n", per_it,
           in.iter_flop / (double)iters * 1e-12, in.iter_flop / in.iters_s * 1e-12, in.full_flop / in.full_s * 1e-12);
    printf("  per iteration on the device: attention + router fwd %.1f ms, experts fwd %.1f ms (host issue %.1f ms), "
           "loss + snapshot %.1f ms, experts bwd + steps %.1f ms (host issue %.1f ms), attention bwd %.1f ms\n",
           1e3 * in.sect_s[0] / iters, 1e3 * in.sect_s[1] / iters, 1e3 * in.moe_issue_s[0] / iters,
           1e3 * in.sect_s[2] / iters, 1e3 * in.sect_s[3] / iters, 1e3 * in.moe_issue_s[1] / iters,
           1e3 * in.sect_s[4] / iters);
    printf("  one layer at 200 iterations: %.1f s%s\n", other + 200.0 * per_it,
           iters == 200 ? " (measured)" : " (projection: the rest of this run + 200 x the per-iteration time)");
    printf("  device memory allocated by the tuner (peak): %.2f GiB; MSE RTN %.4g -> %.4g (best iteration %d; "
           "synthetic target)\n", (double)in.device_bytes / (1u << 30), res.rtn_mse, res.final_mse, res.best_iter);
    return 0;
}
