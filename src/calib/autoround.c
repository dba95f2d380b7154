// autoround.c: auto-round 0.16.1's optimized RTN, plain RTN and SignRound on routed experts
// (see autoround.h). Scalar reference code; the GEMMs of the tuning go through BLAS.
#include "calib/autoround.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "calib/mm.h"
#include "quant/formats.h"

#define G FB_AR_GROUP

// Rounds an f32 op result to the search dtype (torch computes bf16 ops in f32 and rounds).
static inline float rd(fb_ar_dtype dt, float x) {
    return dt == FB_AR_BF16 ? fb_bf16_to_f32(fb_f32_to_bf16(x)) : x;
}
static inline float h16(float x) { return fb_f16_to_f32(fb_f32_to_f16(x)); }

// auto_round.utils.get_reciprocal: 0 where |x| < 1e-30 (in the dtype), else 1 / x.
static inline float recip(fb_ar_dtype dt, float x) {
    return fabsf(x) >= rd(dt, 1e-30f) ? rd(dt, 1.0f / x) : 0.0f;
}

static inline float clampq(float v) { return v < -8.0f ? -8.0f : v > 7.0f ? 7.0f : v; }

void fb_autoround_imatrix_add(float *im, size_t C, const float *x, size_t rows) {
    for (size_t r = 0; r < rows; r++)
        for (size_t k = 0; k < C; k++) im[k] += x[r * C + k] * x[r * C + k];
}

void fb_autoround_imatrix_scale(float *im, size_t C, size_t n) {
    for (size_t k = 0; k < C; k++) im[k] = im[k] / (float)n;
}

static int check_finite(const float *W, size_t R, size_t C, const float *im, fb_err *err) {
    if (!R || !C || C % G) return fb_fail(err, "AutoRound: a [%zu, %zu] weight (columns must be a multiple of %d)", R, C, G);
    for (size_t r = 0; r < R; r++)
        for (size_t k = 0; k < C; k++)
            if (!isfinite(W[r * C + k]))
                return fb_fail(err, "AutoRound: weight row %zu column %zu is %g", r, k, (double)W[r * C + k]);
    if (im)
        for (size_t k = 0; k < C; k++)
            if (!isfinite(im[k]) || im[k] < 0)
                return fb_fail(err, "AutoRound: importance matrix column %zu is %g", k, (double)im[k]);
    return 0;
}

// The loss of scale s / inverse scale is on one group (search_scales' inner step), in double
// (the reference sums f32 in its own order: a near-tie may resolve the other way).
static double grp_loss(fb_ar_dtype dt, const float *w, const float *qw, float is, float s) {
    double l = 0;
    for (size_t k = 0; k < G; k++) {
        float L = clampq(nearbyintf(rd(dt, is * w[k])));
        float e = rd(dt, rd(dt, s * L) - w[k]);
        float e2 = e * e;
        if (qw) e2 = e2 * qw[k];
        l += e2;
    }
    return l;
}

// gguf._imatrix_handle_zero on one group row: qw (in: the imatrix slice, out: patched).
static void patch_imatrix(fb_ar_dtype dt, const float *w, float *qw) {
    size_t zc = 0;
    for (size_t k = 0; k < G; k++) zc += qw[k] <= 1e-30f;
    if (zc > G / 2) {
        // the weights' own magnitude instead (bits 4: |w| + sqrt(sum w^2 / 32)), in the dtype
        float s2 = 0;
        for (size_t k = 0; k < G; k++) s2 += rd(dt, w[k] * w[k]);
        float av = rd(dt, sqrtf(rd(dt, rd(dt, s2) / 32.0f)));
        for (size_t k = 0; k < G; k++) qw[k] = rd(dt, fabsf(w[k]) + av);
    } else if (zc > 0) {
        float sum = 0;
        for (size_t k = 0; k < G; k++) sum += qw[k];
        float mean = sum / (float)(G - zc);
        for (size_t k = 0; k < G; k++)
            if (qw[k] == 0) qw[k] = mean;
    }
}

int fb_autoround_opt_rtn(const float *W, size_t R, size_t C, const float *im, fb_ar_dtype dt, float *scale,
                         int8_t *q, float *out, fb_err *err) {
    if (check_finite(W, R, C, im, err)) return -1;
    int patch = 0;
    if (im)
        for (size_t k = 0; k < C; k++) patch |= im[k] == 0;
    const double step = 6.0 / 200 * 2;  // nmax * 0.75 / grid * 2, as Python computes it
    const int smin = (int)(6.0 / step);
    float qw[G];
    const float thr = rd(dt, 1e-5f);
    for (size_t r = 0; r < R; r++)
        for (size_t g0 = 0; g0 < C; g0 += G) {
            const float *w = W + r * C + g0;
            const float *pq = NULL;
            if (im) {
                memcpy(qw, im + g0, sizeof qw);
                if (patch) patch_imatrix(dt, w, qw);
                pq = qw;
            }
            size_t imax = 0;
            for (size_t k = 1; k < G; k++)
                if (fabsf(w[k]) > fabsf(w[imax])) imax = k;
            float rg = recip(dt, w[imax]);
            float is = rd(dt, -8.0f * rg), s = recip(dt, is);
            double best = grp_loss(dt, w, pq, is, s);
            for (int k = -smin; k <= smin; k++) {
                if (!k) continue;
                float ist = rd(dt, (float)(-(8.0 - step * k)) * rg), st = recip(dt, ist);
                double l = grp_loss(dt, w, pq, ist, st);
                if (l < best) { best = l; s = st; }
            }
            s = s < 0 ? fminf(s, -thr) : fmaxf(s, thr);
            scale[r * (C / G) + g0 / G] = s;
            for (size_t k = 0; k < G; k++) {
                float v = clampq(nearbyintf(rd(dt, w[k] / s)));
                if (q) q[r * C + g0 + k] = (int8_t)v;
                if (out) out[r * C + g0 + k] = rd(dt, v * s);
            }
        }
    return 0;
}

// int_sym's scale of one group with the min/max factors (fp16, thresholded); sign_out gets the
// sign of max_v and tie / branch flags for the gradient.
static inline float sym_scale(float wmin, float wmax, float mn, float mx, float *sv) {
    float a = -(wmin * mn), b = wmax * mx;
    float m = a > b ? a : b;
    float mv = (b < a ? 1.0f : -1.0f) * m;
    float s = h16(mv / 8.0f);
    const float thr = h16(1e-5f);
    if (sv) *sv = s;  // before the threshold: its gradient mask
    return s < 0 ? fminf(s, -thr) : fmaxf(s, thr);
}

int fb_autoround_rtn(const float *W, size_t R, size_t C, fb_ar_dtype dt, float *scale, int8_t *q, float *out,
                     fb_err *err) {
    if (check_finite(W, R, C, NULL, err)) return -1;
    for (size_t r = 0; r < R; r++)
        for (size_t g0 = 0; g0 < C; g0 += G) {
            const float *w = W + r * C + g0;
            float lo = 0, hi = 0;
            for (size_t k = 0; k < G; k++) {
                lo = fminf(lo, w[k]);
                hi = fmaxf(hi, w[k]);
            }
            float s = sym_scale(lo, hi, 1.0f, 1.0f, NULL);
            scale[r * (C / G) + g0 / G] = s;
            for (size_t k = 0; k < G; k++) {
                float v = clampq(nearbyintf(w[k] / s));
                if (q) q[r * C + g0 + k] = (int8_t)v;
                if (out) out[r * C + g0 + k] = rd(dt, v * s);
            }
        }
    return 0;
}

// ---- SignRound --------------------------------------------------------------------------

typedef struct arlin {
    fb_ar_linear *L;
    size_t R, C, NG;
    float *w0;          // [R, C] the FP weight (the caller's buffer, replaced at the very end)
    float *wq;          // [R, C] fake-quantized weight of the current parameters
    float *gw;          // [R, C] dLoss/dwq (a scratch shared by all Linears: used right away)
    float *v, *bv;      // [R, C] V and its best snapshot
    float *mn, *mx;     // [NG * R] min/max factors
    float *bmn, *bmx;
    float *lo, *hi;     // [NG * R] min(0, group), max(0, group) of the FP weight
    int fixed;          // a Linear of the block that is not tuned: forward with w0, no step
    float *gsave;       // gradient checks: keep dLoss/dwq here instead of stepping
} arlin;

