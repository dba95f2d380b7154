// test_autoround.c: AutoRound (calib/autoround.h) against auto-round 0.16.1's own functions
// (scripts/gen-autoround-golden.py -> tests/golden/autoround/).
//  - optimized RTN (opt_rtn_int_sym) on bf16 and f32 weights, without / with an importance matrix
//    (and with imatrix zeros), several shapes, an all-zero row: the same scales and fake-quantized
//    weights bit for bit. The reference sums each candidate's loss in f32 in torch's order, fourbit
//    in double: a group may pick the other scale only where the two losses tie to 1e-5 relative
//    (measured: none).
//  - the imatrix accumulation against auto-round's forward hook (f32 sums, 1e-5 relative);
//  - plain RTN (rtn_int_sym): fp16 scales and bf16 values bit for bit;
//  - non-finite weights refused with the row named;
//  - SignRound on the fixture MoE block (4 SwiGLU experts, 256 x 256, top-2 routing, 32 x 16 tokens,
//    100 iterations, batch 8, lr 1/iters, Python's batch order for the seed): the RTN MSE equals
//    the reference's; the first iterations' mini-batch losses equal auto-round's (same batches,
//    same steps); the final MSE over every sample is within a few % of auto-round's per seed and
//    on average over six seeds (see SEED_TOL / MEAN_TOL: past the first near-zero gradient whose
//    sign differs, two runs are samples of one chaotic process), and a third of RTN's; the result
//    is w = scale * q exactly, and the same seed gives the same bytes.
#include <math.h>
#include <string.h>

#include "calib/autoround.h"
#include "io/safetensors.h"
#include "quant/formats.h"
#include "quant/qformat.h"
#include "quant/w4a16.h"
#include "test.h"

#define GOLD GOLDEN_DIR "/autoround/autoround_golden.safetensors"

// The trajectory is auto-round's to f32 precision until a near-zero gradient takes the other sign
// (measured here: iterations 0..15 within 1.6e-7, apart from iteration 16 on). Where that happens
// depends on the BLAS kernels' summation order: with OpenBLAS 0.3.21's Haswell, Zen, Sandybridge,
// Nehalem and Core2 kernels (OPENBLAS_CORETYPE) iterations 0..9 stay within 1.6e-7, with its
// Prescott kernels (and on the H100 host's CPU, 2026-12-07: the same figures) iterations 0..2 stay
// within 6.2e-8 and then a sign flips: 1.5e-5 at iteration 3, 2.8e-4 at 4 (tests/t_blas_kernels.sh
// runs this test with Prescott's). So iterations 0..TRACE_N-1 are required within TRACE_TOL and
// iterations TRACE_N..TRACE_N2-1 within TRACE_TOL2 (3.6x the 2.8e-4). What the bounds still catch,
// measured here: a learning rate 1% off moves iteration 1 by >= 5.5e-4 and iteration 4 by >= 3.1e-3.
#define TRACE_N 3
#define TRACE_TOL 1e-5
#define TRACE_N2 5
#define TRACE_TOL2 1e-3
// After that the runs are two samples of the same chaotic process: per seed fourbit's final MSE
// within SEED_TOL of auto-round's, and over the six seeds the mean within MEAN_TOL (measured:
// -1.4% .. +2.0% per seed, mean +0.3%).
#define SEED_TOL 1.03
#define MEAN_TOL 1.01

