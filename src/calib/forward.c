// forward.c: the layer-by-layer MoE forward on the CPU (see forward.h for the plan, mm.h for
// the math, arch/arch.h for what differs per family: names, router, q/k norm).
#include "calib/forward.h"
#include "common/cancel.h"
#include "quant/formats.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

// ---- a small parallel-for ----------------------------------------------------------------

typedef struct par_job {
    size_t n;
    atomic_size_t next;
    void (*fn)(void *ctx, int worker, size_t i);
    void *ctx;
    atomic_int stop;
} par_job;

typedef struct par_arg {
    par_job *job;
    int worker;
} par_arg;

static void *par_main(void *p) {
    par_arg *a = p;
    for (;;) {
        if (atomic_load(&a->job->stop)) break;
        size_t i = atomic_fetch_add(&a->job->next, 1);
        if (i >= a->job->n) break;
        a->job->fn(a->job->ctx, a->worker, i);
    }
    return NULL;
}

// Runs fn(ctx, worker, i) for i in [0, n) on up to nth threads (worker in [0, nth)); the
// calling thread is worker 0. Each fn must stop work by itself on error (see par_err).
static void par_for(int nth, size_t n, void (*fn)(void *, int, size_t), void *ctx) {
    par_job job = {.n = n, .fn = fn, .ctx = ctx};
    atomic_init(&job.next, 0);
    atomic_init(&job.stop, 0);
    if (nth > (int)n) nth = (int)n;
    if (nth <= 1) {
        par_arg a = {&job, 0};
        par_main(&a);
        return;
    }
    pthread_t th[256];
    par_arg args[256];
    if (nth > 256) nth = 256;
    for (int w = 1; w < nth; w++) {
        args[w] = (par_arg){&job, w};
        if (pthread_create(&th[w], NULL, par_main, &args[w]) != 0) {
            nth = w;  // run with fewer threads
            break;
        }
    }
    args[0] = (par_arg){&job, 0};
    par_main(&args[0]);
    for (int w = 1; w < nth; w++) pthread_join(th[w], NULL);
}

// First error of a parallel section.
typedef struct par_err {
    pthread_mutex_t mu;
    atomic_int failed;
    fb_err err;
} par_err;

static void par_err_init(par_err *pe) {
    pthread_mutex_init(&pe->mu, NULL);
    atomic_init(&pe->failed, 0);
    pe->err.msg[0] = 0;
}

static void par_err_set(par_err *pe, const fb_err *e) {
    pthread_mutex_lock(&pe->mu);
    if (!atomic_load(&pe->failed)) {
        pe->err = *e;
        atomic_store(&pe->failed, 1);
    }
    pthread_mutex_unlock(&pe->mu);
}

void fb_blas_threads(int n) { openblas_set_num_threads(n < 1 ? 1 : n); }

// ---- engine state ------------------------------------------------------------------------

typedef struct attn_w {
    float *ln1, *ln2;    // [H]
    float *wqkv;         // [Dq + 2 Dk, H]  q, k, v rows stacked
    float *wo;           // [H, Dq]
    float *qn, *kn;      // [Dq], [Dk]
    float *gate;         // [E, H]
    float *bias;         // [E] or NULL
} attn_w;

typedef struct expert_w {
    float *w1, *w3;  // [I, H]
    float *w2;       // [H, I]
} expert_w;

typedef struct worker_buf {
    float *s;        // attention scores: q_block x max_seq
    float *x;        // gathered input rows (routed mode): chunk x H
    float *g, *u;    // w1 / w3 outputs, then SwiGLU (in g): rows x I
    float *p;        // routed SwiGLU rows (all-experts mode): chunk x I
    int32_t *tok;    // absolute token of each routed row (expert_output hook)
    size_t s_cap, x_cap, g_cap, u_cap, p_cap, tok_cap;
} worker_buf;

static int32_t *wb_tok(worker_buf *wb, size_t n) {
    if (wb->tok_cap < n) {
        free(wb->tok);
        wb->tok = fb_malloc(n * sizeof(int32_t) + 4);
        wb->tok_cap = n;
    }
    return wb->tok;
}

struct fb_fwd {
    fb_model_config cfg;
    fb_wsrc *src;
    fb_fwd_opts o;
    int nth;
    size_t ntok, nseq, max_seq;
    size_t *starts;
    float *h, *acc;        // [ntok, H]
    int32_t *ridx;         // [ntok, k]
    float *rw;             // [ntok, k]
    int next_layer;
    attn_w aw;
    expert_w *ew;          // [expert_group]
    worker_buf *wb;        // [nth]
    float *inv_freq;
    float *head_norm, *head;  // final norm [H], lm_head [V, H] (lazily)
    fb_fwd_timing tm;
};

static inline float bf(float x) { return fb_bf16_to_f32(fb_f32_to_bf16(x)); }

// The normalisation of the f32 engine or of a bf16 model (mm.h).
static void norm(const fb_fwd *f, const float *x, const float *w, size_t rows, size_t n, float *y) {
    if (f->o.bf16) fb_mm_rmsnorm_bf16(x, w, (float)f->cfg.eps, rows, n, y);
    else fb_mm_rmsnorm(x, w, (float)f->cfg.eps, rows, n, y);
}

static void *xalloc(size_t nfloat) { return fb_aligned_alloc(nfloat * sizeof(float) + 64); }

static void ensure(float **p, size_t *cap, size_t n) {
    if (*cap >= n) return;
    free(*p);
    *p = xalloc(n);
    *cap = n;
}

