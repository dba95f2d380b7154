// runner.c: reference vs quantized forward in lockstep, and the comparison statistics (see
// runner.h).
#include "jobs/runner.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "calib/wsrc_quant.h"
#include "quant/formats.h"
#include "quant/nvfp4.h"
#include "cuda/cuengine.h"

// ---- pieces ------------------------------------------------------------------------------------



void fb_runner_compare_row(const float *lr, const float *lq, size_t V, int32_t next,
                           double *nll_r, double *nll_q, double *kl, int *agree) {
    float mr = lr[0], mq = lq[0];
    size_t ar = 0, aq = 0;
    for (size_t v = 1; v < V; v++) {
        if (lr[v] > mr) { mr = lr[v]; ar = v; }
        if (lq[v] > mq) { mq = lq[v]; aq = v; }
    }
    double sr = 0, sq = 0;
    for (size_t v = 0; v < V; v++) {
        sr += exp((double)lr[v] - mr);
        sq += exp((double)lq[v] - mq);
    }
    double lser = log(sr) + mr, lseq = log(sq) + mq;
    double k = 0;
    for (size_t v = 0; v < V; v++) {
        double lpr = (double)lr[v] - lser, lpq = (double)lq[v] - lseq;
        if (lr[v] != lq[v] || lser != lseq) k += exp(lpr) * (lpr - lpq);
    }
    *kl = k < 0 ? 0 : k;  // rounding can leave a tiny negative sum; KL >= 0
    *agree = ar == aq;
    if (next >= 0 && (size_t)next < V) {
        *nll_r = lser - (double)lr[next];
        *nll_q = lseq - (double)lq[next];
    } else {
        *nll_r = *nll_q = 0;
    }
}

double fb_runner_quantile(const double *s, size_t n, double p) {
    if (n == 0) return 0;
    double pos = p * (double)(n - 1);
    size_t i = (size_t)floor(pos);
    if (i >= n - 1) return s[n - 1];
    double f = pos - (double)i;
    return s[i] + (s[i + 1] - s[i]) * f;
}

int fb_runner_cuda_available(char *name, size_t name_sz, char *why, size_t why_sz) {
    return fb_engine_cuda_available(name, name_sz, why, why_sz);
}

int fb_runner_pick_device(const char *name, fb_err *err) {
    char gpu[128], why[256];
    if (!name) return fb_runner_cuda_available(gpu, sizeof gpu, why, sizeof why) ? FB_DEV_CUDA : FB_DEV_CPU;
    if (!strcmp(name, "cpu")) return FB_DEV_CPU;
    if (strcmp(name, "cuda") != 0) return fb_fail(err, "--device must be cpu or cuda, not %s", name);
    if (!fb_runner_cuda_available(gpu, sizeof gpu, why, sizeof why)) {
        fb_fail(err, "--device cuda: %s", why);
        return -2;
    }
    return FB_DEV_CUDA;
}

// ---- W4A4 input scales ---------------------------------------------------------------------

typedef struct w4a4 {
    int L, E;
    float *qkv, *o;      // [L]
    float *w13, *w2;     // [L * E]
} w4a4;

static float w4a4_gs(void *u, fb_role role, int layer, int expert) {
    w4a4 *w = u;
    switch (role) {
    case FB_ROLE_Q: case FB_ROLE_K: case FB_ROLE_V: return w->qkv[layer];
    case FB_ROLE_O: return w->o[layer];
    case FB_ROLE_W_GATE: case FB_ROLE_W_UP:
        return expert >= 0 && expert < w->E ? w->w13[(size_t)layer * w->E + expert] : 0;
    case FB_ROLE_W_DOWN: return expert >= 0 && expert < w->E ? w->w2[(size_t)layer * w->E + expert] : 0;
    default: return 0;
    }
}

// The largest input_global_scale among the Linears of `roles` of (layer, expert); 0 when none
// has one.
static int gs_max(fb_wsrc *s, const fb_arch *a, const fb_role *roles, int n, int l, int e,
                  float *out, int *found, fb_err *err) {
    float m = 0;
    for (int i = 0; i < n; i++) {
        char p[512];
        if (fb_arch_module(a, roles[i], l, e, p, sizeof p)) continue;
        float g;
        int r = fb_wsrc_quant_input_gs(s, p, &g, err);
        if (r < 0) return -1;
        if (r > 0) {
            (*found)++;
            if (g > m) m = g;
        }
    }
    *out = m;
    return 0;
}

