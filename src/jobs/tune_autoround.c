// tune_autoround.c: the AutoRound layer loop (jobs/tune.h: two chains; each block tuned as one
// unit, or with --expert-group its attention Linears one by one and its routed experts in groups;
// calib/autoround.h does the tuning itself).
#include <math.h>
#include <string.h>

#include <cblas.h>

#include "calib/autoround.h"
#include "calib/forward.h"
#include "quant/formats.h"
#include "common/cancel.h"
#include "common/pool.h"
#include "cuda/cuengine.h"
#include "cuda/cutune.h"
#include "jobs/tune_autoround.h"
#include "jobs/tune_priv.h"

// What the hooks capture in a pass (NULL: not this time). Attention runs on the main thread, one
// sequence after another, so its rows arrive in token order; the MoE input arrives in chunks of
// tokens [t0, t0 + rows) from any thread, each writing its own rows.
typedef struct arcap {
    int layer;
    float *xa;       // [ntok, hidden] the q/k/v input
    float *xo;       // [ntok, n_heads * head_dim] the o_proj input
    float *xm;       // [ntok, hidden] the MoE input
    size_t na, no;   // rows captured so far
    size_t ntok, H, Dq;
} arcap;

static int ar_hk_linear(void *u, fb_role role, int layer, int expert, float *x, size_t rows, size_t cols, fb_err *err) {
    arcap *c = u;
    if (layer != c->layer || expert >= 0) return 0;
    if (role == FB_ROLE_Q && c->xa) {
        if (cols != c->H || c->na + rows > c->ntok)
            return fb_fail(err, "AutoRound: layer %d: attention input of %zu x %zu after %zu rows (expected %zu x %zu)",
                           layer, rows, cols, c->na, c->ntok, c->H);
        memcpy(c->xa + c->na * cols, x, rows * cols * sizeof(float));
        c->na += rows;
    } else if (role == FB_ROLE_O && c->xo) {
        if (cols != c->Dq || c->no + rows > c->ntok)
            return fb_fail(err, "AutoRound: layer %d: o_proj input of %zu x %zu after %zu rows (expected %zu x %zu)",
                           layer, rows, cols, c->no, c->ntok, c->Dq);
        memcpy(c->xo + c->no * cols, x, rows * cols * sizeof(float));
        c->no += rows;
    }
    return 0;
}

static int ar_hk_all(void *u, fb_role role, int layer, int expert, size_t t0, const float *x, size_t rows, size_t cols,
                     fb_err *err) {
    arcap *c = u;
    if (layer != c->layer || role != FB_ROLE_W_GATE || expert >= 0 || !c->xm) return 0;
    if (cols != c->H || t0 + rows > c->ntok)
        return fb_fail(err, "AutoRound: layer %d: MoE input rows [%zu, %zu) x %zu (expected %zu x %zu)", layer, t0,
                       t0 + rows, cols, c->ntok, c->H);
    memcpy(c->xm + t0 * cols, x, rows * cols * sizeof(float));
    return 0;
}

// One pass of layer l from hidden states h with what the overlay holds; captures what c asks.
static int ar_pass(fb_engine *e, arcap *c, int l, const float *h, float *xa, float *xo, float *xm, float *out,
                   fb_err *err) {
    c->layer = l;
    c->xa = xa, c->xo = xo, c->xm = xm;
    c->na = c->no = 0;
    int rc = fb_engine_set_hidden(e, l, h, err);
    if (!rc) rc = fb_engine_layer(e, l, err);
    c->xa = c->xo = c->xm = NULL;
    if (rc) return -1;
    if ((xa && c->na != c->ntok) || (xo && c->no != c->ntok))
        return fb_fail(err, "AutoRound: layer %d: the engine reported %zu / %zu attention rows of %zu tokens", l, c->na,
                       c->no, c->ntok);
    if (out) {
        const float *hh = fb_engine_hidden(e, err);
        if (!hh) return -1;
        memcpy(out, hh, c->ntok * c->H * sizeof(float));
    }
    return 0;
}

// The tuned weights and their scales into the overlay, which takes both buffers (*W, *scale NULL
// after; on failure they stay the caller's).
static int put_tuned(fb_wsrc *ov, const fb_tune_linear *l, float **W, float **scale, fb_err *err) {
    int64_t sh[2] = {l->R, l->C}, ss[2] = {l->R, l->C / (int64_t)l->group};
    char name[1024];
    if (snprintf(name, sizeof name, "%s%s", l->name, FB_TUNE_SCALE_SUFFIX) >= (int)sizeof name)
        return fb_fail(err, "%s: name too long", l->name);
    if (fb_wsrc_overlay_put_owned(ov, l->name, 2, sh, W, err)) return -1;
    return fb_wsrc_overlay_put_owned(ov, name, 2, ss, scale, err);
}

