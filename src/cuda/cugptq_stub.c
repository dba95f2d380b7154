// cugptq_stub.c: cuda/cugptq.h in a build without CUDA (no nvcc, or CUDA=0): every entry fails
// saying so, as cutune_stub.c does. With CUDA, cugptq.cu has them.
#include "cuda/cugptq.h"

#include <string.h>

#ifndef FB_HAVE_CUDA

static const char NOT_BUILT[] = "this build has no CUDA support (built without nvcc, or CUDA=0)";

int fb_cuda_gptq_quantize(float *W, size_t R, size_t C, float *H, const float *scales, const fb_gptq_opts *o,
                          fb_gptq_result *res, fb_err *err) {
    (void)W, (void)R, (void)C, (void)H, (void)scales, (void)o;
    memset(res, 0, sizeof *res);
    return fb_fail(err, "GPTQ --device cuda: %s", NOT_BUILT);
}

int fb_cuda_gptq_factorize(const float *H, size_t C, const fb_gptq_opts *o, fb_cuda_gptq_factor **out, fb_err *err) {
    (void)H, (void)C, (void)o;
    *out = NULL;
    return fb_fail(err, "GPTQ --device cuda: %s", NOT_BUILT);
}

int fb_cuda_gptq_quantize_factored(float *W, size_t R, size_t C, const fb_cuda_gptq_factor *f, const float *scales,
                                   const fb_gptq_opts *o, fb_gptq_result *res, fb_err *err) {
    (void)W, (void)R, (void)C, (void)f, (void)scales, (void)o;
    memset(res, 0, sizeof *res);
    return fb_fail(err, "GPTQ --device cuda: %s", NOT_BUILT);
}

// No factor can exist without CUDA: fb_cuda_gptq_factorize never makes one.
int fb_cuda_gptq_factor_rtn_fallback(const fb_cuda_gptq_factor *f) { (void)f; return 0; }
size_t fb_cuda_gptq_factor_dead_columns(const fb_cuda_gptq_factor *f) { (void)f; return 0; }
void fb_cuda_gptq_factor_free(fb_cuda_gptq_factor *f) { (void)f; }

int fb_cuda_gptq_hessian_add(float *dH, size_t C, const float *dx, size_t rows, fb_err *err) {
    (void)dH, (void)C, (void)dx, (void)rows;
    return fb_fail(err, "GPTQ --device cuda: %s", NOT_BUILT);
}

void fb_cuda_gptq_last_info(fb_cugptq_info *info) { memset(info, 0, sizeof *info); }

#endif