static void lin_init(arlin *a, fb_ar_linear *L, float *gw) {
    memset(a, 0, sizeof *a);
    a->L = L;
    a->R = L->rows;
    a->C = L->cols;
    a->NG = a->R * a->C / G;
    size_t n = a->R * a->C;
    a->w0 = L->w;
    a->wq = fb_aligned_alloc(n * sizeof(float) + 64);
    a->gw = gw;
    a->v = fb_calloc(n, sizeof(float));
    a->bv = fb_calloc(n, sizeof(float));
    a->mn = fb_malloc(a->NG * sizeof(float));
    a->mx = fb_malloc(a->NG * sizeof(float));
    a->bmn = fb_malloc(a->NG * sizeof(float));
    a->bmx = fb_malloc(a->NG * sizeof(float));
    a->lo = fb_malloc(a->NG * sizeof(float));
    a->hi = fb_malloc(a->NG * sizeof(float));
    for (size_t gi = 0; gi < a->NG; gi++) {
        const float *w = a->w0 + gi * G;
        float lo = 0, hi = 0;
        for (size_t k = 0; k < G; k++) {
            lo = fminf(lo, w[k]);
            hi = fmaxf(hi, w[k]);
        }
        a->lo[gi] = lo;
        a->hi[gi] = hi;
        a->mn[gi] = a->mx[gi] = a->bmn[gi] = a->bmx[gi] = 1.0f;
    }
}

static void lin_free(arlin *a) {
    free(a->wq); free(a->v); free(a->bv);
    free(a->mn); free(a->mx); free(a->bmn); free(a->bmx); free(a->lo); free(a->hi);
}

// _qdq_weight: clamps the factors to [0, 1] in place, then wq = s * clamp(rint(w / s + v)).
static void lin_qdq(arlin *a, const float *v, float *mn, float *mx, float *wq, float *scale, int8_t *q) {
    for (size_t gi = 0; gi < a->NG; gi++) {
        mn[gi] = fminf(fmaxf(mn[gi], 0.0f), 1.0f);
        mx[gi] = fminf(fmaxf(mx[gi], 0.0f), 1.0f);
        float s = sym_scale(a->lo[gi], a->hi[gi], mn[gi], mx[gi], NULL);
        if (scale) scale[gi] = s;
        const float *w = a->w0 + gi * G, *vv = v + gi * G;
        for (size_t k = 0; k < G; k++) {
            float c = clampq(nearbyintf(w[k] / s + vv[k]));
            wq[gi * G + k] = s * c;
            if (q) q[gi * G + k] = (int8_t)c;
        }
    }
}

static inline float sgn(float g) { return g > 0 ? 1.0f : g < 0 ? -1.0f : 0.0f; }

// The chain rule from dLoss/dwq (a->gw) to V, min_scale, max_scale, and the SignSGD step.
static void lin_step(arlin *a, float lr, float mlr, int minmax) {
    const float thr = h16(1e-5f);
    for (size_t gi = 0; gi < a->NG; gi++) {
        float sv, s = sym_scale(a->lo[gi], a->hi[gi], a->mn[gi], a->mx[gi], &sv);
        const float *w = a->w0 + gi * G, *gw = a->gw + gi * G;
        float *v = a->v + gi * G;
        float gq = 0, gd = 0;  // the scale's gradient through s*q and through w/s
        for (size_t k = 0; k < G; k++) {
            float t = nearbyintf(w[k] / s + v[k]);
            int in = t > -8.0f && t < 7.0f;  // torch 2.15's clamp passes no gradient at the bounds
            float c = clampq(t);
            gq += gw[k] * c;
            float gvk = in ? gw[k] * s : 0.0f;  // d wq / d V = s inside the clamp
            if (in) gd += gvk * (-(w[k] / s) / s);
            v[k] -= lr * sgn(gvk);
        }
        if (!minmax) continue;
        // each use of the fp16 scale gets its gradient in fp16; the threshold's clamp passes
        // it where the scale was kept
        float gs = h16(h16(gq) + h16(gd));
        if (!(sv < 0 ? sv < -thr : sv > thr)) gs = 0;
        float gm = gs / 8.0f;  // max_v / 8, the fp16 cast passes the gradient through
        float A = -(a->lo[gi] * a->mn[gi]), B = a->hi[gi] * a->mx[gi];
        gm *= B < A ? 1.0f : -1.0f;
        float gA = A > B ? gm : A == B ? gm / 2 : 0.0f, gB = B > A ? gm : A == B ? gm / 2 : 0.0f;
        a->mn[gi] -= mlr * sgn(-a->lo[gi] * gA);
        a->mx[gi] -= mlr * sgn(a->hi[gi] * gB);
    }
}

// What a backward does with a Linear's gradient in gw: the SignSGD step (tuned), nothing
// (fixed), or keep it (gradient checks).
static void lin_apply(arlin *a, float lr, float mlr, int minmax) {
    if (a->gsave) memcpy(a->gsave, a->gw, a->R * a->C * sizeof(float));
    else if (!a->fixed) lin_step(a, lr, mlr, minmax);
}

// Whether a backward needs a's weight gradient at all.
static inline int lin_wants_grad(const arlin *a) { return a->gsave || !a->fixed; }

static inline float silu(float x) { return x / (1.0f + expf(-x)); }

// Python's random module (MT19937, random.seed(int) = init_by_array of the seed's 32-bit words,
// shuffle = Fisher-Yates from the end with _randbelow = rejection on getrandbits(bit_length)),
// so that IndexSampler's batches come out as auto-round draws them after random.seed(seed).
typedef struct pyrand {
    uint32_t mt[624];
    int i;
} pyrand;

static void py_init(pyrand *r, uint32_t s) {
    r->mt[0] = s;
    for (int i = 1; i < 624; i++) r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->i = 624;
}

static void py_seed(pyrand *r, uint64_t seed) {
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    int klen = seed >> 32 ? 2 : 1, i = 1, j = 0;
    py_init(r, 19650218u);
    for (int k = 624 > klen ? 624 : klen; k; k--) {
        r->mt[i] = (r->mt[i] ^ ((r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) * 1664525u)) + key[j] + (uint32_t)j;
        i++;
        j++;
        if (i >= 624) { r->mt[0] = r->mt[623]; i = 1; }
        if (j >= klen) j = 0;
    }
    for (int k = 623; k; k--) {
        r->mt[i] = (r->mt[i] ^ ((r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) * 1566083941u)) - (uint32_t)i;
        i++;
        if (i >= 624) { r->mt[0] = r->mt[623]; i = 1; }
    }
    r->mt[0] = 0x80000000u;
}