fb_fwd *fb_fwd_new(fb_wsrc *src, const fb_model_config *cfg, const fb_fwd_opts *o, fb_err *err) {
    if (!cfg->arch) {
        fb_fail(err, "forward: the model config names no architecture");
        return NULL;
    }
    if (o && o->bf16 && cfg->head_dim > 1024) {
        fb_fail(err, "forward: bf16 activations: head_dim %d > 1024 is not supported", cfg->head_dim);
        return NULL;
    }
    fb_fwd *f = fb_calloc(1, sizeof *f);
    f->cfg = *cfg;
    f->src = src;
    if (o) f->o = *o;
    f->nth = f->o.threads > 0 ? f->o.threads : fb_ncpu();
    if (f->nth > 256) f->nth = 256;
    if (f->o.expert_group <= 0) f->o.expert_group = 32;
    if (f->o.expert_group > cfg->n_experts) f->o.expert_group = cfg->n_experts;
    if (f->o.token_chunk <= 0) f->o.token_chunk = f->o.all_experts ? 512 : 4096;
    if (f->o.q_block <= 0) f->o.q_block = 256;
    if (f->o.stats && (f->o.stats->n_layers != cfg->n_layers ||
                       f->o.stats->n_experts != cfg->n_experts)) {
        fb_fail(err, "statistics table is %d x %d, the model has %d layers x %d experts",
                f->o.stats->n_layers, f->o.stats->n_experts, cfg->n_layers, cfg->n_experts);
        free(f);
        return NULL;
    }
    if (f->o.stats) {
        f->o.stats->all_experts = f->o.all_experts;
        f->o.stats->arch = cfg->arch;
    }
    f->ew = fb_calloc((size_t)f->o.expert_group, sizeof *f->ew);
    f->wb = fb_calloc((size_t)f->nth, sizeof *f->wb);
    f->inv_freq = xalloc((size_t)cfg->rotary_dim / 2 + 1);
    fb_mm_rope_inv_freq(cfg->rope_theta, cfg->rotary_dim, f->inv_freq);
    return f;
}

static void free_layer(fb_fwd *f) {
    attn_w *a = &f->aw;
    free(a->ln1); free(a->ln2); free(a->wqkv); free(a->wo); free(a->qn); free(a->kn);
    free(a->gate); free(a->bias);
    memset(a, 0, sizeof *a);
}

void fb_fwd_free(fb_fwd *f) {
    if (!f) return;
    free_layer(f);
    for (int i = 0; i < f->o.expert_group; i++) {
        free(f->ew[i].w1); free(f->ew[i].w2); free(f->ew[i].w3);
    }
    free(f->ew);
    for (int i = 0; i < f->nth; i++) {
        free(f->wb[i].s); free(f->wb[i].x); free(f->wb[i].g); free(f->wb[i].u); free(f->wb[i].p);
        free(f->wb[i].tok);
    }
    free(f->wb);
    free(f->inv_freq);
    free(f->h); free(f->acc); free(f->ridx); free(f->rw); free(f->starts);
    free(f->head_norm); free(f->head);
    free(f);
}

float *fb_fwd_hidden(fb_fwd *f) { return f->h; }
int fb_fwd_layers_done(const fb_fwd *f) { return f->next_layer; }
const int32_t *fb_fwd_route_idx(const fb_fwd *f) { return f->ridx; }
const float *fb_fwd_route_w(const fb_fwd *f) { return f->rw; }
const fb_fwd_timing *fb_fwd_get_timing(const fb_fwd *f) { return &f->tm; }

// Loads a whole tensor of the given shape into a fresh buffer (*out).
static int load_new(fb_fwd *f, const char *name, int ndim, int64_t d0, int64_t d1, float **out,
                    fb_err *err) {
    int64_t shape[2] = {d0, d1};
    float *p = xalloc((size_t)(d0 * (ndim > 1 ? d1 : 1)));
    if (fb_wsrc_load_full(f->src, name, ndim, shape, p, err)) {
        free(p);
        return -1;
    }
    *out = p;
    return 0;
}

int fb_fwd_set_tokens(fb_fwd *f, const int32_t *ids, size_t n_tok, const size_t *starts,
                      size_t n_seq, fb_err *err) {
    const fb_model_config *c = &f->cfg;
    if (n_seq == 0 || starts[0] != 0 || starts[n_seq] != n_tok)
        return fb_fail(err, "forward: sequence boundaries do not cover the %zu tokens", n_tok);
    size_t max_seq = 0;
    for (size_t s = 0; s < n_seq; s++) {
        if (starts[s + 1] <= starts[s])
            return fb_fail(err, "forward: sequence %zu is empty or out of order", s);
        if (starts[s + 1] - starts[s] > max_seq) max_seq = starts[s + 1] - starts[s];
    }
    char ename[256];
    if (fb_arch_tensor(c->arch, FB_ROLE_EMBED, 0, 0, ename, sizeof ename))
        return fb_fail(err, "forward: the architecture names no embedding");
    int nd;
    int64_t sh[FB_MAX_DIMS];
    if (!f->src->shape(f->src, ename, &nd, sh))
        return fb_fail(err, "%s: tensor %s is missing", f->src->desc, ename);
    if (nd != 2 || sh[1] != c->hidden || sh[0] < c->vocab)
        return fb_fail(err, "%s: tensor %s: shape is not [%d, %d]", f->src->desc, ename,
                       c->vocab, c->hidden);
    free(f->h); free(f->acc); free(f->ridx); free(f->rw); free(f->starts);
    f->acc = NULL;
    f->h = xalloc(n_tok * (size_t)c->hidden);
    f->ridx = fb_malloc(n_tok * (size_t)c->top_k * sizeof(int32_t) + 1);
    f->rw = fb_malloc(n_tok * (size_t)c->top_k * sizeof(float) + 1);
    f->starts = fb_malloc((n_seq + 1) * sizeof(size_t));
    memcpy(f->starts, starts, (n_seq + 1) * sizeof(size_t));
    f->ntok = n_tok;
    f->nseq = n_seq;
    f->max_seq = max_seq;
    f->next_layer = 0;
    double t0 = fb_now();
    for (size_t t = 0; t < n_tok; t++)
        if (ids[t] < 0 || ids[t] >= sh[0])
            return fb_fail(err, "forward: token %zu: id %d outside the vocabulary [0, %lld)", t,
                           ids[t], (long long)sh[0]);
    if (fb_wsrc_gather_rows(f->src, ename, c->hidden, ids, n_tok, f->h, err)) return -1;
    f->tm.load_s += fb_now() - t0;
    if (f->o.stats) f->o.stats->n_tokens = n_tok;
    return 0;
}