// The weight as the reference's bf16 model holds it.
static int load_bf16(fb_wsrc *base, const fb_tune_linear *l, float *W, fb_err *err) {
    if (fb_tune_load_weight(base, l->name, l->R, l->C, W, err)) return -1;
    for (size_t i = 0; i < (size_t)(l->R * l->C); i++) W[i] = fb_bf16_to_f32(fb_f32_to_bf16(W[i]));
    return 0;
}

// iters 0: RTN (plain, or optimized with the imatrix of the FP chain's input x [N, C]).
static int rtn_linear(const fb_tune_opts *o, fb_wsrc *base, fb_wsrc *ov, const fb_tune_linear *l, const float *x,
                      size_t nsamples, size_t N, int opt, fb_tune_result *res, fb_err *err) {
    double t0 = fb_now();
    size_t R = (size_t)l->R, C = (size_t)l->C, NG = C / l->group;
    float *W = fb_aligned_alloc(R * C * sizeof(float) + 64), *sc = fb_malloc(R * NG * sizeof(float));
    float *im = opt ? fb_calloc(C, sizeof(float)) : NULL;
    int8_t *q = fb_malloc(R * C);
    int rc = load_bf16(base, l, W, err);
    if (!rc && opt) {
        fb_autoround_imatrix_add(im, C, x, N);
        fb_autoround_imatrix_scale(im, C, nsamples);
    }
    if (!rc) rc = opt ? fb_autoround_opt_rtn(W, R, C, im, FB_AR_F32, sc, q, NULL, err)
                      : fb_autoround_rtn(W, R, C, FB_AR_BF16, sc, q, NULL, err);
    if (rc) fb_err_prefix(err, "%s", l->name);
    if (!rc) {
        for (size_t r = 0; r < R; r++)  // s * q exactly: what the export packs
            for (size_t c = 0; c < C; c++) W[r * C + c] = sc[r * NG + c / l->group] * (float)q[r * C + c];
        rc = put_tuned(ov, l, &W, &sc, err);
    }
    if (!rc && o->module_done) {
        fb_tune_stat st = {.seconds = fb_now() - t0};
        o->module_done(o->user, l, &st);
    }
    free(W); free(sc); free(im); free(q);
    res->n_tuned += !rc;
    return rc;
}

static fb_ar_opts ar_opts(const fb_tune_opts *o) {
    fb_ar_opts a = {.iters = o->ar_iters > 0 ? o->ar_iters : 200, .lr = (float)o->ar_lr,
                    .batch_size = (size_t)(o->ar_batch > 0 ? o->ar_batch : 8), .seed = o->ar_seed,
                    .cancel = o->cancel, .gemm = o->ar_gemm};
    return a;
}

// SignRound on one attention Linear: input x (quantized chain), target xf W^T (FP chain).
static int tune_attn(const fb_tune_opts *o, fb_wsrc *base, fb_wsrc *ov, const fb_tune_linear *l, const float *x,
                     const float *xf, size_t nsamples, size_t seq, fb_tune_result *res, fb_err *err) {
    double t0 = fb_now();
    size_t R = (size_t)l->R, C = (size_t)l->C, N = nsamples * seq;
    float *W = fb_aligned_alloc(R * C * sizeof(float) + 64), *T = fb_malloc(N * R * sizeof(float));
    float *sc = fb_malloc(R * (C / l->group) * sizeof(float));
    int rc = load_bf16(base, l, W, err);
    fb_ar_result ar;
    if (!rc) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)R, (int)C, 1.0f, xf, (int)C, W, (int)C, 0.0f,
                    T, (int)R);
        fb_ar_linear L = {.w = W, .rows = R, .cols = C, .scale = sc};
        fb_ar_opts a = ar_opts(o);
        rc = fb_autoround_tune_linear(x, T, nsamples, seq, &L, &a, &ar, err);
        if (rc) fb_err_prefix(err, "%s", l->name);
    }
    if (!rc) rc = put_tuned(ov, l, &W, &sc, err);
    if (!rc && o->module_done) {
        fb_tune_stat st = {.loss = ar.final_mse, .loss_rtn = ar.rtn_mse, .seconds = fb_now() - t0};
        o->module_done(o->user, l, &st);
    }
    free(W);
    free(T);
    free(sc);
    res->n_tuned += !rc;
    return rc;
}

typedef struct moe_set {
    const fb_tune_linear *l[3];  // gate, up, down of one expert
} moe_set;

// A tensor of layer l by its role, f32 as the engine reads it (norms, router, fixed Linears).
static int load_role(fb_wsrc *base, const fb_model_config *cfg, fb_role r, int l, int x, int ndim, int64_t d0,
                     int64_t d1, float *out, fb_err *err) {
    char n[1024];
    if (fb_arch_tensor(cfg->arch, r, l, x, n, sizeof n))
        return fb_fail(err, "AutoRound: layer %d: %s has no tensor name in %s", l, fb_role_name(r), cfg->arch->label);
    int64_t sh[2] = {d0, d1};
    if (fb_wsrc_load_full(base, n, ndim, sh, out, err)) return -1;
    int64_t at = fb_find_nonfinite(FB_F32, out, (size_t)(ndim == 2 ? d0 * d1 : d0), 1);
    if (at >= 0) return fb_fail(err, "%s: tensor %s: not finite at element %lld", base->desc, n, (long long)at);
    return 0;
}

