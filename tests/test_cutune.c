// test_cutune.c: AutoRound's block tuning on CUDA (cuda/cutune.h) against the CPU's
// (calib/autoround.h), which is the truth.
//  Everywhere: fb_autoround_sample_order (the mini-batch order both sides walk) equals auto-round
//  0.16.1's own IndexSampler after random.seed(seed) (scripts/gen-sample-order-golden.py).
//  Built without CUDA: both entries fail saying the build has no CUDA.
//  Built with CUDA: bad input is refused on the host before any device work (naming what), and
//  without a GPU the call fails saying so, weights untouched. With a GPU (these checks really run
//  there; here they print that they are skipped):
//   - fb_cuda_autoround_block_grad = fb_autoround_block_grad within GRAD_TOL of each Linear's
//     largest gradient (and the loss within LOSS_TOL), for both routers and all q/k norm kinds,
//     on a GQA block (4 query heads on 2 KV heads) with 8 experts, top-2;
//   - fb_cuda_autoround_tune_block vs fb_autoround_tune_block on the same fixture: the RTN MSE
//     within 1e-5 relative, the first TRACE_N mini-batch losses within TRACE_TOL, the final MSE
//     within FINAL_TOL, every tuned weight its fp16 scale times its code in [-8, 7], a fixed
//     Linear untouched, the same seed the same bytes.
#include <math.h>
#include <string.h>

#include "calib/autoround.h"
#include "cuda/cuengine.h"
#include "cuda/cutune.h"
#include "quant/formats.h"
#include "test.h"

// Two f32 computations of the same sums in different orders (cuBLAS / own reductions vs BLAS):
// agreement to a few f32 ulps of the largest term, with margin.
#define GRAD_TOL 1e-4
#define LOSS_TOL 1e-5
#define RTN_TOL 1e-5
// The trajectories agree until a near-zero gradient takes the other sign on one side (as the
// CPU's against auto-round's, tests/test_autoround.c); then they are two samples of one process.
#define TRACE_N 3
#define TRACE_TOL 1e-4
#define FINAL_TOL 0.05

// auto-round 0.16.1's IndexSampler (scripts/gen-sample-order-golden.py).
// A: nsamples 10, batch 4, iters 7, seed 42
static const size_t ORDER_A[] = {7, 3, 2, 8, 5, 6, 9, 4, 8, 6, 2, 5, 3, 0, 4, 7, 7, 0, 8, 2, 3, 1, 6, 4, 4, 5, 2, 7};
// B: nsamples 9, batch 3, iters 8, seed 8589934597
static const size_t ORDER_B[] = {0, 1, 3, 5, 7, 6, 8, 2, 4, 0, 8, 4, 2, 7, 5, 1, 6, 3, 2, 0, 6, 7, 1, 3};
// C: nsamples 5, batch 8, iters 3, seed 7
static const size_t ORDER_C[] = {4, 0, 3, 1, 2, 3, 1, 0, 2, 4, 2, 0, 3, 1, 4};

static void sample_order(void) {
    struct { const size_t *want; size_t n, ns, bs; int iters; uint64_t seed; } c[] = {
        {ORDER_A, sizeof ORDER_A / sizeof *ORDER_A, 10, 4, 7, 42},
        {ORDER_B, sizeof ORDER_B / sizeof *ORDER_B, 9, 3, 8, 8589934597ull},
        {ORDER_C, sizeof ORDER_C / sizeof *ORDER_C, 5, 8, 3, 7}};
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        fb_ar_opts o = {.iters = c[i].iters, .batch_size = c[i].bs, .seed = c[i].seed};
        size_t got[64];
        memset(got, 0xff, sizeof got);
        fb_autoround_sample_order(c[i].ns, &o, got);
        CHECK(!memcmp(got, c[i].want, c[i].n * sizeof(size_t)) && got[c[i].n] == (size_t)-1,
              "sample order %zu: fourbit's walk is auto-round's IndexSampler's (and writes iters x batch entries)", i);
    }
}

