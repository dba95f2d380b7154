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
#ifdef FB_HAVE_CUDA
#include "cuda/cufwd.h"
#endif

// ---- pieces ------------------------------------------------------------------------------------

static inline float bf16r(float x) { return fb_bf16_to_f32(fb_f32_to_bf16(x)); }

void fb_w4a4_fake_quant_rows(float *x, size_t rows, size_t cols, float gs) {
    FB_ASSERT(cols % 16 == 0);
    fb_formats_init();
    const float r6 = (float)(1.0 / 6.0);  // get_reciprocal(6.0) as the f32 operand
    const float rgs = gs == 0.0f ? 0.0f : 1.0f / gs;
    for (size_t r = 0; r < rows; r++)
        for (size_t c0 = 0; c0 < cols; c0 += 16) {
            float *v = x + r * cols + c0;
            float m = 0.0f;
            for (int i = 0; i < 16; i++) {
                v[i] = bf16r(v[i]);
                float a = fabsf(v[i]);
                if (a > m) m = a;
            }
            float s = gs * (m * r6);
            s = s > 448.0f ? 448.0f : s < -448.0f ? -448.0f : s;
            s = fb_e4m3_to_f32(fb_f32_to_e4m3(s));
            float d = s * rgs;
            float o = d == 0.0f ? 0.0f : 1.0f / d;
            float bs = s / gs;
            for (int i = 0; i < 16; i++) {
                float q = fb_nvfp4_fp4_value(fb_nvfp4_fp4_nibble(v[i] * o));
                v[i] = bf16r(q * bs);
            }
        }
}

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
#ifdef FB_HAVE_CUDA
    return fb_cuda_probe(name, name_sz, why, why_sz);
#else
    if (name_sz) name[0] = 0;
    snprintf(why, why_sz, "this build has no CUDA support (built without nvcc, or CUDA=0)");
    return 0;
#endif
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
    atomic_size_t n;     // blocks fake-quantized
} w4a4;

static float w4a4_gs(void *u, int layer, fb_lin_kind kind, int expert) {
    w4a4 *w = u;
    if (layer < 0 || layer >= w->L) return 0;
    switch (kind) {
    case FB_LIN_QKV: return w->qkv[layer];
    case FB_LIN_O: return w->o[layer];
    case FB_LIN_W13: return expert >= 0 && expert < w->E ? w->w13[(size_t)layer * w->E + expert] : 0;
    case FB_LIN_W2: return expert >= 0 && expert < w->E ? w->w2[(size_t)layer * w->E + expert] : 0;
    }
    return 0;
}

