// bench_cuda_gptq.c: one full-size MiniMax-M2 layer's GPTQ work on the GPU (cuda/cugptq.h), as
// the quantizers' layer loop does it (jobs/tune.c, all-experts calibration): hidden 3072, 48 query
// heads x 128 on 8 KV heads, 256 experts of 1536.
//
//   build/bench/bench_cuda_gptq [--samples S] [--seq L] [--experts E] [--threads T]
//                               (defaults 64, 2048, 256, 1)
//
// 1. Hessians on the device (fb_cuda_gptq_hessian_add, one call per sample of L tokens, inputs
//    already in device memory): the attention input's (3072, shared by q/k/v), o_proj's input
//    (6144), the MoE input's (3072: in all-experts mode every expert's w1/w3 sees it, so tune.c
//    keeps one for all of them) and one per expert for w2 (1536, each over all S x L tokens,
//    every expert's own input). The inputs are random and correlated (x = z M, z uniform, M a
//    random mixing matrix), made on the device before each part is timed (they stand in for the
//    layer's forward, which is not GPTQ work and is not timed).
// 2. The solves (W4A16 int4 group 128, act-order static, block 128, dampening 0.01; weights random
//    ~0.02, the observer's bf16(absmax/8) scales) as jobs/tune.c runs them since the shared
//    factorization: each distinct Hessian factorized once (fb_cuda_gptq_factorize: the attention
//    input's for q/k/v, o_proj's, the MoE input's for all 2E w1/w3, on the main thread before their
//    solves; each w2's inside its own job), then fb_cuda_gptq_quantize_factored per Linear: q, k, v,
//    o, and per expert w1, w3, w2, on T host threads (tune.c's per-Linear workers; each thread has
//    its own stream). A factorization uploads its Hessian (host memory: the Hessians come from the
//    host engine in today's pipeline, so that traffic is part of the figure); a solve uploads its
//    weight and scales and downloads the result through its thread's pinned buffer.
// Prints the time per part, per layer, a 62-layer projection, the factorizations' total, the
// per-solve breakdown (update, transfers) and the device memory (the inputs and Hessians the bench
// holds, and the solver's own allocations per call, the factor's included).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda/cugptq.h"
#include "quant/formats.h"

#ifdef FB_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdatomic.h>
#endif

#ifndef FB_HAVE_CUDA

int main(void) {
    fprintf(stderr, "bench_cuda_gptq: this build has no CUDA support (built without nvcc, or CUDA=0)\n");
    return 1;
}

#else

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_cuda_gptq: out of host memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static float urand(uint64_t *s) {  // uniform in [-1, 1)
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)(*s >> 40) / 8388608.0f - 1.0f;
}

