// engine.c: the engine interface's dispatch and the CPU engine behind it (see engine.h).
#include "calib/engine.h"

#include <stdatomic.h>
#include <string.h>

#include "quant/nvfp4.h"

int fb_engine_set_tokens(fb_engine *e, const int32_t *ids, size_t n_tok, const size_t *starts,
                         size_t n_seq, fb_err *err) {
    double t0 = fb_now();
    e->ntok = n_tok;
    int rc = e->ops->set_tokens(e, ids, n_tok, starts, n_seq, err);
    e->secs += fb_now() - t0;
    return rc;
}

int fb_engine_layer(fb_engine *e, int layer, fb_err *err) {
    double t0 = fb_now();
    int rc = e->ops->layer(e, layer, err);
    e->secs += fb_now() - t0;
    return rc;
}

const float *fb_engine_hidden(fb_engine *e, fb_err *err) { return e->ops->hidden(e, err); }
int fb_engine_set_hidden(fb_engine *e, int layer, const float *h, fb_err *err) {
    return e->ops->set_hidden(e, layer, h, err);
}

int fb_engine_logits(fb_engine *e, size_t t0, size_t n, float *out, fb_err *err) {
    double ts = fb_now();
    int rc = e->ops->logits(e, t0, n, out, err);
    e->secs += fb_now() - ts;
    return rc;
}

const int32_t *fb_engine_route_idx(fb_engine *e) { return e->ops->route_idx(e); }
const float *fb_engine_route_w(fb_engine *e) { return e->ops->route_w(e); }
size_t fb_engine_emulated(fb_engine *e) { return e->ops->emulated(e); }
fb_engine_timing fb_engine_get_timing(fb_engine *e) {
    fb_engine_timing t = {0};
    e->ops->timing(e, &t);
    return t;
}

void fb_engine_free(fb_engine *e) {
    if (!e) return;
    e->ops->free(e);
    free(e->hbuf);
    free(e);
}

// ---- the CPU engine ---------------------------------------------------------------------------

static int cpu_set_tokens(fb_engine *e, const int32_t *ids, size_t n, const size_t *starts,
                          size_t nseq, fb_err *err) {
    return fb_fwd_set_tokens(e->impl, ids, n, starts, nseq, err);
}
static int cpu_layer(fb_engine *e, int l, fb_err *err) { return fb_fwd_layer(e->impl, l, err); }
static int cpu_set_hidden(fb_engine *e, int l, const float *h, fb_err *err) {
    return fb_fwd_set_hidden(e->impl, l, h, err);
}
static const float *cpu_hidden(fb_engine *e, fb_err *err) {
    (void)err;
    return fb_fwd_hidden(e->impl);
}
static int cpu_logits(fb_engine *e, size_t t0, size_t n, float *out, fb_err *err) {
    return fb_fwd_logits(e->impl, t0, n, out, err);
}
static const int32_t *cpu_route_idx(fb_engine *e) { return fb_fwd_route_idx(e->impl); }
static const float *cpu_route_w(fb_engine *e) { return fb_fwd_route_w(e->impl); }
static size_t cpu_emulated(fb_engine *e) { return atomic_load(&e->n_emulated); }
static void cpu_timing(fb_engine *e, fb_engine_timing *t) {
    const fb_fwd_timing *tm = fb_fwd_get_timing(e->impl);
    t->load_s = tm->load_s;
    t->gemm_gflops = tm->expert_s > 0 ? tm->expert_flops / tm->expert_s / 1e9 : 0;
}
static void cpu_free(fb_engine *e) { fb_fwd_free(e->impl); }

static const fb_engine_ops CPU_OPS = {
    .name = "cpu",
    .set_tokens = cpu_set_tokens,
    .layer = cpu_layer,
    .set_hidden = cpu_set_hidden,
    .hidden = cpu_hidden,
    .logits = cpu_logits,
    .route_idx = cpu_route_idx,
    .route_w = cpu_route_w,
    .emulated = cpu_emulated,
    .timing = cpu_timing,
    .free = cpu_free,
};

// act_gs on the CPU: fake-quantize the input as vLLM's W4A4 path does, then the caller's hook.
static int cpu_act_input(void *u, fb_role role, int layer, int expert, float *x, size_t rows,
                         size_t cols, fb_err *err) {
    fb_engine *e = u;
    float gs = e->o.act_gs(e->o.act_user, role, layer, expert);
    if (gs > 0) {
        if (cols % 16)
            return fb_fail(err, "W4A4 emulation: layer %d: input width %zu is not a multiple of 16",
                           layer, cols);
        fb_w4a4_fake_quant_rows(x, rows, cols, gs);
        atomic_fetch_add(&e->n_emulated, rows * (cols / 16));
    }
    const fb_fwd_hooks *h = e->o.hooks;
    return h && h->linear_input ? h->linear_input(h->user, role, layer, expert, x, rows, cols, err) : 0;
}

static int fwd_expert_input_all(void *u, fb_role r, int l, int e, size_t t0, const float *x,
                                size_t rows, size_t cols, fb_err *err) {
    const fb_fwd_hooks *h = ((fb_engine *)u)->o.hooks;
    return h->expert_input_all(h->user, r, l, e, t0, x, rows, cols, err);
}
static int fwd_expert_output(void *u, int l, int e, const int32_t *tok, const float *y,
                             size_t rows, size_t cols, fb_err *err) {
    const fb_fwd_hooks *h = ((fb_engine *)u)->o.hooks;
    return h->expert_output(h->user, l, e, tok, y, rows, cols, err);
}
static int fwd_layer_output(void *u, int l, const float *hs, size_t ntok, size_t hidden,
                            fb_err *err) {
    const fb_fwd_hooks *h = ((fb_engine *)u)->o.hooks;
    return h->layer_output(h->user, l, hs, ntok, hidden, err);
}

fb_engine *fb_engine_cpu_new(fb_wsrc *src, const fb_model_config *cfg, const fb_engine_opts *o,
                             fb_err *err) {
    fb_engine *e = fb_calloc(1, sizeof *e);
    e->ops = &CPU_OPS;
    e->kind = FB_ENGINE_CPU;
    if (o) e->o = *o;
    e->hidden = (size_t)cfg->hidden;
    const fb_fwd_hooks *hooks = e->o.hooks;
    if (e->o.act_gs) {
        // The emulation runs first, then the caller's hooks (forwarded through this engine).
        const fb_fwd_hooks *h = e->o.hooks;
        e->act_hooks = (fb_fwd_hooks){
            .user = e,
            .linear_input = cpu_act_input,
            .expert_input_all = h && h->expert_input_all ? fwd_expert_input_all : NULL,
            .expert_output = h && h->expert_output ? fwd_expert_output : NULL,
            .layer_output = h && h->layer_output ? fwd_layer_output : NULL,
        };
        hooks = &e->act_hooks;
    }
    fb_fwd_opts fo = {.threads = e->o.threads, .all_experts = e->o.all_experts,
                      .expert_group = e->o.expert_group, .token_chunk = e->o.token_chunk,
                      .bf16 = e->o.bf16, .stats = e->o.stats, .hooks = hooks, .progress = e->o.progress,
                      .progress_user = e->o.progress_user};
    e->impl = fb_fwd_new(src, cfg, &fo, err);
    if (!e->impl) {
        free(e);
        return NULL;
    }
    return e;
}
