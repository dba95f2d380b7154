// tune.c: see tune.h.
#include "jobs/tune.h"

#include "jobs/tune_priv.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "common/cancel.h"
#include "common/pool.h"
#include "cuda/cugptq.h"
#include "quant/formats.h"
#include "quant/nvfp4.h"

// ---- the algorithms ----------------------------------------------------------------------------

static fb_gptq_opts gptq_opts(const fb_tune_opts *o, const fb_tune_linear *l, float g) {
    return (fb_gptq_opts){.qtype = l->nvfp4 ? FB_GPTQ_NVFP4 : FB_GPTQ_INT4, .group = l->group,
                          .global_scale = l->nvfp4 ? g : 0, .actorder = l->actorder,
                          .blocksize = (size_t)(o->block_size > 0 ? o->block_size : 128),
                          .percdamp = o->dampening_frac};
}

// The factor is calib/gptq.h's or, with gptq_cuda, cuda/cugptq.h's (device memory).
static int gptq_factorize(const fb_tune_opts *o, const fb_tune_linear *l, const float *H, void **factor,
                          fb_err *err) {
    fb_gptq_opts go = gptq_opts(o, l, 1.0f);
    int rc = o->gptq_cuda ? fb_cuda_gptq_factorize(H, (size_t)l->C, &go, (fb_cuda_gptq_factor **)factor, err)
                          : fb_gptq_factorize(H, (size_t)l->C, &go, (fb_gptq_factor **)factor, err);
    return rc ? fb_err_prefix(err, "%s: factorizing its Hessian", l->name) : 0;
}

static void gptq_factor_free(const fb_tune_opts *o, void *factor) {
    if (o->gptq_cuda) fb_cuda_gptq_factor_free(factor);
    else fb_gptq_factor_free(factor);
}

static int gptq_linear(const fb_tune_opts *o, const fb_tune_linear *l, float *W, const void *factor,
                       const float *scales, float g, fb_tune_stat *st, fb_err *err) {
    fb_gptq_opts go = gptq_opts(o, l, g);
    fb_gptq_result r;
    size_t R = (size_t)l->R, C = (size_t)l->C;
    if (o->gptq_cuda ? fb_cuda_gptq_quantize_factored(W, R, C, factor, scales, &go, &r, err)
                     : fb_gptq_quantize_factored(W, R, C, factor, scales, &go, &r, err))
        return fb_err_prefix(err, "%s", l->name);
    st->loss = r.loss;
    st->rtn_fallback = r.rtn_fallback;
    st->dead_columns = r.dead_columns;
    return 0;
}

static const fb_tune_algo ALGOS[FB_TUNE_COUNT] = {
    [FB_TUNE_GPTQ] = {.name = "GPTQ", .hessians = 1, .factorize = gptq_factorize, .factor_free = gptq_factor_free,
                      .linear = gptq_linear},
    [FB_TUNE_AUTOROUND] = {.name = "AutoRound", .block = 1},
};

const fb_tune_algo *fb_tune_algo_get(fb_tune_algo_id id) { return id < FB_TUNE_COUNT ? &ALGOS[id] : NULL; }

// ---- observer scales and global scales ---------------------------------------------------------

void fb_tune_observer_scales(const fb_tune_linear *l, const float *W, float g, float *scales) {
    const fb_qfmt *qf = l->qf;
    void *out[FB_QFMT_MAX_OUT] = {0};
    for (int k = 0; k < qf->n_out; k++) {
        uint64_t nb = fb_qfmt_out_bytes(qf, k, l->R, l->C, (int64_t)l->group, 0);
        out[k] = nb ? fb_malloc(nb) : NULL;
    }
    qf->quantize_rows(W, (size_t)l->R, (size_t)l->R, (size_t)l->C, l->group, 0, g, out);
    fb_to_f32(qf->out[1].dtype, out[1], scales, (size_t)l->R * ((size_t)l->C / l->group));
    for (int k = 0; k < qf->n_out; k++) free(out[k]);
}