// ---- attention ---------------------------------------------------------------------------

static int load_attn(fb_fwd *f, int l, fb_err *err) {
    const fb_model_config *c = &f->cfg;
    attn_w *a = &f->aw;
    free_layer(f);
    int64_t H = c->hidden, Dq = (int64_t)c->n_heads * c->head_dim,
            Dk = (int64_t)c->n_kv_heads * c->head_dim, E = c->n_experts;
    const fb_arch *ar = c->arch;
    char n[256];
#define TNAME(role) (fb_arch_tensor(ar, (role), l, 0, n, sizeof n) ? "(unnamed)" : n)
    if (load_new(f, TNAME(FB_ROLE_LN_IN), 1, H, 0, &a->ln1, err)) return -1;
    if (load_new(f, TNAME(FB_ROLE_LN_POST), 1, H, 0, &a->ln2, err)) return -1;
    a->wqkv = xalloc((size_t)((Dq + 2 * Dk) * H));
    struct { fb_role r; int64_t rows, at; } parts[] = {
        {FB_ROLE_Q, Dq, 0},
        {FB_ROLE_K, Dk, Dq},
        {FB_ROLE_V, Dk, Dq + Dk},
    };
    for (int i = 0; i < 3; i++) {
        int64_t sh[2] = {parts[i].rows, H};
        if (fb_wsrc_load_full(f->src, TNAME(parts[i].r), 2, sh, a->wqkv + parts[i].at * H, err))
            return -1;
    }
    if (load_new(f, TNAME(FB_ROLE_O), 2, H, Dq, &a->wo, err)) return -1;
    if (c->qk_norm) {
        // All heads at once ([heads * head_dim]) or one norm shared by every head ([head_dim]).
        int all = c->qk_norm == FB_QKN_ALL_HEADS;
        if (load_new(f, TNAME(FB_ROLE_Q_NORM), 1, all ? Dq : c->head_dim, 0, &a->qn, err))
            return -1;
        if (load_new(f, TNAME(FB_ROLE_K_NORM), 1, all ? Dk : c->head_dim, 0, &a->kn, err))
            return -1;
    }
    if (load_new(f, TNAME(FB_ROLE_ROUTER), 2, E, H, &a->gate, err)) return -1;
    if (c->router == FB_ROUTER_SIGMOID_BIAS && c->use_routing_bias &&
        fb_arch_tensor(ar, FB_ROLE_ROUTER_BIAS, l, 0, n, sizeof n) == 0) {
        int nd;
        int64_t sh[FB_MAX_DIMS];
        if (f->src->shape(f->src, n, &nd, sh)) {
            if (load_new(f, n, 1, E, 0, &a->bias, err)) return -1;
            // A bf16 model holds the correction bias buffer in bf16 too (from_pretrained casts
            // floating buffers to the model dtype).
            if (f->o.bf16) fb_mm_bf16(a->bias, (size_t)E);
        }
        // Absent: transformers' zero-initialised buffer; with a zero bias the choice is by
        // the sigmoid scores alone, which is what a missing bias means to every loader.
    }
#undef TNAME
    if (f->o.bf16) {  // a bf16 model holds every weight in bf16 (no-op for FP8-dequantized ones)
        size_t q = (size_t)((Dq + 2 * Dk) * H);
        fb_mm_bf16(a->ln1, (size_t)H);
        fb_mm_bf16(a->ln2, (size_t)H);
        fb_mm_bf16(a->wqkv, q);
        fb_mm_bf16(a->wo, (size_t)(H * Dq));
        if (a->qn) fb_mm_bf16(a->qn, (size_t)(c->qk_norm == FB_QKN_ALL_HEADS ? Dq : c->head_dim));
        if (a->kn) fb_mm_bf16(a->kn, (size_t)(c->qk_norm == FB_QKN_ALL_HEADS ? Dk : c->head_dim));
        fb_mm_bf16(a->gate, (size_t)(E * H));
    }
    return 0;
}

typedef struct attn_job {
    fb_fwd *f;
    const float *qkv;  // [L, Dqkv]
    float *out;        // [L, Dq]
    size_t L, nqb;
} attn_job;

