// gptq.c: GPTQ for one Linear, llm-compressor 0.14's numerics (see gptq.h). Scalar reference
// code in f32 where the reference computes in f32; the factorizations in f64 through LAPACK
// (OpenBLAS's dpotrf / dpotri: blocked, O(C^3) at BLAS speed; the former scalar loops took 243 s
// for one 3072-column Hessian, bench/bench_gptq.c).
#include "calib/gptq.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "quant/formats.h"
#include "quant/nvfp4.h"

void fb_gptq_hessian_add(float *H, size_t C, const float *x, size_t rows) {
    // accumulate_hessian: inp = sqrt(2) * x (f32), H += inp^T inp.
    float *s = fb_aligned_alloc(rows * C * sizeof(float) + 64);
    const float r2 = (float)sqrt(2.0);
    for (size_t i = 0; i < rows * C; i++) s[i] = r2 * x[i];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)C, (int)C, (int)rows, 1.0f, s, (int)C,
                s, (int)C, 1.0f, H, (int)C);
    free(s);
}

void fb_gptq_hessian_scale(float *H, size_t C, size_t n) {
    for (size_t i = 0; i < C * C; i++) H[i] = H[i] / (float)n;
}

// Fake-quantizes w with scale s (the column's effective scale). INT4: bf16 scale; NVFP4: eff.
static float fq(fb_gptq_qtype t, float w, float s) {
    if (t == FB_GPTQ_INT4) {
        float q = nearbyintf(w / s);  // torch.round: half to even
        q = q < -8.0f ? -8.0f : q > 7.0f ? 7.0f : q;
        return fb_bf16_to_f32(fb_f32_to_bf16(q * s));  // bf16 * bf16 in torch
    }
    return fb_nvfp4_fp4_value(fb_nvfp4_fp4_nibble(w / s)) * s;
}

// LAPACK (Fortran interface, column-major; OpenBLAS ships it).
extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
extern void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);

static int diag_ok(const double *a, size_t n) {
    for (size_t j = 0; j < n; j++)
        if (!(a[j * n + j] > 0) || !isfinite(a[j * n + j])) return 0;
    return 1;
}

// Hinv factor of factorize_hessian: U upper (row-major, n x n) with U^T U = H^-1, from H
// (row-major, symmetric, f64; destroyed). -1 when H (or its inverse) is not positive definite.
// A row-major symmetric matrix is its own column-major transpose, so:
//   dpotrf 'U' (column-major) = the lower Cholesky factor L of H, H = L L^T, row-major;
//   dpotri 'U' = H^-1 from it, one triangle (row-major lower; mirrored below);
//   dpotrf 'L' (column-major) of H^-1 = a factor whose row-major upper triangle is U.
static int hinv_upper(double *H, size_t n, double *U) {
    if (n > (size_t)INT32_MAX / 2) return -1;
    int ni = (int)n, info = 0;
    dpotrf_("U", &ni, H, &ni, &info);
    if (info != 0 || !diag_ok(H, n)) return -1;
    dpotri_("U", &ni, H, &ni, &info);
    if (info != 0) return -1;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j <= i; j++) U[i * n + j] = U[j * n + i] = H[i * n + j];
    dpotrf_("L", &ni, U, &ni, &info);
    if (info != 0 || !diag_ok(U, n)) return -1;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++) U[i * n + j] = 0;
    for (size_t i = 0; i < n * n; i++)
        if (!isfinite(U[i])) return -1;
    return 0;
}