int fb_tune_load_weight(fb_wsrc *s, const char *name, int64_t R, int64_t C, float *W, fb_err *err) {
    int64_t shape[2] = {R, C};
    if (fb_wsrc_load_full(s, name, 2, shape, W, err)) return -1;
    int64_t at = fb_find_nonfinite(FB_F32, W, (size_t)(R * C), 1);
    if (at >= 0)
        return fb_fail(err, "%s: tensor %s: %s at [%lld, %lld]; refusing to tune it", s->desc, name,
                       isnan(W[at]) ? "NaN" : "Inf", (long long)(at / C), (long long)(at % C));
    return 0;
}

// The NVFP4 global scale of l's fused set from the original weights (W: l's own).
static int fused_global_scale(fb_wsrc *base, const fb_tune_linear *l, const float *W, float *g, fb_err *err) {
    float amax[FB_TUNE_MAX_FUSED];
    int n = l->n_fused > 0 ? l->n_fused : 1;
    for (int k = 0; k < n; k++) {
        const char *m = l->n_fused > 0 ? l->fused[k] : l->name;
        if (strcmp(m, l->name) == 0) {
            amax[k] = fb_nvfp4_absmax(W, (size_t)(l->R * l->C));
            continue;
        }
        int nd;
        int64_t sh[FB_MAX_DIMS];
        if (!base->shape(base, m, &nd, sh) || nd != 2)
            return fb_fail(err, "%s: fused member %s of %s is missing or not 2-D", base->desc, m, l->name);
        float *x = fb_aligned_alloc((size_t)(sh[0] * sh[1]) * sizeof(float) + 64);
        int rc = fb_tune_load_weight(base, m, sh[0], sh[1], x, err);
        if (!rc) amax[k] = fb_nvfp4_absmax(x, (size_t)(sh[0] * sh[1]));
        free(x);
        if (rc) return -1;
    }
    *g = fb_nvfp4_fused_global_scale(amax, (size_t)n);
    return 0;
}

// ---- Hessians through the engine hooks ---------------------------------------------------------

enum { SLOT_QKV = 0, SLOT_O, SLOT_MOE, SLOT_FIXED };

typedef struct tctx {
    int layer, capture;
    size_t n_experts;
    float *H[SLOT_FIXED];   // q/k/v input, o input, every expert's gate/up input (NULL: not needed)
    size_t dim[SLOT_FIXED];
    float **Hdown;          // [n_experts] each expert's down input (NULL: not needed)
    size_t inter;
    fb_calib_stats *st;     // input absmax to record (NULL: none)
    float moe_absmax;       // this layer's MoE input absmax (every expert's w1/w3)
    pthread_mutex_t mu;     // the shared Hessians (the engine calls their hooks from one thread,
                            // but nothing promises it)
} tctx;

static int slot_of(fb_role r) {
    switch (r) {
    case FB_ROLE_Q: case FB_ROLE_K: case FB_ROLE_V: return SLOT_QKV;
    case FB_ROLE_O: return SLOT_O;
    case FB_ROLE_W_GATE: case FB_ROLE_W_UP: return SLOT_MOE;
    default: return -1;  // W_DOWN: per expert
    }
}

static void add_shared(tctx *t, int slot, const float *x, size_t rows, size_t cols) {
    if (!t->H[slot] || cols != t->dim[slot]) return;
    pthread_mutex_lock(&t->mu);
    fb_gptq_hessian_add(t->H[slot], cols, x, rows);
    pthread_mutex_unlock(&t->mu);
}

static float absmax_of(const float *x, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > m || a != a) m = a;  // NaN propagates, as the forward's own statistics do
    }
    return m;
}

static void max_into(float *dst, float v) {
    if (v > *dst || v != v) *dst = v;
}