static float urand(uint64_t *s) {  // uniform in [-1, 1), xorshift64
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return (float)((*s >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
}

// The fixture block (tests/test_autoround.c's blk_make, with GQA and more experts): hidden 256,
// 4 query heads of 64 on 2 KV heads, rotary 32, 8 experts of 128, top-2.
enum { FH = 256, FF_ = 128, FNH = 4, FNKV = 2, FHD = 64, FE = 8, FK = 2, FNL = 4 + 3 * FE };
typedef struct blkfix {
    fb_model_config c;
    float *ln1, *ln2, *qn, *kn, *router, *bias;
    fb_ar_linear at[4];
    fb_ar_expert ex[FE];
    float *sc[FNL];
    int8_t *q[FNL];
    fb_ar_block b;
} blkfix;

static fb_ar_linear *blk_lin(blkfix *f, int j) {
    if (j < 4) return &f->at[j];
    fb_ar_expert *p = &f->ex[(j - 4) / 3];
    return (j - 4) % 3 == 0 ? &p->gate : (j - 4) % 3 == 1 ? &p->up : &p->down;
}

static void blk_make(blkfix *f, fb_qk_norm qk, fb_router_kind rk, int norm_topk, uint64_t seed) {
    memset(f, 0, sizeof *f);
    f->c = (fb_model_config){.hidden = FH, .inter = FF_, .n_heads = FNH, .n_kv_heads = FNKV, .head_dim = FHD,
                             .rotary_dim = 32, .rope_theta = 10000.0, .eps = 1e-6, .n_experts = FE, .top_k = FK,
                             .qk_norm = qk, .router = rk, .norm_topk_prob = norm_topk, .use_routing_bias = 1};
    size_t H = FH, Dq = FNH * FHD, Dk = FNKV * FHD;
    uint64_t st = seed;
    f->ln1 = fb_malloc(H * sizeof(float)), f->ln2 = fb_malloc(H * sizeof(float));
    f->qn = fb_malloc(Dq * sizeof(float)), f->kn = fb_malloc(Dq * sizeof(float));
    for (size_t i = 0; i < H; i++) f->ln1[i] = 1.0f + 0.2f * urand(&st), f->ln2[i] = 1.0f + 0.2f * urand(&st);
    for (size_t i = 0; i < Dq; i++) f->qn[i] = 1.0f + 0.2f * urand(&st), f->kn[i] = 1.0f + 0.2f * urand(&st);
    f->router = fb_malloc(FE * H * sizeof(float)), f->bias = fb_malloc(FE * sizeof(float));
    for (size_t i = 0; i < FE * H; i++) f->router[i] = 0.2f * urand(&st);
    for (size_t i = 0; i < FE; i++) f->bias[i] = 0.05f * urand(&st);
    size_t R[4] = {Dq, Dk, Dk, H}, C[4] = {H, H, H, Dq};
    for (int j = 0; j < 4; j++) f->at[j] = (fb_ar_linear){.rows = R[j], .cols = C[j]};
    for (size_t e = 0; e < FE; e++) {
        f->ex[e].gate = (fb_ar_linear){.rows = FF_, .cols = H};
        f->ex[e].up = (fb_ar_linear){.rows = FF_, .cols = H};
        f->ex[e].down = (fb_ar_linear){.rows = H, .cols = FF_};
    }
    for (int j = 0; j < FNL; j++) {
        fb_ar_linear *L = blk_lin(f, j);
        size_t n = L->rows * L->cols;
        L->w = fb_malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) L->w[i] = (j < 4 ? 0.06f : 0.09f) * urand(&st);
        L->scale = f->sc[j] = fb_malloc(n / 128 * sizeof(float));
        L->q = f->q[j] = fb_malloc(n);
    }
    f->b = (fb_ar_block){.cfg = &f->c, .ln1 = f->ln1, .ln2 = f->ln2, .q_norm = qk ? f->qn : NULL,
                         .k_norm = qk ? f->kn : NULL, .router = f->router,
                         .router_bias = rk == FB_ROUTER_SIGMOID_BIAS ? f->bias : NULL,
                         .attn = {&f->at[0], &f->at[1], &f->at[2], &f->at[3]}, .attn_tuned = {1, 1, 1, 1},
                         .experts = f->ex, .experts_tuned = 1};
}

static void blk_drop(blkfix *f) {
    for (int j = 0; j < FNL; j++) free(blk_lin(f, j)->w), free(f->sc[j]), free(f->q[j]);
    free(f->ln1); free(f->ln2); free(f->qn); free(f->kn); free(f->router); free(f->bias);
}

// x: the quantized chain's input, t: a target near it (samples of SEQ tokens).
static void blk_data(size_t N, uint64_t seed, float amp, float **x, float **t) {
    uint64_t st = seed;
    *x = fb_malloc(N * FH * sizeof(float)), *t = fb_malloc(N * FH * sizeof(float));
    for (size_t i = 0; i < N * FH; i++) (*x)[i] = urand(&st), (*t)[i] = (*x)[i] + amp * urand(&st);
}

#ifndef FB_HAVE_CUDA

static void stub(void) {
    blkfix f;
    blk_make(&f, FB_QKN_ALL_HEADS, FB_ROUTER_SIGMOID_BIAS, 0, 1);
    float *x, *t;
    blk_data(16, 3, 0.3f, &x, &t);
    fb_ar_opts o = {.iters = 2, .batch_size = 1, .seed = 42};
    fb_ar_result res;
    fb_err err;
    double loss = 1;
    CHECK(fb_cuda_autoround_tune_block(x, t, 2, 8, &f.b, &o, &res, &err) == -1 && strstr(err.msg, "no CUDA support"),
          "without CUDA, tune_block fails saying so (%s)", err.msg);
    CHECK(fb_cuda_autoround_block_grad(x, t, 2, 8, &f.b, &loss, NULL, &err) == -1 && strstr(err.msg, "no CUDA support"),
          "without CUDA, block_grad fails saying so (%s)", err.msg);
    printf("test_cutune: built without CUDA: the GPU checks are not compiled in\n");
    free(x); free(t);
    blk_drop(&f);
}

#else

// Host-side refusals (before any device work: they hold without a GPU too), and without a GPU
// the failure that says so, with the weights untouched.
static void host_checks(int have_gpu) {
    blkfix f;
    blk_make(&f, FB_QKN_ALL_HEADS, FB_ROUTER_SIGMOID_BIAS, 0, 1);
    float *x, *t;
    blk_data(16, 3, 0.3f, &x, &t);
    fb_ar_opts o = {.iters = 2, .batch_size = 1, .seed = 42};
    fb_ar_result res;
    fb_err err;
    float w0 = f.at[0].w[5];
    x[77] = NAN;
    CHECK(fb_cuda_autoround_tune_block(x, t, 2, 8, &f.b, &o, &res, &err) != 0 && strstr(err.msg, "input element 77"),
          "CUDA block: a NaN input is refused naming it (%s)", err.msg);
    x[77] = 0;
    f.at[1].rows = 32;
    CHECK(fb_cuda_autoround_tune_block(x, t, 2, 8, &f.b, &o, &res, &err) != 0 && strstr(err.msg, "k_proj"),
          "CUDA block: a wrong k_proj shape is refused naming it (%s)", err.msg);
    f.at[1].rows = FNKV * FHD;
    f.ex[3].up.w[9] = INFINITY;
    CHECK(fb_cuda_autoround_tune_block(x, t, 2, 8, &f.b, &o, &res, &err) != 0 && strstr(err.msg, "expert 3 up"),
          "CUDA block: a non-finite expert weight is refused naming it (%s)", err.msg);
    f.ex[3].up.w[9] = 0;
    o.iters = 0;
    CHECK(fb_cuda_autoround_tune_block(x, t, 2, 8, &f.b, &o, &res, &err) != 0 && strstr(err.msg, "0 iterations"),
          "CUDA block: 0 iterations refused (%s)", err.msg);
    o.iters = 2;
    o.cuda_lanes = 33;
    CHECK(fb_cuda_autoround_tune_block(x, t, 2, 8, &f.b, &o, &res, &err) != 0 && strstr(err.msg, "33 lanes") &&
              f.at[0].w[5] == w0,
          "CUDA block: 33 lanes refused, weights untouched (%s)", err.msg);
    o.cuda_lanes = 0;
    if (!have_gpu) {
        o.iters = 2;
        CHECK(fb_cuda_autoround_tune_block(x, t, 2, 8, &f.b, &o, &res, &err) != 0 && strstr(err.msg, "no usable GPU") &&
                  f.at[0].w[5] == w0,
              "CUDA block without a GPU: fails saying so, weights untouched (%s)", err.msg);
    }
    free(x); free(t);
    blk_drop(&f);
}

// A full MiniMax-M2 block (48 heads x 128 on 8 KV heads, 256 experts of 1536, top-8, every Linear
// tuned) on 64 x 2048 tokens, batch 8: the tuner's own device buffers fit an 80 GB H100 (78 GiB
// usable) with room for the CUDA context, cuBLAS and the 0.5 GiB reserve it keeps; the 768
// expert Linears' state alone (w0, V, best V in f32) is 40.5 GiB, a lower bound.
static void full_size_memory(void) {
    fb_model_config c = {.hidden = 3072, .inter = 1536, .n_heads = 48, .n_kv_heads = 8, .head_dim = 128,
                         .rotary_dim = 64, .rope_theta = 5e6, .eps = 1e-6, .n_experts = 256, .top_k = 8,
                         .qk_norm = FB_QKN_ALL_HEADS, .router = FB_ROUTER_SIGMOID_BIAS, .use_routing_bias = 1};
    const int all[4] = {1, 1, 1, 1};
    double gib = (double)fb_cuda_autoround_block_bytes(&c, 64, 2048, 8, all, 1) / (1u << 30);
    double floor_gib = 768.0 * 3072 * 1536 * 12 / (1u << 30);
    CHECK(gib > floor_gib && gib < 78.0 - 2.0, "full-size MiniMax-M2 block on the GPU: %.2f GiB (floor %.2f)", gib, floor_gib);
    printf("test_cutune: a full MiniMax-M2 block, 64 x 2048 tokens, batch 8: %.2f GiB of device buffers\n", gib);
    c.top_k = 65;
    CHECK(fb_cuda_autoround_block_bytes(&c, 64, 2048, 8, all, 1) == 0, "a configuration the tuner refuses sizes to 0");
}

static double maxabs(const float *p, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)p[i]));
    return m;
}