static int w4a4_hook(void *u, int layer, fb_lin_kind kind, int expert, float *x, size_t rows,
                     size_t cols, fb_err *err) {
    w4a4 *w = u;
    float gs = w4a4_gs(w, layer, kind, expert);
    if (gs > 0) {
        if (cols % 16)
            return fb_fail(err, "W4A4 emulation: layer %d: input width %zu is not a multiple of 16",
                           layer, cols);
        fb_w4a4_fake_quant_rows(x, rows, cols, gs);
        atomic_fetch_add(&w->n, rows * (cols / 16));
    }
    return 0;
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
    atomic_init(&w->n, 0);
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

typedef struct eng {
    int cuda;
    fb_fwd *cpu;
#ifdef FB_HAVE_CUDA
    fb_cufwd *gpu;
#endif
    float *hbuf;   // host copy of the hidden states (CUDA)
    size_t ntok, H;
    double secs;
} eng;

static int eng_new(eng *e, fb_wsrc *src, const fb_model_config *cfg, const fb_runner_opts *o,
                   const fb_fwd_hooks *hooks, w4a4 *act, fb_err *err) {
    memset(e, 0, sizeof *e);
    e->H = (size_t)cfg->hidden;
    if (o->device == FB_DEV_CUDA) {
#ifdef FB_HAVE_CUDA
        fb_cufwd_opts co = {.gemm_f32 = o->cuda_gemm_f32, .host_threads = o->threads,
                            .act_gs = act ? w4a4_gs : NULL, .act_user = act};
        e->cuda = 1;
        e->gpu = fb_cufwd_new(src, cfg, &co, err);
        return e->gpu ? 0 : -1;
#else
        (void)act;
        return fb_fail(err, "--device cuda: this build has no CUDA support (built without "
                            "nvcc, or CUDA=0)");
#endif
    }
    fb_fwd_opts fo = {.threads = o->threads, .all_experts = 0, .expert_group = o->expert_group,
                      .hooks = hooks};
    e->cpu = fb_fwd_new(src, cfg, &fo, err);
    return e->cpu ? 0 : -1;
}

static void eng_free(eng *e) {
    if (e->cpu) fb_fwd_free(e->cpu);
#ifdef FB_HAVE_CUDA
    if (e->gpu) fb_cufwd_free(e->gpu);
#endif
    free(e->hbuf);
}

static int eng_set_tokens(eng *e, const int32_t *ids, size_t n, const size_t *starts,
                          size_t nseq, fb_err *err) {
    double t0 = fb_now();
    e->ntok = n;
    int rc;
#ifdef FB_HAVE_CUDA
    if (e->cuda) rc = fb_cufwd_set_tokens(e->gpu, ids, n, starts, nseq, err);
    else
#endif
        rc = fb_fwd_set_tokens(e->cpu, ids, n, starts, nseq, err);
    e->secs += fb_now() - t0;
    return rc;
}

static int eng_layer(eng *e, int l, fb_err *err) {
    double t0 = fb_now();
    int rc;
#ifdef FB_HAVE_CUDA
    if (e->cuda) rc = fb_cufwd_layer(e->gpu, l, err);
    else
#endif
        rc = fb_fwd_layer(e->cpu, l, err);
    e->secs += fb_now() - t0;
    return rc;
}

// Host pointer to the current hidden states (valid until the next call).
static const float *eng_hidden(eng *e, fb_err *err) {
#ifdef FB_HAVE_CUDA
    if (e->cuda) {
        if (!e->hbuf) e->hbuf = fb_aligned_alloc(e->ntok * e->H * sizeof(float) + 64);
        return fb_cufwd_hidden(e->gpu, e->hbuf, err) ? NULL : e->hbuf;
    }
#endif
    (void)err;
    return fb_fwd_hidden(e->cpu);
}

static int eng_logits(eng *e, size_t t0, size_t n, float *out, fb_err *err) {
    double ts = fb_now();
    int rc;
#ifdef FB_HAVE_CUDA
    if (e->cuda) rc = fb_cufwd_logits(e->gpu, t0, n, out, err);
    else
#endif
        rc = fb_fwd_logits(e->cpu, t0, n, out, err);
    e->secs += fb_now() - ts;
    return rc;
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
    fb_fwd_hooks hooks = {0};
    if (o->emulate_w4a4) {
        if (w4a4_build(quant, &cq, L, &act, err)) {
            w4a4_free(&act);
            return -1;
        }
        have_act = 1;
        hooks.user = &act;
        hooks.linear_input = w4a4_hook;
    }
    eng er, eq;
    memset(&er, 0, sizeof er);
    memset(&eq, 0, sizeof eq);
    int rc = -1;
    size_t H = (size_t)cr.hidden, V = (size_t)cr.vocab;
    size_t B = o->logit_block ? o->logit_block : 64;
    float *lr = NULL, *lq = NULL;
    double *nll_r = NULL, *nll_q = NULL, *kl = NULL;
    int *agree = NULL;
    int32_t *next = NULL;
    double *kls = NULL;
    if (eng_new(&er, ref, &cr, o, NULL, NULL, err) ||
        eng_new(&eq, quant, &cq, o, have_act ? &hooks : NULL, have_act ? &act : NULL, err))
        goto out;
    if (eng_set_tokens(&er, ids, n_tok, starts, n_seq, err) ||
        eng_set_tokens(&eq, ids, n_tok, starts, n_seq, err))
        goto out;
    res->n_layers = L;
    res->n_tokens = n_tok;
    res->n_seq = n_seq;
    res->layers = fb_calloc((size_t)L + 1, sizeof *res->layers);
    for (int l = 0; l < L; l++) {
        if (o->progress) o->progress(o->progress_user, "layer", (size_t)l, (size_t)L);
        if (eng_layer(&er, l, err) || eng_layer(&eq, l, err)) goto out;
        const float *hr = eng_hidden(&er, err);
        if (!hr) goto out;
        // The reference's buffer may be reused by the quantized engine's copy (CUDA): keep
        // separate host buffers (eng owns one each).
        const float *hq = eng_hidden(&eq, err);
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
    res->n_emulated = have_act ? atomic_load(&act.n) : 0;
#ifdef FB_HAVE_CUDA
    if (have_act && eq.cuda) res->n_emulated = fb_cufwd_get_timing(eq.gpu)->n_emulated;
#endif
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
        if (eng_logits(&er, t0, n, lr, err) || eng_logits(&eq, t0, n, lq, err)) goto out;
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
    res->n_emulated = have_act ? atomic_load(&act.n) : 0;
#ifdef FB_HAVE_CUDA
    if (have_act && eq.cuda) res->n_emulated = fb_cufwd_get_timing(eq.gpu)->n_emulated;
#endif
    rc = 0;
out:
    res->ref_seconds = er.secs;
    res->quant_seconds = eq.secs;
    eng_free(&er);
    eng_free(&eq);
    if (have_act) w4a4_free(&act);
    free(lr); free(lq); free(nll_r); free(nll_q); free(kl); free(agree); free(next); free(kls);
    res->seconds = fb_now() - t_start;
    if (rc) fb_runner_result_free(res);
    return rc;
}