static int hk_linear(void *u, fb_role role, int layer, int expert, float *x, size_t rows, size_t cols, fb_err *err) {
    (void)err;
    tctx *t = u;
    if (!t->capture || layer != t->layer || expert >= 0) return 0;  // experts: expert_input_all
    int s = slot_of(role);
    if (s == SLOT_QKV || s == SLOT_O) add_shared(t, s, x, rows, cols);
    if (t->st && (s == SLOT_QKV || s == SLOT_O)) {  // main thread (attention runs per sequence there)
        float a = absmax_of(x, rows * cols);
        max_into(s == SLOT_QKV ? &t->st->qkv_absmax[layer] : &t->st->o_absmax[layer], a);
    }
    return 0;
}

static int hk_all(void *u, fb_role role, int layer, int expert, size_t t0, const float *x, size_t rows, size_t cols,
                  fb_err *err) {
    (void)err, (void)t0;
    tctx *t = u;
    if (!t->capture || layer != t->layer) return 0;
    if (role == FB_ROLE_W_GATE && expert < 0) {
        add_shared(t, SLOT_MOE, x, rows, cols);
        if (t->st) {
            float a = absmax_of(x, rows * cols);
            pthread_mutex_lock(&t->mu);
            max_into(&t->moe_absmax, a);
            pthread_mutex_unlock(&t->mu);
        }
    } else if (role == FB_ROLE_W_DOWN && expert >= 0 && (size_t)expert < t->n_experts) {
        if (t->Hdown && t->Hdown[expert] && cols == t->inter)
            fb_gptq_hessian_add(t->Hdown[expert], cols, x, rows);  // one thread per expert at a time
        if (t->st) max_into(&t->st->w2_absmax[(size_t)layer * t->n_experts + (size_t)expert], absmax_of(x, rows * cols));
    }
    return 0;
}

// fb_tune_layer_end with the engine's hidden states (layer l's output) as the next layer's input.
static int layer_end(const fb_tune_opts *o, fb_engine *e, int l, fb_wsrc *overlay, int n_layers, int rc, size_t ntok,
                     size_t H, fb_err *err) {
    const float *next[1] = {NULL};
    if (!rc && o->state_dir && l + 1 < n_layers && !(next[0] = fb_engine_hidden(e, err))) rc = -1;
    return fb_tune_layer_end(o, l, overlay, n_layers, rc, next, 1, ntok, H, err);
}

static float *hessian_of(tctx *t, const fb_tune_linear *l) {
    if (l->role == FB_ROLE_W_DOWN) return t->Hdown && l->expert >= 0 ? t->Hdown[l->expert] : NULL;
    int s = slot_of(l->role);
    return s >= 0 ? t->H[s] : NULL;
}

static void free_hessians(tctx *t) {
    for (int s = 0; s < SLOT_FIXED; s++) {
        free(t->H[s]);
        t->H[s] = NULL;
    }
    if (t->Hdown)
        for (size_t e = 0; e < t->n_experts; e++) {
            free(t->Hdown[e]);
            t->Hdown[e] = NULL;
        }
}

// ---- tuning the Linears of one layer (threads: pool.h, committed in order) ---------------------

typedef struct lin_job {
    const fb_tune_opts *o;
    const fb_tune_algo *algo;
    fb_wsrc *base, *overlay;
    tctx *t;
    const fb_tune_linear *lin;
    const size_t *idx;       // indices into lin of this layer's tuned Linears
    float **W;               // per item: the tuned weights (compute -> commit)
    fb_tune_stat *st;
    size_t n_fallback;
    struct fslot *fs;        // this layer's distinct (Hessian, actorder) pairs
    const size_t *fsi;       // per item: its entry in fs
} lin_job;

// One distinct Hessian of the layer (with the ordering it is factorized under): factorized by the
// first item that needs it (under mu: an item needing it meanwhile waits, the others go on),
// freed by the last one (users counts down).
typedef struct fslot {
    const float *H;
    int actorder;
    size_t users;            // items not yet done with it (under mu)
    int state;               // 0 not made, 1 made, -1 failed (err)
    void *factor;
    fb_err err;
    pthread_mutex_t mu;
} fslot;