// Loading routed experts' weights, one Linear per item on the job's threads: at MiniMax-M2's
// size a block has 768 expert Linears of 4.7M FP8 elements each, dequantized (and with ms rounded to
// bf16 as the reference's model holds them), seconds per layer on one thread.
typedef struct xload {
    fb_wsrc *base;
    const fb_model_config *cfg;
    int layer;
    const moe_set *ms;  // the experts' tuned Linears (load_bf16), or NULL: as the engine reads them (load_role)
    size_t e0;          // ex[k] is expert e0 + k
    fb_ar_expert *ex;
    int scales;         // allocate each Linear's scales [rows, cols / 128] too
} xload;

static int xload_one(void *u, size_t k, int tid, fb_err *err) {
    (void)tid;
    static const fb_role xr[3] = {FB_ROLE_W_GATE, FB_ROLE_W_UP, FB_ROLE_W_DOWN};
    const xload *x = u;
    size_t e = k / 3, FF = (size_t)x->cfg->inter, H = (size_t)x->cfg->hidden;
    int j = (int)(k % 3);
    fb_ar_linear *L = j == 0 ? &x->ex[e].gate : j == 1 ? &x->ex[e].up : &x->ex[e].down;
    L->rows = j < 2 ? FF : H, L->cols = j < 2 ? H : FF;
    const fb_tune_linear *t = x->ms ? x->ms[x->e0 + e].l[j] : NULL;
    if (t && ((size_t)t->R != L->rows || (size_t)t->C != L->cols))
        return fb_fail(err, "%s: [%lld, %lld], the configuration says [%zu, %zu]", t->name, (long long)t->R,
                       (long long)t->C, L->rows, L->cols);
    L->w = fb_aligned_alloc(L->rows * L->cols * sizeof(float) + 64);
    if (x->scales) L->scale = fb_malloc(L->rows * (L->cols / 128) * sizeof(float));
    return t ? load_bf16(x->base, t, L->w, err)
             : load_role(x->base, x->cfg, xr[j], x->layer, (int)(x->e0 + e), 2, (int64_t)L->rows, (int64_t)L->cols,
                         L->w, err);
}

static int xload_commit(void *u, size_t k, int tid, fb_err *err) {
    (void)u, (void)k, (void)tid, (void)err;
    return 0;
}

// Experts e0 .. e0 + n - 1 of layer l into ex[0 .. n) (rows, cols, w and, with scales, scale set).
static int load_experts(const fb_tune_opts *o, fb_wsrc *base, const fb_model_config *cfg, int l, const moe_set *ms,
                        size_t e0, size_t n, fb_ar_expert *ex, int scales, fb_err *err) {
    xload x = {.base = base, .cfg = cfg, .layer = l, .ms = ms, .e0 = e0, .ex = ex, .scales = scales};
    fb_ordered_job j = {.n_items = 3 * n, .n_threads = o->threads > 0 ? o->threads : fb_ncpu(),
                        .compute = xload_one, .commit = xload_commit, .ctx = &x, .cancel = o->cancel};
    return fb_run_ordered(&j, err);
}