// Attention of bf16 q/k/v as transformers' eager_attention_forward computes it, which is what
// llm-compressor calibrates with (calibration_forward_context forces eager attention):
// scores = bf16(q @ k^T) (a bf16 matmul: f32 accumulation, one rounding), times the scaling
// (rounded again), the causal mask added (masked keys become the bf16 minimum: exp gives 0);
// softmax(dim=-1, dtype=float32) as aten's vectorised last-dim softmax: max, e = exp(s - max),
// sum = reduce_all over the row's L keys in 8 f32 lanes (Vectorized<float> on AVX2; a partial
// last vector adds into the first lanes) reduced as reduce_add does, p = e * (1/sum), cast to
// bf16; out = bf16(p @ v). Checked bit for bit against transformers 5.17 / torch 2.15 (AVX2).
enum { LANES = 8 };

// aten's vec::reduce_all(+) over n floats with 8-lane vectors (see above).
static float lane_sum(const float *x, size_t n) {
    if (n < LANES) {  // one partial vector: its elements added in order
        float a = n ? x[0] : 0.0f;
        for (size_t i = 1; i < n; i++) a += x[i];
        return a;
    }
    float l[LANES];
    for (int i = 0; i < LANES; i++) l[i] = x[i];
    size_t d = LANES;
    for (; d + LANES <= n; d += LANES)
        for (int i = 0; i < LANES; i++) l[i] += x[d + (size_t)i];
    for (size_t i = 0; d + i < n; i++) l[i] += x[d + i];
    float v4[4];
    for (int i = 0; i < 4; i++) v4[i] = l[i] + l[i + 4];
    return (v4[0] + v4[2]) + (v4[1] + v4[3]);
}

static void attn_rows_bf16(const attn_job *j, float *S, const float *V, size_t ld, size_t i0,
                           size_t bi, size_t i1, float scale, float *out, size_t ldo) {
    size_t hd = (size_t)j->f->cfg.head_dim, L = j->L;
    float acc[1024];                          // head_dim <= 1024 (fb_fwd_new checks)
    float *e = fb_malloc(L * sizeof(float));  // one row of probabilities over all L keys
    for (size_t r = 0; r < bi; r++) {
        float *s = S + r * i1;
        size_t nvalid = i0 + r + 1;  // causal: keys 0..i0+r; the masked ones give exp() = 0
        float m = -INFINITY;
        for (size_t k = 0; k < nvalid; k++) {
            s[k] = bf(bf(s[k]) * scale);
            if (s[k] > m) m = s[k];
        }
        for (size_t k = 0; k < nvalid; k++) e[k] = expf(s[k] - m);
        for (size_t k = nvalid; k < L; k++) e[k] = 0.0f;
        float rs = 1.0f / lane_sum(e, L);
        for (size_t k = 0; k < nvalid; k++) e[k] = bf(e[k] * rs);
        for (size_t d = 0; d < hd; d++) acc[d] = 0;
        for (size_t k = 0; k < nvalid; k++) {
            const float *v = V + k * ld;
            for (size_t d = 0; d < hd; d++) acc[d] += e[k] * v[d];
        }
        for (size_t d = 0; d < hd; d++) out[r * ldo + d] = bf(acc[d]);
    }
    free(e);
}

static void attn_item(void *ctx, int w, size_t item) {
    attn_job *j = ctx;
    const fb_model_config *c = &j->f->cfg;
    size_t hd = (size_t)c->head_dim, Dq = (size_t)c->n_heads * hd,
           Dk = (size_t)c->n_kv_heads * hd, ld = Dq + 2 * Dk;
    size_t h = item / j->nqb, qb = item % j->nqb, B = (size_t)j->f->o.q_block;
    size_t g = h / (size_t)(c->n_heads / c->n_kv_heads);
    size_t i0 = qb * B, i1 = i0 + B < j->L ? i0 + B : j->L, bi = i1 - i0;
    worker_buf *wb = &j->f->wb[w];
    ensure(&wb->s, &wb->s_cap, B * j->f->max_seq);
    float *S = wb->s;
    const float *Q = j->qkv + i0 * ld + h * hd;
    const float *K = j->qkv + Dq + g * hd;
    const float *V = j->qkv + Dq + Dk + g * hd;
    // Keys 0..i1-1 suffice for a causal block.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)bi, (int)i1, (int)hd, 1.0f, Q,
                (int)ld, K, (int)ld, 0.0f, S, (int)i1);
    // torch: head_dim ** -0.5 in Python (double), applied to the f32 scores as an f32 scalar.
    float scale = (float)pow((double)hd, -0.5);
    if (j->f->o.bf16) {
        attn_rows_bf16(j, S, V, ld, i0, bi, i1, scale, j->out + i0 * Dq + h * hd, Dq);
        return;
    }
    for (size_t r = 0; r < bi; r++) {
        float *s = S + r * i1;
        size_t n = i0 + r + 1;  // causal: keys 0..i0+r
        for (size_t k = 0; k < n; k++) s[k] *= scale;
        fb_mm_softmax(s, n);
        for (size_t k = n; k < i1; k++) s[k] = 0.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)bi, (int)hd, (int)i1, 1.0f, S,
                (int)i1, V, (int)ld, 0.0f, j->out + i0 * Dq + h * hd, (int)Dq);
}

static float absmax(const float *x, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > m || a != a) m = a;  // NaN propagates (max of torch also does)
    }
    return m;
}

static void sgemm_nt(const float *x, const float *w, float *y, size_t m, size_t n, size_t k) {
    // y[m, n] = x[m, k] @ w[n, k]^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1.0f, x, (int)k,
                w, (int)k, 0.0f, y, (int)n);
}