// Item k's factor (made if it is the first to need it), or NULL with err.
static const void *factor_get(lin_job *j, size_t k, fb_err *err) {
    fslot *s = &j->fs[j->fsi[k]];
    const fb_tune_linear *l = &j->lin[j->idx[k]];
    pthread_mutex_lock(&s->mu);
    if (s->state == 0) s->state = j->algo->factorize(j->o, l, s->H, &s->factor, &s->err) ? -1 : 1;
    if (s->state < 0) *err = s->err;
    const void *f = s->state > 0 ? s->factor : NULL;
    pthread_mutex_unlock(&s->mu);
    return f;
}

// Item k is done with its factor; the last user frees it.
static void factor_put(lin_job *j, size_t k) {
    fslot *s = &j->fs[j->fsi[k]];
    pthread_mutex_lock(&s->mu);
    if (--s->users == 0 && s->factor) {
        j->algo->factor_free(j->o, s->factor);
        s->factor = NULL;
    }
    pthread_mutex_unlock(&s->mu);
}

static int lin_compute(void *ctx, size_t k, int tid, fb_err *err) {
    (void)tid;
    lin_job *j = ctx;
    const fb_tune_linear *l = &j->lin[j->idx[k]];
    double t0 = fb_now();
    size_t R = (size_t)l->R, C = (size_t)l->C, NG = C / l->group;
    float *W = fb_aligned_alloc(R * C * sizeof(float) + 64);
    float *sc = NULL;
    float g = 1.0f;
    int rc = fb_tune_load_weight(j->base, l->name, l->R, l->C, W, err);
    if (!rc && l->nvfp4) rc = fused_global_scale(j->base, l, W, &g, err);
    if (!rc) {
        sc = fb_malloc(R * NG * sizeof(float));
        fb_tune_observer_scales(l, W, g, sc);
        const void *f = factor_get(j, k, err);
        if (!f) {
            rc = -1;
        } else {
            memset(&j->st[k], 0, sizeof j->st[k]);
            rc = j->algo->linear(j->o, l, W, f, sc, g, &j->st[k], err);
            factor_put(j, k);
        }
    }
    if (!rc) {
        // The tuned weights as llm-compressor's bf16 model holds them (update_offload_parameter
        // casts to the module dtype): what the next layer's inputs and the packing see.
        for (size_t i = 0; i < R * C; i++) W[i] = fb_bf16_to_f32(fb_f32_to_bf16(W[i]));
        j->W[k] = W;
        W = NULL;
        j->st[k].seconds = fb_now() - t0;
    }
    free(W);
    free(sc);
    return rc;
}

static int lin_commit(void *ctx, size_t k, int tid, fb_err *err) {
    (void)tid;
    lin_job *j = ctx;
    const fb_tune_linear *l = &j->lin[j->idx[k]];
    int64_t sh[2] = {l->R, l->C};
    int rc = fb_wsrc_overlay_put(j->overlay, l->name, 2, sh, j->W[k], err);
    free(j->W[k]);
    j->W[k] = NULL;
    if (j->st[k].rtn_fallback) j->n_fallback++;
    if (!rc && j->o->module_done) j->o->module_done(j->o->user, l, &j->st[k]);
    return rc;
}

// ---- the loop ----------------------------------------------------------------------------------

// The statistics of layer l are complete after its calibration pass: every expert's w1/w3 saw the
// whole MoE input.
static void absmax_done(tctx *t, int l) {
    if (!t->st) return;
    for (size_t e = 0; e < t->n_experts; e++) t->st->w13_absmax[(size_t)l * t->n_experts + e] = t->moe_absmax;
    t->st->done[l] = 1;
}