// The routed experts of layer l, jointly, in groups: x the MoE input and route [N, E] the
// routing of the quantized chain; T [N, H] the target of the experts' sum (the FP block output
// minus the rest of the quantized block's output); acc [N, H] the experts' sum with their FP
// weights, updated as groups are tuned.
static int tune_experts(const fb_tune_opts *o, fb_wsrc *base, fb_wsrc *ov, const fb_model_config *cfg,
                        const moe_set *ms, size_t E, const float *x, const float *route, const float *T, float *acc,
                        size_t nsamples, size_t seq, size_t H, fb_tune_result *res, fb_err *err) {
    size_t N = nsamples * seq;
    size_t gsz = o->expert_group > 0 && (size_t)o->expert_group < E ? (size_t)o->expert_group : E;
    fb_ar_expert *ex = fb_calloc(gsz, sizeof *ex);
    float *fp = fb_malloc(N * H * sizeof(float));
    float *Tg = fb_malloc(N * H * sizeof(float)), *rg = fb_malloc(N * gsz * sizeof(float));
    int rc = 0;
    for (size_t g0 = 0; g0 < E && !rc; g0 += gsz) {
        double t0 = fb_now();
        size_t ng = E - g0 < gsz ? E - g0 : gsz;
        if (o->cancel && atomic_load(o->cancel)) { rc = -2; break; }
        rc = load_experts(o, base, cfg, ms[g0].l[0]->layer, ms, g0, ng, ex, 1, err);
        res->load_s += fb_now() - t0;
        if (rc) break;
        for (size_t t = 0; t < N; t++)
            for (size_t k = 0; k < ng; k++) rg[t * ng + k] = route[t * E + g0 + k];
        // this group's FP sum, and its target: T minus the other groups at their current weights
        fb_autoround_moe_forward(x, N, H, rg, ng, ex, fp);
        for (size_t i = 0; i < N * H; i++) Tg[i] = T[i] - (acc[i] - fp[i]);
        fb_ar_opts a = ar_opts(o);
        fb_ar_result ar;
        rc = fb_autoround_tune_moe(x, nsamples, seq, H, rg, ng, Tg, ex, &a, &ar, err);
        if (rc) {
            fb_err_prefix(err, "layer %d experts %zu..%zu", ms[g0].l[0]->layer, g0, g0 + ng - 1);
            break;
        }
        if (ng < E) {  // the group's tuned sum replaces its FP one for the next groups
            float *q = Tg;
            fb_autoround_moe_forward(x, N, H, rg, ng, ex, q);
            for (size_t i = 0; i < N * H; i++) acc[i] += q[i] - fp[i];
        }
        double dt = fb_now() - t0;
        for (size_t k = 0; k < ng && !rc; k++) {
            fb_ar_linear *L[3] = {&ex[k].gate, &ex[k].up, &ex[k].down};
            for (int j = 0; j < 3 && !rc; j++) {
                rc = put_tuned(ov, ms[g0 + k].l[j], &L[j]->w, &L[j]->scale, err);
                if (!rc && o->module_done) {
                    int first = k == 0 && j == 0;
                    fb_tune_stat st = {.loss = first ? ar.final_mse : 0, .loss_rtn = first ? ar.rtn_mse : 0,
                                       .joint = 1, .seconds = first ? dt : 0};
                    o->module_done(o->user, ms[g0 + k].l[j], &st);
                }
                res->n_tuned += !rc;
            }
        }
        for (size_t k = 0; k < ng; k++)
            for (int j = 0; j < 3; j++) {
                fb_ar_linear *L = j == 0 ? &ex[k].gate : j == 1 ? &ex[k].up : &ex[k].down;
                free(L->w);
                free(L->scale);
                L->w = L->scale = NULL;
            }
    }
    for (size_t k = 0; k < gsz; k++) {
        free(ex[k].gate.w); free(ex[k].gate.scale); free(ex[k].up.w); free(ex[k].up.scale);
        free(ex[k].down.w); free(ex[k].down.scale);
    }
    free(ex);
    free(fp);
    free(Tg);
    free(rg);
    return rc;
}