static uint32_t py_u32(pyrand *r) {
    if (r->i >= 624) {
        for (int k = 0; k < 624; k++) {
            uint32_t y = (r->mt[k] & 0x80000000u) | (r->mt[(k + 1) % 624] & 0x7fffffffu);
            r->mt[k] = r->mt[(k + 397) % 624] ^ (y >> 1) ^ (y & 1 ? 0x9908b0dfu : 0);
        }
        r->i = 0;
    }
    uint32_t y = r->mt[r->i++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
}

static size_t py_below(pyrand *r, size_t n) {  // n < 2^32
    int k = 0;
    while (((size_t)1 << k) <= n) k++;
    for (;;) {
        size_t v = py_u32(r) >> (32 - k);
        if (v < n) return v;
    }
}

static void shuffle(size_t *p, size_t n, pyrand *r) {
    for (size_t i = n - 1; i >= 1; i--) {
        size_t j = py_below(r, i + 1), t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
}

// signround()'s IndexSampler walk, on its own: the same seeding, shuffles and reshuffles.
void fb_autoround_sample_order(size_t nsamples, const fb_ar_opts *o, size_t *order) {
    size_t bs = o->batch_size ? o->batch_size : 8, pi = 0;
    if (bs > nsamples) bs = nsamples;
    size_t *perm = fb_malloc(nsamples * sizeof(size_t));
    for (size_t i = 0; i < nsamples; i++) perm[i] = i;
    pyrand st;
    py_seed(&st, o->seed);
    shuffle(perm, nsamples, &st);
    for (int it = 0; it < o->iters; it++) {
        if (pi + bs > nsamples) {
            shuffle(perm, nsamples, &st);
            pi = 0;
        }
        for (size_t b = 0; b < bs; b++) order[(size_t)it * bs + b] = perm[pi + b];
        pi += bs;
    }
    free(perm);
}

typedef struct moe_ws {
    size_t H, FF, E;
    float *xe, *re, *A, *Bm, *Hh, *Y, *dY;  // one expert's rows of a batch (capacity cap)
    size_t *pos, cap;                       // pos: the batch rows of that expert's tokens
    float *dx;   // backward, optional: [n, H] dLoss/dx added (the joint block's MoE input)
    float *dr;   // backward, optional: [n, E] dLoss/droute written for routed (token, expert)
} moe_ws;

// MoE output of the tokens tok[0..n) (rows of x) with the experts' FP (quant 0) or fake-quantized
// weights into out [n, H]. With grad != NULL instead backpropagates dLoss/dout = grad into each
// Linear's gw and takes its SignSGD step right away (an expert's step changes nothing another
// expert's backward reads; an expert without tokens has zero gradients: no step).
static void moe_pass(const float *x, const float *route, const size_t *tok, size_t n, arlin *lin, int quant,
                     moe_ws *ws, float *out, const float *grad, float lr, float mlr, int minmax) {
    size_t H = ws->H, FF = ws->FF, E = ws->E;
    if (!grad) memset(out, 0, n * H * sizeof(float));
    for (size_t e = 0; e < E; e++) {
        arlin *g = &lin[3 * e], *u = &lin[3 * e + 1], *d = &lin[3 * e + 2];
        const float *Wg = quant ? g->wq : g->w0, *Wu = quant ? u->wq : u->w0, *Wd = quant ? d->wq : d->w0;
        size_t m = 0, *pos = ws->pos;
        for (size_t t = 0; t < n; t++) {
            float r = route[tok[t] * E + e];
            if (r == 0) continue;
            memcpy(ws->xe + m * H, x + tok[t] * H, H * sizeof(float));
            ws->re[m] = r;
            pos[m] = t;
            m++;
        }
        if (!m) continue;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)FF, (int)H, 1.0f, ws->xe, (int)H, Wg, (int)H,
                    0.0f, ws->A, (int)FF);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)FF, (int)H, 1.0f, ws->xe, (int)H, Wu, (int)H,
                    0.0f, ws->Bm, (int)FF);
        for (size_t i = 0; i < m * FF; i++) ws->Hh[i] = silu(ws->A[i]) * ws->Bm[i];
        if (!grad) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)H, (int)FF, 1.0f, ws->Hh, (int)FF, Wd,
                        (int)FF, 0.0f, ws->Y, (int)H);
            for (size_t j = 0; j < m; j++)
                for (size_t k = 0; k < H; k++) out[pos[j] * H + k] += ws->re[j] * ws->Y[j * H + k];
        } else {
            for (size_t j = 0; j < m; j++)
                for (size_t k = 0; k < H; k++) ws->dY[j * H + k] = ws->re[j] * grad[pos[j] * H + k];
            if (ws->dr) {  // d out / d route[t, e] = the expert's output Y = Hh Wd^T
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)H, (int)FF, 1.0f, ws->Hh, (int)FF, Wd,
                            (int)FF, 0.0f, ws->Y, (int)H);
                for (size_t j = 0; j < m; j++) {
                    const float *gr = grad + pos[j] * H, *y = ws->Y + j * H;
                    float acc = 0;
                    for (size_t k = 0; k < H; k++) acc += gr[k] * y[k];
                    ws->dr[pos[j] * E + e] = acc;
                }
            }
            // dWd = dY^T Hh; dHh = dY Wd
            if (lin_wants_grad(d)) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)H, (int)FF, (int)m, 1.0f, ws->dY, (int)H,
                            ws->Hh, (int)FF, 0.0f, d->gw, (int)FF);
                lin_apply(d, lr, mlr, minmax);  // changes V and the factors, not d->wq that dHh reads
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)FF, (int)H, 1.0f, ws->dY, (int)H, Wd,
                        (int)FF, 0.0f, ws->Y, (int)FF);
            for (size_t i = 0; i < m * FF; i++) {
                float a = ws->A[i], sg = 1.0f / (1.0f + expf(-a)), dh = ws->Y[i];
                ws->Hh[i] = dh * ws->Bm[i] * (sg * (1.0f + a * (1.0f - sg)));  // dA
                ws->Bm[i] = dh * (a * sg);                                     // dB
            }
            if (lin_wants_grad(g)) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)FF, (int)H, (int)m, 1.0f, ws->Hh, (int)FF,
                            ws->xe, (int)H, 0.0f, g->gw, (int)H);
                lin_apply(g, lr, mlr, minmax);
            }
            if (lin_wants_grad(u)) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)FF, (int)H, (int)m, 1.0f, ws->Bm, (int)FF,
                            ws->xe, (int)H, 0.0f, u->gw, (int)H);
                lin_apply(u, lr, mlr, minmax);
            }
            if (ws->dx) {  // dx = dA Wg + dB Wu (xe is free now)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)H, (int)FF, 1.0f, ws->Hh, (int)FF,
                            Wg, (int)H, 0.0f, ws->xe, (int)H);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)H, (int)FF, 1.0f, ws->Bm, (int)FF,
                            Wu, (int)H, 1.0f, ws->xe, (int)H);
                for (size_t j = 0; j < m; j++)
                    for (size_t k = 0; k < H; k++) ws->dx[pos[j] * H + k] += ws->xe[j * H + k];
            }
        }
    }
}

// ---- the SignRound driver (one unit: a block's experts, or one Linear) ----------------------

// A unit's Linears and how a mini-batch's loss and backward step are computed.
typedef struct sr_unit {
    arlin *lin;
    size_t nlin;
    void *ctx;
    // The loss of tokens tok[0..n) (rows of the unit's inputs) with the current fake-quantized
    // weights; keeps dLoss/dout for bwd.
    double (*fwd)(void *ctx, const size_t *tok, size_t n);
    // Backpropagates the last fwd's loss into each Linear's gw and takes its SignSGD step.
    void (*bwd)(void *ctx, const size_t *tok, size_t n, float lr, float mlr, int minmax);
    // The MSE over every sample with the current fake-quantized weights.
    double (*full)(void *ctx);
} sr_unit;

static void sr_qdq(sr_unit *u) {
    for (size_t j = 0; j < u->nlin; j++)
        if (!u->lin[j].fixed) lin_qdq(&u->lin[j], u->lin[j].v, u->lin[j].mn, u->lin[j].mx, u->lin[j].wq, NULL, NULL);
}

// auto-round's tuning loop (autoround.h): iteration 0 is RTN, IndexSampler batches after
// random.seed(seed), the best mini-batch loss snapshots the parameters before that iteration's
// step, LinearLR from 1 to 0; ends with the kept parameters' weights, scales and codes.
// Returns 0, or -2 when o->cancel was set (the Linears' weights are then left as they were).
static int signround(sr_unit *u, size_t nsamples, size_t seq, const fb_ar_opts *o, fb_ar_result *res) {
    size_t bs = o->batch_size ? o->batch_size : 8;
    if (bs > nsamples) bs = nsamples;
    float lr = o->lr > 0 ? o->lr : 1.0f / (float)o->iters, mlr = o->minmax_lr > 0 ? o->minmax_lr : lr;
    int minmax = !o->disable_minmax;
    sr_qdq(u);
    res->rtn_mse = u->full(u->ctx);
    size_t *perm = fb_malloc(nsamples * sizeof(size_t)), *tok = fb_malloc(bs * seq * sizeof(size_t)), pi = 0;
    for (size_t i = 0; i < nsamples; i++) perm[i] = i;
    pyrand st;
    py_seed(&st, o->seed);
    shuffle(perm, nsamples, &st);
    double best = 3.4028234663852886e38;  // torch.finfo(float).max
    float lr_i = lr, mlr_i = mlr;
    for (int it = 0; it < o->iters; it++) {
        if (o->cancel && atomic_load(o->cancel)) {
            free(perm);
            free(tok);
            return -2;
        }
        if (pi + bs > nsamples) {
            shuffle(perm, nsamples, &st);
            pi = 0;
        }
        size_t n = 0;
        for (size_t b = 0; b < bs; b++)
            for (size_t t = 0; t < seq; t++) tok[n++] = perm[pi + b] * seq + t;
        pi += bs;
        sr_qdq(u);
        double loss = u->fwd(u->ctx, tok, n);
        if (it == 0) res->init_loss = loss;
        if (o->loss_trace) o->loss_trace[it] = loss;
        if (loss < best || (o->not_use_best_mse && it == o->iters - 1)) {
            if (loss < best) {
                best = loss;
                res->best_iter = it;
                res->best_loss = loss;
            }
            for (size_t j = 0; j < u->nlin; j++) {
                arlin *a = &u->lin[j];
                if (a->fixed) continue;
                memcpy(a->bv, a->v, a->R * a->C * sizeof(float));
                memcpy(a->bmn, a->mn, a->NG * sizeof(float));
                memcpy(a->bmx, a->mx, a->NG * sizeof(float));
            }
        }
        u->bwd(u->ctx, tok, n, lr_i, mlr_i, minmax);
        // LinearLR(1 -> 0): lr *= 1 - 1 / (iters - it), in f32 as torch scales a tensor lr
        float f = (float)(1.0 + -1.0 / ((double)o->iters + (double)it * -1.0));
        lr_i = lr_i * f;
        mlr_i = mlr_i * f;
    }
    if (o->not_use_best_mse) res->best_loss = best;
    for (size_t j = 0; j < u->nlin; j++) {
        arlin *a = &u->lin[j];
        if (a->fixed) continue;
        lin_qdq(a, a->bv, a->bmn, a->bmx, a->wq, a->L->scale, a->L->q);
    }
    res->final_mse = u->full(u->ctx);
    free(perm);
    free(tok);
    return 0;
}