int fb_tune_run(fb_wsrc *base, fb_wsrc *overlay, const fb_model_config *cfg, const fb_ds_tokens *S,
                const fb_tune_linear *lin, size_t n, const fb_tune_opts *o, fb_tune_result *res, fb_err *err) {
    memset(res, 0, sizeof *res);
    double t_start = fb_now();
    const fb_tune_algo *algo = fb_tune_algo_get(o->algo);
    if (!algo || !algo->linear)
        return fb_fail(err, "tuning algorithm %s runs its own layer loop, not fb_tune_run", algo ? algo->name : "?");
    if (!S || S->n == 0 || S->n_tok == 0) return fb_fail(err, "%s needs calibration tokens", algo->name);
    if (o->absmax && (o->absmax->n_layers != cfg->n_layers || o->absmax->n_experts != cfg->n_experts))
        return fb_fail(err, "statistics of %d layers x %d experts for a model of %d x %d", o->absmax->n_layers,
                       o->absmax->n_experts, cfg->n_layers, cfg->n_experts);
    for (size_t i = 0; i < n; i++)
        if (lin[i].layer < 0 || lin[i].layer >= cfg->n_layers || !lin[i].qf || !lin[i].qf->pack_fixed ||
            !lin[i].group || lin[i].C % (int64_t)lin[i].group || lin[i].expert >= cfg->n_experts)
            return fb_fail(err, "%s: cannot be tuned (layer %d, expert %d, format %s, group %zu)", lin[i].name,
                           lin[i].layer, lin[i].expert, lin[i].qf ? lin[i].qf->name : "none", lin[i].group);
    tctx t;
    memset(&t, 0, sizeof t);
    pthread_mutex_init(&t.mu, NULL);
    t.n_experts = (size_t)cfg->n_experts;
    t.inter = (size_t)cfg->inter;
    t.Hdown = fb_calloc(t.n_experts + 1, sizeof *t.Hdown);
    t.st = o->absmax;
    if (t.st) {
        t.st->arch = cfg->arch;
        t.st->all_experts = 1;
        t.st->n_tokens = S->n_tok;
    }
    fb_fwd_hooks hk = {.user = &t, .linear_input = hk_linear, .expert_input_all = hk_all};
    fb_engine_opts eo = {.threads = o->threads, .all_experts = 1, .hooks = &hk};
    fb_engine *e = fb_engine_cpu_new(overlay, cfg, &eo, err);
    if (!e) {
        free(t.Hdown);
        pthread_mutex_destroy(&t.mu);
        return -1;
    }
    size_t H = (size_t)cfg->hidden, ntok = S->n_tok;
    float *h_in = fb_aligned_alloc(ntok * H * sizeof(float) + 64);
    size_t *idx = fb_malloc((n + 1) * sizeof *idx);
    float **Wk = fb_calloc(n + 1, sizeof *Wk);
    fb_tune_stat *st = fb_calloc(n + 1, sizeof *st);
    fslot *fs = fb_calloc(n + 1, sizeof *fs);
    size_t *fsi = fb_calloc(n + 1, sizeof *fsi);
    int rc = fb_engine_set_tokens(e, S->ids, S->n_tok, S->starts, S->n, err);
    if (!rc && o->resume_layer > 0 && o->resume_layer < cfg->n_layers) {  // the staged input of the first layer to run
        float *ch[1] = {h_in};
        rc = fb_tune_state_load(o, o->resume_layer, ch, 1, ntok, H, err);
        if (!rc) rc = fb_engine_set_hidden(e, o->resume_layer, h_in, err);
    }
    for (int l = 0; l < cfg->n_layers && !rc; l++) {
        if (o->cancel && atomic_load(o->cancel)) { rc = -2; break; }
        if (l < o->resume_layer) {  // its outputs are in kept shards
            rc = o->layer_done(o->user, l, overlay, err);
            continue;
        }
        if (o->state_dir && l == o->resume_layer) {  // later layers' inputs: staged by the layer before
            const float *hs = fb_engine_hidden(e, err);
            const float *ch[1] = {hs};
            if (!hs || fb_tune_state_save(o, l, ch, 1, ntok, H, err)) { rc = -1; break; }
        }
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (lin[i].layer == l) idx[m++] = i;
        if (o->layer_start) o->layer_start(o->user, l, cfg->n_layers, m);
        double t0 = fb_now();
        t.moe_absmax = 0;
        if (m == 0) {  // nothing tuned here: one pass, the original weights (recorded when asked)
            t.layer = l;
            t.capture = t.st != NULL;
            rc = fb_engine_layer(e, l, err);
            t.capture = 0;
            if (!rc) absmax_done(&t, l);
            res->propagate_s += fb_now() - t0;
            rc = layer_end(o, e, l, overlay, cfg->n_layers, rc, ntok, H, err);
            continue;
        }
        const float *h = fb_engine_hidden(e, err);
        if (!h) { rc = -1; break; }
        memcpy(h_in, h, ntok * H * sizeof(float));
        // Hessians needed by this layer's tuned Linears.
        for (size_t k = 0; k < m; k++) {
            const fb_tune_linear *li = &lin[idx[k]];
            size_t C = (size_t)li->C;
            if (li->role == FB_ROLE_W_DOWN) {
                if (!t.Hdown[li->expert]) t.Hdown[li->expert] = fb_calloc(C * C, sizeof(float));
                continue;
            }
            int s = slot_of(li->role);
            if (s < 0) { rc = fb_fail(err, "%s: role %s cannot be tuned", li->name, fb_role_name(li->role)); break; }
            if (!t.H[s]) {
                t.H[s] = fb_calloc(C * C, sizeof(float));
                t.dim[s] = C;
            }
        }
        if (rc) break;
        t.layer = l;
        t.capture = 1;
        rc = fb_engine_layer(e, l, err);  // 1. calibration pass
        t.capture = 0;
        res->calib_s += fb_now() - t0;
        if (rc) break;
        absmax_done(&t, l);
        // accumulate_hessian counts samples (one per sequence of batch 1), prepare_batch divides.
        for (int s = 0; s < SLOT_FIXED; s++)
            if (t.H[s]) fb_gptq_hessian_scale(t.H[s], t.dim[s], S->n);
        for (size_t x = 0; x < t.n_experts; x++)
            if (t.Hdown[x]) fb_gptq_hessian_scale(t.Hdown[x], t.inter, S->n);
        double t1 = fb_now();
        // The distinct (Hessian, actorder) pairs: q/k/v share one, every expert's w1/w3 the MoE input's.
        size_t nfs = 0;
        for (size_t k = 0; k < m && !rc; k++) {
            const fb_tune_linear *li = &lin[idx[k]];
            const float *Hs = hessian_of(&t, li);
            if (!Hs) {
                rc = fb_fail(err, "%s: no Hessian was captured for it (the engine reported no input)", li->name);
                break;
            }
            size_t x = 0;
            while (x < nfs && !(fs[x].H == Hs && fs[x].actorder == li->actorder)) x++;
            if (x == nfs) {
                fs[nfs] = (fslot){.H = Hs, .actorder = li->actorder};
                pthread_mutex_init(&fs[nfs++].mu, NULL);
            }
            fs[x].users++;
            fsi[k] = x;
        }
        lin_job lj = {.o = o, .algo = algo, .base = base, .overlay = overlay, .t = &t, .lin = lin, .idx = idx,
                      .W = Wk, .st = st, .fs = fs, .fsi = fsi};
        fb_blas_threads(1);  // one GPTQ per thread; the engine sets its own BLAS threads again
        fb_ordered_job oj = {.n_items = m, .n_threads = o->threads > 0 ? o->threads : fb_ncpu(),
                             .compute = lin_compute, .commit = lin_commit, .ctx = &lj, .cancel = o->cancel};
        if (!rc) rc = fb_run_ordered(&oj, err);  // 2. tune
        for (size_t k = 0; k < m; k++) {
            free(Wk[k]);
            Wk[k] = NULL;
        }
        for (size_t x = 0; x < nfs; x++) {  // a failed or cancelled run leaves factors behind
            if (fs[x].factor) algo->factor_free(o, fs[x].factor);
            res->n_factorized += fs[x].state > 0;
            pthread_mutex_destroy(&fs[x].mu);
        }
        free_hessians(&t);
        res->tune_s += fb_now() - t1;
        res->n_tuned += m;
        res->n_fallback += lj.n_fallback;
        if (rc) break;
        double t2 = fb_now();
        rc = fb_engine_set_hidden(e, l, h_in, err);  // 3. propagate with the tuned weights
        if (!rc) rc = fb_engine_layer(e, l, err);
        res->propagate_s += fb_now() - t2;
        rc = layer_end(o, e, l, overlay, cfg->n_layers, rc, ntok, H, err);  // 4. stage, write
    }
    if (!rc) fb_tune_state_clear(o->state_dir);
    free_hessians(&t);
    free(t.Hdown);
    pthread_mutex_destroy(&t.mu);
    free(h_in);
    free(idx);
    free(Wk);
    free(st);
    free(fs);
    free(fsi);
    fb_engine_free(e);
    res->seconds = fb_now() - t_start;
    if (rc == -1 && o->cancel && atomic_load(o->cancel)) rc = -2;
    return rc;
}

