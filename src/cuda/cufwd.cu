// cufwd.cu: placeholder while the device forward is written (see cufwd.h).
#include <cuda_runtime.h>
#include <stdio.h>
#include "cuda/cufwd.h"

extern "C" int fb_cuda_probe(char *name, size_t name_sz, char *why, size_t why_sz) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        snprintf(why, why_sz, "no CUDA device: %s", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return 0;
    }
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    snprintf(name, name_sz, "%s", p.name);
    return 1;
}
extern "C" fb_cufwd *fb_cufwd_new(fb_wsrc *, const fb_mm_config *, const fb_cufwd_opts *, fb_err *err) { fb_fail(err, "not yet"); return NULL; }
extern "C" void fb_cufwd_free(fb_cufwd *) {}
extern "C" int fb_cufwd_set_tokens(fb_cufwd *, const int32_t *, size_t, const size_t *, size_t, fb_err *err) { return fb_fail(err, "no"); }
extern "C" int fb_cufwd_layer(fb_cufwd *, int, fb_err *err) { return fb_fail(err, "no"); }
extern "C" int fb_cufwd_hidden(fb_cufwd *, float *, fb_err *err) { return fb_fail(err, "no"); }
extern "C" int fb_cufwd_logits(fb_cufwd *, size_t, size_t, float *, fb_err *err) { return fb_fail(err, "no"); }
static fb_cufwd_timing z;
extern "C" const fb_cufwd_timing *fb_cufwd_get_timing(const fb_cufwd *) { return &z; }