static void grad_vs_cpu(fb_qk_norm qk, fb_router_kind rk, int norm_topk, const char *label) {
    blkfix f;
    blk_make(&f, qk, rk, norm_topk, 777);
    const size_t NS = 3, SEQ = 16, N = NS * SEQ;
    float *x, *t;
    blk_data(N, 99, 0.5f, &x, &t);
    float *gc[FNL], *gg[FNL];
    for (int j = 0; j < FNL; j++) {
        size_t n = blk_lin(&f, j)->rows * blk_lin(&f, j)->cols;
        gc[j] = fb_malloc(n * sizeof(float));
        gg[j] = fb_malloc(n * sizeof(float));
    }
    double lc, lg;
    fb_err err;
    REQUIRE(fb_autoround_block_grad(x, t, NS, SEQ, &f.b, &lc, gc, &err) == 0, "%s", err.msg);
    REQUIRE(fb_cuda_autoround_block_grad(x, t, NS, SEQ, &f.b, &lg, gg, &err) == 0, "%s", err.msg);
    double worst = 0;
    int worst_j = -1, zero_ok = 1, routed = 0;
    for (int j = 0; j < FNL; j++) {
        size_t n = blk_lin(&f, j)->rows * blk_lin(&f, j)->cols;
        double m = maxabs(gc[j], n), d = 0;
        for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)gg[j][i] - (double)gc[j][i]));
        if (m == 0) {  // an expert no token chose: zero on both sides
            zero_ok &= d == 0;
            continue;
        }
        routed++;
        if (d / m > worst) worst = d / m, worst_j = j;
    }
    CHECK(fabs(lg - lc) <= LOSS_TOL * lc, "CUDA block loss (%s): %.9g vs CPU %.9g", label, lg, lc);
    CHECK(worst <= GRAD_TOL && zero_ok && routed >= 8,
          "CUDA block gradients (%s): worst %.2e of the Linear's largest gradient (Linear %d), unrouted experts zero on "
          "both: %d, %d Linears with gradients", label, worst, worst_j, zero_ok, routed);
    printf("test_cutune: gradients %s: worst %.2e relative (Linear %d), loss %.9g vs %.9g\n", label, worst, worst_j, lg, lc);
    for (int j = 0; j < FNL; j++) free(gc[j]), free(gg[j]);
    free(x); free(t);
    blk_drop(&f);
}