// ---- layer-boundary states (resume) ------------------------------------------------------------

#define STATE_MAGIC "FBLSTAT1"

static char *state_path(const char *dir, int layer, const char *suffix) {
    size_t n = strlen(dir) + 64;
    char *p = fb_malloc(n);
    snprintf(p, n, "%s/fourbit-layer-state-%d.bin%s", dir, layer, suffix);
    return p;
}

typedef struct state_hdr {
    char magic[8];
    uint32_t layer, nchains;
    uint64_t n_tok, hidden, keylen, digest;  // digest: xxh3-64 of the chains' bytes
} state_hdr;

int fb_tune_state_save(const fb_tune_opts *o, int layer, const float *const *chains, int nchains, size_t n_tok,
                       size_t hidden, fb_err *err) {
    if (!o->state_dir) return 0;
    char *tmp = state_path(o->state_dir, layer, ".tmp"), *fin = state_path(o->state_dir, layer, "");
    state_hdr h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, STATE_MAGIC, 8);
    h.layer = (uint32_t)layer, h.nchains = (uint32_t)nchains, h.n_tok = n_tok, h.hidden = hidden;
    h.keylen = o->state_key ? strlen(o->state_key) : 0;
    XXH3_state_t *xs = XXH3_createState();
    XXH3_64bits_reset(xs);
    for (int c = 0; c < nchains; c++) XXH3_64bits_update(xs, chains[c], n_tok * hidden * sizeof(float));
    h.digest = XXH3_64bits_digest(xs);
    XXH3_freeState(xs);
    int rc = 0;
    FILE *f = fopen(tmp, "wb");
    if (!f) rc = fb_fail(err, "%s: cannot create: %s", tmp, strerror(errno));
    if (!rc && (fwrite(&h, sizeof h, 1, f) != 1 || (h.keylen && fwrite(o->state_key, h.keylen, 1, f) != 1)))
        rc = fb_fail(err, "%s: write error: %s", tmp, strerror(errno));
    for (int c = 0; c < nchains && !rc; c++)
        if (fwrite(chains[c], sizeof(float), n_tok * hidden, f) != n_tok * hidden)
            rc = fb_fail(err, "%s: write error: %s", tmp, strerror(errno));
    if (!rc && (fflush(f) != 0 || fsync(fileno(f)) != 0)) rc = fb_fail(err, "%s: write error: %s", tmp, strerror(errno));
    if (f && fclose(f) != 0 && !rc) rc = fb_fail(err, "%s: write error: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, fin) != 0) rc = fb_fail(err, "%s: cannot rename into place: %s", fin, strerror(errno));
    if (rc) unlink(tmp);
    free(tmp);
    free(fin);
    return rc;
}