static int run_attention(fb_fwd *f, int l, fb_err *err) {
    const fb_model_config *c = &f->cfg;
    const attn_w *a = &f->aw;
    size_t H = (size_t)c->hidden, hd = (size_t)c->head_dim, Dq = (size_t)c->n_heads * hd,
           Dk = (size_t)c->n_kv_heads * hd, Dqkv = Dq + 2 * Dk;
    float *xn = xalloc(f->max_seq * H);
    float *qkv = xalloc(f->max_seq * Dqkv);
    float *ao = xalloc(f->max_seq * Dq);
    float *po = xalloc(f->max_seq * H);
    int rc = 0;
    float qkv_max = 0, o_max = 0;
    for (size_t s = 0; s < f->nseq && !rc; s++) {
        size_t t0 = f->starts[s], L = f->starts[s + 1] - t0;
        float *hs = f->h + t0 * H;
        norm(f, hs, a->ln1, L, H, xn);
        float m = absmax(xn, L * H);
        if (m > qkv_max || m != m) qkv_max = m;
        if (f->o.hooks && f->o.hooks->linear_input &&
            f->o.hooks->linear_input(f->o.hooks->user, FB_ROLE_Q, l, -1, xn, L, H, err)) {
            rc = -1;
            break;
        }
        fb_blas_threads(f->nth);
        sgemm_nt(xn, a->wqkv, qkv, L, Dqkv, H);
        if (f->o.bf16) fb_mm_bf16(qkv, L * Dqkv);
        void (*rope)(float *, int, int, int, const float *, int64_t) =
            f->o.bf16 ? fb_mm_rope_bf16 : fb_mm_rope;
        for (size_t t = 0; t < L; t++) {
            float *q = qkv + t * Dqkv, *k = q + Dq;
            if (c->qk_norm == FB_QKN_ALL_HEADS) {
                norm(f, q, a->qn, 1, Dq, q);
                norm(f, k, a->kn, 1, Dk, k);
            } else if (c->qk_norm == FB_QKN_PER_HEAD) {
                norm(f, q, a->qn, (size_t)c->n_heads, hd, q);
                norm(f, k, a->kn, (size_t)c->n_kv_heads, hd, k);
            }
            rope(q, c->n_heads, c->head_dim, c->rotary_dim, f->inv_freq, (int64_t)t);
            rope(k, c->n_kv_heads, c->head_dim, c->rotary_dim, f->inv_freq, (int64_t)t);
        }
        fb_blas_threads(1);
        attn_job j = {f, qkv, ao, L, (L + (size_t)f->o.q_block - 1) / (size_t)f->o.q_block};
        par_for(f->nth, (size_t)c->n_heads * j.nqb, attn_item, &j);
        m = absmax(ao, L * Dq);
        if (m > o_max || m != m) o_max = m;
        if (f->o.hooks && f->o.hooks->linear_input &&
            f->o.hooks->linear_input(f->o.hooks->user, FB_ROLE_O, l, -1, ao, L, Dq, err)) {
            rc = -1;
            break;
        }
        fb_blas_threads(f->nth);
        sgemm_nt(ao, a->wo, po, L, H, Dq);
        if (f->o.bf16)
            for (size_t i = 0; i < L * H; i++) hs[i] = bf(hs[i] + bf(po[i]));
        else
            for (size_t i = 0; i < L * H; i++) hs[i] = hs[i] + po[i];
        f->tm.attn_flops += 2.0 * (double)L * (double)H * (double)(Dqkv + Dq) +
                            2.0 * (double)c->n_heads * (double)L * (double)L * (double)hd;
    }
    fb_blas_threads(1);
    if (f->o.stats) {
        f->o.stats->qkv_absmax[l] = qkv_max;
        f->o.stats->o_absmax[l] = o_max;
    }
    free(xn); free(qkv); free(ao); free(po);
    return rc;
}

// ---- MoE ---------------------------------------------------------------------------------

// Routes every token (router in f32 on the normed hidden state); returns max |x| of the MoE
// input in *in_max.
static void run_router(fb_fwd *f, float *in_max) {
    const fb_model_config *c = &f->cfg;
    size_t H = (size_t)c->hidden, E = (size_t)c->n_experts, k = (size_t)c->top_k;
    size_t C = (size_t)f->o.token_chunk;
    float *xn = xalloc(C * H), *lg = xalloc(C * E), *scr = xalloc(E);
    float m = 0;
    fb_blas_threads(f->nth);
    for (size_t t0 = 0; t0 < f->ntok; t0 += C) {
        size_t n = f->ntok - t0 < C ? f->ntok - t0 : C;
        norm(f, f->h + t0 * H, f->aw.ln2, n, H, xn);
        float mm = absmax(xn, n * H);
        if (mm > m || mm != mm) m = mm;
        sgemm_nt(xn, f->aw.gate, lg, n, E, H);
        if (f->o.bf16) fb_mm_bf16(lg, n * E);  // the router Linear of a bf16 model
        for (size_t t = 0; t < n; t++) {
            int32_t *ix = f->ridx + (t0 + t) * k;
            float *wt = f->rw + (t0 + t) * k;
            if (c->router == FB_ROUTER_SOFTMAX) {
                fb_mm_route_softmax(lg + t * E, (int)E, (int)k, c->norm_topk_prob, ix, wt, scr);
                // Qwen3-MoE's router returns its f32 weights cast to the logits' dtype;
                // MiniMax-M2's keeps them f32 (the expert output is then promoted to f32).
                if (f->o.bf16) fb_mm_bf16(wt, k);
            } else {
                fb_mm_route(lg + t * E, f->aw.bias, (int)E, (int)k, ix, wt, scr);
            }
        }
    }
    fb_blas_threads(1);
    free(xn); free(lg); free(scr);
    *in_max = m;
}