static int w4a4_build(fb_wsrc *s, const fb_model_config *c, int L, w4a4 *w, fb_err *err) {
    memset(w, 0, sizeof *w);
    w->L = L;
    w->E = c->n_experts;
    w->qkv = fb_calloc((size_t)L, sizeof(float));
    w->o = fb_calloc((size_t)L, sizeof(float));
    w->w13 = fb_calloc((size_t)L * (size_t)c->n_experts, sizeof(float));
    w->w2 = fb_calloc((size_t)L * (size_t)c->n_experts, sizeof(float));
    int found = 0;
    static const fb_role qkv[] = {FB_ROLE_Q, FB_ROLE_K, FB_ROLE_V}, o[] = {FB_ROLE_O},
                         w13[] = {FB_ROLE_W_GATE, FB_ROLE_W_UP}, w2[] = {FB_ROLE_W_DOWN};
    for (int l = 0; l < L; l++) {
        if (gs_max(s, c->arch, qkv, 3, l, -1, &w->qkv[l], &found, err) ||
            gs_max(s, c->arch, o, 1, l, -1, &w->o[l], &found, err))
            return -1;
        for (int e = 0; e < c->n_experts; e++) {
            size_t i = (size_t)l * (size_t)c->n_experts + (size_t)e;
            if (gs_max(s, c->arch, w13, 2, l, e, &w->w13[i], &found, err) ||
                gs_max(s, c->arch, w2, 1, l, e, &w->w2[i], &found, err))
                return -1;
        }
    }
    if (!found)
        return fb_fail(err, "%s: --emulate-w4a4: no Linear has an input_global_scale (not an "
                            "NVFP4 W4A4 checkpoint)", s->desc);
    return 0;
}

static void w4a4_free(w4a4 *w) {
    free(w->qkv); free(w->o); free(w->w13); free(w->w2);
}

// ---- engines -------------------------------------------------------------------------------

// The engine of one checkpoint (calib/engine.h): routed experts, W4A4 emulation when act is set.
static fb_engine *eng_new(fb_wsrc *src, const fb_model_config *cfg, const fb_runner_opts *o,
                          w4a4 *act, fb_err *err) {
    fb_engine_opts eo = {.threads = o->threads, .all_experts = 0, .expert_group = o->expert_group,
                         .gemm_f32 = o->cuda_gemm_f32, .act_gs = act ? w4a4_gs : NULL,
                         .act_user = act};
    return o->device == FB_DEV_CUDA ? fb_engine_cuda_new(src, cfg, &eo, err)
                                    : fb_engine_cpu_new(src, cfg, &eo, err);
}

// ---- comparison of logits, parallel over the positions of a block ----------------------------

typedef struct cmp_job {
    const float *lr, *lq;
    size_t V, t0, n;
    const int32_t *next;  // [n], -1 when not scored
    double *nll_r, *nll_q, *kl;
    int *agree;
    atomic_size_t cursor;
} cmp_job;

static void *cmp_main(void *p) {
    cmp_job *j = p;
    for (;;) {
        size_t i = atomic_fetch_add(&j->cursor, 1);
        if (i >= j->n) break;
        fb_runner_compare_row(j->lr + i * j->V, j->lq + i * j->V, j->V, j->next[i],
                              &j->nll_r[i], &j->nll_q[i], &j->kl[i], &j->agree[i]);
    }
    return NULL;
}

static void cmp_block(cmp_job *j, int nth) {
    atomic_init(&j->cursor, 0);
    pthread_t th[64];
    if (nth > 64) nth = 64;
    if (nth > (int)j->n) nth = (int)j->n;
    int started = 0;
    for (int i = 1; i < nth; i++) {
        if (pthread_create(&th[started], NULL, cmp_main, j) != 0) break;
        started++;
    }
    cmp_main(j);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// ---- the run -------------------------------------------------------------------------------

static int same_arch(const fb_model_config *a, const fb_model_config *b, fb_err *err) {
    if (a->arch != b->arch)
        return fb_fail(err, "the checkpoints are different models: the reference is %s, the "
                            "quantized checkpoint %s", a->arch->label, b->arch->label);
    struct { const char *key; double x, y; } f[] = {
        {"hidden_size", a->hidden, b->hidden},
        {"intermediate_size", a->inter, b->inter},
        {"num_hidden_layers", a->n_layers, b->n_layers},
        {"num_attention_heads", a->n_heads, b->n_heads},
        {"num_key_value_heads", a->n_kv_heads, b->n_kv_heads},
        {"head_dim", a->head_dim, b->head_dim},
        {"rotary_dim", a->rotary_dim, b->rotary_dim},
        {"rope_theta", a->rope_theta, b->rope_theta},
        {"rms_norm_eps", a->eps, b->eps},
        {"num_local_experts", a->n_experts, b->n_experts},
        {"num_experts_per_tok", a->top_k, b->top_k},
        {"vocab_size", a->vocab, b->vocab},
        {"use_qk_norm", a->qk_norm, b->qk_norm},
        {"norm_topk_prob", a->norm_topk_prob, b->norm_topk_prob},
        {"use_routing_bias", a->use_routing_bias, b->use_routing_bias},
        {"tie_word_embeddings", a->tie_embeddings, b->tie_embeddings},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].x != f[i].y)
            return fb_fail(err, "the checkpoints are different models: config.json %s is %g in "
                                "the reference and %g in the quantized checkpoint", f[i].key,
                           f[i].x, f[i].y);
    return 0;
}