// Reads and checks a state file; chains NULL: check only.
static int state_read(const char *dir, int layer, const char *key, int nchains, size_t n_tok, size_t hidden,
                      float *const *chains, fb_err *err) {
    char *p = state_path(dir, layer, "");
    FILE *f = fopen(p, "rb");
    int rc = 0;
    state_hdr h;
    size_t kl = key ? strlen(key) : 0;
    if (!f) rc = fb_fail(err, "%s: %s", p, strerror(errno));
    else if (fread(&h, sizeof h, 1, f) != 1 || memcmp(h.magic, STATE_MAGIC, 8) != 0)
        rc = fb_fail(err, "%s: not a layer state file (truncated or foreign)", p);
    else if (h.layer != (uint32_t)layer || h.nchains != (uint32_t)nchains || h.n_tok != n_tok || h.hidden != hidden)
        rc = fb_fail(err, "%s: layer %u, %u chains of %llu x %llu; this run needs layer %d, %d of %zu x %zu", p, h.layer,
                     h.nchains, (unsigned long long)h.n_tok, (unsigned long long)h.hidden, layer, nchains, n_tok, hidden);
    else if (h.keylen != kl)
        rc = fb_fail(err, "%s: made by another run (recipe, data, source or threads differ)", p);
    if (!rc && kl) {
        char *k = fb_malloc(kl + 1);
        if (fread(k, kl, 1, f) != 1 || memcmp(k, key, kl) != 0)
            rc = fb_fail(err, "%s: made by another run (recipe, data, source or threads differ)", p);
        free(k);
    }
    XXH3_state_t *xs = XXH3_createState();
    XXH3_64bits_reset(xs);
    float *buf = chains ? NULL : fb_malloc(hidden * sizeof(float));
    for (int c = 0; c < nchains && !rc; c++)
        for (size_t t = 0; t < n_tok && !rc; t++) {
            float *dst = chains ? chains[c] + t * hidden : buf;
            if (fread(dst, sizeof(float), hidden, f) != hidden) rc = fb_fail(err, "%s: truncated", p);
            else XXH3_64bits_update(xs, dst, hidden * sizeof(float));
        }
    if (!rc && XXH3_64bits_digest(xs) != h.digest) rc = fb_fail(err, "%s: digest mismatch (a damaged file)", p);
    XXH3_freeState(xs);
    free(buf);
    if (f) fclose(f);
    free(p);
    return rc;
}