// The mean of the squared differences, in f32 per element and double over the sum, as loss.item()
// of an f32 MSELoss reads (rounded to f32 by the caller where the reference rounds).
static double mse(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        float d = a[i] - b[i];
        s += (double)(d * d);
    }
    return s / (double)n;
}

// ---- the routed experts of a block ---------------------------------------------------------

typedef struct moe_unit {
    const float *x, *route, *target;
    size_t N, H, cap;
    arlin *lin;
    moe_ws ws;
    float *out, *grad, *tb;
    size_t *all;
} moe_unit;

static double moe_fwd_b(void *ctx, const size_t *tok, size_t n) {
    moe_unit *m = ctx;
    size_t H = m->H;
    moe_pass(m->x, m->route, tok, n, m->lin, 1, &m->ws, m->out, NULL, 0, 0, 0);
    for (size_t t = 0; t < n; t++) memcpy(m->tb + t * H, m->target + tok[t] * H, H * sizeof(float));
    double loss = (double)(float)mse(m->out, m->tb, n * H);  // loss.item() of an f32 tensor
    // MSELoss(mean) * 1000: d/dout = 2 (out - target) / numel * 1000
    const float k = 2000.0f / (float)(n * H);
    for (size_t i = 0; i < n * H; i++) m->grad[i] = (m->out[i] - m->tb[i]) * k;
    return loss;
}

static void moe_bwd_b(void *ctx, const size_t *tok, size_t n, float lr, float mlr, int minmax) {
    moe_unit *m = ctx;
    moe_pass(m->x, m->route, tok, n, m->lin, 1, &m->ws, NULL, m->grad, lr, mlr, minmax);
}

static double moe_full(void *ctx) {
    moe_unit *m = ctx;
    double s = 0;
    for (size_t t0 = 0; t0 < m->N; t0 += m->cap) {
        size_t n = m->N - t0 < m->cap ? m->N - t0 : m->cap;
        moe_pass(m->x, m->route, m->all + t0, n, m->lin, 1, &m->ws, m->out, NULL, 0, 0, 0);
        s += mse(m->out, m->target + t0 * m->H, n * m->H) * (double)(n * m->H);
    }
    return s / (double)(m->N * m->H);
}

int fb_autoround_tune_moe(const float *x, size_t nsamples, size_t seq, size_t H, const float *route,
                          size_t n_experts, const float *target, fb_ar_expert *ex, const fb_ar_opts *o,
                          fb_ar_result *res, fb_err *err) {
    memset(res, 0, sizeof *res);
    size_t E = n_experts, N = nsamples * seq;
    if (!E || !N || !H || o->iters < 1)
        return fb_fail(err, "AutoRound: %zu experts, %zu samples x %zu tokens, hidden %zu, %d iterations", E, nsamples,
                       seq, H, o->iters);
    size_t FF = ex[0].gate.rows;
    size_t bs = o->batch_size ? o->batch_size : 8;
    if (bs > nsamples) bs = nsamples;
    // BLAS takes int dimensions; the buffers are indexed up to a batch's tokens x max(H, FF)
    if (!FF || FF > INT_MAX / H || bs * seq > INT_MAX / (H > FF ? H : FF))
        return fb_fail(err, "AutoRound: a batch of %zu x %zu tokens with hidden %zu, intermediate %zu is out of range", bs,
                       seq, H, FF);
    for (size_t e = 0; e < E; e++) {
        fb_ar_expert *p = &ex[e];
        if (p->gate.rows != FF || p->gate.cols != H || p->up.rows != FF || p->up.cols != H || p->down.rows != H ||
            p->down.cols != FF)
            return fb_fail(err, "AutoRound: expert %zu: gate [%zu, %zu], up [%zu, %zu], down [%zu, %zu] for hidden %zu, "
                           "intermediate %zu", e, p->gate.rows, p->gate.cols, p->up.rows, p->up.cols, p->down.rows,
                           p->down.cols, H, FF);
        const fb_ar_linear *ls[3] = {&p->gate, &p->up, &p->down};
        for (int j = 0; j < 3; j++)
            if (check_finite(ls[j]->w, ls[j]->rows, ls[j]->cols, NULL, err))
                return fb_fail(err, "expert %zu %s: %s", e, j == 0 ? "gate" : j == 1 ? "up" : "down", err->msg);
    }
    for (size_t i = 0; i < N * E; i++)
        if (!isfinite(route[i]) || route[i] < 0) return fb_fail(err, "AutoRound: routing weight %zu is %g", i, (double)route[i]);

    arlin *lin = fb_calloc(3 * E, sizeof(arlin));
    float *gws = fb_aligned_alloc(H * FF * sizeof(float) + 64);
    for (size_t e = 0; e < E; e++) {
        lin_init(&lin[3 * e], &ex[e].gate, gws);
        lin_init(&lin[3 * e + 1], &ex[e].up, gws);
        lin_init(&lin[3 * e + 2], &ex[e].down, gws);
    }
    moe_unit m = {.x = x, .route = route, .N = N, .H = H, .cap = bs * seq, .lin = lin};
    m.ws = (moe_ws){.H = H, .FF = FF, .E = E, .cap = m.cap};
    size_t cap = m.cap, HI = H > FF ? H : FF;
    m.ws.xe = fb_malloc(cap * H * sizeof(float));
    m.ws.re = fb_malloc(cap * sizeof(float));
    m.ws.A = fb_malloc(cap * FF * sizeof(float));
    m.ws.Bm = fb_malloc(cap * FF * sizeof(float));
    m.ws.Hh = fb_malloc(cap * FF * sizeof(float));
    m.ws.Y = fb_malloc(cap * HI * sizeof(float));
    m.ws.dY = fb_malloc(cap * H * sizeof(float));
    m.ws.pos = fb_malloc(cap * sizeof(size_t));
    m.all = fb_malloc(N * sizeof(size_t));
    for (size_t i = 0; i < N; i++) m.all[i] = i;
    // The FP target over all samples when the caller has none (chunks of one batch).
    float *tgt = NULL;
    if (!target) {
        tgt = fb_malloc(N * H * sizeof(float));
        for (size_t t0 = 0; t0 < N; t0 += cap) {
            size_t n = N - t0 < cap ? N - t0 : cap;
            moe_pass(x, route, m.all + t0, n, lin, 0, &m.ws, tgt + t0 * H, NULL, 0, 0, 0);
        }
        target = tgt;
    }
    m.target = target;
    m.out = fb_malloc(cap * H * sizeof(float));
    m.grad = fb_malloc(cap * H * sizeof(float));
    m.tb = fb_malloc(cap * H * sizeof(float));
    sr_unit u = {.lin = lin, .nlin = 3 * E, .ctx = &m, .fwd = moe_fwd_b, .bwd = moe_bwd_b, .full = moe_full};
    int rc = signround(&u, nsamples, seq, o, res);
    for (size_t j = 0; j < 3 * E; j++) {
        if (!rc) memcpy(lin[j].L->w, lin[j].wq, lin[j].R * lin[j].C * sizeof(float));
        lin_free(&lin[j]);
    }
    free(lin); free(m.ws.xe); free(m.ws.re); free(m.ws.A); free(m.ws.Bm); free(m.ws.Hh); free(m.ws.Y); free(m.ws.dY);
    free(m.ws.pos); free(gws); free(tgt); free(m.all); free(m.out); free(m.grad); free(m.tb);
    if (rc) fb_fail(err, "AutoRound: interrupted");
    return rc;
}