static int parse_cfg(fb_wsrc *s, fb_model_config *c, fb_err *err) {
    if (!s->config) return fb_fail(err, "%s: no config.json", s->desc);
    if (fb_model_config_parse(s->config, c, err)) return fb_err_prefix(err, "%s", s->desc);
    return 0;
}

void fb_runner_result_free(fb_runner_result *r) {
    free(r->layers);
    memset(r, 0, sizeof *r);
}

int fb_runner_run(fb_wsrc *ref, fb_wsrc *quant, const int32_t *ids, size_t n_tok,
                  const size_t *starts, size_t n_seq, const fb_runner_opts *o,
                  fb_runner_result *res, fb_err *err) {
    memset(res, 0, sizeof *res);
    double t_start = fb_now();
    fb_model_config cr, cq;
    if (parse_cfg(ref, &cr, err) || parse_cfg(quant, &cq, err) || same_arch(&cr, &cq, err))
        return -1;
    int L = o->max_layers > 0 && o->max_layers < cr.n_layers ? o->max_layers : cr.n_layers;
    int nth = o->threads > 0 ? o->threads : fb_ncpu();
    if (o->device == FB_DEV_CUDA) {
        char name[96], why[256];
        if (!fb_runner_cuda_available(name, sizeof name, why, sizeof why))
            return fb_fail(err, "--device cuda: %s", why);
        snprintf(res->device, sizeof res->device, "cuda: %s (%s GEMMs)", name,
                 o->cuda_gemm_f32 ? "f32" : "bf16");
    } else {
        snprintf(res->device, sizeof res->device, "cpu (%d threads)", nth);
    }
    w4a4 act;
    int have_act = 0;
    if (o->emulate_w4a4) {
        if (w4a4_build(quant, &cq, L, &act, err)) {
            w4a4_free(&act);
            return -1;
        }
        have_act = 1;
    }
    fb_engine *er = NULL, *eq = NULL;
    int rc = -1;
    size_t H = (size_t)cr.hidden, V = (size_t)cr.vocab;
    size_t B = o->logit_block ? o->logit_block : 64;
    float *lr = NULL, *lq = NULL;
    double *nll_r = NULL, *nll_q = NULL, *kl = NULL;
    int *agree = NULL;
    int32_t *next = NULL;
    double *kls = NULL;
    if (!(er = eng_new(ref, &cr, o, NULL, err)) || !(eq = eng_new(quant, &cq, o, have_act ? &act : NULL, err)))
        goto out;
    if (fb_engine_set_tokens(er, ids, n_tok, starts, n_seq, err) ||
        fb_engine_set_tokens(eq, ids, n_tok, starts, n_seq, err))
        goto out;
    res->n_layers = L;
    res->n_tokens = n_tok;
    res->n_seq = n_seq;
    res->layers = fb_calloc((size_t)L + 1, sizeof *res->layers);
    for (int l = 0; l < L; l++) {
        if (o->progress) o->progress(o->progress_user, "layer", (size_t)l, (size_t)L);
        if (fb_engine_layer(er, l, err) || fb_engine_layer(eq, l, err)) goto out;
        const float *hr = fb_engine_hidden(er, err);
        if (!hr) goto out;
        // The reference's buffer may be reused by the quantized engine's copy (CUDA): keep
        // separate host buffers (eng owns one each).
        const float *hq = fb_engine_hidden(eq, err);
        if (!hq) goto out;
        double cmin = INFINITY, csum = 0, dd = 0, rr = 0;
        for (size_t t = 0; t < n_tok; t++) {
            const float *a = hr + t * H, *b = hq + t * H;
            double ab = 0, aa = 0, bb = 0, d2 = 0;
            for (size_t i = 0; i < H; i++) {
                ab += (double)a[i] * b[i];
                aa += (double)a[i] * a[i];
                bb += (double)b[i] * b[i];
                double d = (double)b[i] - a[i];
                d2 += d * d;
            }
            double c = aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : (aa == bb ? 1.0 : 0.0);
            csum += c;
            if (c < cmin || c != c) cmin = c;
            dd += d2;
            rr += aa;
        }
        res->layers[l].cos_mean = n_tok ? csum / (double)n_tok : 1.0;
        res->layers[l].cos_min = n_tok ? cmin : 1.0;
        res->layers[l].rel_l2 = rr > 0 ? sqrt(dd / rr) : sqrt(dd);
    }
    if (o->progress) o->progress(o->progress_user, "layer", (size_t)L, (size_t)L);
    res->n_emulated = have_act ? fb_engine_emulated(eq) : 0;
    if (L < cr.n_layers) {  // a partial model: hidden states only, no logits
        rc = 0;
        goto out;
    }

    // Logits, in blocks.
    lr = fb_aligned_alloc(B * V * sizeof(float) + 64);
    lq = fb_aligned_alloc(B * V * sizeof(float) + 64);
    nll_r = fb_malloc(B * sizeof(double));
    nll_q = fb_malloc(B * sizeof(double));
    kl = fb_malloc(B * sizeof(double));
    agree = fb_malloc(B * sizeof(int));
    next = fb_malloc(B * sizeof(int32_t));
    kls = fb_malloc((n_tok + 1) * sizeof(double));
    size_t seq = 0, ns = 0, n_agree = 0;
    double sum_r = 0, sum_q = 0, sum_kl = 0, max_kl = 0;
    for (size_t t0 = 0; t0 < n_tok; t0 += B) {
        size_t n = n_tok - t0 < B ? n_tok - t0 : B;
        if (o->progress) o->progress(o->progress_user, "logits", t0, n_tok);
        for (size_t i = 0; i < n; i++) {
            size_t t = t0 + i;
            while (seq + 1 < n_seq && t >= starts[seq + 1]) seq++;
            next[i] = t + 1 < starts[seq + 1] ? ids[t + 1] : -1;
        }
        if (fb_engine_logits(er, t0, n, lr, err) || fb_engine_logits(eq, t0, n, lq, err)) goto out;
        cmp_job j = {.lr = lr, .lq = lq, .V = V, .t0 = t0, .n = n, .next = next,
                     .nll_r = nll_r, .nll_q = nll_q, .kl = kl, .agree = agree};
        cmp_block(&j, nth);
        for (size_t i = 0; i < n; i++) {
            if (next[i] < 0) continue;
            sum_r += nll_r[i];
            sum_q += nll_q[i];
            sum_kl += kl[i];
            if (kl[i] > max_kl) max_kl = kl[i];
            n_agree += (size_t)agree[i];
            kls[ns++] = kl[i];
        }
    }
    if (o->progress) o->progress(o->progress_user, "logits", n_tok, n_tok);
    if (ns == 0) {
        fb_fail(err, "no position to score: every sequence has a single token");
        goto out;
    }
    qsort(kls, ns, sizeof(double), cmp_double);
    res->n_scored = ns;
    res->nll_ref = sum_r / (double)ns;
    res->nll_quant = sum_q / (double)ns;
    res->ppl_ref = exp(res->nll_ref);
    res->ppl_quant = exp(res->nll_quant);
    res->kld_mean = sum_kl / (double)ns;
    res->kld_median = fb_runner_quantile(kls, ns, 0.5);
    res->kld_p99 = fb_runner_quantile(kls, ns, 0.99);
    res->kld_max = max_kl;
    res->top1 = (double)n_agree / (double)ns;
    res->n_emulated = have_act ? fb_engine_emulated(eq) : 0;
    rc = 0;
out:
    res->ref_seconds = er ? er->secs : 0;
    res->quant_seconds = eq ? eq->secs : 0;
    fb_engine_free(er);
    fb_engine_free(eq);
    if (have_act) w4a4_free(&act);
    free(lr); free(lq); free(nll_r); free(nll_q); free(kl); free(agree); free(next); free(kls);
    res->seconds = fb_now() - t_start;
    if (rc) fb_runner_result_free(res);
    return rc;
}