// One tuning run (CPU or GPU) on a fresh fixture; keeps the weights, scales and codes.
typedef struct run_out {
    fb_ar_result res;
    double trace[20];
    float *w[FNL];
    size_t bad, fixed_changed;
} run_out;

// fixed_experts: the experts are not tuned (their forward and backward still run, on the weights
// as they are); r->fixed_changed then also counts any change to them.
static void tune_run_x(int gpu, int gemm, int lanes, int fixed_experts, run_out *r) {
    enum { NS = 8, SEQ = 16, ITERS = 20 };
    blkfix f;
    blk_make(&f, FB_QKN_ALL_HEADS, FB_ROUTER_SIGMOID_BIAS, 0, 4242);
    f.b.attn_tuned[2] = 0;  // v_proj fixed
    f.b.experts_tuned = !fixed_experts;
    float *e0[FNL] = {0};
    for (int j = 4; fixed_experts && j < FNL; j++) {
        fb_ar_linear *L = blk_lin(&f, j);
        e0[j] = fb_malloc(L->rows * L->cols * sizeof(float));
        memcpy(e0[j], L->w, L->rows * L->cols * sizeof(float));
    }
    size_t nv = f.at[2].rows * f.at[2].cols;
    float *v0 = fb_malloc(nv * sizeof(float));
    memcpy(v0, f.at[2].w, nv * sizeof(float));
    float *x, *t;
    blk_data(NS * SEQ, 5, 0.3f, &x, &t);
    fb_ar_opts o = {.iters = ITERS, .batch_size = 4, .seed = 42, .loss_trace = r->trace, .gemm = gemm,
                    .cuda_lanes = lanes};
    fb_err err;
    int rc = gpu ? fb_cuda_autoround_tune_block(x, t, NS, SEQ, &f.b, &o, &r->res, &err)
                 : fb_autoround_tune_block(x, t, NS, SEQ, &f.b, &o, &r->res, &err);
    REQUIRE(rc == 0, "%s tune_block: %s", gpu ? "CUDA" : "CPU", err.msg);
    r->fixed_changed = memcmp(v0, f.at[2].w, nv * sizeof(float)) != 0;
    r->bad = 0;
    for (int j = 0; j < FNL; j++) {
        fb_ar_linear *L = blk_lin(&f, j);
        size_t n = L->rows * L->cols;
        r->w[j] = fb_malloc(n * sizeof(float));
        memcpy(r->w[j], L->w, n * sizeof(float));
        int fixed = j == 2 || e0[j];
        if (e0[j]) r->fixed_changed += memcmp(e0[j], L->w, n * sizeof(float)) != 0;
        free(e0[j]);
        if (fixed) continue;
        for (size_t i = 0; i < n; i++) {
            float s = L->scale[i / 128], q = (float)L->q[i];
            uint16_t h = fb_f32_to_f16(s);
            r->bad += L->w[i] != s * q || L->q[i] < -8 || L->q[i] > 7 || fb_f16_to_f32(h) != s;
        }
    }
    free(v0); free(x); free(t);
    blk_drop(&f);
}
static void tune_run(int gpu, int gemm, int lanes, run_out *r) { tune_run_x(gpu, gemm, lanes, 0, r); }