void fb_autoround_moe_forward(const float *x, size_t n_tok, size_t H, const float *route, size_t n_experts,
                              const fb_ar_expert *ex, float *out) {
    size_t E = n_experts, FF = ex[0].gate.rows, cap = n_tok < 4096 ? n_tok : 4096, HI = H > FF ? H : FF;
    arlin *lin = fb_calloc(3 * E, sizeof(arlin));
    for (size_t e = 0; e < E; e++) {  // only w0 is read by a forward with FP weights
        lin[3 * e].w0 = ex[e].gate.w;
        lin[3 * e + 1].w0 = ex[e].up.w;
        lin[3 * e + 2].w0 = ex[e].down.w;
    }
    moe_ws ws = {.H = H, .FF = FF, .E = E, .cap = cap};
    ws.xe = fb_malloc(cap * H * sizeof(float));
    ws.re = fb_malloc(cap * sizeof(float));
    ws.A = fb_malloc(cap * FF * sizeof(float));
    ws.Bm = fb_malloc(cap * FF * sizeof(float));
    ws.Hh = fb_malloc(cap * FF * sizeof(float));
    ws.Y = fb_malloc(cap * HI * sizeof(float));
    ws.pos = fb_malloc(cap * sizeof(size_t));
    size_t *tok = fb_malloc(cap * sizeof(size_t));
    for (size_t t0 = 0; t0 < n_tok; t0 += cap) {
        size_t n = n_tok - t0 < cap ? n_tok - t0 : cap;
        for (size_t i = 0; i < n; i++) tok[i] = t0 + i;
        moe_pass(x, route, tok, n, lin, 0, &ws, out + t0 * H, NULL, 0, 0, 0);
    }
    free(lin); free(ws.xe); free(ws.re); free(ws.A); free(ws.Bm); free(ws.Hh); free(ws.Y); free(ws.pos); free(tok);
}

// out[n, R] = x[tok[0..n)] W^T (no bias: the Linears auto-round tunes in MiniMax-M2 / Qwen3-MoE
// attention have none).
static void lin_fwd(const float *x, const size_t *tok, size_t n, size_t C, const float *W, size_t R, float *xb,
                    float *out) {
    for (size_t t = 0; t < n; t++) memcpy(xb + t * C, x + tok[t] * C, C * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)R, (int)C, 1.0f, xb, (int)C, W, (int)C, 0.0f, out,
                (int)R);
}

typedef struct lin_unit {
    const float *x, *target;
    size_t N, R, C, cap;
    arlin *a;
    float *xb, *out, *tb;
    size_t *all;
} lin_unit;

static double lin_fwd_b(void *ctx, const size_t *tok, size_t n) {
    lin_unit *l = ctx;
    size_t R = l->R;
    lin_fwd(l->x, tok, n, l->C, l->a->wq, R, l->xb, l->out);
    for (size_t t = 0; t < n; t++) memcpy(l->tb + t * R, l->target + tok[t] * R, R * sizeof(float));
    double loss = (double)(float)mse(l->out, l->tb, n * R);
    const float k = 2000.0f / (float)(n * R);
    for (size_t i = 0; i < n * R; i++) l->out[i] = (l->out[i] - l->tb[i]) * k;  // dLoss/dout
    return loss;
}

static void lin_bwd_b(void *ctx, const size_t *tok, size_t n, float lr, float mlr, int minmax) {
    lin_unit *l = ctx;
    (void)tok;
    // dW = dOut^T Xb (xb still holds the batch's rows from fwd)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)l->R, (int)l->C, (int)n, 1.0f, l->out, (int)l->R, l->xb,
                (int)l->C, 0.0f, l->a->gw, (int)l->C);
    lin_apply(l->a, lr, mlr, minmax);
}

static double lin_full(void *ctx) {
    lin_unit *l = ctx;
    double s = 0;
    for (size_t t0 = 0; t0 < l->N; t0 += l->cap) {
        size_t n = l->N - t0 < l->cap ? l->N - t0 : l->cap;
        for (size_t i = 0; i < n; i++) l->all[i] = t0 + i;
        lin_fwd(l->x, l->all, n, l->C, l->a->wq, l->R, l->xb, l->out);
        s += mse(l->out, l->target + t0 * l->R, n * l->R) * (double)(n * l->R);
    }
    return s / (double)(l->N * l->R);
}

int fb_autoround_tune_linear(const float *x, const float *target, size_t nsamples, size_t seq, fb_ar_linear *L,
                             const fb_ar_opts *o, fb_ar_result *res, fb_err *err) {
    memset(res, 0, sizeof *res);
    size_t N = nsamples * seq, R = L->rows, C = L->cols;
    if (!N || !R || !C || C % G || o->iters < 1)
        return fb_fail(err, "AutoRound: a [%zu, %zu] Linear (columns a multiple of %d), %zu samples x %zu tokens, "
                       "%d iterations", R, C, G, nsamples, seq, o->iters);
    size_t bs = o->batch_size ? o->batch_size : 8;
    if (bs > nsamples) bs = nsamples;
    size_t cap = bs * seq;
    if (R > INT_MAX / 2 || C > INT_MAX / 2 || cap > INT_MAX / (R > C ? R : C))
        return fb_fail(err, "AutoRound: a batch of %zu tokens for a [%zu, %zu] Linear is out of range", cap, R, C);
    if (check_finite(L->w, R, C, NULL, err)) return -1;
    for (size_t i = 0; i < N * C; i++)
        if (!isfinite(x[i])) return fb_fail(err, "AutoRound: input element %zu is not finite", i);
    for (size_t i = 0; i < N * R; i++)
        if (!isfinite(target[i])) return fb_fail(err, "AutoRound: target element %zu is not finite", i);
    float *gw = fb_aligned_alloc(R * C * sizeof(float) + 64);
    arlin a;
    lin_init(&a, L, gw);
    lin_unit l = {.x = x, .target = target, .N = N, .R = R, .C = C, .cap = cap, .a = &a};
    l.xb = fb_malloc(cap * C * sizeof(float));
    l.out = fb_malloc(cap * R * sizeof(float));
    l.tb = fb_malloc(cap * R * sizeof(float));
    l.all = fb_malloc(cap * sizeof(size_t));
    sr_unit u = {.lin = &a, .nlin = 1, .ctx = &l, .fwd = lin_fwd_b, .bwd = lin_bwd_b, .full = lin_full};
    int rc = signround(&u, nsamples, seq, o, res);
    if (!rc) memcpy(L->w, a.wq, R * C * sizeof(float));
    lin_free(&a);
    free(gw); free(l.xb); free(l.out); free(l.tb); free(l.all);
    if (rc) fb_fail(err, "AutoRound: interrupted");
    return rc;
}

// ---- a whole decoder block (attention + MoE) -------------------------------------------------

// RMSNorm of rows of n values as fb_mm_rmsnorm computes it (y may alias x), keeping 1/rms per row.
static void rms_fwd(const float *x, const float *w, float eps, size_t rows, size_t n, float *y, float *inv) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double ss = 0;
        for (size_t i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
        float iv = 1.0f / sqrtf((float)(ss / (double)n) + eps);
        inv[r] = iv;
        for (size_t i = 0; i < n; i++) yr[i] = w[i] * (xr[i] * iv);
    }
}

// dx (= or +=) of y = w * x * r, r = (mean(x^2) + eps)^-1/2: w dy r - x r^3 mean(w dy x).
// dx may alias dy when add is 0.
static void rms_bwd(const float *x, const float *w, const float *inv, const float *dy, size_t rows, size_t n,
                    float *dx, int add) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * n, *dr = dy + r * n;
        float *o = dx + r * n, iv = inv[r];
        double s = 0;
        for (size_t i = 0; i < n; i++) s += (double)(dr[i] * w[i]) * xr[i];
        float c = (float)(s / (double)n) * iv * iv * iv;
        for (size_t i = 0; i < n; i++) {
            float v = dr[i] * w[i] * iv - xr[i] * c;
            o[i] = add ? o[i] + v : v;
        }
    }
}

// The backward of fb_mm_rope: the gradient rotated back by the same angles.
static void rope_back(float *g, int n_heads, int head_dim, int rotary_dim, const float *inv_freq, int64_t pos) {
    int half = rotary_dim / 2;
    float p = (float)pos;
    for (int i = 0; i < half; i++) {
        float a = p * inv_freq[i], c = cosf(a), s = sinf(a);
        for (int h = 0; h < n_heads; h++) {
            float *gh = g + (size_t)h * head_dim, d1 = gh[i], d2 = gh[i + half];
            gh[i] = d1 * c + d2 * s;
            gh[i + half] = -d1 * s + d2 * c;
        }
    }
}