// The whole block l tuned at once (auto-round's unit): x the quantized chain's block input, T
// the FP block's output. Tuned Linears (attn[0..na), the experts in ms when nx) are loaded as the
// reference's bf16 model holds them; the rest of the block (norms, router, untuned Linears) as
// the engine reads it.
static int tune_block(const fb_tune_opts *o, fb_wsrc *base, fb_wsrc *ov, const fb_model_config *cfg, int l,
                      const fb_tune_linear *const *attn, size_t na, const moe_set *ms, size_t nx, const float *x,
                      const float *T, size_t nsamples, size_t seq, fb_tune_result *res, fb_err *err) {
    double t0 = fb_now();
    size_t H = (size_t)cfg->hidden, E = (size_t)cfg->n_experts, hd = (size_t)cfg->head_dim;
    size_t Dq = (size_t)cfg->n_heads * hd, Dk = (size_t)cfg->n_kv_heads * hd;
    int all = cfg->qk_norm == FB_QKN_ALL_HEADS;
    float *ln1 = fb_malloc(H * sizeof(float)), *ln2 = fb_malloc(H * sizeof(float));
    float *qn = fb_malloc((all ? Dq : hd) * sizeof(float)), *kn = fb_malloc((all ? Dk : hd) * sizeof(float));
    float *rt = fb_malloc(E * H * sizeof(float)), *bias = NULL;
    fb_ar_linear at[4] = {{0}};
    fb_ar_expert *ex = fb_calloc(E, sizeof *ex);
    const fb_tune_linear *who[4] = {0};
    static const fb_role roles[4] = {FB_ROLE_Q, FB_ROLE_K, FB_ROLE_V, FB_ROLE_O};
    fb_ar_block b = {.cfg = cfg, .ln1 = ln1, .ln2 = ln2, .router = rt, .experts = ex, .experts_tuned = nx > 0};
    int rc = load_role(base, cfg, FB_ROLE_LN_IN, l, 0, 1, (int64_t)H, 0, ln1, err);
    if (!rc) rc = load_role(base, cfg, FB_ROLE_LN_POST, l, 0, 1, (int64_t)H, 0, ln2, err);
    if (!rc && cfg->qk_norm != FB_QKN_NONE) {
        rc = load_role(base, cfg, FB_ROLE_Q_NORM, l, 0, 1, (int64_t)(all ? Dq : hd), 0, qn, err);
        if (!rc) rc = load_role(base, cfg, FB_ROLE_K_NORM, l, 0, 1, (int64_t)(all ? Dk : hd), 0, kn, err);
        b.q_norm = qn, b.k_norm = kn;
    }
    if (!rc) rc = load_role(base, cfg, FB_ROLE_ROUTER, l, 0, 2, (int64_t)E, (int64_t)H, rt, err);
    if (!rc && cfg->router == FB_ROUTER_SIGMOID_BIAS && cfg->use_routing_bias) {
        // as the engine: the correction bias when the checkpoint has one (absent: zero)
        char n[1024];
        int nd;
        int64_t sh[FB_MAX_DIMS];
        if (fb_arch_tensor(cfg->arch, FB_ROLE_ROUTER_BIAS, l, 0, n, sizeof n) == 0 && base->shape(base, n, &nd, sh)) {
            bias = fb_malloc(E * sizeof(float));
            rc = load_role(base, cfg, FB_ROLE_ROUTER_BIAS, l, 0, 1, (int64_t)E, 0, bias, err);
            b.router_bias = bias;
        }
    }
    size_t R[4] = {Dq, Dk, Dk, H}, C[4] = {H, H, H, Dq};
    for (size_t k = 0; k < na; k++)
        for (int j = 0; j < 4; j++)
            if (attn[k]->role == roles[j]) who[j] = attn[k];
    for (int j = 0; j < 4 && !rc; j++) {
        at[j].rows = R[j], at[j].cols = C[j];
        at[j].w = fb_aligned_alloc(R[j] * C[j] * sizeof(float) + 64);
        b.attn[j] = &at[j];
        b.attn_tuned[j] = who[j] != NULL;
        if (who[j]) {
            if ((size_t)who[j]->R != R[j] || (size_t)who[j]->C != C[j])
                rc = fb_fail(err, "%s: [%lld, %lld], the configuration says [%zu, %zu]", who[j]->name,
                             (long long)who[j]->R, (long long)who[j]->C, R[j], C[j]);
            else rc = load_bf16(base, who[j], at[j].w, err);
            at[j].scale = fb_malloc(R[j] * (C[j] / 128) * sizeof(float));
        } else rc = load_role(base, cfg, roles[j], l, 0, 2, (int64_t)R[j], (int64_t)C[j], at[j].w, err);
    }
    if (!rc) rc = load_experts(o, base, cfg, l, nx ? ms : NULL, 0, E, ex, nx > 0, err);
    fb_ar_result ar;
    res->load_s += fb_now() - t0;
    if (!rc) {
        fb_ar_opts a = ar_opts(o);
        rc = (o->ar_cuda ? fb_cuda_autoround_tune_block : fb_autoround_tune_block)(x, T, nsamples, seq, &b, &a, &ar, err);
        if (rc) fb_err_prefix(err, "layer %d", l);
    }
    double dt = fb_now() - t0;
    int first = 1;
    for (int j = 0; j < 4 && !rc; j++) {
        if (!who[j]) continue;
        rc = put_tuned(ov, who[j], &at[j].w, &at[j].scale, err);
        if (!rc && o->module_done) {
            fb_tune_stat st = {.loss = first ? ar.final_mse : 0, .loss_rtn = first ? ar.rtn_mse : 0, .joint = 2,
                               .seconds = first ? dt : 0};
            o->module_done(o->user, who[j], &st);
        }
        first = 0;
        res->n_tuned += !rc;
    }
    for (size_t e = 0; e < E && nx && !rc; e++) {
        fb_ar_linear *L[3] = {&ex[e].gate, &ex[e].up, &ex[e].down};
        for (int j = 0; j < 3 && !rc; j++) {
            rc = put_tuned(ov, ms[e].l[j], &L[j]->w, &L[j]->scale, err);
            if (!rc && o->module_done) {
                fb_tune_stat st = {.loss = first ? ar.final_mse : 0, .loss_rtn = first ? ar.rtn_mse : 0, .joint = 2,
                                   .seconds = first ? dt : 0};
                o->module_done(o->user, ms[e].l[j], &st);
            }
            first = 0;
            res->n_tuned += !rc;
        }
    }
    for (int j = 0; j < 4; j++) free(at[j].w), free(at[j].scale);
    for (size_t e = 0; e < E; e++) {
        free(ex[e].gate.w); free(ex[e].gate.scale); free(ex[e].up.w); free(ex[e].up.scale);
        free(ex[e].down.w); free(ex[e].down.scale);
    }
    free(ex); free(ln1); free(ln2); free(qn); free(kn); free(rt); free(bias);
    return rc;
}