static void tune_vs_cpu(void) {
    // g: the default 4 lanes; g2: the experts one after another on one lane; g3: 3 lanes (the
    // fixture's 8 experts spread unevenly). The lanes change only the order of independent work:
    // the same bytes from all three (and from one run to the next)
    run_out c, g, g2, g3;
    tune_run(0, 0, 0, &c);
    tune_run(1, 0, 0, &g);
    tune_run(1, 0, 1, &g2);
    tune_run(1, 0, 3, &g3);
    CHECK(fabs(g.res.rtn_mse - c.res.rtn_mse) <= RTN_TOL * c.res.rtn_mse, "CUDA tune: RTN MSE %.9g vs CPU %.9g",
          g.res.rtn_mse, c.res.rtn_mse);
    int tr = 1;
    for (int i = 0; i < TRACE_N; i++) tr &= fabs(g.trace[i] - c.trace[i]) <= TRACE_TOL * c.trace[i];
    CHECK(tr, "CUDA tune: the first %d mini-batch losses %.9g %.9g %.9g vs CPU %.9g %.9g %.9g", TRACE_N, g.trace[0],
          g.trace[1], g.trace[2], c.trace[0], c.trace[1], c.trace[2]);
    CHECK(fabs(g.res.final_mse - c.res.final_mse) <= FINAL_TOL * c.res.final_mse && g.res.final_mse < g.res.rtn_mse,
          "CUDA tune: final MSE %.9g vs CPU %.9g (RTN %.9g)", g.res.final_mse, c.res.final_mse, g.res.rtn_mse);
    CHECK(g.res.best_loss <= g.res.init_loss, "CUDA tune: kept %g <= init %g", g.res.best_loss, g.res.init_loss);
    CHECK(g.bad == 0 && c.bad == 0, "CUDA tune: %zu (CPU %zu) tuned weights are not an fp16 scale times a code in [-8, 7]",
          g.bad, c.bad);
    CHECK(!g.fixed_changed, "CUDA tune: the fixed v_proj was modified");
    size_t diff = 0, diff3 = 0;
    for (int j = 0; j < FNL; j++) {
        size_t n = j < 4 ? (j == 0 || j == 3 ? (size_t)FH * FNH * FHD : (size_t)FH * FNKV * FHD) : (size_t)FH * FF_;
        diff += memcmp(g.w[j], g2.w[j], n * sizeof(float)) != 0;
        diff3 += memcmp(g.w[j], g3.w[j], n * sizeof(float)) != 0;
        free(c.w[j]), free(g.w[j]), free(g2.w[j]), free(g3.w[j]);
    }
    CHECK(diff == 0 && diff3 == 0 && g.res.final_mse == g2.res.final_mse && g.res.final_mse == g3.res.final_mse &&
          g.res.best_iter == g2.res.best_iter && g.res.best_iter == g3.res.best_iter,
          "CUDA tune: the same seed on 4 / 1 / 3 lanes gave other weights in %zu / %zu Linears (final %.9g %.9g %.9g)",
          diff, diff3, g.res.final_mse, g2.res.final_mse, g3.res.final_mse);
    printf("test_cutune: tune GPU vs CPU: RTN %.9g / %.9g, trace[0..2] %.7g %.7g %.7g / %.7g %.7g %.7g, final %.7g / "
           "%.7g, best iter %d / %d\n", g.res.rtn_mse, c.res.rtn_mse, g.trace[0], g.trace[1], g.trace[2], c.trace[0],
           c.trace[1], c.trace[2], g.res.final_mse, c.res.final_mse, g.res.best_iter, c.res.best_iter);
}