typedef struct blk_unit {
    const fb_ar_block *b;
    const fb_model_config *c;
    const float *x, *target;
    size_t N, seq, cap, H, Dq, Dk, hd, nh, nkv, E, K;
    float eps, scale;
    float *inv_freq;
    arlin *lin;  // [4 + 3E]: q, k, v, o, then gate/up/down of each expert
    moe_ws ws;
    // one batch's activations (cap rows)
    float *xb, *xn1, *r1, *Q, *Kp, *V, *Qr, *Kr, *rq, *rk, *AO, *h1, *xn2, *r2, *lg, *route, *out, *tb, *grad;
    int32_t *idx;
    // the backward's
    float *dxn2, *dh1, *dAO, *dQ, *dK, *dV, *S, *dP, *dr, *scr, *wt;
    size_t *ident, *all;
} blk_unit;

static void nt(const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc, size_t m, size_t n,
               size_t k, float beta) {  // c[m, n] = a[m, k] b[n, k]^T (+ beta c)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1.0f, a, (int)lda, b, (int)ldb, beta, c,
                (int)ldc);
}
static void nn(const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc, size_t m, size_t n,
               size_t k, float beta) {  // c[m, n] = a[m, k] b[k, n] (+ beta c)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, a, (int)lda, b, (int)ldb, beta,
                c, (int)ldc);
}
static void tn(const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc, size_t m, size_t n,
               size_t k, float beta) {  // c[m, n] = a[k, m]^T b[k, n] (+ beta c)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, a, (int)lda, b, (int)ldb, beta, c,
                (int)ldc);
}

// The causal softmax probabilities of one sample's head into u->S [seq, seq] (the engine's f32
// attention: scores scaled, softmax over keys 0..r, the rest 0).
static void blk_probs(blk_unit *u, const float *Qh, const float *Kh) {
    size_t L = u->seq;
    nt(Qh, u->Dq, Kh, u->Dk, u->S, L, L, L, u->hd, 0.0f);
    for (size_t r = 0; r < L; r++) {
        float *s = u->S + r * L;
        for (size_t k = 0; k <= r; k++) s[k] *= u->scale;
        fb_mm_softmax(s, r + 1);
        for (size_t k = r + 1; k < L; k++) s[k] = 0.0f;
    }
}

// The block's output for rows tok[0..n) of x (whole samples) into u->out, keeping what the
// backward reads.
static void blk_forward(blk_unit *u, const size_t *tok, size_t n) {
    const fb_ar_block *b = u->b;
    const fb_model_config *c = u->c;
    size_t H = u->H, Dq = u->Dq, Dk = u->Dk, hd = u->hd, E = u->E, K = u->K, L = u->seq;
    for (size_t t = 0; t < n; t++) memcpy(u->xb + t * H, u->x + tok[t] * H, H * sizeof(float));
    rms_fwd(u->xb, b->ln1, u->eps, n, H, u->xn1, u->r1);
    nt(u->xn1, H, u->lin[0].wq, H, u->Q, Dq, n, Dq, H, 0.0f);
    nt(u->xn1, H, u->lin[1].wq, H, u->Kp, Dk, n, Dk, H, 0.0f);
    nt(u->xn1, H, u->lin[2].wq, H, u->V, Dk, n, Dk, H, 0.0f);
    if (c->qk_norm == FB_QKN_ALL_HEADS) {
        rms_fwd(u->Q, b->q_norm, u->eps, n, Dq, u->Qr, u->rq);
        rms_fwd(u->Kp, b->k_norm, u->eps, n, Dk, u->Kr, u->rk);
    } else if (c->qk_norm == FB_QKN_PER_HEAD) {
        rms_fwd(u->Q, b->q_norm, u->eps, n * u->nh, hd, u->Qr, u->rq);
        rms_fwd(u->Kp, b->k_norm, u->eps, n * u->nkv, hd, u->Kr, u->rk);
    } else {
        memcpy(u->Qr, u->Q, n * Dq * sizeof(float));
        memcpy(u->Kr, u->Kp, n * Dk * sizeof(float));
    }
    for (size_t t = 0; t < n; t++) {
        fb_mm_rope(u->Qr + t * Dq, (int)u->nh, (int)hd, c->rotary_dim, u->inv_freq, (int64_t)(t % L));
        fb_mm_rope(u->Kr + t * Dk, (int)u->nkv, (int)hd, c->rotary_dim, u->inv_freq, (int64_t)(t % L));
    }
    size_t grp = u->nh / u->nkv;
    for (size_t s = 0; s < n / L; s++)
        for (size_t h = 0; h < u->nh; h++) {
            size_t g = h / grp, r0 = s * L;
            blk_probs(u, u->Qr + r0 * Dq + h * hd, u->Kr + r0 * Dk + g * hd);
            nn(u->S, L, u->V + r0 * Dk + g * hd, Dk, u->AO + r0 * Dq + h * hd, Dq, L, hd, L, 0.0f);
        }
    nt(u->AO, Dq, u->lin[3].wq, Dq, u->h1, H, n, H, Dq, 0.0f);
    for (size_t i = 0; i < n * H; i++) u->h1[i] = u->xb[i] + u->h1[i];
    rms_fwd(u->h1, b->ln2, u->eps, n, H, u->xn2, u->r2);
    nt(u->xn2, H, b->router, H, u->lg, E, n, E, H, 0.0f);
    memset(u->route, 0, n * E * sizeof(float));
    for (size_t t = 0; t < n; t++) {
        int32_t *ix = u->idx + t * K;
        if (c->router == FB_ROUTER_SOFTMAX)
            fb_mm_route_softmax(u->lg + t * E, (int)E, (int)K, c->norm_topk_prob, ix, u->wt, u->scr);
        else
            fb_mm_route(u->lg + t * E, b->router_bias, (int)E, (int)K, ix, u->wt, u->scr);
        for (size_t j = 0; j < K; j++) u->route[t * E + (size_t)ix[j]] = u->wt[j];
    }
    moe_pass(u->xn2, u->route, u->ident, n, u->lin + 4, 1, &u->ws, u->out, NULL, 0, 0, 0);
    for (size_t i = 0; i < n * H; i++) u->out[i] = u->h1[i] + u->out[i];
}

