// cutune_stub.c: cuda/cutune.h in a build without CUDA (no nvcc, or CUDA=0): every entry fails
// saying so, as the CUDA engine's stub does (cuda/cuengine.c). With CUDA, cutune.cu has them.
#include "cuda/cutune.h"

#include <string.h>

#ifndef FB_HAVE_CUDA

static const char NOT_BUILT[] = "this build has no CUDA support (built without nvcc, or CUDA=0)";

int fb_cuda_autoround_tune_block(const float *x, const float *target, size_t nsamples, size_t seq, fb_ar_block *b,
                                 const fb_ar_opts *o, fb_ar_result *res, fb_err *err) {
    (void)x, (void)target, (void)nsamples, (void)seq, (void)b, (void)o;
    memset(res, 0, sizeof *res);
    return fb_fail(err, "AutoRound --device cuda: %s", NOT_BUILT);
}

int fb_cuda_autoround_block_grad(const float *x, const float *target, size_t nsamples, size_t seq,
                                 const fb_ar_block *b, double *loss, float **grads, fb_err *err) {
    (void)x, (void)target, (void)nsamples, (void)seq, (void)b, (void)grads;
    *loss = 0;
    return fb_fail(err, "AutoRound --device cuda: %s", NOT_BUILT);
}

void fb_cuda_autoround_last_info(fb_cutune_info *info) { memset(info, 0, sizeof *info); }

size_t fb_cuda_autoround_block_bytes(const fb_model_config *cfg, size_t nsamples, size_t seq, size_t batch_size,
                                     const int attn_tuned[4], int experts_tuned) {
    (void)cfg, (void)nsamples, (void)seq, (void)batch_size, (void)attn_tuned, (void)experts_tuned;
    return 0;
}

#endif