// The tensor-core mode (fb_ar_opts.gemm tf32) on the same fixture: products with inputs rounded
// to 10 mantissa bits, so not the f32 trajectory, but the same tuning: the RTN MSE within
// FAST_RTN_TOL of f32's (measured on the H100: 1.3e-5 relative), the final MSE below RTN's and within FINAL_TOL of f32's, every weight a code times
// its scale, the fixed Linear untouched, the same bytes twice (cuBLAS picks the same kernels).
// The bf16 mode (the experts' products on operands rounded to 8 mantissa bits, unit roundoff
// 2^-9 = 2e-3 on each) the same with the RTN MSE within BF16_RTN_TOL of f32's.
#define FAST_RTN_TOL 1e-3
#define BF16_RTN_TOL 1e-2
static void tune_fast_modes(void) {
    static const char *NAME[] = {"f32", "tf32", "bf16"};
    run_out f;
    tune_run(1, FB_AR_GEMM_F32, 0, &f);
    for (int m = FB_AR_GEMM_TF32; m <= FB_AR_GEMM_BF16; m++) {
        run_out g, g2;
        tune_run(1, m, 0, &g);
        tune_run(1, m, 2, &g2);
        double rtol = m == FB_AR_GEMM_BF16 ? BF16_RTN_TOL : FAST_RTN_TOL;
        CHECK(fabs(g.res.rtn_mse - f.res.rtn_mse) <= rtol * f.res.rtn_mse, "CUDA %s: RTN MSE %.9g vs f32 %.9g",
              NAME[m], g.res.rtn_mse, f.res.rtn_mse);
        CHECK(g.res.final_mse < g.res.rtn_mse && fabs(g.res.final_mse - f.res.final_mse) <= FINAL_TOL * f.res.final_mse,
              "CUDA %s: final MSE %.9g (RTN %.9g) vs f32 %.9g", NAME[m], g.res.final_mse, g.res.rtn_mse, f.res.final_mse);
        CHECK(g.bad == 0 && !g.fixed_changed, "CUDA %s: %zu weights not a code times a scale, fixed v_proj changed %zu",
              NAME[m], g.bad, g.fixed_changed);
        size_t diff = 0;
        for (int j = 0; j < FNL; j++) {
            size_t n = j < 4 ? (j == 0 || j == 3 ? (size_t)FH * FNH * FHD : (size_t)FH * FNKV * FHD) : (size_t)FH * FF_;
            diff += memcmp(g.w[j], g2.w[j], n * sizeof(float)) != 0;
            free(g.w[j]), free(g2.w[j]);
        }
        CHECK(diff == 0, "CUDA %s: the same seed on 4 and 2 lanes gave other weights in %zu Linears", NAME[m], diff);
        printf("test_cutune: tune %s: RTN %.9g (f32 %.9g), final %.7g (f32 %.7g), best iter %d (f32 %d)\n", NAME[m],
               g.res.rtn_mse, f.res.rtn_mse, g.res.final_mse, f.res.final_mse, g.res.best_iter, f.res.best_iter);
    }
    for (int j = 0; j < FNL; j++) free(f.w[j]);
}