// Back-propagates u->grad (dLoss/dout of the last forward's n rows) to every Linear's weight and
// applies it (lin_apply: the SignSGD step, or keeping it).
static void blk_backward(blk_unit *u, size_t n, float lr, float mlr, int minmax) {
    const fb_ar_block *b = u->b;
    const fb_model_config *c = u->c;
    size_t H = u->H, Dq = u->Dq, Dk = u->Dk, hd = u->hd, E = u->E, K = u->K, L = u->seq;
    // the experts, and the gradient of their input and of the routing weights
    memset(u->dxn2, 0, n * H * sizeof(float));
    memset(u->dr, 0, n * E * sizeof(float));
    u->ws.dx = u->dxn2;
    u->ws.dr = u->dr;
    moe_pass(u->xn2, u->route, u->ident, n, u->lin + 4, 1, &u->ws, NULL, u->grad, lr, mlr, minmax);
    u->ws.dx = u->ws.dr = NULL;
    // the router: routing weights -> logits (the top-k choice passes nothing), into lg
    for (size_t t = 0; t < n; t++) {
        float *lg = u->lg + t * E, *dr = u->dr + t * E;
        const int32_t *ix = u->idx + t * K;
        if (c->router == FB_ROUTER_SOFTMAX) {
            float *p = u->scr;
            memcpy(p, lg, E * sizeof(float));
            fb_mm_softmax(p, E);
            float P = 0, dot = 0;
            for (size_t j = 0; j < K; j++) P += p[ix[j]];
            for (size_t j = 0; j < K; j++) dot += dr[ix[j]] * (p[ix[j]] / P);
            float *dp = u->wt;  // K values
            for (size_t j = 0; j < K; j++) dp[j] = c->norm_topk_prob ? (dr[ix[j]] - dot) / P : dr[ix[j]];
            float pd = 0;
            for (size_t j = 0; j < K; j++) pd += dp[j] * p[ix[j]];
            for (size_t e = 0; e < E; e++) lg[e] = -p[e] * pd;
            for (size_t j = 0; j < K; j++) lg[ix[j]] += p[ix[j]] * dp[j];
        } else {
            float *sg = u->wt, S = 0, dot = 0;
            for (size_t j = 0; j < K; j++) {
                sg[j] = 1.0f / (1.0f + expf(-lg[ix[j]]));
                S += sg[j];
            }
            for (size_t j = 0; j < K; j++) dot += dr[ix[j]] * (sg[j] / S);
            memset(lg, 0, E * sizeof(float));
            for (size_t j = 0; j < K; j++) lg[ix[j]] = (dr[ix[j]] - dot) / S * (sg[j] * (1.0f - sg[j]));
        }
    }
    nn(u->lg, E, b->router, H, u->dxn2, H, n, H, E, 1.0f);
    // the post-attention norm and the residual
    memcpy(u->dh1, u->grad, n * H * sizeof(float));
    rms_bwd(u->h1, b->ln2, u->r2, u->dxn2, n, H, u->dh1, 1);
    // o_proj
    arlin *lo = &u->lin[3];
    if (lin_wants_grad(lo)) {
        tn(u->dh1, H, u->AO, Dq, lo->gw, Dq, H, Dq, n, 0.0f);
        lin_apply(lo, lr, mlr, minmax);
    }
    nn(u->dh1, H, lo->wq, Dq, u->dAO, Dq, n, Dq, H, 0.0f);
    // attention, per sample and head (probabilities recomputed)
    memset(u->dK, 0, n * Dk * sizeof(float));
    memset(u->dV, 0, n * Dk * sizeof(float));
    size_t grp = u->nh / u->nkv;
    for (size_t s = 0; s < n / L; s++)
        for (size_t h = 0; h < u->nh; h++) {
            size_t g = h / grp, r0 = s * L;
            const float *Qh = u->Qr + r0 * Dq + h * hd, *Kh = u->Kr + r0 * Dk + g * hd;
            const float *dO = u->dAO + r0 * Dq + h * hd;
            blk_probs(u, Qh, Kh);
            nt(dO, Dq, u->V + r0 * Dk + g * hd, Dk, u->dP, L, L, L, hd, 0.0f);
            tn(u->S, L, dO, Dq, u->dV + r0 * Dk + g * hd, Dk, L, hd, L, 1.0f);
            for (size_t r = 0; r < L; r++) {
                float *p = u->S + r * L, *dp = u->dP + r * L, dot = 0;
                for (size_t k = 0; k <= r; k++) dot += p[k] * dp[k];
                for (size_t k = 0; k <= r; k++) dp[k] = p[k] * (dp[k] - dot) * u->scale;
                for (size_t k = r + 1; k < L; k++) dp[k] = 0.0f;
            }
            nn(u->dP, L, Kh, Dk, u->dQ + r0 * Dq + h * hd, Dq, L, hd, L, 0.0f);
            tn(u->dP, L, Qh, Dq, u->dK + r0 * Dk + g * hd, Dk, L, hd, L, 1.0f);
        }
    for (size_t t = 0; t < n; t++) {
        rope_back(u->dQ + t * Dq, (int)u->nh, (int)hd, c->rotary_dim, u->inv_freq, (int64_t)(t % L));
        rope_back(u->dK + t * Dk, (int)u->nkv, (int)hd, c->rotary_dim, u->inv_freq, (int64_t)(t % L));
    }
    if (c->qk_norm == FB_QKN_ALL_HEADS) {
        rms_bwd(u->Q, b->q_norm, u->rq, u->dQ, n, Dq, u->dQ, 0);
        rms_bwd(u->Kp, b->k_norm, u->rk, u->dK, n, Dk, u->dK, 0);
    } else if (c->qk_norm == FB_QKN_PER_HEAD) {
        rms_bwd(u->Q, b->q_norm, u->rq, u->dQ, n * u->nh, hd, u->dQ, 0);
        rms_bwd(u->Kp, b->k_norm, u->rk, u->dK, n * u->nkv, hd, u->dK, 0);
    }
    const float *dY[3] = {u->dQ, u->dK, u->dV};
    size_t R[3] = {Dq, Dk, Dk};
    for (int j = 0; j < 3; j++) {
        arlin *a = &u->lin[j];
        if (!lin_wants_grad(a)) continue;
        tn(dY[j], R[j], u->xn1, H, a->gw, H, R[j], H, n, 0.0f);
        lin_apply(a, lr, mlr, minmax);
    }
}

static double blk_fwd_b(void *ctx, const size_t *tok, size_t n) {
    blk_unit *u = ctx;
    size_t H = u->H;
    blk_forward(u, tok, n);
    for (size_t t = 0; t < n; t++) memcpy(u->tb + t * H, u->target + tok[t] * H, H * sizeof(float));
    double loss = (double)(float)mse(u->out, u->tb, n * H);
    const float k = 2000.0f / (float)(n * H);
    for (size_t i = 0; i < n * H; i++) u->grad[i] = (u->out[i] - u->tb[i]) * k;
    return loss;
}

static void blk_bwd_b(void *ctx, const size_t *tok, size_t n, float lr, float mlr, int minmax) {
    (void)tok;
    blk_backward(ctx, n, lr, mlr, minmax);
}

static double blk_full(void *ctx) {
    blk_unit *u = ctx;
    double s = 0;
    for (size_t t0 = 0; t0 < u->N; t0 += u->cap) {
        size_t n = u->N - t0 < u->cap ? u->N - t0 : u->cap;
        blk_forward(u, u->all + t0, n);
        s += mse(u->out, u->target + t0 * u->H, n * u->H) * (double)(n * u->H);
    }
    return s / (double)(u->N * u->H);
}

static int finite_or_fail(const float *p, size_t n, const char *what, fb_err *err) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(p[i])) return fb_fail(err, "AutoRound block: %s element %zu is %g", what, i, (double)p[i]);
    return 0;
}

