// gptq.h: GPTQ for one Linear, as llm-compressor 0.14's GPTQModifier computes it
// (modifiers/gptq/gptq_quantize.py quantize_weight, helpers.py accumulate_hessian /
// factorize_hessian / apply_activation_ordering / column_scale_window).
//
//   Hessian:   H = (2 / n_samples) * sum over the calibration tokens of x x^T (f32), where n
//              counts samples (sequences), not tokens, as accumulate_hessian does; only the ratio
//              matters to GPTQ (the dampening is relative to the mean diagonal).
//   ordering:  actorder weight (= static, its alias in compressed-tensors 0.19): columns sorted
//              by descending diag(H); each column keeps the scale group of its original index.
//   factor:    dead columns (diag 0) get diag 1 and zero weights; diag += 0.01 * mean(diag);
//              L = chol(H); U = chol((L L^T)^-1, upper). A non-positive-definite H falls back
//              to U = I (round to nearest), reported, never NaN.
//   update:    in blocks of 128 columns, each column w is fake-quantized with the fixed scales
//              (the observer's, computed before GPTQ: fb_gptq_* takes them), err = (w - q) / U_ii,
//              the rest of the block gets err * U_i,i.., the columns after the block
//              err_block @ U_block,after; loss = sum err^2 / 2.
// Fake quantization with fixed scales, as compressed-tensors' fake_quantize on f32 columns:
//   INT4 (W4A16, symmetric, scale bf16): q = clamp(rint(w / s), -8, 7); value bf16(q * s)
//   NVFP4 (tensor_group): eff = s / global_scale (f32); q = E2M1(w / eff) (RNE, +-6); value q * eff
// The result is the fake-quantized weight (f32, original column order); packing it with the same
// scales gives the checkpoint (the quantizers' RTN path on these values).
#ifndef FB_CALIB_GPTQ_H
#define FB_CALIB_GPTQ_H

#include <stddef.h>

#include "common/fb.h"

typedef enum fb_gptq_qtype { FB_GPTQ_INT4 = 0, FB_GPTQ_NVFP4 } fb_gptq_qtype;

typedef struct fb_gptq_opts {
    fb_gptq_qtype qtype;
    size_t group;          // columns per scale (128 W4A16, 16 NVFP4)
    float global_scale;    // NVFP4 only
    int actorder;          // 0 none, 1 weight / static
    size_t blocksize;      // 0 = 128
    double percdamp;       // < 0 = 0.01
} fb_gptq_opts;

typedef struct fb_gptq_result {
    double loss;           // sum over rows of sum err^2 / 2
    int rtn_fallback;      // 1: H was not positive definite after dampening (plain RTN)
    size_t dead_columns;   // columns whose input was always zero
} fb_gptq_result;

// H += 2 * x^T x for `rows` input rows x (rows x C, f32): one call per calibration sample, then
// divide by the number of calls (fb_gptq_hessian_scale). H is C x C, row-major, f32.
void fb_gptq_hessian_add(float *H, size_t C, const float *x, size_t rows);
// H /= n (n > 0).
void fb_gptq_hessian_scale(float *H, size_t C, size_t n);

// GPTQ on W (R x C, f32, row-major, replaced by the fake-quantized weights) with the normalized
// Hessian H (C x C, f32, not modified) and the fixed scales (R x C/group, f32 values of the stored
// scales: bf16 for INT4, fp8 e4m3 for NVFP4). Fails only on invalid arguments. It is
// fb_gptq_factorize then fb_gptq_quantize_factored (below), byte for byte.
int fb_gptq_quantize(float *W, size_t R, size_t C, float *H, const float *scales,
                     const fb_gptq_opts *o, fb_gptq_result *res, fb_err *err);

// ---- one factorization, several Linears ---------------------------------------------------------
// Everything GPTQ derives from H alone (the "factor" step above: the act-order permutation, the
// dead columns, the dampening, L = chol(H), U = chol(H^-1) upper rounded to f32, the non-PD
// fallback decision) depends on H, o->actorder and o->percdamp only. Linears fed by the same
// input (q/k/v; every routed expert's w1 and w3 in all-experts calibration) share it: factorize
// once, quantize each weight with the factor. The result is byte-identical to fb_gptq_quantize.

// A factor (opaque): owned by the caller of fb_gptq_factorize, freed with fb_gptq_factor_free.
// Read-only once made: any number of threads may run fb_gptq_quantize_factored on one factor
// at the same time.
typedef struct fb_gptq_factor fb_gptq_factor;

// Factorizes the normalized Hessian H (C x C, f32, not modified) under o->actorder and
// o->percdamp (the other fields of o are not read). A Hessian that is not positive definite
// after dampening is not an error: the factor is the identity (plain RTN) and says so
// (fb_gptq_factor_rtn_fallback). *out is the new factor (C^2 floats plus O(C)), NULL on failure;
// fails only on invalid arguments (C 0, a dampening fraction that is not a finite number).
int fb_gptq_factorize(const float *H, size_t C, const fb_gptq_opts *o, fb_gptq_factor **out, fb_err *err);

// GPTQ of W (as fb_gptq_quantize) with a factor of its Hessian: the dead columns zeroed, the
// permutation, the block-wise update, the inverse permutation. res->rtn_fallback and
// res->dead_columns are the factor's. Refuses (W untouched) a factor of another width, one made
// with another actorder or percdamp than o's, and what fb_gptq_quantize refuses.
int fb_gptq_quantize_factored(float *W, size_t R, size_t C, const fb_gptq_factor *f, const float *scales,
                              const fb_gptq_opts *o, fb_gptq_result *res, fb_err *err);

// The factor's width C, its fallback flag (1: H was not positive definite, U = I) and its number
// of dead columns.
size_t fb_gptq_factor_cols(const fb_gptq_factor *f);
int fb_gptq_factor_rtn_fallback(const fb_gptq_factor *f);
size_t fb_gptq_factor_dead_columns(const fb_gptq_factor *f);

// Frees a factor (NULL: nothing).
void fb_gptq_factor_free(fb_gptq_factor *f);

// The argument checks both engines share (cuda/cugptq.cu calls them; messages name what is wrong):
// the resolved dampening fraction (0.01 when percdamp < 0); a Hessian's width and dampening; a
// weight's shape, group and NVFP4 global scale; and that plus a factor's fit (its width, act-order
// and dampening as made; have_factor 0: no factor).
double fb_gptq_damp(const fb_gptq_opts *o);
int fb_gptq_check_hessian(size_t C, const fb_gptq_opts *o, fb_err *err);
int fb_gptq_check_weight(size_t R, size_t C, const fb_gptq_opts *o, fb_err *err);
int fb_gptq_check_factored(size_t R, size_t C, size_t factor_cols, int factor_actorder, double factor_percdamp,
                           int have_factor, const fb_gptq_opts *o, fb_err *err);

#endif