typedef struct load_job {
    fb_fwd *f;
    int l, e0;
    par_err pe;
} load_job;

static void load_expert(void *ctx, int w, size_t i) {
    load_job *j = ctx;
    if (atomic_load(&j->pe.failed)) return;
    const fb_model_config *c = &j->f->cfg;
    expert_w *ew = &j->f->ew[i];
    size_t HI = (size_t)c->hidden * (size_t)c->inter;
    if (!ew->w1) {
        ew->w1 = xalloc(HI);
        ew->w2 = xalloc(HI);
        ew->w3 = xalloc(HI);
    }
    char n[256];
    fb_err err;
    int e = j->e0 + (int)i;
    struct { fb_role r; float *dst; int64_t r0, c; } t[] = {
        {FB_ROLE_W_GATE, ew->w1, c->inter, c->hidden},
        {FB_ROLE_W_UP, ew->w3, c->inter, c->hidden},
        {FB_ROLE_W_DOWN, ew->w2, c->hidden, c->inter},
    };
    for (int k = 0; k < 3; k++) {
        if (fb_arch_tensor(c->arch, t[k].r, j->l, e, n, sizeof n)) {
            fb_fail(&err, "forward: expert name too long");
            par_err_set(&j->pe, &err);
            return;
        }
        int64_t sh[2] = {t[k].r0, t[k].c};
        if (fb_wsrc_load_full(j->f->src, n, 2, sh, t[k].dst, &err)) {
            par_err_set(&j->pe, &err);
            return;
        }
        if (j->f->o.bf16) fb_mm_bf16(t[k].dst, (size_t)(t[k].r0 * t[k].c));
    }
}

typedef struct moe_job {
    fb_fwd *f;
    int l, e0;
    size_t t0, n;          // token chunk
    const float *xn;       // [n, H] normed MoE input of the chunk
    const size_t *off;     // [G+1] routed rows of expert e0+i are rows off[i]..off[i+1] of:
    const int32_t *rtok;   //   chunk-relative token
    const float *rwt;      //   routing weight
    float *y;              // [routed, H] weighted expert outputs
    double *flops;         // [nth]
    par_err pe;
} moe_job;

static void moe_item(void *ctx, int w, size_t i) {
    moe_job *j = ctx;
    if (atomic_load(&j->pe.failed)) return;
    fb_fwd *f = j->f;
    const fb_model_config *c = &f->cfg;
    size_t H = (size_t)c->hidden, NI = (size_t)c->inter, E = (size_t)c->n_experts;
    int e = j->e0 + (int)i;
    const expert_w *ew = &f->ew[i];
    size_t r0 = j->off[i], cnt = j->off[i + 1] - r0;
    worker_buf *wb = &f->wb[w];
    fb_calib_stats *st = f->o.stats;
    size_t si = (size_t)j->l * E + (size_t)e;
    int all = f->o.all_experts;
    const fb_fwd_hooks *hk = f->o.hooks;
    fb_err err;
    if (!all && cnt == 0) return;
    size_t rows = all ? j->n : cnt;
    const float *x = j->xn;
    if (!all) {  // gather the routed rows
        ensure(&wb->x, &wb->x_cap, cnt * H);
        for (size_t r = 0; r < cnt; r++)
            memcpy(wb->x + r * H, j->xn + (size_t)j->rtok[r0 + r] * H, H * sizeof(float));
        if (st) {
            float m = absmax(wb->x, cnt * H);
            if (m > st->w13_absmax[si] || m != m) st->w13_absmax[si] = m;
        }
        if (hk && hk->linear_input &&
            hk->linear_input(hk->user, FB_ROLE_W_GATE, j->l, e, wb->x, cnt, H, &err)) {
            par_err_set(&j->pe, &err);
            return;
        }
        x = wb->x;
    }
    ensure(&wb->g, &wb->g_cap, rows * NI);
    ensure(&wb->u, &wb->u_cap, rows * NI);
    sgemm_nt(x, ew->w1, wb->g, rows, NI, H);
    sgemm_nt(x, ew->w3, wb->u, rows, NI, H);
    if (f->o.bf16) {
        fb_mm_bf16(wb->g, rows * NI);
        fb_mm_bf16(wb->u, rows * NI);
        fb_mm_swiglu_bf16(wb->g, wb->u, rows * NI, wb->g);
    } else {
        fb_mm_swiglu(wb->g, wb->u, rows * NI, wb->g);
    }
    if (st) {
        float m = absmax(wb->g, rows * NI);
        if (m > st->w2_absmax[si] || m != m) st->w2_absmax[si] = m;
    }
    if (all && hk && hk->expert_input_all &&
        hk->expert_input_all(hk->user, FB_ROLE_W_DOWN, j->l, e, j->t0, wb->g, rows, NI, &err)) {
        par_err_set(&j->pe, &err);
        return;
    }
    double fl = 4.0 * (double)rows * (double)NI * (double)H;
    if (cnt) {
        float *pr = wb->g;
        if (all) {  // keep the routed rows only
            ensure(&wb->p, &wb->p_cap, cnt * NI);
            for (size_t r = 0; r < cnt; r++)
                memcpy(wb->p + r * NI, wb->g + (size_t)j->rtok[r0 + r] * NI, NI * sizeof(float));
            pr = wb->p;
        } else if (hk && hk->linear_input &&
                   hk->linear_input(hk->user, FB_ROLE_W_DOWN, j->l, e, pr, cnt, NI, &err)) {
            par_err_set(&j->pe, &err);
            return;
        }
        float *y = j->y + r0 * H;
        sgemm_nt(pr, ew->w2, y, cnt, H, NI);
        if (f->o.bf16) fb_mm_bf16(y, cnt * H);
        fl += 2.0 * (double)cnt * (double)NI * (double)H;
        if (hk && hk->expert_output) {
            int32_t *tok = wb_tok(wb, cnt);
            for (size_t r = 0; r < cnt; r++) tok[r] = (int32_t)j->t0 + j->rtok[r0 + r];
            if (hk->expert_output(hk->user, j->l, e, tok, y, cnt, H, &err)) {
                par_err_set(&j->pe, &err);
                return;
            }
        }
        double sal = 0;
        for (size_t r = 0; r < cnt; r++) {
            float *yr = y + r * H;
            float wt = j->rwt[r0 + r];
            double ss = 0;
            for (size_t d = 0; d < H; d++) ss += (double)yr[d] * yr[d];
            sal += (double)wt * sqrt(ss);
            if (f->o.bf16)  // the weighted output cast to the bf16 accumulator's dtype
                for (size_t d = 0; d < H; d++) yr[d] = bf(yr[d] * wt);
            else
                for (size_t d = 0; d < H; d++) yr[d] = yr[d] * wt;
        }
        if (st) {
            st->counts[si] += (int64_t)cnt;
            st->sal_sum[si] += sal;
        }
    }
    j->flops[w] += fl;
}