static int fb_f32_bits_eq(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

static float *get(fb_st_file *f, const char *name, size_t *n) {
    const fb_st_tensor *t = fb_st_find(f, name);
    if (!t || t->dtype != FB_F32) return NULL;
    void *p;
    fb_err err;
    if (fb_st_read_all(f, t, &p, &err)) return NULL;
    if (n) *n = (size_t)t->nelem;
    return p;
}

static void opt_rtn_cases(fb_st_file *f) {
    static const size_t shapes[][2] = {{64, 256}, {32, 384}, {16, 128}};
    static const char *dts[] = {"bf16", "f32"}, *ims[] = {"none", "imatrix", "zeros"};
    fb_err err;
    for (size_t si = 0; si < 3; si++) {
        size_t R = shapes[si][0], C = shapes[si][1], NG = C / FB_AR_GROUP;
        char nm[160];
        for (int di = 0; di < 2; di++)
            for (int ii = 0; ii < 3; ii++) {
                char key[96];
                snprintf(key, sizeof key, "optrtn_%zux%zu_%s_%s", R, C, dts[di], ims[ii]);
                snprintf(nm, sizeof nm, "%s.weight", key);
                float *W = get(f, nm, NULL);
                snprintf(nm, sizeof nm, "%s.imatrix", key);
                float *im = ii ? get(f, nm, NULL) : NULL;
                snprintf(nm, sizeof nm, "%s.scale", key);
                float *sref = get(f, nm, NULL);
                snprintf(nm, sizeof nm, "%s.out", key);
                float *oref = get(f, nm, NULL);
                REQUIRE(W && sref && oref && (!ii || im), "%s: golden tensors", key);
                float *s = malloc(R * NG * sizeof(float)), *o = malloc(R * C * sizeof(float));
                int8_t *q = malloc(R * C);
                REQUIRE(fb_autoround_opt_rtn(W, R, C, im, di ? FB_AR_F32 : FB_AR_BF16, s, q, o, &err) == 0, "%s: %s",
                        key, err.msg);
                size_t same = 0, ties = 0, qok = 1;
                for (size_t g = 0; g < R * NG; g++) {
                    size_t r = g / NG, c0 = (g % NG) * FB_AR_GROUP;
                    int eq = fb_f32_bits_eq(s[g], sref[g]);
                    for (size_t k = 0; k < FB_AR_GROUP && eq; k++) eq = fb_f32_bits_eq(o[r * C + c0 + k], oref[r * C + c0 + k]);
                    if (eq) { same++; continue; }
                    // a near-tie: both scales give the same weighted error to 1e-5
                    double la = 0, lb = 0;
                    for (size_t k = 0; k < FB_AR_GROUP; k++) {
                        double w = W[r * C + c0 + k], qw = im ? (im[c0 + k] > 0 ? im[c0 + k] : 1) : 1;
                        la += qw * (o[r * C + c0 + k] - w) * (o[r * C + c0 + k] - w);
                        lb += qw * (oref[r * C + c0 + k] - w) * (oref[r * C + c0 + k] - w);
                    }
                    if (fabs(la - lb) <= 1e-5 * fmax(la, lb)) ties++;
                }
                for (size_t i = 0; i < R * C; i++) qok &= q[i] >= -8 && q[i] <= 7 && (float)q[i] * s[i / C * NG + i % C / FB_AR_GROUP] == o[i];
                CHECK(same + ties == R * NG && same >= R * NG * 99 / 100 && (di == 0 || qok),
                      "%s: %zu/%zu groups identical, %zu near-ties, codes consistent %zu", key, same, R * NG, ties, qok);
                free(W); free(im); free(sref); free(oref); free(s); free(o); free(q);
            }
        // the imatrix from the inputs, as auto-round's hook sums it (per sample, / samples)
        snprintf(nm, sizeof nm, "imatrix_%zux%zu.inputs", R, C);
        const fb_st_tensor *tx = fb_st_find(f, nm);
        float *X = get(f, nm, NULL);
        snprintf(nm, sizeof nm, "imatrix_%zux%zu.imatrix", R, C);
        float *iref = get(f, nm, NULL);
        REQUIRE(X && iref && tx->ndim == 3, "imatrix golden");
        size_t NS = (size_t)tx->shape[0], T = (size_t)tx->shape[1];
        float *im = calloc(C, sizeof(float));
        for (size_t sI = 0; sI < NS; sI++) fb_autoround_imatrix_add(im, C, X + sI * T * C, T);
        fb_autoround_imatrix_scale(im, C, NS);
        double md = 0;
        for (size_t k = 0; k < C; k++) md = fmax(md, fabs((double)im[k] - iref[k]) / fmax(1e-30, fabs((double)iref[k])));
        CHECK(md <= 1e-5 && im[3] == 0, "imatrix %zux%zu: max relative difference %.3g", R, C, md);
        free(X); free(iref); free(im);
        // plain RTN
        snprintf(nm, sizeof nm, "rtn_%zux%zu.weight", R, C);
        float *W = get(f, nm, NULL);
        snprintf(nm, sizeof nm, "rtn_%zux%zu.scale", R, C);
        float *sref = get(f, nm, NULL);
        snprintf(nm, sizeof nm, "rtn_%zux%zu.out", R, C);
        float *oref = get(f, nm, NULL);
        REQUIRE(W && sref && oref, "rtn golden");
        float *s = malloc(R * NG * sizeof(float)), *o = malloc(R * C * sizeof(float));
        REQUIRE(fb_autoround_rtn(W, R, C, FB_AR_BF16, s, NULL, o, &err) == 0, "%s", err.msg);
        size_t bad = 0;
        for (size_t g = 0; g < R * NG; g++) bad += !fb_f32_bits_eq(s[g], sref[g]);
        for (size_t i = 0; i < R * C; i++) bad += !fb_f32_bits_eq(o[i], oref[i]);
        CHECK(bad == 0, "plain RTN %zux%zu: %zu values differ", R, C, bad);
        free(W); free(sref); free(oref); free(s); free(o);
    }
}

static void nonfinite(void) {
    size_t R = 4, C = 128;
    float *W = calloc(R * C, sizeof(float)), s[4], o[4 * 128];
    fb_err err;
    W[2 * C + 5] = NAN;
    CHECK(fb_autoround_opt_rtn(W, R, C, NULL, FB_AR_BF16, s, NULL, o, &err) != 0 && strstr(err.msg, "row 2 column 5"),
          "NaN weight refused: %s", err.msg);
    W[2 * C + 5] = 0;
    W[3 * C] = -INFINITY;
    CHECK(fb_autoround_rtn(W, R, C, FB_AR_F32, s, NULL, o, &err) != 0 && strstr(err.msg, "row 3 column 0"),
          "-inf weight refused: %s", err.msg);
    W[3 * C] = 0;
    float im[128] = {0};
    im[9] = NAN;
    CHECK(fb_autoround_opt_rtn(W, R, C, im, FB_AR_F32, s, NULL, o, &err) != 0 && strstr(err.msg, "column 9"),
          "NaN imatrix refused: %s", err.msg);
    CHECK(fb_autoround_opt_rtn(W, R, 100, NULL, FB_AR_F32, s, NULL, o, &err) != 0, "100 columns refused: %s", err.msg);
    free(W);
}

typedef struct blk {
    size_t E, H, FF, S, T;
    float *x, *route, *target, *w[4][3];
} blk;

static double tune(blk *b, fb_ar_opts *o, fb_ar_result *res, float **wout, float **sout) {
    fb_ar_expert ex[4];
    fb_err err;
    for (size_t e = 0; e < b->E; e++) {
        fb_ar_linear *ls[3] = {&ex[e].gate, &ex[e].up, &ex[e].down};
        for (int j = 0; j < 3; j++) {
            size_t R = j == 2 ? b->H : b->FF, C = j == 2 ? b->FF : b->H;
            float *w = malloc(R * C * sizeof(float));
            memcpy(w, b->w[e][j], R * C * sizeof(float));
            *ls[j] = (fb_ar_linear){.w = w, .rows = R, .cols = C, .scale = malloc(R * C / 128 * sizeof(float)),
                                    .q = malloc(R * C)};
            wout[3 * e + j] = w;
            sout[3 * e + j] = ls[j]->scale;
        }
    }
    int rc = fb_autoround_tune_moe(b->x, b->S, b->T, b->H, b->route, b->E, b->target, ex, o, res, &err);
    if (rc) printf("tune: %s\n", err.msg);
    int consistent = 1;
    for (size_t e = 0; e < b->E; e++) {
        fb_ar_linear *ls[3] = {&ex[e].gate, &ex[e].up, &ex[e].down};
        for (int j = 0; j < 3; j++) {
            fb_ar_linear *l = ls[j];
            for (size_t i = 0; i < l->rows * l->cols; i++)
                consistent &= l->q[i] >= -8 && l->q[i] <= 7 && l->w[i] == (float)l->q[i] * l->scale[i / 128];
            free(l->q);
        }
    }
    return rc ? -1 : consistent;
}

static void signround(fb_st_file *f) {
    blk b = {.E = 4};
    const fb_st_tensor *tx = fb_st_find(f, "block.inputs"), *tg = fb_st_find(f, "block.0.gate_proj");
    REQUIRE(tx && tg && tx->ndim == 3, "block golden");
    b.S = (size_t)tx->shape[0]; b.T = (size_t)tx->shape[1]; b.H = (size_t)tx->shape[2]; b.FF = (size_t)tg->shape[0];
    b.x = get(f, "block.inputs", NULL);
    b.route = get(f, "block.routing", NULL);
    b.target = get(f, "block.fp_out", NULL);
    float *ref = get(f, "tuning.ref", NULL);  // iters, batch, init, best, rtn_full, tuned_full
    REQUIRE(b.x && b.route && b.target && ref, "block golden tensors");
    static const char *nms[3] = {"gate_proj", "up_proj", "down_proj"};
    for (size_t e = 0; e < b.E; e++)
        for (int j = 0; j < 3; j++) {
            char nm[64];
            snprintf(nm, sizeof nm, "block.%zu.%s", e, nms[j]);
            b.w[e][j] = get(f, nm, NULL);
            REQUIRE(b.w[e][j], "%s", nm);
        }
    size_t nl;
    float *lref = get(f, "tuning.losses", &nl);
    REQUIRE(lref && nl == (size_t)ref[0], "reference loss trace");
    double *trace = calloc(nl, sizeof(double));
    fb_ar_opts o = {.iters = (int)ref[0], .batch_size = (size_t)ref[1], .seed = 42, .loss_trace = trace};
    fb_ar_result r1, r2;
    float *w1[12], *s1[12], *w2[12], *s2[12];
    double c1 = tune(&b, &o, &r1, w1, s1);
    CHECK(c1 == 1, "tuned weights are scale * q, codes in [-8, 7]");
    CHECK(fabs(r1.rtn_mse - ref[4]) <= 1e-4 * ref[4], "RTN MSE %.6g vs auto-round's %.6g", r1.rtn_mse, (double)ref[4]);
    CHECK(r1.final_mse <= SEED_TOL * ref[5] && r1.final_mse < r1.rtn_mse / 3,
          "tuned MSE %.6g <= %.2f x auto-round's %.6g (RTN %.6g; mini-batch init %.6g -> best %.6g at %d; reference "
          "%.6g -> %.6g)", r1.final_mse, SEED_TOL, (double)ref[5], r1.rtn_mse, r1.init_loss, r1.best_loss, r1.best_iter,
          (double)ref[2], (double)ref[3]);
    printf("mini-batch losses: init %.9g (reference %.9g), best %.9g at %d (reference %.9g)\n", r1.init_loss,
           (double)ref[2], r1.best_loss, r1.best_iter, (double)ref[3]);
    printf("autoround tuning: MSE RTN %.6g -> %.6g (auto-round 0.16.1: %.6g -> %.6g), best iteration %d of %d\n",
           r1.rtn_mse, r1.final_mse, (double)ref[4], (double)ref[5], r1.best_iter, o.iters);
    // determinism: the same seed, the same bytes
    // The same mini-batches (Python's generator, seed 42) and the same steps: the trajectory
    // follows the reference's while the float rounding has not flipped many signs.
    double dmax = 0, dmax2 = 0;
    for (size_t i = 0; i < TRACE_N; i++) dmax = fmax(dmax, fabs(trace[i] - lref[i]) / lref[i]);
    for (size_t i = TRACE_N; i < TRACE_N2; i++) dmax2 = fmax(dmax2, fabs(trace[i] - lref[i]) / lref[i]);
    CHECK(dmax <= TRACE_TOL, "mini-batch losses of iterations 0..%d within %.3g of auto-round's (max %.3g)",
          TRACE_N - 1, TRACE_TOL, dmax);
    CHECK(dmax2 <= TRACE_TOL2, "mini-batch losses of iterations %d..%d within %.3g of auto-round's (max %.3g)",
          TRACE_N, TRACE_N2 - 1, TRACE_TOL2, dmax2);
    for (size_t i = 0; i < nl; i += i < 20 ? 1 : 10) printf("  iteration %3zu: loss %.6g, auto-round %.6g\n", i, trace[i], (double)lref[i]);
    free(trace); free(lref);
    o.loss_trace = NULL;
    // the other seeds
    size_t ns;
    float *seeds = get(f, "tuning.seeds", &ns);
    REQUIRE(seeds && ns % 2 == 0, "tuning.seeds");
    double sum_fb = 0, sum_ref = 0;
    for (size_t i = 0; i < ns / 2; i++) {
        float *w3[12] = {0}, *s3[12] = {0};
        fb_ar_result r3 = r1;  // seed 42: the run above
        o.seed = (uint64_t)seeds[2 * i];
        if (o.seed != 42) REQUIRE(tune(&b, &o, &r3, w3, s3) == 1, "seed %g", (double)seeds[2 * i]);
        CHECK(r3.final_mse <= SEED_TOL * seeds[2 * i + 1] && r3.final_mse < r3.rtn_mse / 3,
              "seed %g: tuned MSE %.6g vs auto-round's %.6g", (double)seeds[2 * i], r3.final_mse, (double)seeds[2 * i + 1]);
        printf("  seed %2g: MSE %.6g, auto-round %.6g (%+.2f%%)\n", (double)seeds[2 * i], r3.final_mse,
               (double)seeds[2 * i + 1], 100 * (r3.final_mse / seeds[2 * i + 1] - 1));
        sum_fb += r3.final_mse;
        sum_ref += seeds[2 * i + 1];
        for (int j = 0; j < 12; j++) { free(w3[j]); free(s3[j]); }
    }
    CHECK(sum_fb <= MEAN_TOL * sum_ref, "mean tuned MSE over %zu seeds %.6g vs auto-round's %.6g", ns / 2,
          sum_fb / (double)(ns / 2), sum_ref / (double)(ns / 2));
    printf("  mean over %zu seeds: %.6g, auto-round %.6g (%+.2f%%)\n", ns / 2, sum_fb / (double)(ns / 2),
           sum_ref / (double)(ns / 2), 100 * (sum_fb / sum_ref - 1));
    free(seeds);
    o.seed = 42;
    for (int j = 0; j < 12; j++) { free(w1[j]); free(s1[j]); }
    o.iters = 10;
    tune(&b, &o, &r1, w1, s1);
    tune(&b, &o, &r2, w2, s2);
    int same = 1;
    for (int j = 0; j < 12; j++) {
        size_t n = (j % 3 == 2 ? b.H * b.FF : b.FF * b.H);
        same &= memcmp(w1[j], w2[j], n * sizeof(float)) == 0 && memcmp(s1[j], s2[j], n / 128 * sizeof(float)) == 0;
        free(w1[j]); free(s1[j]); free(w2[j]); free(s2[j]);
    }
    CHECK(same && r1.best_loss == r2.best_loss, "same seed, same result");
    // inconsistent shapes are refused
    fb_ar_expert bad[1];
    float w[128 * 128], sc[128];
    bad[0].gate = (fb_ar_linear){.w = w, .rows = 128, .cols = 128, .scale = sc};
    bad[0].up = bad[0].gate;
    bad[0].down = (fb_ar_linear){.w = w, .rows = 64, .cols = 128, .scale = sc};
    fb_err err;
    CHECK(fb_autoround_tune_moe(b.x, 1, 1, 128, b.route, 1, NULL, bad, &o, &r1, &err) != 0 && strstr(err.msg, "expert 0"),
          "bad expert shapes refused: %s", err.msg);
    // dimensions past what BLAS's int arguments hold are refused before anything is read
    bad[0].gate = (fb_ar_linear){.w = w, .rows = (size_t)1 << 31, .cols = 128, .scale = sc};
    bad[0].up = bad[0].gate;
    bad[0].down = (fb_ar_linear){.w = w, .rows = 128, .cols = (size_t)1 << 31, .scale = sc};
    CHECK(fb_autoround_tune_moe(b.x, 1, 1, 128, b.route, 1, NULL, bad, &o, &r1, &err) != 0 &&
              strstr(err.msg, "out of range"), "2^31 x 128 experts refused: %s", err.msg);
    for (size_t e = 0; e < b.E; e++)
        for (int j = 0; j < 3; j++) free(b.w[e][j]);
    free(b.x); free(b.route); free(b.target); free(ref);
}

// fb_autoround_tune_linear (the layer loop's attention unit): the tuned weight is exactly its
// scales times its codes, the codes in range, the kept iterate no worse than RTN (iteration 0) on
// its mini-batch and over every sample; and the formats' pack_scaled store exactly those scales and
// codes (auto_round: fp16 scales, so the stored weight decodes to s * q bit for bit).
static float urand(uint64_t *s) {  // uniform in [-1, 1), xorshift64
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return (float)((*s >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
}

static void linear_unit(void) {
    const size_t R = 48, C = 256, NS = 16, SEQ = 8, N = NS * SEQ, NG = C / 128;
    uint64_t st = 12345;
    float *W = fb_malloc(R * C * sizeof(float)), *W0 = fb_malloc(R * C * sizeof(float));
    float *x = fb_malloc(N * C * sizeof(float)), *xf = fb_malloc(N * C * sizeof(float));
    float *T = fb_malloc(N * R * sizeof(float)), *sc = fb_malloc(R * NG * sizeof(float));
    int8_t *q = fb_malloc(R * C);
    for (size_t i = 0; i < R * C; i++) W0[i] = W[i] = 0.05f * urand(&st);
    for (size_t i = 0; i < N * C; i++) {
        xf[i] = urand(&st);
        x[i] = xf[i] * (1.0f + 0.01f * urand(&st));  // the quantized chain
    }
    for (size_t t = 0; t < N; t++)
        for (size_t r = 0; r < R; r++) {
            float acc = 0;
            for (size_t c = 0; c < C; c++) acc += xf[t * C + c] * W0[r * C + c];
            T[t * R + r] = acc;
        }
    fb_ar_linear L = {.w = W, .rows = R, .cols = C, .scale = sc, .q = q};
    fb_ar_opts o = {.iters = 30, .batch_size = 4, .seed = 42};
    fb_ar_result res;
    fb_err err;
    REQUIRE(fb_autoround_tune_linear(x, T, NS, SEQ, &L, &o, &res, &err) == 0, "%s", err.msg);
    CHECK(res.best_loss <= res.init_loss && res.final_mse < res.rtn_mse, "linear: kept %g <= init %g, final %g < RTN %g",
          res.best_loss, res.init_loss, res.final_mse, res.rtn_mse);
    size_t bad = 0;
    for (size_t r = 0; r < R; r++)
        for (size_t c = 0; c < C; c++) {
            float s = sc[r * NG + c / 128];
            bad += q[r * C + c] < -8 || q[r * C + c] > 7 || W[r * C + c] != s * (float)q[r * C + c]  /* == : a code 0 may come as -0 */ ||
                   !fb_f32_bits_eq(s, fb_f16_to_f32(fb_f32_to_f16(s)));
        }
    CHECK(bad == 0, "linear: %zu weights are not their fp16 scale times their code", bad);
    // auto_round: pack_scaled then the format's reader gives W back exactly
    const fb_qfmt *qf = fb_qfmt_get(FB_QF_AUTOROUND);
    void *out[FB_QFMT_MAX_OUT] = {0};
    for (int k = 0; k < qf->n_out; k++) out[k] = fb_calloc(fb_qfmt_out_bytes(qf, k, R, C, 128, 0) + 1, 1);
    qf->quantize_rows(W0, R, R, C, 128, 0, 1, out);
    qf->pack_scaled(W, sc, R, R, C, 128, 0, out);
    float *back = fb_malloc(R * C * sizeof(float));
    fb_autoround_dequant_rows(out[0], out[2], R, C, 128, 0, R, back);
    bad = 0;
    for (size_t i = 0; i < R * C; i++) bad += back[i] != W[i];  // -0 and +0 alike
    CHECK(bad == 0, "auto_round pack_scaled: %zu weights do not decode to s * q", bad);
    for (int k = 0; k < qf->n_out; k++) free(out[k]);
    // pack-quantized: bf16 scales; the codes are the tuned ones (|q| <= 8: the bf16 rounding of s
    // moves w / s by at most 8 * 2^-9)
    qf = fb_qfmt_get(FB_QF_PACK_INT4);
    for (int k = 0; k < qf->n_out; k++) out[k] = fb_calloc(fb_qfmt_out_bytes(qf, k, R, C, 128, 0) + 1, 1);
    qf->quantize_rows(W0, R, R, C, 128, 0, 1, out);
    qf->pack_scaled(W, sc, R, R, C, 128, 0, out);
    bad = 0;
    for (size_t r = 0; r < R; r++)
        for (size_t c = 0; c < C; c++) {
            uint32_t word = (uint32_t)((int32_t *)out[0])[r * (C / 8) + c / 8];
            int code = (int)((word >> (4 * (c % 8))) & 15) - 8;
            bad += code != q[r * C + c];
        }
    for (size_t i = 0; i < R * NG; i++) bad += ((uint16_t *)out[1])[i] != fb_f32_to_bf16(sc[i]);
    CHECK(bad == 0, "pack-quantized pack_scaled: %zu codes / scales are not the tuned ones", bad);
    for (int k = 0; k < qf->n_out; k++) free(out[k]);
    free(W); free(W0); free(x); free(xf); free(T); free(sc); free(q); free(back);
}

// fb_autoround_tune_block (auto-round's unit: the whole block): its backward against central
// differences of its own forward, for both routers and the three q/k norm kinds (the analytic
// chain through experts, routing weights, norms, attention and RoPE must be the derivative of the
// loss it tunes); then a tuning run: kept iterate no worse than RTN, every tuned weight its fp16
// scale times its code, a fixed Linear untouched, the same bytes for the same seed; bad input
// refused.
typedef struct blkfix {
    fb_model_config c;
    float *ln1, *ln2, *qn, *kn, *router, *bias;
    fb_ar_linear at[4];
    fb_ar_expert *ex;
    float *sc[4 + 3 * 4];
    fb_ar_block b;
} blkfix;

static void blk_make(blkfix *f, fb_qk_norm qk, fb_router_kind rk, int norm_topk, uint64_t seed) {
    memset(f, 0, sizeof *f);
    f->c = (fb_model_config){.hidden = 128, .inter = 128, .n_heads = 2, .n_kv_heads = 1, .head_dim = 64,
                             .rotary_dim = 32, .rope_theta = 10000.0, .eps = 1e-6, .n_experts = 4, .top_k = 2,
                             .qk_norm = qk, .router = rk, .norm_topk_prob = norm_topk, .use_routing_bias = 1};
    size_t H = 128, E = 4, Dq = 128, Dk = 64;
    uint64_t st = seed;
    f->ln1 = fb_malloc(H * sizeof(float)), f->ln2 = fb_malloc(H * sizeof(float));
    f->qn = fb_malloc(Dq * sizeof(float)), f->kn = fb_malloc(Dq * sizeof(float));
    for (size_t i = 0; i < H; i++) f->ln1[i] = 1.0f + 0.2f * urand(&st), f->ln2[i] = 1.0f + 0.2f * urand(&st);
    for (size_t i = 0; i < Dq; i++) f->qn[i] = 1.0f + 0.2f * urand(&st), f->kn[i] = 1.0f + 0.2f * urand(&st);
    f->router = fb_malloc(E * H * sizeof(float)), f->bias = fb_malloc(E * sizeof(float));
    for (size_t i = 0; i < E * H; i++) f->router[i] = 0.2f * urand(&st);
    for (size_t i = 0; i < E; i++) f->bias[i] = 0.05f * urand(&st);
    size_t R[4] = {Dq, Dk, Dk, H}, C[4] = {H, H, H, Dq};
    int k = 0;
    for (int j = 0; j < 4; j++) {
        f->at[j] = (fb_ar_linear){.w = fb_malloc(R[j] * C[j] * sizeof(float)), .rows = R[j], .cols = C[j]};
        for (size_t i = 0; i < R[j] * C[j]; i++) f->at[j].w[i] = 0.09f * urand(&st);
        f->at[j].scale = f->sc[k++] = fb_malloc(R[j] * C[j] / 128 * sizeof(float));
        f->b.attn[j] = &f->at[j];
        f->b.attn_tuned[j] = 1;
    }
    f->ex = fb_calloc(E, sizeof *f->ex);
    for (size_t e = 0; e < E; e++) {
        fb_ar_linear *L[3] = {&f->ex[e].gate, &f->ex[e].up, &f->ex[e].down};
        for (int j = 0; j < 3; j++) {
            *L[j] = (fb_ar_linear){.w = fb_malloc(H * H * sizeof(float)), .rows = H, .cols = H};
            for (size_t i = 0; i < H * H; i++) L[j]->w[i] = 0.09f * urand(&st);
            L[j]->scale = f->sc[k++] = fb_malloc(H * sizeof(float));
        }
    }
    f->b = (fb_ar_block){.cfg = &f->c, .ln1 = f->ln1, .ln2 = f->ln2, .q_norm = qk ? f->qn : NULL,
                         .k_norm = qk ? f->kn : NULL, .router = f->router,
                         .router_bias = rk == FB_ROUTER_SIGMOID_BIAS ? f->bias : NULL,
                         .attn = {&f->at[0], &f->at[1], &f->at[2], &f->at[3]}, .attn_tuned = {1, 1, 1, 1},
                         .experts = f->ex, .experts_tuned = 1};
}

static void blk_drop(blkfix *f) {
    for (int j = 0; j < 4; j++) free(f->at[j].w);
    for (size_t e = 0; e < 4; e++) free(f->ex[e].gate.w), free(f->ex[e].up.w), free(f->ex[e].down.w);
    for (int k = 0; k < 16; k++) free(f->sc[k]);
    free(f->ex); free(f->ln1); free(f->ln2); free(f->qn); free(f->kn); free(f->router); free(f->bias);
}

static fb_ar_linear *blk_lin(blkfix *f, int j) {
    if (j < 4) return &f->at[j];
    fb_ar_expert *p = &f->ex[(j - 4) / 3];
    return (j - 4) % 3 == 0 ? &p->gate : (j - 4) % 3 == 1 ? &p->up : &p->down;
}

static void blk_gradcheck(fb_qk_norm qk, fb_router_kind rk, int norm_topk, const char *label) {
    blkfix f;
    blk_make(&f, qk, rk, norm_topk, 777);
    const size_t NS = 2, SEQ = 8, N = NS * SEQ, H = 128, NL = 16;
    uint64_t st = 99;
    float *x = fb_malloc(N * H * sizeof(float)), *t = fb_malloc(N * H * sizeof(float));
    for (size_t i = 0; i < N * H; i++) x[i] = urand(&st), t[i] = x[i] + 0.5f * urand(&st);
    float *g[16];
    for (size_t j = 0; j < NL; j++) g[j] = fb_malloc(blk_lin(&f, (int)j)->rows * blk_lin(&f, (int)j)->cols * sizeof(float));
    double loss, lp, lm;
    fb_err err;
    REQUIRE(fb_autoround_block_grad(x, t, NS, SEQ, &f.b, &loss, g, &err) == 0, "%s", err.msg);
    size_t bad = 0, checked = 0;
    double worst = 0;
    for (size_t j = 0; j < NL; j++) {
        fb_ar_linear *L = blk_lin(&f, (int)j);
        size_t n = L->rows * L->cols, imax = 0;
        float gmax = 0;
        for (size_t i = 0; i < n; i++)
            if (fabsf(g[j][i]) > gmax) gmax = fabsf(g[j][i]), imax = i;
        if (gmax == 0) continue;  // an expert no token chose
        size_t pick[3] = {imax, (size_t)(0.37 * (double)n), (size_t)(0.81 * (double)n)};
        for (int p = 0; p < 3; p++) {
            size_t i = pick[p];
            float w = L->w[i], h = 1e-3f;
            L->w[i] = w + h;
            fb_autoround_block_grad(x, t, NS, SEQ, &f.b, &lp, NULL, &err);
            L->w[i] = w - h;
            fb_autoround_block_grad(x, t, NS, SEQ, &f.b, &lm, NULL, &err);
            L->w[i] = w;
            double fd = (lp - lm) / (2.0 * (double)h), e = fabs(fd - (double)g[j][i]) / (double)gmax;
            if (e > worst) worst = e;
            bad += e > 2e-3;
            checked++;
        }
    }
    CHECK(bad == 0 && checked >= 36, "block gradient (%s): %zu of %zu entries off central differences (worst %.2e of "
          "the Linear's largest gradient)", label, bad, checked, worst);
    for (size_t j = 0; j < NL; j++) free(g[j]);
    free(x); free(t);
    blk_drop(&f);
}

static void block_unit(void) {
    blk_gradcheck(FB_QKN_ALL_HEADS, FB_ROUTER_SIGMOID_BIAS, 0, "MiniMax-M2: q/k norm over all heads, sigmoid router");
    blk_gradcheck(FB_QKN_PER_HEAD, FB_ROUTER_SOFTMAX, 1, "Qwen3-MoE: per-head q/k norm, softmax router, top-k renormalised");
    blk_gradcheck(FB_QKN_NONE, FB_ROUTER_SOFTMAX, 0, "no q/k norm, softmax router");
    // tuning: v_proj fixed, the rest tuned
    const size_t NS = 8, SEQ = 8, N = NS * SEQ, H = 128;
    float *out[2][16];
    for (int run = 0; run < 2; run++) {
        blkfix f;
        blk_make(&f, FB_QKN_ALL_HEADS, FB_ROUTER_SIGMOID_BIAS, 0, 4242);
        f.b.attn_tuned[2] = 0;
        float *v0 = fb_malloc(128 * 64 * sizeof(float));
        memcpy(v0, f.at[2].w, 128 * 64 * sizeof(float));
        uint64_t st = 5;
        float *x = fb_malloc(N * H * sizeof(float)), *t = fb_malloc(N * H * sizeof(float));
        for (size_t i = 0; i < N * H; i++) x[i] = urand(&st), t[i] = x[i] + 0.3f * urand(&st);
        fb_ar_opts o = {.iters = 20, .batch_size = 4, .seed = 42};
        fb_ar_result res;
        fb_err err;
        REQUIRE(fb_autoround_tune_block(x, t, NS, SEQ, &f.b, &o, &res, &err) == 0, "%s", err.msg);
        if (run == 0)
            CHECK(res.best_loss <= res.init_loss && res.final_mse < res.rtn_mse,
                  "block: kept %g <= init %g, final %g < RTN %g", res.best_loss, res.init_loss, res.final_mse,
                  res.rtn_mse);
        CHECK(memcmp(v0, f.at[2].w, 128 * 64 * sizeof(float)) == 0, "block: the fixed v_proj was modified");
        size_t bad = 0;
        for (int j = 0; j < 16; j++) {
            if (j == 2) continue;
            fb_ar_linear *L = blk_lin(&f, j);
            for (size_t r = 0; r < L->rows; r++)
                for (size_t c = 0; c < L->cols; c++) {
                    float s = L->scale[r * (L->cols / 128) + c / 128], w = L->w[r * L->cols + c], q = w / s;
                    bad += q != nearbyintf(q) || q < -8 || q > 7 || !fb_f32_bits_eq(s, fb_f16_to_f32(fb_f32_to_f16(s)));
                }
            out[run][j] = fb_malloc(L->rows * L->cols * sizeof(float));
            memcpy(out[run][j], L->w, L->rows * L->cols * sizeof(float));
        }
        CHECK(bad == 0, "block: %zu tuned weights are not an fp16 scale times a code in [-8, 7]", bad);
        if (run == 1) {
            size_t diff = 0;
            for (int j = 0; j < 16; j++) {
                if (j == 2) continue;
                fb_ar_linear *L = blk_lin(&f, j);
                diff += memcmp(out[0][j], out[1][j], L->rows * L->cols * sizeof(float)) != 0;
                free(out[0][j]);
                free(out[1][j]);
            }
            CHECK(diff == 0, "block: the same seed gave other weights in %zu Linears", diff);
            // bad input: a NaN in the input, a wrong shape
            x[77] = NAN;
            CHECK(fb_autoround_tune_block(x, t, NS, SEQ, &f.b, &o, &res, &err) != 0 && strstr(err.msg, "input element 77"),
                  "block: a NaN input is refused naming it (%s)", err.msg);
            x[77] = 0;
            f.at[1].rows = 32;
            CHECK(fb_autoround_tune_block(x, t, NS, SEQ, &f.b, &o, &res, &err) != 0 && strstr(err.msg, "k_proj"),
                  "block: a wrong k_proj shape is refused naming it (%s)", err.msg);
            f.at[1].rows = 64;
            // the tensor-core GEMM mode is the CUDA tuner's; the CPU refuses them, nothing replaced
            float w01 = f.at[0].w[1];
            o.gemm = FB_AR_GEMM_TF32;
            CHECK(fb_autoround_tune_block(x, t, NS, SEQ, &f.b, &o, &res, &err) != 0 && strstr(err.msg, "f32 only") &&
                      f.at[0].w[1] == w01,
                  "block: the tf32 GEMM mode is refused on the CPU (%s)", err.msg);
            o.gemm = FB_AR_GEMM_F32;
            // Ctrl-C: polled every iteration; nothing replaced
            atomic_int stop = 1;
            o.cancel = &stop;
            float *w0 = fb_malloc(128 * 128 * sizeof(float));
            memcpy(w0, f.at[0].w, 128 * 128 * sizeof(float));
            CHECK(fb_autoround_tune_block(x, t, NS, SEQ, &f.b, &o, &res, &err) == -2 && strstr(err.msg, "interrupted") &&
                      memcmp(w0, f.at[0].w, 128 * 128 * sizeof(float)) == 0,
                  "block: a set cancel flag returns -2 with the weights untouched (%s)", err.msg);
            free(w0);
        }
        free(v0); free(x); free(t);
        blk_drop(&f);
    }
}

int main(void) {
    fb_st_file *f;
    fb_err err;
    REQUIRE(fb_st_open(GOLD, &f, &err) == 0, "%s (run scripts/gen-autoround-golden.py)", err.msg);
    opt_rtn_cases(f);
    nonfinite();
    signround(f);
    linear_unit();
    block_unit();
    fb_st_close(f);
    TEST_MAIN_END();
}