int fb_tune_state_ok(const char *state_dir, int layer, const char *key, int chains, size_t n_tok, size_t hidden,
                     fb_err *err) {
    return state_read(state_dir, layer, key, chains, n_tok, hidden, NULL, err) == 0;
}

int fb_tune_state_load(const fb_tune_opts *o, int layer, float *const *chains, int nchains, size_t n_tok,
                       size_t hidden, fb_err *err) {
    return state_read(o->state_dir, layer, o->state_key, nchains, n_tok, hidden, chains, err);
}

int fb_tune_layer_end(const fb_tune_opts *o, int l, fb_wsrc *overlay, int n_layers, int rc, const float *const *next,
                      int nchains, size_t n_tok, size_t hidden, fb_err *err) {
    if (!rc && l + 1 < n_layers) rc = fb_tune_state_save(o, l + 1, next, nchains, n_tok, hidden, err);
    if (!rc) rc = o->layer_done(o->user, l, overlay, err);
    fb_wsrc_overlay_clear(overlay);
    if (!rc) fb_tune_state_prune(o, n_layers);
    return rc;
}

void fb_tune_state_prune(const fb_tune_opts *o, int n_layers) {
    if (!o->state_dir || !o->keep_from) return;
    int k = o->keep_from(o->user);
    for (int l = 0; l < k && l < n_layers; l++) {
        char *p = state_path(o->state_dir, l, "");
        unlink(p);
        free(p);
    }
}

void fb_tune_state_clear(const char *state_dir) {
    if (!state_dir) return;
    DIR *d = opendir(state_dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strncmp(de->d_name, "fourbit-layer-state-", 20) == 0) {
            size_t n = strlen(state_dir) + strlen(de->d_name) + 2;
            char *p = fb_malloc(n);
            snprintf(p, n, "%s/%s", state_dir, de->d_name);
            unlink(p);
            free(p);
        }
    closedir(d);
}