// Checks the block's shapes and values; sets u's sizes.
static int blk_check(blk_unit *u, const fb_ar_block *b, const float *x, const float *target, size_t nsamples,
                     size_t seq, size_t bs, fb_err *err) {
    const fb_model_config *c = b->cfg;
    memset(u, 0, sizeof *u);
    u->b = b, u->c = c, u->x = x, u->target = target, u->seq = seq;
    if (!c || c->hidden <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads || c->head_dim <= 0 ||
        c->rotary_dim < 0 || c->rotary_dim > c->head_dim || c->rotary_dim % 2 || c->n_experts <= 0 || c->top_k <= 0 ||
        c->top_k > c->n_experts || c->top_k > 64 || c->inter <= 0)
        return fb_fail(err, "AutoRound block: the model configuration is not one this loop can run");
    u->H = (size_t)c->hidden, u->nh = (size_t)c->n_heads, u->nkv = (size_t)c->n_kv_heads, u->hd = (size_t)c->head_dim;
    u->Dq = u->nh * u->hd, u->Dk = u->nkv * u->hd, u->E = (size_t)c->n_experts, u->K = (size_t)c->top_k;
    u->N = nsamples * seq, u->cap = bs * seq, u->eps = (float)c->eps;
    u->scale = (float)pow((double)u->hd, -0.5);
    size_t H = u->H, FF = (size_t)c->inter, big = u->Dq > H ? u->Dq : H;
    if (big < FF) big = FF;
    if (big < u->E) big = u->E;
    if (!u->N || big > INT_MAX / 2 || u->cap > INT_MAX / big || seq > 46340)
        return fb_fail(err, "AutoRound block: %zu samples x %zu tokens (batch %zu) with widths up to %zu are out of range",
                       nsamples, seq, bs, big);
    size_t rows[4] = {u->Dq, u->Dk, u->Dk, H}, cols[4] = {H, H, H, u->Dq};
    static const char *const nm[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    for (int j = 0; j < 4; j++) {
        const fb_ar_linear *l = b->attn[j];
        if (!l || l->rows != rows[j] || l->cols != cols[j] || (b->attn_tuned[j] && l->cols % G))
            return fb_fail(err, "AutoRound block: %s is [%zu, %zu], expected [%zu, %zu]", nm[j], l ? l->rows : 0,
                           l ? l->cols : 0, rows[j], cols[j]);
        if (check_finite(l->w, l->rows, l->cols, NULL, err)) return fb_fail(err, "%s: %s", nm[j], err->msg);
    }
    for (size_t e = 0; e < u->E; e++) {
        const fb_ar_expert *p = &b->experts[e];
        if (p->gate.rows != FF || p->gate.cols != H || p->up.rows != FF || p->up.cols != H || p->down.rows != H ||
            p->down.cols != FF || (b->experts_tuned && FF % G))
            return fb_fail(err, "AutoRound block: expert %zu: gate [%zu, %zu], up [%zu, %zu], down [%zu, %zu] for hidden "
                                "%zu, intermediate %zu", e, p->gate.rows, p->gate.cols, p->up.rows, p->up.cols,
                           p->down.rows, p->down.cols, H, FF);
        const fb_ar_linear *ls[3] = {&p->gate, &p->up, &p->down};
        for (int j = 0; j < 3; j++)
            if (check_finite(ls[j]->w, ls[j]->rows, ls[j]->cols, NULL, err))
                return fb_fail(err, "expert %zu %s: %s", e, j == 0 ? "gate" : j == 1 ? "up" : "down", err->msg);
    }
    size_t qn = c->qk_norm == FB_QKN_ALL_HEADS ? u->Dq : u->hd, kn = c->qk_norm == FB_QKN_ALL_HEADS ? u->Dk : u->hd;
    if (!b->ln1 || !b->ln2 || !b->router || (c->qk_norm != FB_QKN_NONE && (!b->q_norm || !b->k_norm)))
        return fb_fail(err, "AutoRound block: a norm or the router weight is missing");
    if (finite_or_fail(b->ln1, H, "input_layernorm", err) || finite_or_fail(b->ln2, H, "post_attention_layernorm", err) ||
        finite_or_fail(b->router, u->E * H, "router", err) ||
        (b->router_bias && finite_or_fail(b->router_bias, u->E, "router bias", err)) ||
        (c->qk_norm != FB_QKN_NONE &&
         (finite_or_fail(b->q_norm, qn, "q_norm", err) || finite_or_fail(b->k_norm, kn, "k_norm", err))) ||
        finite_or_fail(x, u->N * H, "input", err) || finite_or_fail(target, u->N * H, "target", err))
        return -1;
    return 0;
}

static void *fa(size_t n) { return fb_aligned_alloc(n * sizeof(float) + 64); }

// Allocates the activations and the arlins' shells; lin[j].{L, R, C, w0} set, the rest the caller's.
static void blk_alloc(blk_unit *u) {
    size_t cap = u->cap, H = u->H, Dq = u->Dq, Dk = u->Dk, E = u->E, FF = (size_t)u->c->inter, L = u->seq;
    size_t HI = H > FF ? H : FF, nr = u->c->qk_norm == FB_QKN_PER_HEAD ? cap * u->nh : cap;
    u->inv_freq = fa((size_t)u->c->rotary_dim / 2 + 1);
    fb_mm_rope_inv_freq(u->c->rope_theta, u->c->rotary_dim, u->inv_freq);
    u->xb = fa(cap * H), u->xn1 = fa(cap * H), u->r1 = fa(cap), u->Q = fa(cap * Dq), u->Kp = fa(cap * Dk);
    u->V = fa(cap * Dk), u->Qr = fa(cap * Dq), u->Kr = fa(cap * Dk), u->rq = fa(nr), u->rk = fa(nr);
    u->AO = fa(cap * Dq), u->h1 = fa(cap * H), u->xn2 = fa(cap * H), u->r2 = fa(cap), u->lg = fa(cap * E);
    u->route = fa(cap * E), u->out = fa(cap * H), u->tb = fa(cap * H), u->grad = fa(cap * H);
    u->idx = fb_malloc(cap * u->K * sizeof(int32_t));
    u->dxn2 = fa(cap * H), u->dh1 = fa(cap * H), u->dAO = fa(cap * Dq), u->dQ = fa(cap * Dq), u->dK = fa(cap * Dk);
    u->dV = fa(cap * Dk), u->S = fa(L * L), u->dP = fa(L * L), u->dr = fa(cap * E), u->scr = fa(E), u->wt = fa(64);
    u->ident = fb_malloc(cap * sizeof(size_t));
    for (size_t i = 0; i < cap; i++) u->ident[i] = i;
    u->all = fb_malloc(u->N * sizeof(size_t));
    for (size_t i = 0; i < u->N; i++) u->all[i] = i;
    u->ws = (moe_ws){.H = H, .FF = FF, .E = E, .cap = cap};
    u->ws.xe = fa(cap * H), u->ws.re = fa(cap), u->ws.A = fa(cap * FF), u->ws.Bm = fa(cap * FF);
    u->ws.Hh = fa(cap * FF), u->ws.Y = fa(cap * HI), u->ws.dY = fa(cap * H);
    u->ws.pos = fb_malloc(cap * sizeof(size_t));
    u->lin = fb_calloc(4 + 3 * E, sizeof(arlin));
}

static void blk_free(blk_unit *u) {
    float *f[] = {u->inv_freq, u->xb, u->xn1, u->r1, u->Q, u->Kp, u->V, u->Qr, u->Kr, u->rq, u->rk, u->AO, u->h1,
                  u->xn2, u->r2, u->lg, u->route, u->out, u->tb, u->grad, u->dxn2, u->dh1, u->dAO, u->dQ, u->dK,
                  u->dV, u->S, u->dP, u->dr, u->scr, u->wt, u->ws.xe, u->ws.re, u->ws.A, u->ws.Bm, u->ws.Hh, u->ws.Y,
                  u->ws.dY};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) free(f[i]);
    free(u->idx); free(u->ident); free(u->all); free(u->ws.pos); free(u->lin);
}

// The block's Linears in order: q, k, v, o, then each expert's gate, up, down.
static fb_ar_linear *blk_linear(const fb_ar_block *b, size_t j) {
    if (j < 4) return b->attn[j];
    fb_ar_expert *p = &b->experts[(j - 4) / 3];
    return (j - 4) % 3 == 0 ? &p->gate : (j - 4) % 3 == 1 ? &p->up : &p->down;
}

static size_t blk_max_linear(const blk_unit *u) {
    size_t m = 0;
    for (size_t j = 0; j < 4 + 3 * u->E; j++) {
        const fb_ar_linear *l = blk_linear(u->b, j);
        if (l->rows * l->cols > m) m = l->rows * l->cols;
    }
    return m;
}

int fb_autoround_tune_block(const float *x, const float *target, size_t nsamples, size_t seq, fb_ar_block *b,
                            const fb_ar_opts *o, fb_ar_result *res, fb_err *err) {
    memset(res, 0, sizeof *res);
    if (o->iters < 1) return fb_fail(err, "AutoRound block: %d iterations", o->iters);
    if (o->gemm != FB_AR_GEMM_F32)
        return fb_fail(err, "AutoRound block: the CPU computes in f32 only (tf32 and bf16 GEMMs are the CUDA tuner's)");
    size_t bs = o->batch_size ? o->batch_size : 8;
    if (bs > nsamples) bs = nsamples;
    blk_unit u;
    if (blk_check(&u, b, x, target, nsamples, seq, bs, err)) return -1;
    blk_alloc(&u);
    size_t nl = 4 + 3 * u.E;
    float *gw = fa(blk_max_linear(&u));
    for (size_t j = 0; j < nl; j++) {
        fb_ar_linear *l = blk_linear(b, j);
        int tuned = j < 4 ? b->attn_tuned[j] : b->experts_tuned;
        arlin *a = &u.lin[j];
        if (tuned) lin_init(a, l, gw);
        else {  // read as it is: its FP weight is both w0 and wq
            a->L = l, a->R = l->rows, a->C = l->cols, a->w0 = l->w, a->wq = l->w, a->gw = gw, a->fixed = 1;
        }
    }
    sr_unit su = {.lin = u.lin, .nlin = nl, .ctx = &u, .fwd = blk_fwd_b, .bwd = blk_bwd_b, .full = blk_full};
    int rc = signround(&su, nsamples, seq, o, res);
    for (size_t j = 0; j < nl; j++) {
        arlin *a = &u.lin[j];
        if (a->fixed) continue;
        if (!rc) memcpy(a->L->w, a->wq, a->R * a->C * sizeof(float));
        lin_free(a);
    }
    free(gw);
    blk_free(&u);
    if (rc) fb_fail(err, "AutoRound: interrupted");
    return rc;
}

int fb_autoround_block_grad(const float *x, const float *target, size_t nsamples, size_t seq, const fb_ar_block *b,
                            double *loss, float **grads, fb_err *err) {
    blk_unit u;
    if (blk_check(&u, b, x, target, nsamples, seq, nsamples, err)) return -1;
    blk_alloc(&u);
    size_t nl = 4 + 3 * u.E;
    float *gw = fa(blk_max_linear(&u));
    for (size_t j = 0; j < nl; j++) {
        fb_ar_linear *l = blk_linear(b, j);
        arlin *a = &u.lin[j];
        a->L = l, a->R = l->rows, a->C = l->cols, a->w0 = l->w, a->wq = l->w, a->gw = gw;
        a->fixed = 1, a->gsave = grads ? grads[j] : NULL;
    }
    blk_forward(&u, u.all, u.N);
    double s = mse(u.out, target, u.N * u.H);
    *loss = 1000.0 * s;
    const float k = 2000.0f / (float)(u.N * u.H);
    for (size_t i = 0; i < u.N * u.H; i++) u.grad[i] = (u.out[i] - target[i]) * k;
    blk_backward(&u, u.N, 0, 0, 0);
    free(gw);
    blk_free(&u);
    return 0;
}