#define CUDA_OK(call)                                                                                            \
    do {                                                                                                         \
        cudaError_t e_ = (call);                                                                                 \
        if (e_ != cudaSuccess) {                                                                                 \
            fprintf(stderr, "bench_cuda_gptq: %s (%s:%d): %s\n", #call, __FILE__, __LINE__, cudaGetErrorString(e_)); \
            exit(1);                                                                                             \
        }                                                                                                        \
    } while (0)
#define CUBLAS_OK(call)                                                                                          \
    do {                                                                                                         \
        cublasStatus_t s_ = (call);                                                                              \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                       \
            fprintf(stderr, "bench_cuda_gptq: %s (%s:%d): status %d\n", #call, __FILE__, __LINE__, (int)s_);      \
            exit(1);                                                                                             \
        }                                                                                                        \
    } while (0)

// The bench's device state: z [N x ZC] uniform (uploaded once), x [N x C] = z[:, off:off+C] M.
typedef struct dev {
    size_t N, ZC;
    float *z, *x, *M;
    cublasHandle_t h;
} dev;

// x = z[:, off : off + C] @ M, M [C x C] random (seeded), all on the device (not timed).
static void make_input(dev *d, size_t C, size_t off, uint64_t seed) {
    float *hm = xmalloc(C * C * sizeof(float));
    uint64_t s = seed;
    const float a = 1.0f / 64.0f;
    for (size_t i = 0; i < C * C; i++) hm[i] = (i / C == i % C ? 1.0f : 0.0f) + a * urand(&s);
    CUDA_OK(cudaMemcpy(d->M, hm, C * C * sizeof(float), cudaMemcpyHostToDevice));
    free(hm);
    const float one = 1.0f, zero = 0.0f;
    // row-major x[N, C] = zs[N, C] M[C, C]; column-major: x^T = M^T zs^T
    CUBLAS_OK(cublasSgemm(d->h, CUBLAS_OP_N, CUBLAS_OP_N, (int)C, (int)d->N, (int)C, &one, d->M, (int)C, d->z + off,
                          (int)d->ZC, &zero, d->x, (int)C));
    CUDA_OK(cudaDeviceSynchronize());
}

// Accumulates the Hessian of the current x (C columns) into dH, one call per sample of L rows;
// returns the seconds (synchronised).
static double hessian(dev *d, float *dH, size_t C, size_t S, size_t L) {
    fb_err err;
    CUDA_OK(cudaMemset(dH, 0, C * C * sizeof(float)));
    CUDA_OK(cudaDeviceSynchronize());
    double t0 = now();
    for (size_t s = 0; s < S; s++)
        if (fb_cuda_gptq_hessian_add(dH, C, d->x + s * L * C, L, &err)) {
            fprintf(stderr, "bench_cuda_gptq: %s\n", err.msg);
            exit(1);
        }
    CUDA_OK(cudaDeviceSynchronize());
    return now() - t0;
}

// One solve job: a shape with its Hessian (host) and a weight / scales template.
typedef struct shape {
    size_t R, C;
    const float *H;
    const fb_cuda_gptq_factor *f;  // the shared factor of H, or NULL: the job factorizes H itself
    float *W, *sc;
} shape;

static void make_shape(shape *sh, size_t R, size_t C, const float *H, uint64_t seed) {
    sh->R = R, sh->C = C, sh->H = H, sh->f = NULL;
    sh->W = xmalloc(R * C * sizeof(float));
    sh->sc = xmalloc(R * (C / 128) * sizeof(float));
    uint64_t s = seed;
    for (size_t i = 0; i < R * C; i++) sh->W[i] = fb_bf16_to_f32(fb_f32_to_bf16(0.01f * (urand(&s) + urand(&s))));
    for (size_t r = 0; r < R; r++)
        for (size_t g = 0; g < C / 128; g++) {
            float a = 0;
            for (size_t k = 0; k < 128; k++) {
                float v = sh->W[r * C + g * 128 + k];
                a = a > (v < 0 ? -v : v) ? a : (v < 0 ? -v : v);
            }
            float sv = fb_bf16_to_f32(fb_f32_to_bf16(a / 8.0f));
            sh->sc[r * (C / 128) + g] = sv > 0 ? sv : 1e-5f;
        }
}

typedef struct pool {
    const shape **jobs;
    size_t n;
    atomic_size_t next;
    atomic_int failed, fallbacks;
    double factor_s, update_s, xfer_s;  // sums over calls (under mu)
    size_t max_bytes;
    pthread_mutex_t mu;
} pool;

static const fb_gptq_opts OPTS = {.qtype = FB_GPTQ_INT4, .group = 128, .actorder = 1, .blocksize = 128,
                                  .percdamp = 0.01};

static void *worker(void *arg) {
    pool *p = arg;
    double fs = 0, us = 0, xs = 0;
    size_t mb = 0;
    for (;;) {
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n || atomic_load(&p->failed)) break;
        const shape *sh = p->jobs[i];
        float *W = xmalloc(sh->R * sh->C * sizeof(float));
        memcpy(W, sh->W, sh->R * sh->C * sizeof(float));
        fb_gptq_result r;
        fb_err err;
        fb_cugptq_info in;
        fb_cuda_gptq_factor *own = NULL;
        size_t fbytes = 0;
        if (!sh->f) {  // its own Hessian (w2): factorized in the job, as tune.c does
            if (fb_cuda_gptq_factorize(sh->H, sh->C, &OPTS, &own, &err)) {
                fprintf(stderr, "bench_cuda_gptq: factorize %zu columns: %s\n", sh->C, err.msg);
                atomic_store(&p->failed, 1);
                free(W);
                break;
            }
            fb_cuda_gptq_last_info(&in);
            fs += in.upload_s + in.factor_s;
            fbytes = in.device_bytes;
        }
        if (fb_cuda_gptq_quantize_factored(W, sh->R, sh->C, own ? own : sh->f, sh->sc, &OPTS, &r, &err)) {
            fprintf(stderr, "bench_cuda_gptq: [%zu, %zu]: %s\n", sh->R, sh->C, err.msg);
            atomic_store(&p->failed, 1);
        } else {
            fb_cuda_gptq_last_info(&in);
            us += in.update_s, xs += in.upload_s + in.download_s;
            mb = mb > in.device_bytes + fbytes ? mb : in.device_bytes + fbytes;
            if (r.rtn_fallback) atomic_fetch_add(&p->fallbacks, 1);
        }
        fb_cuda_gptq_factor_free(own);
        free(W);
    }
    pthread_mutex_lock(&p->mu);
    p->factor_s += fs, p->update_s += us, p->xfer_s += xs;
    p->max_bytes = p->max_bytes > mb ? p->max_bytes : mb;
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

// Factorizes a shared Hessian on the main thread; adds its seconds to *secs.
static fb_cuda_gptq_factor *shared_factor(const float *H, size_t C, double *secs, size_t *bytes) {
    fb_cuda_gptq_factor *f;
    fb_err err;
    double t0 = now();
    if (fb_cuda_gptq_factorize(H, C, &OPTS, &f, &err)) {
        fprintf(stderr, "bench_cuda_gptq: factorize %zu columns: %s\n", C, err.msg);
        exit(1);
    }
    *secs += now() - t0;
    fb_cugptq_info in;
    fb_cuda_gptq_last_info(&in);
    *bytes = *bytes > in.device_bytes ? *bytes : in.device_bytes;
    return f;
}

// Runs the solves on T threads; returns the wall seconds.
static double solve(pool *p, const shape **jobs, size_t n, int T) {
    p->jobs = jobs, p->n = n;
    atomic_store(&p->next, 0);
    double t0 = now();
    pthread_t th[64];
    int nt = 0;
    for (; nt < T; nt++)
        if (pthread_create(&th[nt], NULL, worker, p)) break;
    if (nt == 0) worker(p);
    for (int i = 0; i < nt; i++) pthread_join(th[i], NULL);
    if (atomic_load(&p->failed)) exit(1);
    return now() - t0;
}

int main(int argc, char **argv) {
    long samples = 64, seq = 2048, experts = 256, threads = 1;
    for (int i = 1; i < argc; i++) {
        long *dst = !strcmp(argv[i], "--samples") ? &samples : !strcmp(argv[i], "--seq") ? &seq
                    : !strcmp(argv[i], "--experts") ? &experts : !strcmp(argv[i], "--threads") ? &threads : NULL;
        char *end = NULL;
        if (!dst || i + 1 >= argc || (*dst = strtol(argv[i + 1], &end, 10), *end)) {
            fprintf(stderr, "usage: bench_cuda_gptq [--samples S] [--seq L] [--experts E] [--threads T]\n");
            return 2;
        }
        i++;
    }
    if (samples < 1 || samples > 4096 || seq < 1 || seq > 32768 || experts < 1 || experts > 1024 || threads < 1 ||
        threads > 64 || (double)samples * (double)seq > 1e6) {
        fprintf(stderr, "bench_cuda_gptq: samples 1..4096, seq 1..32768 (at most 1e6 tokens), experts 1..1024, "
                        "threads 1..64\n");
        return 2;
    }
    const size_t HID = 3072, DQ = 6144, DK = 1024, FF = 1536, E = (size_t)experts, S = (size_t)samples,
                 L = (size_t)seq, N = S * L;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        fprintf(stderr, "bench_cuda_gptq: no usable GPU\n");
        return 1;
    }
    struct cudaDeviceProp pr;
    CUDA_OK(cudaGetDeviceProperties(&pr, 0));
    double t_setup = now();
    dev d = {.N = N, .ZC = DQ};
    CUBLAS_OK(cublasCreate(&d.h));
    CUBLAS_OK(cublasSetMathMode(d.h, CUBLAS_DEFAULT_MATH));
    CUDA_OK(cudaMalloc((void **)&d.z, N * DQ * sizeof(float)));
    CUDA_OK(cudaMalloc((void **)&d.x, N * DQ * sizeof(float)));
    CUDA_OK(cudaMalloc((void **)&d.M, DQ * DQ * sizeof(float)));
    {
        float *hz = xmalloc(L * DQ * sizeof(float));
        uint64_t s = 20261207;
        for (size_t smp = 0; smp < S; smp++) {  // one sample at a time: host memory stays small
            for (size_t i = 0; i < L * DQ; i++) hz[i] = urand(&s);
            CUDA_OK(cudaMemcpy(d.z + smp * L * DQ, hz, L * DQ * sizeof(float), cudaMemcpyHostToDevice));
        }
        free(hz);
    }
    float *dHa, *dHo, *dHm, *dHd;
    CUDA_OK(cudaMalloc((void **)&dHa, HID * HID * sizeof(float)));
    CUDA_OK(cudaMalloc((void **)&dHo, DQ * DQ * sizeof(float)));
    CUDA_OK(cudaMalloc((void **)&dHm, HID * HID * sizeof(float)));
    CUDA_OK(cudaMalloc((void **)&dHd, E * FF * FF * sizeof(float)));
    size_t fr0, tot;
    CUDA_OK(cudaMemGetInfo(&fr0, &tot));
    t_setup = now() - t_setup;
    // 1. Hessians.
    double t_in = 0, t0;
    t0 = now(), make_input(&d, HID, 0, 1), t_in += now() - t0;
    double th_a = hessian(&d, dHa, HID, S, L);
    t0 = now(), make_input(&d, DQ, 0, 2), t_in += now() - t0;
    double th_o = hessian(&d, dHo, DQ, S, L);
    t0 = now(), make_input(&d, HID, DQ - HID, 3), t_in += now() - t0;
    double th_m = hessian(&d, dHm, HID, S, L);
    double th_d = 0;
    for (size_t e = 0; e < E; e++) {
        t0 = now(), make_input(&d, FF, (e * 17) % (DQ - FF), 100 + e), t_in += now() - t0;
        th_d += hessian(&d, dHd + e * FF * FF, FF, S, L);
    }
    // the Hessians to the host, as the solver takes them (today's pipeline keeps them there)
    t0 = now();
    float *Ha = xmalloc(HID * HID * 4), *Ho = xmalloc(DQ * DQ * 4), *Hm = xmalloc(HID * HID * 4),
          *Hd = xmalloc(E * FF * FF * 4);
    CUDA_OK(cudaMemcpy(Ha, dHa, HID * HID * 4, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(Ho, dHo, DQ * DQ * 4, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(Hm, dHm, HID * HID * 4, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(Hd, dHd, E * FF * FF * 4, cudaMemcpyDeviceToHost));
    double th_dl = now() - t0;
    size_t held = tot - fr0;  // the bench's inputs, mixing matrix and Hessians (and the context)
    cudaFree(d.z), cudaFree(d.x), cudaFree(d.M), cudaFree(dHa), cudaFree(dHo), cudaFree(dHm), cudaFree(dHd);
    cublasDestroy(d.h);
    // 2. Solves.
    shape sq, sk, sv, so, *s1 = xmalloc(sizeof(shape)), *s3 = xmalloc(sizeof(shape));
    make_shape(&sq, DQ, HID, Ha, 11), make_shape(&sk, DK, HID, Ha, 12), make_shape(&sv, DK, HID, Ha, 13);
    make_shape(&so, HID, DQ, Ho, 14), make_shape(s1, FF, HID, Hm, 15), make_shape(s3, FF, HID, Hm, 16);
    shape *s2 = xmalloc(E * sizeof(shape));
    make_shape(&s2[0], HID, FF, Hd, 17);
    for (size_t e = 1; e < E; e++) s2[e] = s2[0], s2[e].H = Hd + e * FF * FF;  // one weight, each expert's Hessian
    pool p = {.mu = PTHREAD_MUTEX_INITIALIZER};
    const shape *att[3] = {&sq, &sk, &sv}, *oo[1] = {&so};
    const shape **w13 = xmalloc(2 * E * sizeof(shape *)), **w2 = xmalloc(E * sizeof(shape *));
    for (size_t e = 0; e < E; e++) w13[2 * e] = s1, w13[2 * e + 1] = s3, w2[e] = &s2[e];
    // each solve part's time includes its shared factorization (tf_*), as the loop's would
    double tf_a = 0, tf_o = 0, tf_m = 0;
    size_t fmax_bytes = 0;
    fb_cuda_gptq_factor *fa = shared_factor(Ha, HID, &tf_a, &fmax_bytes);
    sq.f = sk.f = sv.f = fa;
    double ts_a = tf_a + solve(&p, att, 3, (int)threads);
    fb_cuda_gptq_factor_free(fa);
    fb_cuda_gptq_factor *fo = shared_factor(Ho, DQ, &tf_o, &fmax_bytes);
    so.f = fo;
    double ts_o = tf_o + solve(&p, oo, 1, (int)threads);
    fb_cuda_gptq_factor_free(fo);
    fb_cuda_gptq_factor *fm = shared_factor(Hm, HID, &tf_m, &fmax_bytes);
    s1->f = s3->f = fm;
    double ts_13 = tf_m + solve(&p, w13, 2 * E, (int)threads);
    fb_cuda_gptq_factor_free(fm);
    double ts_2 = solve(&p, w2, E, (int)threads);
    double tf_shared = tf_a + tf_o + tf_m;
    double th = th_a + th_o + th_m + th_d, ts = ts_a + ts_o + ts_13 + ts_2, layer = th + th_dl + ts;
    const double gi = 1.0 / (1u << 30);
    printf("cuda gptq layer on %s: hidden %zu, q %zu, k/v %zu, %zu experts of %zu; %zu x %zu tokens; W4A16 g128, "
           "act-order, %ld solve thread(s)\n", pr.name, HID, DQ, DK, E, FF, S, L, threads);
    printf("  Hessians on the device (%zu calls each of %zu rows): attention %.3f s, o_proj %.3f s, MoE input %.3f s, "
           "%zu x w2 %.3f s; to the host %.3f s\n", S, L, th_a, th_o, th_m, E, th_d, th_dl);
    printf("  solves: q/k/v %.3f s, o_proj %.3f s, %zu x w1/w3 %.3f s (%.1f ms each), %zu x w2 %.3f s (%.1f ms each)\n",
           ts_a, ts_o, 2 * E, ts_13, 1e3 * ts_13 / (double)(2 * E), E, ts_2, 1e3 * ts_2 / (double)E);
    printf("  factorizations, one per distinct Hessian: %zu, %.3f s (q/k/v %.3f, o_proj %.3f, MoE input %.3f, "
           "%zu x w2 %.3f in their jobs, Hessian uploads included)\n", 3 + E, tf_shared + p.factor_s, tf_a, tf_o, tf_m,
           E, p.factor_s);
    printf("  per solve, summed over all %zu: error feedback %.3f s, transfers (weight, scales, result) %.3f s; "
           "RTN fallbacks %d\n", 4 + 3 * E, p.update_s, p.xfer_s, atomic_load(&p.fallbacks));
    printf("  one layer: %.2f s (Hessians %.2f + to host %.2f + solves %.2f); 62 layers: %.1f min\n", layer, th, th_dl,
           ts, 62.0 * layer / 60.0);
    printf("  device memory: inputs and Hessians held by the bench %.2f GiB (of %.2f), the solver's largest call %.2f "
           "GiB per thread; input synthesis (not GPTQ work, not counted) %.1f s, setup %.1f s\n", held * gi, tot * gi,
           (p.max_bytes > fmax_bytes ? p.max_bytes : fmax_bytes) * gi, t_in, t_setup);
    return 0;
}

#endif