static int run_moe(fb_fwd *f, int l, fb_err *err) {
    const fb_model_config *c = &f->cfg;
    size_t H = (size_t)c->hidden, E = (size_t)c->n_experts, k = (size_t)c->top_k;
    size_t C = (size_t)f->o.token_chunk, G = (size_t)f->o.expert_group;
    fb_calib_stats *st = f->o.stats;
    double t0 = fb_now();
    float in_max;
    run_router(f, &in_max);
    f->tm.router_s += fb_now() - t0;
    if (st && f->o.all_experts)
        for (size_t e = 0; e < E; e++) {
            float *d = &st->w13_absmax[(size_t)l * E + e];
            if (in_max > *d || in_max != in_max) *d = in_max;
        }
    if (!f->acc) f->acc = xalloc(f->ntok * H);
    memset(f->acc, 0, f->ntok * H * sizeof(float));
    if (C > f->ntok) C = f->ntok;
    float *xn = xalloc(C * H);
    float *y = xalloc(C * k * H);
    size_t *off = fb_malloc((G + 1) * sizeof(size_t));
    int32_t *rtok = fb_malloc(C * k * sizeof(int32_t));
    float *rwt = fb_malloc(C * k * sizeof(float));
    double *flops = fb_calloc((size_t)f->nth, sizeof(double));
    size_t n_chunks = (f->ntok + C - 1) / C, n_groups = (E + G - 1) / G;
    size_t units = n_groups * n_chunks, done = 0;
    int rc = 0;
    fb_blas_threads(1);
    for (size_t e0 = 0; e0 < E && !rc; e0 += G) {
        if (fb_cancel_check("forward", err)) { rc = -1; break; }
        size_t g = E - e0 < G ? E - e0 : G;
        double tl = fb_now();
        load_job lj = {.f = f, .l = l, .e0 = (int)e0};
        par_err_init(&lj.pe);
        par_for(f->nth, g, load_expert, &lj);
        f->tm.load_s += fb_now() - tl;
        if (atomic_load(&lj.pe.failed)) {
            *err = lj.pe.err;
            rc = -1;
            break;
        }
        double te = fb_now();
        for (size_t c0 = 0; c0 < f->ntok && !rc; c0 += C) {
            size_t n = f->ntok - c0 < C ? f->ntok - c0 : C;
            norm(f, f->h + c0 * H, f->aw.ln2, n, H, xn);
            const fb_fwd_hooks *hk = f->o.hooks;
            if (e0 == 0 && f->o.all_experts && hk && hk->expert_input_all &&
                hk->expert_input_all(hk->user, FB_ROLE_W_GATE, l, -1, c0, xn, n, H, err)) {
                rc = -1;
                break;
            }
            // Routed rows of this group's experts, by expert then token (counting sort).
            memset(off, 0, (G + 1) * sizeof(size_t));
            for (size_t t = 0; t < n; t++)
                for (size_t s = 0; s < k; s++) {
                    size_t e = (size_t)f->ridx[(c0 + t) * k + s];
                    if (e >= e0 && e < e0 + g) off[e - e0 + 1]++;
                }
            for (size_t i = 0; i < g; i++) off[i + 1] += off[i];
            size_t *fill = fb_malloc((g + 1) * sizeof(size_t));
            memcpy(fill, off, (g + 1) * sizeof(size_t));
            for (size_t t = 0; t < n; t++)
                for (size_t s = 0; s < k; s++) {
                    size_t e = (size_t)f->ridx[(c0 + t) * k + s];
                    if (e >= e0 && e < e0 + g) {
                        size_t r = fill[e - e0]++;
                        rtok[r] = (int32_t)t;
                        rwt[r] = f->rw[(c0 + t) * k + s];
                    }
                }
            free(fill);
            moe_job mj = {.f = f, .l = l, .e0 = (int)e0, .t0 = c0, .n = n, .xn = xn,
                          .off = off, .rtok = rtok, .rwt = rwt, .y = y, .flops = flops};
            par_err_init(&mj.pe);
            par_for(f->nth, g, moe_item, &mj);
            if (atomic_load(&mj.pe.failed)) {
                *err = mj.pe.err;
                rc = -1;
                break;
            }
            // Combine in ascending expert order (transformers' index_add_ order; a bf16 model
            // accumulates in bf16, one rounding per expert).
            for (size_t i = 0; i < g; i++)
                for (size_t r = off[i]; r < off[i + 1]; r++) {
                    float *a = f->acc + (c0 + (size_t)rtok[r]) * H;
                    const float *yr = y + r * H;
                    if (f->o.bf16)
                        for (size_t d = 0; d < H; d++) a[d] = bf(a[d] + yr[d]);
                    else
                        for (size_t d = 0; d < H; d++) a[d] = a[d] + yr[d];
                }
            done++;
            if (f->o.progress) f->o.progress(f->o.progress_user, l, done, units);
        }
        f->tm.expert_s += fb_now() - te;
    }
    for (int w = 0; w < f->nth; w++) f->tm.expert_flops += flops[w];
    free(xn); free(y); free(off); free(rtok); free(rwt); free(flops);
    if (rc) return rc;
    // Residual, then the hidden-state statistics of the layer output.
    double nsum = 0, nmax = 0;
    float amax = 0;
    for (size_t t = 0; t < f->ntok; t++) {
        float *hr = f->h + t * H;
        const float *ar = f->acc + t * H;
        double ss = 0;
        for (size_t d = 0; d < H; d++) {
            hr[d] = f->o.bf16 ? bf(hr[d] + ar[d]) : hr[d] + ar[d];
            ss += (double)hr[d] * hr[d];
            float a = fabsf(hr[d]);
            if (a > amax || a != a) amax = a;
        }
        double nr = sqrt(ss);
        nsum += nr;
        if (nr > nmax || nr != nr) nmax = nr;
    }
    if (st) {
        st->norm_sum[l] = nsum;
        st->norm_max[l] = nmax;
        st->h_absmax[l] = amax;
    }
    return 0;
}