typedef struct dsort { double v; size_t i; } dsort;
static int by_desc(const void *a, const void *b) {
    const dsort *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

struct fb_gptq_factor {
    size_t C;
    int actorder;          // the options it was made under (0 / 1)
    double percdamp;       // (the default resolved: 0.01 for < 0)
    size_t *perm;          // [C] permuted column j is original column perm[j]
    unsigned char *dead;   // [C] by permuted column: its input was always zero (weights zeroed)
    size_t n_dead;
    int rtn_fallback;      // 1: not positive definite after dampening, Uf = I
    float *Uf;             // [C x C] U rounded to f32, row-major upper (lower triangle zero)
};

double fb_gptq_damp(const fb_gptq_opts *o) { return o->percdamp < 0 ? 0.01 : o->percdamp; }
#define damp_frac fb_gptq_damp

int fb_gptq_check_hessian(size_t C, const fb_gptq_opts *o, fb_err *err) {
    if (!C) return fb_fail(err, "GPTQ: a Hessian of 0 columns");
    if (!isfinite(damp_frac(o)))
        return fb_fail(err, "GPTQ: dampening fraction %g is not a finite number", o->percdamp);
    return 0;
}

int fb_gptq_factorize(const float *H, size_t C, const fb_gptq_opts *o, fb_gptq_factor **out, fb_err *err) {
    *out = NULL;
    double pd = damp_frac(o);
    if (fb_gptq_check_hessian(C, o, err)) return -1;
    fb_gptq_factor *f = fb_calloc(1, sizeof *f);
    f->C = C;
    f->actorder = o->actorder != 0;
    f->percdamp = pd;
    // Activation ordering: columns by descending diag(H) (ties: lower index first).
    size_t *perm = f->perm = fb_malloc(C * sizeof(size_t));
    for (size_t j = 0; j < C; j++) perm[j] = j;
    if (f->actorder) {
        dsort *d = fb_malloc(C * sizeof(dsort));
        for (size_t j = 0; j < C; j++) d[j] = (dsort){H[j * C + j], j};
        qsort(d, C, sizeof *d, by_desc);
        for (size_t j = 0; j < C; j++) perm[j] = d[j].i;
        free(d);
    }
    double *Hd = fb_malloc(C * C * sizeof(double)), *U = fb_malloc(C * C * sizeof(double));
    for (size_t i = 0; i < C; i++)
        for (size_t j = 0; j < C; j++) Hd[i * C + j] = H[perm[i] * C + perm[j]];
    // factorize_hessian: dead columns, dampening (in f32, as the reference), Cholesky.
    f->dead = fb_calloc(C, 1);
    double mean = 0;
    for (size_t j = 0; j < C; j++) {
        if (Hd[j * C + j] == 0) {
            Hd[j * C + j] = 1;
            f->dead[j] = 1;
            f->n_dead++;
        }
        mean += (float)Hd[j * C + j];
    }
    float damp = (float)pd * (float)(mean / (double)C);
    for (size_t j = 0; j < C; j++) Hd[j * C + j] = (float)((float)Hd[j * C + j] + damp);
    if (hinv_upper(Hd, C, U)) {
        // Not positive definite: identity factor, i.e. plain RTN with the same scales.
        f->rtn_fallback = 1;
        memset(U, 0, C * C * sizeof(double));
        for (size_t j = 0; j < C; j++) U[j * C + j] = 1;
    }
    f->Uf = fb_aligned_alloc(C * C * sizeof(float) + 64);
    for (size_t i = 0; i < C * C; i++) f->Uf[i] = (float)U[i];
    free(Hd);
    free(U);
    *out = f;
    return 0;
}

size_t fb_gptq_factor_cols(const fb_gptq_factor *f) { return f->C; }
int fb_gptq_factor_rtn_fallback(const fb_gptq_factor *f) { return f->rtn_fallback; }
size_t fb_gptq_factor_dead_columns(const fb_gptq_factor *f) { return f->n_dead; }

void fb_gptq_factor_free(fb_gptq_factor *f) {
    if (!f) return;
    free(f->perm);
    free(f->dead);
    free(f->Uf);
    free(f);
}

// What fb_gptq_quantize and fb_gptq_quantize_factored refuse about W, its scales and o.
int fb_gptq_check_weight(size_t R, size_t C, const fb_gptq_opts *o, fb_err *err) {
    size_t G = o->group;
    if (!G || C % G || !R || !C)
        return fb_fail(err, "GPTQ: a [%zu, %zu] weight with group %zu", R, C, G);
    if (o->qtype == FB_GPTQ_NVFP4 && !(o->global_scale > 0))
        return fb_fail(err, "GPTQ: NVFP4 needs a positive global scale");
    return 0;
}

int fb_gptq_check_factored(size_t R, size_t C, size_t fC, int f_actorder, double f_percdamp, int have_factor,
                           const fb_gptq_opts *o, fb_err *err) {
    if (fb_gptq_check_weight(R, C, o, err)) return -1;
    if (!have_factor) return fb_fail(err, "GPTQ: no factor for a [%zu, %zu] weight", R, C);
    if (fC != C) return fb_fail(err, "GPTQ: a factor of a %zu-column Hessian for a [%zu, %zu] weight", fC, R, C);
    if (f_actorder != (o->actorder != 0) || !(f_percdamp == damp_frac(o)))
        return fb_fail(err, "GPTQ: a factor made with actorder %d, dampening %g used with actorder %d, dampening %g",
                       f_actorder, f_percdamp, o->actorder != 0, damp_frac(o));
    return 0;
}

int fb_gptq_quantize_factored(float *W, size_t R, size_t C, const fb_gptq_factor *f, const float *scales,
                              const fb_gptq_opts *o, fb_gptq_result *res, fb_err *err) {
    memset(res, 0, sizeof *res);
    if (fb_gptq_check_factored(R, C, f ? f->C : 0, f ? f->actorder : 0, f ? f->percdamp : 0, f != NULL, o, err))
        return -1;
    size_t G = o->group, B = o->blocksize ? o->blocksize : 128, NG = C / G;
    const size_t *perm = f->perm;
    const float *Uf = f->Uf;
    float *Wp = fb_aligned_alloc(R * C * sizeof(float) + 64);
    for (size_t r = 0; r < R; r++)
        for (size_t j = 0; j < C; j++) Wp[r * C + j] = f->dead[j] ? 0.0f : W[r * C + perm[j]];
    float *W1 = fb_aligned_alloc(R * B * sizeof(float) + 64), *E1 = fb_aligned_alloc(R * B * sizeof(float) + 64);
    double loss = 0;
    for (size_t i1 = 0; i1 < C; i1 += B) {
        size_t i2 = i1 + B < C ? i1 + B : C, bw = i2 - i1;
        for (size_t r = 0; r < R; r++) memcpy(W1 + r * bw, Wp + r * C + i1, bw * sizeof(float));
        for (size_t i = 0; i < bw; i++) {
            size_t col = i1 + i, g = perm[col] / G;
            float d = Uf[col * C + col];
            for (size_t r = 0; r < R; r++) {
                float s = scales[r * NG + g];
                if (o->qtype == FB_GPTQ_NVFP4) s = s / o->global_scale;
                float w = W1[r * bw + i];
                float q = fq(o->qtype, w, s);
                float e = (w - q) / d;
                Wp[r * C + col] = q;  // W[:, i1:i2] = Q1 after the block
                E1[r * bw + i] = e;
                loss += (double)(e * e) / 2;
                float *wr = W1 + r * bw;
                const float *u = Uf + col * C + i1;
                for (size_t k = i; k < bw; k++) wr[k] = wr[k] - e * u[k];
            }
        }
        if (i2 < C)  // W[:, i2:] -= Err1 @ U[i1:i2, i2:]
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)R, (int)(C - i2), (int)bw, -1.0f, E1,
                        (int)bw, Uf + i1 * C + i2, (int)C, 1.0f, Wp + i2, (int)C);
    }
    for (size_t r = 0; r < R; r++)
        for (size_t j = 0; j < C; j++) W[r * C + perm[j]] = Wp[r * C + j];
    res->loss = loss;
    res->rtn_fallback = f->rtn_fallback;
    res->dead_columns = f->n_dead;
    free(Wp); free(W1); free(E1);
    return 0;
}

int fb_gptq_quantize(float *W, size_t R, size_t C, float *H, const float *scales,
                     const fb_gptq_opts *o, fb_gptq_result *res, fb_err *err) {
    memset(res, 0, sizeof *res);
    if (fb_gptq_check_weight(R, C, o, err)) return -1;  // before the O(C^3) work, as before the split
    fb_gptq_factor *f;
    if (fb_gptq_factorize(H, C, o, &f, err)) return -1;
    int rc = fb_gptq_quantize_factored(W, R, C, f, scales, o, res, err);
    fb_gptq_factor_free(f);
    return rc;
}
