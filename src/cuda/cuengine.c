// cuengine.c: the CUDA engine behind the engine interface (see cuengine.h).
#include "cuda/cuengine.h"

#include <string.h>

#ifdef FB_HAVE_CUDA
#include "common/cancel.h"
#include "cuda/cufwd.h"

static int cu_set_tokens(fb_engine *e, const int32_t *ids, size_t n, const size_t *starts,
                         size_t nseq, fb_err *err) {
    return fb_cufwd_set_tokens(e->impl, ids, n, starts, nseq, err);
}
static int cu_layer(fb_engine *e, int l, fb_err *err) { return fb_cufwd_layer(e->impl, l, err); }
static int cu_set_hidden(fb_engine *e, int l, const float *h, fb_err *err) {
    return fb_cufwd_set_hidden(e->impl, l, h, err);
}
static const float *cu_hidden(fb_engine *e, fb_err *err) {
    if (!e->hbuf) e->hbuf = fb_aligned_alloc(e->ntok * e->hidden * sizeof(float) + 64);
    return fb_cufwd_hidden(e->impl, e->hbuf, err) ? NULL : e->hbuf;
}
static int cu_logits(fb_engine *e, size_t t0, size_t n, float *out, fb_err *err) {
    return fb_cufwd_logits(e->impl, t0, n, out, err);
}
static const int32_t *cu_route_idx(fb_engine *e) { (void)e; return NULL; }
static const float *cu_route_w(fb_engine *e) { (void)e; return NULL; }
static size_t cu_emulated(fb_engine *e) { return fb_cufwd_get_timing(e->impl)->n_emulated; }
static void cu_timing(fb_engine *e, fb_engine_timing *t) {
    const fb_cufwd_timing *ct = fb_cufwd_get_timing(e->impl);
    t->load_s = ct->load_s;
    double gs = ct->attn_s + ct->expert_s;
    t->gemm_gflops = gs > 0 ? ct->gemm_flops / gs / 1e9 : 0;  // all GEMMs on the device
}
static void cu_free(fb_engine *e) { fb_cufwd_free(e->impl); }

static const fb_engine_ops CUDA_OPS = {
    .name = "cuda",
    .set_tokens = cu_set_tokens,
    .layer = cu_layer,
    .set_hidden = cu_set_hidden,
    .hidden = cu_hidden,
    .logits = cu_logits,
    .route_idx = cu_route_idx,
    .route_w = cu_route_w,
    .emulated = cu_emulated,
    .timing = cu_timing,
    .free = cu_free,
};

int fb_engine_cuda_available(char *name, size_t name_sz, char *why, size_t why_sz) {
    return fb_cuda_probe(name, name_sz, why, why_sz);
}

fb_engine *fb_engine_cuda_new(fb_wsrc *src, const fb_model_config *cfg, const fb_engine_opts *o,
                              fb_err *err) {
    if (o && o->bf16) {  // the device engine's bf16 mode rounds GEMM inputs only
        fb_fail(err, "--device cuda: bf16 activation emulation (--precision bf16) runs on the CPU engine only");
        return NULL;
    }
    fb_engine *e = fb_calloc(1, sizeof *e);
    e->ops = &CUDA_OPS;
    e->kind = FB_ENGINE_CUDA;
    if (o) e->o = *o;
    e->hidden = (size_t)cfg->hidden;
    fb_cufwd_opts co = {.gemm_f32 = e->o.gemm_f32, .all_experts = e->o.all_experts,
                        .expert_group = e->o.expert_group, .token_chunk = e->o.token_chunk,
                        .host_threads = e->o.threads, .act_gs = e->o.act_gs,
                        .act_user = e->o.act_user, .stats = e->o.stats, .hooks = e->o.hooks,
                        .cancelled = fb_cancelled};
    e->impl = fb_cufwd_new(src, cfg, &co, err);
    if (!e->impl) {
        free(e);
        return NULL;
    }
    return e;
}

#else  // built without CUDA

static const char NOT_BUILT[] = "this build has no CUDA support (built without nvcc, or CUDA=0)";

int fb_engine_cuda_available(char *name, size_t name_sz, char *why, size_t why_sz) {
    if (name_sz) name[0] = 0;
    snprintf(why, why_sz, "%s", NOT_BUILT);
    return 0;
}

fb_engine *fb_engine_cuda_new(fb_wsrc *src, const fb_model_config *cfg, const fb_engine_opts *o,
                              fb_err *err) {
    (void)src, (void)cfg, (void)o;
    fb_fail(err, "--device cuda: %s", NOT_BUILT);
    return NULL;
}

#endif