int fb_fwd_layer(fb_fwd *f, int layer, fb_err *err) {
    if (!f->h) return fb_fail(err, "forward: no tokens set");
    if (layer != f->next_layer || layer >= f->cfg.n_layers)
        return fb_fail(err, "forward: layer %d requested, next is %d of %d", layer,
                       f->next_layer, f->cfg.n_layers);
    if (fb_cancel_check("forward", err)) return -1;
    double t0 = fb_now();
    if (load_attn(f, layer, err)) return -1;
    f->tm.load_s += fb_now() - t0;
    t0 = fb_now();
    if (run_attention(f, layer, err)) return -1;
    f->tm.attn_s += fb_now() - t0;
    if (run_moe(f, layer, err)) return -1;
    if (f->o.stats) f->o.stats->done[layer] = 1;
    f->next_layer++;
    const fb_fwd_hooks *hk = f->o.hooks;
    if (hk && hk->layer_output &&
        hk->layer_output(hk->user, layer, f->h, f->ntok, (size_t)f->cfg.hidden, err))
        return -1;
    return 0;
}

int fb_fwd_set_hidden(fb_fwd *f, int layer, const float *h, fb_err *err) {
    if (!f->h) return fb_fail(err, "forward: no tokens set");
    if (layer < 0 || layer > f->cfg.n_layers)
        return fb_fail(err, "forward: layer %d outside [0, %d]", layer, f->cfg.n_layers);
    if (h != f->h) memcpy(f->h, h, f->ntok * (size_t)f->cfg.hidden * sizeof(float));
    f->next_layer = layer;
    return 0;
}

int fb_fwd_logits(fb_fwd *f, size_t t0, size_t n, float *out, fb_err *err) {
    const fb_model_config *c = &f->cfg;
    size_t H = (size_t)c->hidden, V = (size_t)c->vocab;
    if (!f->h || t0 + n > f->ntok || t0 + n < t0)
        return fb_fail(err, "forward: logits for tokens [%zu, %zu) of %zu", t0, t0 + n, f->ntok);
    if (!f->head) {
        double tl = fb_now();
        char nn[256], hn[256];
        if (fb_arch_tensor(c->arch, FB_ROLE_FINAL_NORM, 0, 0, nn, sizeof nn) ||
            fb_arch_tensor(c->arch, c->tie_embeddings ? FB_ROLE_EMBED : FB_ROLE_LM_HEAD, 0, 0, hn,
                           sizeof hn))
            return fb_fail(err, "forward: the architecture names no final norm or lm_head");
        if (load_new(f, nn, 1, (int64_t)H, 0, &f->head_norm, err)) return -1;
        if (load_new(f, hn, 2, (int64_t)V, (int64_t)H, &f->head, err)) {
            free(f->head_norm);
            f->head_norm = NULL;
            return -1;
        }
        if (f->o.bf16) {
            fb_mm_bf16(f->head_norm, H);
            fb_mm_bf16(f->head, V * H);
        }
        f->tm.load_s += fb_now() - tl;
    }
    size_t B = 256;
    float *xn = xalloc(B * H);
    fb_blas_threads(f->nth);
    for (size_t i = 0; i < n; i += B) {
        size_t m = n - i < B ? n - i : B;
        norm(f, f->h + (t0 + i) * H, f->head_norm, m, H, xn);
        sgemm_nt(xn, f->head, out + i * V, m, V, H);
        if (f->o.bf16) fb_mm_bf16(out + i * V, m * V);
    }
    fb_blas_threads(1);
    free(xn);
    return 0;
}