// The loop's engine with the calibration tokens set: the CPU engine, or (gpu) the CUDA engine.
static fb_engine *ar_engine(fb_wsrc *overlay, const fb_model_config *cfg, const fb_engine_opts *eo, int gpu,
                            const fb_ds_tokens *S, fb_err *err) {
    fb_engine *e = gpu ? fb_engine_cuda_new(overlay, cfg, eo, err) : fb_engine_cpu_new(overlay, cfg, eo, err);
    if (e && fb_engine_set_tokens(e, S->ids, S->n_tok, S->starts, S->n, err)) {
        fb_engine_free(e);
        e = NULL;
    }
    return e;
}

int fb_tune_run_autoround(fb_wsrc *base, fb_wsrc *overlay, const fb_model_config *cfg, const fb_ds_tokens *S,
                          const fb_tune_linear *lin, size_t n, const fb_tune_opts *o, fb_tune_result *res,
                          fb_err *err) {
    memset(res, 0, sizeof *res);
    double t_start = fb_now();
    if (!S || S->n == 0 || S->n_tok == 0) return fb_fail(err, "AutoRound needs calibration tokens");
    for (size_t i = 0; i < n; i++)
        if (lin[i].layer < 0 || lin[i].layer >= cfg->n_layers || !lin[i].qf || !lin[i].qf->pack_scaled || lin[i].nvfp4 ||
            lin[i].group != 128 || lin[i].C % 128 || lin[i].expert >= cfg->n_experts)
            return fb_fail(err, "%s: AutoRound tunes int4 group-128 weights of a format that stores its scales (layer "
                                "%d, expert %d, format %s, group %zu)", lin[i].name, lin[i].layer, lin[i].expert,
                           lin[i].qf ? lin[i].qf->name : "none", lin[i].group);
    if (o->absmax) return fb_fail(err, "AutoRound: W4A4 input scales are not gathered by its loop");
    if (o->ar_cuda && o->expert_group > 0 && (size_t)o->expert_group < (size_t)cfg->n_experts)
        return fb_fail(err, "AutoRound on CUDA tunes whole blocks: --expert-group %d (of %d experts) runs on the CPU only",
                       o->expert_group, cfg->n_experts);
    size_t H = (size_t)cfg->hidden, ntok = S->n_tok, E = (size_t)cfg->n_experts, K = (size_t)cfg->top_k;
    size_t Dq = (size_t)cfg->n_heads * (size_t)cfg->head_dim;
    // SignRound's mini-batches are whole samples of one length (auto-round pads to seqlen).
    size_t seq = S->starts[1] - S->starts[0];
    for (size_t s = 0; s < S->n; s++)
        if (S->starts[s + 1] - S->starts[s] != seq)
            return fb_fail(err, "AutoRound: sample %zu has %zu tokens, sample 0 %zu: its mini-batches need samples of one "
                                "length (use --seq-len with samples at least that long)", s,
                           S->starts[s + 1] - S->starts[s], seq);
    // Which Linears of which layer: attention ones individually, experts as complete sets.
    moe_set *ms = fb_calloc(E + 1, sizeof *ms);
    const fb_tune_linear **attn = fb_calloc(n + 1, sizeof *attn);
    arcap cap = {.ntok = ntok, .H = H, .Dq = Dq};
    fb_fwd_hooks hk = {.user = &cap, .linear_input = ar_hk_linear, .expert_input_all = ar_hk_all};
    // All-experts mode (every expert on every token, 32x the routed MoE work on MiniMax-M2) only
    // where the MoE input is captured (the grouped units) and for iters 0, whose FP chain the
    // optimized-RTN golden was matched with; the joint block reads only the layer outputs.
    int grouped = o->ar_iters > 0 && o->expert_group > 0 && (size_t)o->expert_group < E;
    fb_engine_opts eo = {.threads = o->threads, .all_experts = grouped || o->ar_iters == 0, .hooks = &hk};
    // --device cuda (each block tuned whole on the GPU, iters > 0): the two chains' passes run on
    // the CUDA engine too, with f32 GEMMs (the CPU engine's arithmetic, to f32 rounding). Without
    // hooks: the whole block reads only layer outputs, and a host hook would copy every Linear's
    // input off the device. The engine is freed while a block is tuned (the tuner takes up to
    // ~70 GiB at MiniMax-M2's size) and made again for the propagation pass.
    int gpu = o->ar_cuda && o->ar_iters > 0 && !grouped;
    if (gpu) eo.hooks = NULL, eo.gemm_f32 = 1;
    fb_engine *e = ar_engine(overlay, cfg, &eo, gpu, S, err);
    if (!e) {
        free(ms);
        free(attn);
        return -1;
    }
    float *h_fp = fb_aligned_alloc(ntok * H * sizeof(float) + 64), *h_q = fb_aligned_alloc(ntok * H * sizeof(float) + 64);
    float *out_fp = fb_malloc(ntok * H * sizeof(float)), *out_q = fb_malloc(ntok * H * sizeof(float));
    float *xa_fp = fb_malloc(ntok * H * sizeof(float)), *xa_q = fb_malloc(ntok * H * sizeof(float));
    float *xo_fp = fb_malloc(ntok * Dq * sizeof(float)), *xo_q = fb_malloc(ntok * Dq * sizeof(float));
    float *xm = fb_malloc(ntok * H * sizeof(float)), *route = fb_malloc(ntok * (E ? E : 1) * sizeof(float));
    int rc = 0;
    const float *h0 = fb_engine_hidden(e, err);  // the embeddings
    if (!h0) rc = -1;
    else {
        memcpy(h_fp, h0, ntok * H * sizeof(float));
        memcpy(h_q, h0, ntok * H * sizeof(float));
    }
    if (!rc && o->resume_layer > 0 && o->resume_layer < cfg->n_layers) {  // the staged inputs of the first layer to run
        float *ch[2] = {h_fp, h_q};
        rc = fb_tune_state_load(o, o->resume_layer, ch, 2, ntok, H, err);
    }
    fb_blas_threads(o->threads > 0 ? o->threads : fb_ncpu());
    const float *next[2] = {h_fp, h_q};  // a layer's output chains: the next layer's inputs
    for (int l = 0; l < cfg->n_layers && !rc; l++) {
        if (o->cancel && atomic_load(o->cancel)) { rc = -2; break; }
        if (l < o->resume_layer) {  // its outputs are in kept shards
            rc = o->layer_done(o->user, l, overlay, err);
            continue;
        }
        if (o->state_dir && l == o->resume_layer) {  // later layers' inputs: staged by the layer before
            const float *ch[2] = {h_fp, h_q};
            if (fb_tune_state_save(o, l, ch, 2, ntok, H, err)) { rc = -1; break; }
        }
        size_t na = 0, nx = 0, m = 0;
        memset(ms, 0, (E + 1) * sizeof *ms);
        for (size_t i = 0; i < n && !rc; i++) {
            const fb_tune_linear *li = &lin[i];
            if (li->layer != l) continue;
            m++;
            switch (li->role) {
            case FB_ROLE_Q: case FB_ROLE_K: case FB_ROLE_V: case FB_ROLE_O: attn[na++] = li; break;
            case FB_ROLE_W_GATE: case FB_ROLE_W_UP: case FB_ROLE_W_DOWN: {
                int j = li->role == FB_ROLE_W_GATE ? 0 : li->role == FB_ROLE_W_UP ? 1 : 2;
                if (li->expert < 0 || ms[li->expert].l[j])
                    rc = fb_fail(err, "%s: AutoRound: not one expert's %s", li->name, fb_role_name(li->role));
                else ms[li->expert].l[j] = li, nx++;
                break;
            }
            default:
                rc = fb_fail(err, "%s: AutoRound cannot tune a %s (attention q/k/v/o and routed experts only)", li->name,
                             fb_role_name(li->role));
            }
        }
        if (rc) break;
        if (nx && nx != 3 * E) {
            for (size_t x = 0; x < E && !rc; x++)
                for (int j = 0; j < 3 && !rc; j++)
                    if (!ms[x].l[j])
                        rc = fb_fail(err, "layer %d: AutoRound tunes the routed experts jointly: expert %zu's %s is not "
                                          "tuned while others are (tune all of the layer's experts or none)", l, x,
                                     fb_role_name(j == 0 ? FB_ROLE_W_GATE : j == 1 ? FB_ROLE_W_UP : FB_ROLE_W_DOWN));
            break;
        }
        if (o->layer_start) o->layer_start(o->user, l, cfg->n_layers, m);
        double t0 = fb_now();
        int has_qkv = 0, has_o = 0;
        for (size_t k = 0; k < na; k++) {
            if (attn[k]->role == FB_ROLE_O) has_o = 1;
            else has_qkv = 1;
        }
        // Joint: the block is one unit (auto-round's); with --expert-group smaller than the
        // layer's experts, attention Linears one by one, then the experts in groups.
        int joint = o->ar_iters > 0 && (!nx || o->expert_group <= 0 || (size_t)o->expert_group >= E);
        // 1. FP chain (the overlay is empty: original weights)
        rc = ar_pass(e, &cap, l, h_fp, has_qkv && !joint ? xa_fp : NULL, has_o && !joint ? xo_fp : NULL, NULL, out_fp,
                     err);
        res->calib_s += fb_now() - t0;
        if (rc || !m) {  // nothing tuned: the quantized chain runs the same weights
            if (!rc) rc = ar_pass(e, &cap, l, h_q, NULL, NULL, NULL, h_q, err);
            memcpy(h_fp, out_fp, ntok * H * sizeof(float));
            rc = fb_tune_layer_end(o, l, overlay, cfg->n_layers, rc, next, 2, ntok, H, err);
            continue;
        }
        if (o->ar_iters == 0) {  // auto-round's RTN mode: the FP chain only
            double t1 = fb_now();
            for (size_t k = 0; k < na && !rc; k++)
                rc = rtn_linear(o, base, overlay, attn[k], attn[k]->role == FB_ROLE_O ? xo_fp : xa_fp, S->n, ntok,
                                !o->ar_disable_opt_rtn, res, err);
            for (size_t x = 0; x < E && nx && !rc; x++)
                for (int j = 0; j < 3 && !rc; j++) rc = rtn_linear(o, base, overlay, ms[x].l[j], NULL, S->n, ntok, 0, res, err);
            res->tune_s += fb_now() - t1;
            memcpy(h_fp, out_fp, ntok * H * sizeof(float));
            rc = fb_tune_layer_end(o, l, overlay, cfg->n_layers, rc, next, 2, ntok, H, err);
            continue;
        }
        double t1 = fb_now();
        if (joint) {
            if (gpu) fb_engine_free(e), e = NULL;  // the device memory to the tuner
            rc = tune_block(o, base, overlay, cfg, l, attn, na, ms, nx, h_q, out_fp, S->n, seq, res, err);
            if (gpu && !rc && !(e = ar_engine(overlay, cfg, &eo, gpu, S, err))) rc = -1;
        } else {
            // 2. attention: q/k/v on the quantized chain's input, then o_proj behind the tuned q/k/v
            if (has_qkv) rc = ar_pass(e, &cap, l, h_q, xa_q, NULL, NULL, NULL, err);
            for (size_t k = 0; k < na && !rc; k++)
                if (attn[k]->role != FB_ROLE_O)
                    rc = tune_attn(o, base, overlay, attn[k], xa_q, xa_fp, S->n, seq, res, err);
            if (!rc && has_o) rc = ar_pass(e, &cap, l, h_q, NULL, xo_q, NULL, NULL, err);
            for (size_t k = 0; k < na && !rc; k++)
                if (attn[k]->role == FB_ROLE_O)
                    rc = tune_attn(o, base, overlay, attn[k], xo_q, xo_fp, S->n, seq, res, err);
            // 3. the experts behind the tuned attention
            if (!rc && nx) rc = ar_pass(e, &cap, l, h_q, NULL, NULL, xm, out_q, err);
            if (!rc && nx) {
                const int32_t *ri = fb_engine_route_idx(e);
                const float *rw = fb_engine_route_w(e);
                if (!ri || !rw) rc = fb_fail(err, "AutoRound: layer %d: the engine kept no routing", l);
                for (size_t t = 0; t < ntok && !rc; t++) {
                    memset(route + t * E, 0, E * sizeof(float));
                    for (size_t s = 0; s < K; s++) {
                        int32_t x = ri[t * K + s];
                        if (x < 0 || (size_t)x >= E) {
                            rc = fb_fail(err, "AutoRound: layer %d: token %zu routed to expert %d of %zu", l, t, x, E);
                            break;
                        }
                        route[t * E + (size_t)x] += rw[t * K + s];
                    }
                }
                if (!rc) {
                    // The experts' target: the FP block output minus what the rest of the quantized
                    // block gives (its output with FP experts minus those experts' sum).
                    float *T = out_q, *fp = xa_q;  // xa_q is free now: ntok x H
                    fb_ar_expert *ex = fb_calloc(E, sizeof *ex);
                    double tl = fb_now();
                    rc = load_experts(o, base, cfg, l, ms, 0, E, ex, 0, err);
                    res->load_s += fb_now() - tl;
                    if (!rc) fb_autoround_moe_forward(xm, ntok, H, route, E, ex, fp);
                    for (size_t x = 0; x < E; x++) {
                        free(ex[x].gate.w);
                        free(ex[x].up.w);
                        free(ex[x].down.w);
                    }
                    free(ex);
                    if (!rc) {
                        for (size_t i = 0; i < ntok * H; i++) T[i] = out_fp[i] - (out_q[i] - fp[i]);
                        rc = tune_experts(o, base, overlay, cfg, ms, E, xm, route, T, fp, S->n, seq, H, res, err);
                    }
                }
            }
        }
        res->tune_s += fb_now() - t1;
        // 4. propagate the quantized chain through the tuned layer
        double t2 = fb_now();
        if (!rc) rc = ar_pass(e, &cap, l, h_q, NULL, NULL, NULL, h_q, err);
        res->propagate_s += fb_now() - t2;
        memcpy(h_fp, out_fp, ntok * H * sizeof(float));
        rc = fb_tune_layer_end(o, l, overlay, cfg->n_layers, rc, next, 2, ntok, H, err);
    }
    if (!rc) fb_tune_state_clear(o->state_dir);
    free(ms);
    free(attn);
    free(h_fp); free(h_q); free(out_fp); free(out_q); free(xa_fp); free(xa_q); free(xo_fp); free(xo_q); free(xm);
    free(route);
    fb_engine_free(e);
    res->seconds = fb_now() - t_start;
    if (rc == -1 && o->cancel && atomic_load(o->cancel)) rc = -2;
    return rc;
}