// Experts not tuned, only the attention (gemm bf16 converts their weights to bf16 once at the
// start instead of each step writing them): the f32 mode against the CPU, the bf16 mode
// against f32, the experts untouched in all three.
static void tune_fixed_experts(void) {
    run_out c, f, b;
    tune_run_x(0, FB_AR_GEMM_F32, 0, 1, &c);
    tune_run_x(1, FB_AR_GEMM_F32, 0, 1, &f);
    tune_run_x(1, FB_AR_GEMM_BF16, 0, 1, &b);
    CHECK(c.fixed_changed == 0 && f.fixed_changed == 0 && b.fixed_changed == 0,
          "CUDA tune, fixed experts: fixed Linears changed (CPU %zu, f32 %zu, bf16 %zu)", c.fixed_changed,
          f.fixed_changed, b.fixed_changed);
    CHECK(fabs(f.res.rtn_mse - c.res.rtn_mse) <= RTN_TOL * c.res.rtn_mse &&
              fabs(f.res.final_mse - c.res.final_mse) <= FINAL_TOL * c.res.final_mse,
          "CUDA tune, fixed experts: f32 RTN %.9g final %.9g vs CPU %.9g %.9g", f.res.rtn_mse, f.res.final_mse,
          c.res.rtn_mse, c.res.final_mse);
    CHECK(fabs(b.res.rtn_mse - f.res.rtn_mse) <= BF16_RTN_TOL * f.res.rtn_mse && b.res.final_mse < b.res.rtn_mse &&
              fabs(b.res.final_mse - f.res.final_mse) <= FINAL_TOL * f.res.final_mse,
          "CUDA tune, fixed experts: bf16 RTN %.9g final %.9g vs f32 %.9g %.9g", b.res.rtn_mse, b.res.final_mse,
          f.res.rtn_mse, f.res.final_mse);
    CHECK(c.bad == 0 && f.bad == 0 && b.bad == 0, "CUDA tune, fixed experts: tuned weights not a code times a scale");
    printf("test_cutune: fixed experts: RTN %.9g / %.9g / %.9g, final %.7g / %.7g / %.7g (CPU / f32 / bf16)\n",
           c.res.rtn_mse, f.res.rtn_mse, b.res.rtn_mse, c.res.final_mse, f.res.final_mse, b.res.final_mse);
    for (int j = 0; j < FNL; j++) free(c.w[j]), free(f.w[j]), free(b.w[j]);
}

static void gpu_checks(void) {
    char name[256], why[512];
    int have = fb_engine_cuda_available(name, sizeof name, why, sizeof why);
    host_checks(have);
    full_size_memory();
    if (!have) {
        printf("test_cutune: CUDA checks skipped: %s\n", why);
        return;
    }
    printf("test_cutune: GPU %s\n", name);
    grad_vs_cpu(FB_QKN_ALL_HEADS, FB_ROUTER_SIGMOID_BIAS, 0, "MiniMax-M2: q/k norm over all heads, sigmoid router");
    grad_vs_cpu(FB_QKN_PER_HEAD, FB_ROUTER_SOFTMAX, 1, "Qwen3-MoE: per-head q/k norm, softmax router, renormalised");
    grad_vs_cpu(FB_QKN_NONE, FB_ROUTER_SOFTMAX, 0, "no q/k norm, softmax router");
    tune_vs_cpu();
    tune_fast_modes();
    tune_fixed_experts();
}

#endif

int main(void) {
    sample_order();
#ifdef FB_HAVE_CUDA
    gpu_checks();
#else
    stub();
#endif
    TEST_MAIN_END();
}
