// quantize.c: see quantize.h.
#include "jobs/quantize.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "calib/autoround.h"
#include "calib/identity.h"
#include "calib/stats.h"
#include "common/pool.h"
#include "common/progress.h"
#include "common/strmap.h"
#include "cuda/cuengine.h"
#include "io/card.h"
#include "io/checkpoint.h"
#include "jobs/tune.h"
#include "jobs/tune_autoround.h"
#include "quant/recipe.h"
#include "quant/formats.h"
#include "quant/nvfp4.h"
#include "quant/modelopt.h"
#include "quant/qformat.h"
#include "quant/scheme.h"
#include "quant/source.h"
#include "quant/validate_hook.h"
#include "quant/w4a16.h"

#define COPY_CHUNK (4u << 20)   // bytes per work item when copying / dequantizing kept tensors
#define QROWS_BYTES (2u << 20)  // f32 bytes of weight rows read at a time while quantizing
#define MAX_FUSED 4
#define MAX_OUTS 4

// ---- the output description -----------------------------------------------------------

typedef struct out_decl {
    char *name;
    uint64_t nbytes;
} out_decl;

typedef struct member {
    size_t src;              // source tensor index
    size_t plan;             // plan entry
    int n_out;
    int out[MAX_OUTS];       // writer indices (packed, scale, global/shape/qzeros, input gs)
    float igs;               // input_global_scale (W4A4)
    int tuned;               // 1: GPTQ-tuned (its codes come from the overlay's tuned rows)
} member;

enum { IT_COPY = 0, IT_QUANT = 1 };

typedef struct item {
    int type;
    // copy
    size_t src;
    int out, fp8, last;      // last: the final chunk of its tensor
    uint64_t r0, nrows, off, n;
    // quant
    fb_qkind qk;
    const fb_qfmt *qf;       // the output format (quant/qformat.h)
    int w4a4;                // the format's input-scale tensors are written
    size_t group_size;
    int nm;
    member m[MAX_FUSED];
    // results (compute -> commit)
    void *res[MAX_FUSED][MAX_OUTS];
    size_t res_len[MAX_FUSED][MAX_OUTS];
    int skip;                // every output lies in a resumed shard
    int layer;               // decoder layer of its tensor(s), -1 outside the layers
} item;

typedef struct job {
    const fb_quantize_opts *o;
    fb_source *s;
    fb_cw *w;
    item *items;
    size_t n_items;
    float **scales;          // per source FP8 weight, loaded lazily per item (compute)
    void **raw;              // per thread: raw read scratch
    float **rows;            // per thread: f32 rows
    size_t raw_cap, rows_cap;
    int *pending;            // per shard: output tensors not yet complete
    fb_progress *prog;
    uint64_t quantized_elems;
    fb_wsrc *overlay;        // tuned weights of the current layer (GPTQ), NULL without tuning
    size_t seg_base;         // first item of the segment being run (tuning runs layer by layer)
} job;

static const char *src_path(const fb_source *s, size_t i) { return s->ck->files[s->ck->tensors[i].file]->path; }
static const char *src_name(const fb_source *s, size_t i) { return s->ck->tensors[i].t->name; }

// ---- compute ----------------------------------------------------------------------------

static int load_scale(job *j, size_t src, float **out, fb_err *err) {
    *out = NULL;
    if (j->s->role[src] != FB_SRC_FP8_WEIGHT) return 0;
    return fb_source_load_scale(j->s, src, out, err);
}

static int check_finite_rows(job *j, size_t src, const float *x, uint64_t r0, size_t nrows, size_t cols, fb_err *err) {
    int64_t at = fb_find_nonfinite(FB_F32, x, nrows * cols, 1);
    if (at < 0) return 0;
    return fb_fail(err, "%s: tensor %s: %s at [%llu, %llu]; refusing to quantize it", src_path(j->s, src),
                   src_name(j->s, src), isnan(x[at]) ? "NaN" : "Inf", (unsigned long long)(r0 + (uint64_t)at / cols),
                   (unsigned long long)((uint64_t)at % cols));
}

static size_t rows_per_pass(size_t cols) {
    size_t r = QROWS_BYTES / (cols * 4);
    return r ? r : 1;
}

static int compute_quant(job *j, item *it, int tid, fb_err *err) {
    float *rows = j->rows[tid];
    void *raw = j->raw[tid];
    float *scale[MAX_FUSED] = {0};
    int rc = 0;
    for (int k = 0; k < it->nm && !rc; k++) rc = load_scale(j, it->m[k].src, &scale[k], err);
    const fb_qfmt *qf = it->qf;
    float g = 1.0f;
    if (!rc && qf->global_scale) {
        // Pass 1: amax of every member; the fused set shares the global scale of the largest.
        float amax[MAX_FUSED];
        for (int k = 0; k < it->nm && !rc; k++) {
            const fb_st_tensor *t = j->s->ck->tensors[it->m[k].src].t;
            size_t R = (size_t)t->shape[0], C = (size_t)t->shape[1], per = rows_per_pass(C);
            float a = 0;
            for (size_t r = 0; r < R && !rc; r += per) {
                size_t nr = R - r < per ? R - r : per;
                rc = fb_source_read_rows_f32(j->s, it->m[k].src, scale[k], r, nr, rows, raw, j->o->allow_nan, err);
                if (!rc) rc = check_finite_rows(j, it->m[k].src, rows, r, nr, C, err);
                if (!rc) {
                    float b = fb_nvfp4_absmax(rows, nr * C);
                    if (b > a) a = b;
                }
            }
            amax[k] = a;
        }
        if (!rc) g = qf->fused_scale ? qf->fused_scale(amax, (size_t)it->nm) : fb_nvfp4_fused_global_scale(amax, (size_t)it->nm);
        if (!rc && !(isfinite(g) && g > 0))  // ModelOpt: amax/2688 of an all-zero set is 0 (its export divides 0 by 0)
            rc = fb_fail(err, "%s: tensor %s: the weight%s all zero: %s has no per-tensor scale for it", src_path(j->s, it->m[0].src),
                         src_name(j->s, it->m[0].src), it->nm > 1 ? "s of its fused set are" : " is", qf->name);
    }
    // Pass 2: quantize each member into whole-tensor output buffers (the format's tensors).
    for (int k = 0; k < it->nm && !rc; k++) {
        member *m = &it->m[k];
        const fb_st_tensor *t = j->s->ck->tensors[m->src].t;
        size_t R = (size_t)t->shape[0], C = (size_t)t->shape[1], per = rows_per_pass(C), G = it->group_size;
        for (int q = 0; q < MAX_OUTS; q++) {
            it->res_len[k][q] = q < qf->n_out ? (size_t)fb_qfmt_out_bytes(qf, q, (int64_t)R, (int64_t)C, (int64_t)G, it->w4a4) : 0;
            it->res[k][q] = it->res_len[k][q] ? fb_malloc(it->res_len[k][q]) : NULL;
        }
        float *tuned = m->tuned ? fb_aligned_alloc(per * C * sizeof(float) + 64) : NULL, *tscale = NULL;
        char sname[1024];
        if (tuned) {  // tuned scales too (AutoRound)?
            int nd;
            int64_t sh[FB_MAX_DIMS];
            snprintf(sname, sizeof sname, "%s%s", t->name, FB_TUNE_SCALE_SUFFIX);
            if (j->overlay->shape(j->overlay, sname, &nd, sh)) {
                if (!qf->pack_scaled || nd != 2 || sh[0] != (int64_t)R || sh[1] != (int64_t)(C / G))
                    rc = fb_fail(err, "%s: tuned scales of %d dims [%lld, %lld] do not fit [%zu, %zu] of format %s", t->name,
                                 nd, (long long)sh[0], (long long)(nd > 1 ? sh[1] : 0), R, C / G, qf->name);
                else tscale = fb_malloc(per * (C / G) * sizeof(float));
            } else if (!qf->pack_fixed) {
                rc = fb_fail(err, "%s: the format %s cannot store tuned weights without their scales", t->name, qf->name);
            }
        }
        for (size_t r = 0; r < R && !rc; r += per) {
            size_t nr = R - r < per ? R - r : per;
            if (!tscale) {  // with tuned scales pack_scaled writes all that quantize_rows would (qformat.h)
                rc = fb_source_read_rows_f32(j->s, m->src, scale[k], r, nr, rows, raw, j->o->allow_nan, err);
                if (!rc && !qf->global_scale) rc = check_finite_rows(j, m->src, rows, r, nr, C, err);
                if (rc) break;
                qf->quantize_rows(rows, nr, R, C, G, r, g, it->res[k]);
            }
            if (tuned) {  // GPTQ: the observer's scales of the original rows, GPTQ's codes;
                          // AutoRound: its tuned scales (in the overlay beside the weights) and codes
                rc = j->overlay->load(j->overlay, t->name, (int64_t)r, (int64_t)nr, tuned, err);
                if (!rc && tscale) rc = j->overlay->load(j->overlay, sname, (int64_t)r, (int64_t)nr, tscale, err);
                if (!rc && tscale) qf->pack_scaled(tuned, tscale, nr, R, C, G, r, it->res[k]);
                else if (!rc) qf->pack_fixed(tuned, nr, R, C, G, r, g, it->res[k]);
            }
        }
        free(tuned);
        free(tscale);
        if (rc) break;
        qf->finish(R, C, G, g, m->igs, it->res[k]);
        fb_source_release(j->s, m->src);  // read twice (amax, quantize), released once
    }
    for (int k = 0; k < it->nm; k++) free(scale[k]);
    return rc;
}

static int compute(void *ctx, size_t idx, int tid, fb_err *err) {
    job *j = ctx;
    item *it = &j->items[j->seg_base + idx];
    if (it->skip) return 0;
    if (it->type == IT_QUANT) return compute_quant(j, it, tid, err);
    if (it->fp8) {
        float *sc;
        if (fb_source_load_scale(j->s, it->src, &sc, err)) return -1;
        int rc = fb_source_read_rows_bf16(j->s, it->src, sc, it->r0, it->nrows, (uint16_t *)j->rows[tid], j->raw[tid],
                                          j->o->allow_nan, err);
        free(sc);
        if (it->last) fb_source_release(j->s, it->src);
        return rc;
    }
    const fb_ckpt_tensor *ct = &j->s->ck->tensors[it->src];
    const fb_st_file *f = fb_ckpt_file(j->s->ck, ct);
    if (fb_st_read(f, ct->t, it->off, j->rows[tid], it->n, err)) return -1;
    fb_st_release(f, ct->t->offset + it->off, it->n);
    return 0;
}

static int tensor_done(job *j, int out, fb_err *err) {
    int sh = fb_cw_tensor_shard(j->w, out);
    if (--j->pending[sh] == 0) return fb_cw_shard_end(j->w, sh, err);
    return 0;
}

static int commit(void *ctx, size_t idx, int tid, fb_err *err) {
    job *j = ctx;
    item *it = &j->items[j->seg_base + idx];
    int rc = 0;
    if (it->type == IT_COPY) {
        if (!it->skip) rc = fb_cw_write(j->w, it->out, it->off, j->rows[tid], it->n, err);
        if (!rc && it->last) rc = tensor_done(j, it->out, err);
        fb_progress_add(j->prog, it->n, it->last ? 1 : 0);
        return rc;
    }
    for (int k = 0; k < it->nm && !rc; k++) {
        member *m = &it->m[k];
        for (int q = 0; q < m->n_out && !rc; q++) {
            int sh = fb_cw_tensor_shard(j->w, m->out[q]);
            if (!it->skip && !fb_cw_shard_skipped(j->w, sh))
                rc = fb_cw_write(j->w, m->out[q], 0, it->res[k][q], it->res_len[k][q], err);
            if (!rc) rc = tensor_done(j, m->out[q], err);
        }
        const fb_st_tensor *t = j->s->ck->tensors[m->src].t;
        if (!it->skip) j->quantized_elems += t->nelem;
        fb_progress_add(j->prog, 2 * t->nelem, 1);
    }
    for (int k = 0; k < it->nm; k++)
        for (int q = 0; q < MAX_OUTS; q++) {
            free(it->res[k][q]);
            it->res[k][q] = NULL;
        }
    return rc;
}

// ---- plan report ------------------------------------------------------------------------

// "model.layers.12.block_sparse_moe.experts.7.w1" -> "model.layers.*.block_sparse_moe.experts.*.w1"
static char *name_template(const char *name) {
    size_t n = strlen(name);
    char *t = fb_malloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        if ((i == 0 || name[i - 1] == '.') && name[i] >= '0' && name[i] <= '9') {
            size_t e = i;
            while (e < n && name[e] >= '0' && name[e] <= '9') e++;
            if (e == n || name[e] == '.') {
                t[k++] = '*';
                i = e;
                continue;
            }
        }
        t[k++] = name[i++];
    }
    t[k] = 0;
    return t;
}

typedef struct plan_line {
    char *key;     // template + verdict
    char *text;
    size_t count;
} plan_line;

// tuned: per plan entry, 1 when the tuning modifier tunes it (label: "GPTQ", "AutoRound"); NULL
// when the recipe has none (the method column is then left out, as before tuning existed).
static void report_plan(FILE *f, const fb_source *s, const fb_plan *p, const fb_qconfig *cfg, const size_t *logical,
                        size_t n, int verbose, const unsigned char *tuned, const char *label) {
    plan_line *lines = NULL;
    size_t nl = 0;
    fb_strmap idx;
    fb_strmap_init(&idx, 64);
    for (size_t i = 0; i < n; i++) {
        const fb_plan_entry *e = &p->e[i];
        const char *name = src_name(s, logical[i]);
        char why[512];
        const char *dt = fb_dtypes[fb_source_logical_dtype(s, logical[i])].name;
        char meth[32] = "";
        if (tuned) snprintf(meth, sizeof meth, "%-4s ", tuned[i] ? label : "RTN");
        if (e->quantize)
            snprintf(why, sizeof why, "quantize %-9s %starget '%s' (%s)", fb_qkind_name(e->kind), meth,
                     cfg->groups[e->group].targets[e->target_entry], cfg->groups[e->group].name);
        else if (e->rule == FB_RULE_IGNORED)
            snprintf(why, sizeof why, "keep     %-9s ignored by '%s'", dt, cfg->ignore[e->ignore_entry]);
        else
            snprintf(why, sizeof why, "keep     %-9s %s", dt, fb_plan_rule_text(e->rule));
        if (verbose) fprintf(f, "  %-72s %s\n", name, why);
        char *tmpl = name_template(name);
        size_t kl = strlen(tmpl) + strlen(why) + 2;
        char *key = fb_malloc(kl);
        snprintf(key, kl, "%s|%s", tmpl, why);
        int64_t at = fb_strmap_get(&idx, key);
        if (at < 0) {
            lines = fb_realloc(lines, (nl + 1) * sizeof *lines);
            lines[nl] = (plan_line){key, NULL, 0};
            size_t tl = strlen(tmpl) + strlen(why) + 80;
            lines[nl].text = fb_malloc(tl);
            snprintf(lines[nl].text, tl, "%-64s %s", tmpl, why);
            fb_strmap_put(&idx, lines[nl].key, (int64_t)nl, NULL);
            at = (int64_t)nl++;
        } else {
            free(key);
        }
        lines[at].count++;
        free(tmpl);
    }
    if (verbose) fputc('\n', f);
    for (size_t i = 0; i < nl; i++) {
        fprintf(f, "  %6zu x  %s\n", lines[i].count, lines[i].text);
        free(lines[i].key);
        free(lines[i].text);
    }
    free(lines);
    fb_strmap_free(&idx);
}

// ---- which recipe form config.json follows -------------------------------------------------

// llm-compressor writes different quantization args for a `scheme:` preset and for the same
// scheme spelled out in config_groups (tests/golden/scheme-forms, scripts/gen-scheme-form-golden.py):
// the preset carries its scale_dtype and input observer, config_groups gets the defaults
// (scale_dtype null, input observer minmax). The tensors are the same; fourbit writes what
// llm-compressor writes for the form the recipe uses, and the plan says which.
static void args_text(char *b, size_t n, const char *what, const fb_qargs *a) {
    snprintf(b, n, "%s observer %s, scale_dtype %s", what, a->observer[0] ? a->observer : "null",
             a->scale_dtype[0] ? a->scale_dtype : "null");
}

// The fields of `a` that differ from `p` among observer and scale_dtype, appended to b.
static void args_diff(char *b, size_t n, const char *what, const fb_qargs *a, const fb_qargs *p) {
    size_t k = strlen(b);
    if (strcmp(a->observer, p->observer))
        k += (size_t)snprintf(b + k, k < n ? n - k : 0, "%s%s observer %s", k ? ", " : "", what,
                              p->observer[0] ? p->observer : "null");
    if (strcmp(a->scale_dtype, p->scale_dtype) && k < n)
        snprintf(b + k, n - k, "%s%s scale_dtype %s", k ? ", " : "", what, p->scale_dtype[0] ? p->scale_dtype : "null");
}

// 1 when a and p are the same arguments apart from observer, scale_dtype and zp_dtype.
static int same_but_form(const fb_qargs *a, const fb_qargs *p) {
    fb_qargs x;
    fb_qargs_copy(&x, a);
    memcpy(x.observer, p->observer, sizeof x.observer);
    memcpy(x.scale_dtype, p->scale_dtype, sizeof x.scale_dtype);
    memcpy(x.zp_dtype, p->zp_dtype, sizeof x.zp_dtype);
    int eq = fb_qargs_equal(&x, p);
    fb_qargs_free(&x);
    return eq;
}

static void report_form(FILE *f, const fb_qconfig *cfg) {
    static const char *const presets[] = {"NVFP4", "NVFP4A16", "W4A16"};  // what the writers write
    for (size_t g = 0; g < cfg->n_groups; g++) {
        const fb_qscheme *q = &cfg->groups[g];
        char w[160] = "", in[160] = "";
        if (q->has_weights) args_text(w, sizeof w, "weights", &q->weights);
        if (q->has_input) args_text(in, sizeof in, "input", &q->input);
        if (q->preset) {
            fprintf(f, "  config.json: %s follows llm-compressor's `scheme: %s` form (%s%s%s)\n", q->name, q->preset, w,
                    in[0] ? "; " : "", in);
            continue;
        }
        fprintf(f, "  config.json: %s follows llm-compressor's config_groups form, as written (%s%s%s)", q->name, w,
                in[0] ? "; " : "", in);
        for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
            fb_qscheme p;
            fb_err e;
            if (fb_qscheme_preset(presets[i], NULL, 0, "p", &p, &e)) continue;
            int same = p.has_weights == q->has_weights && p.has_input == q->has_input && p.has_output == q->has_output &&
                       (!q->has_weights || same_but_form(&q->weights, &p.weights)) &&
                       (!q->has_input || same_but_form(&q->input, &p.input));
            char d[320] = "";
            if (same) {
                if (q->has_weights) args_diff(d, sizeof d, "weights", &q->weights, &p.weights);
                if (q->has_input) args_diff(d, sizeof d, "input", &q->input, &p.input);
            }
            fb_qscheme_free(&p);
            if (!same) continue;
            if (d[0]) fprintf(f, "; `scheme: %s` would quantize the same tensors but write %s", presets[i], d);
            else fprintf(f, "; the same as `scheme: %s` writes", presets[i]);
            break;
        }
        fputc('\n', f);
    }
}

// ---- the job ----------------------------------------------------------------------------

// Declares output tensor <name><suffix> (to the writer when there is one: not in a dry run)
// and remembers its size. Returns the writer's index, or -1 with err.
static int add_out_shape(fb_cw *w, out_decl **decls, size_t *nd, const char *name, const char *suffix, fb_dtype dt,
                         int ndim, const int64_t *shape, fb_err *err) {
    size_t l = strlen(name) + strlen(suffix) + 1;
    char *full = fb_malloc(l);
    snprintf(full, l, "%s%s", name, suffix);
    int idx = w ? fb_cw_add(w, full, dt, ndim, shape, err) : (int)*nd;
    uint64_t nb = 0;
    fb_st_nbytes(dt, ndim, shape, &nb);
    *decls = fb_realloc(*decls, (*nd + 1) * sizeof **decls);
    (*decls)[*nd] = (out_decl){full, nb};
    (*nd)++;
    return idx;
}

static int add_out(fb_cw *w, out_decl **decls, size_t *nd, const char *name, const char *suffix, fb_dtype dt, int ndim,
                   int64_t a, int64_t b, fb_err *err) {
    int64_t shape[2] = {a, b};
    return add_out_shape(w, decls, nd, name, suffix, dt, ndim, shape, err);
}

// The checkpoint whose tensors are sorted, per thread: portable qsort has no context
// argument (qsort_r differs between glibc and the BSDs). The order is total (names are
// unique), so any sort gives the same result.
static _Thread_local const fb_ckpt *cmp_module_ckpt;
static int cmp_module_order(const void *a, const void *b) {
    const fb_ckpt *c = cmp_module_ckpt;
    const char *x = c->tensors[*(const size_t *)a].t->name, *y = c->tensors[*(const size_t *)b].t->name;
    int r = fb_module_order_cmp(x, y);
    return r ? r : strcmp(x, y);
}

static char *hex_digest(const char *path, fb_err *err) {
    char *h = fb_malloc(33);
    if (fb_file_xxh128(path, h, err)) {
        free(h);
        return NULL;
    }
    return h;
}

// ---- tuning (GPTQ): the layer loop drives the writer segment by segment -------------------

// The decoder layer a tensor belongs to ("model.layers.12.x" with prefix "model.layers"), or -1.
static int layer_of(const char *prefix, const char *name) {
    size_t pl = strlen(prefix);
    if (strncmp(name, prefix, pl) != 0 || name[pl] != '.') return -1;
    const char *p = name + pl + 1;
    long v = 0;
    int nd = 0;
    while (*p >= '0' && *p <= '9' && nd < 9) v = v * 10 + (*p++ - '0'), nd++;
    return nd && *p == '.' ? (int)v : -1;
}

// Runs items [a, b) through the ordered pool.
static int run_segment(job *j, size_t a, size_t b, int nt, fb_err *err) {
    if (b <= a) return 0;
    j->seg_base = a;
    fb_ordered_job oj = {.n_items = b - a, .n_threads = nt, .compute = compute, .commit = commit, .ctx = j,
                         .cancel = j->o->cancel};
    return fb_run_ordered(&oj, err);
}

typedef struct tune_ctx {
    job *j;
    fb_calib_stats *stats;   // one pass: the input absmax the loop records (W4A4 input scales)
    const fb_plan *plan;
    size_t next;             // first item not written yet
    int nt;
    FILE *report;
    double layer_loss, t_layer;
    size_t layer_fallback, layer_n;
    int autoround;
    size_t open_item;        // resume: first item whose shards may still be open
    double write_s;          // in tune_layer_done: the layers' outputs quantized and written
} tune_ctx;

// 1 when every output of item it lies in a finished shard (or a kept / another job's one).
static int item_closed(const job *j, const item *it) {
    if (it->type == IT_COPY) return j->pending[fb_cw_tensor_shard(j->w, it->out)] == 0;
    for (int k = 0; k < it->nm; k++)
        for (int q = 0; q < it->m[k].n_out; q++)
            if (j->pending[fb_cw_tensor_shard(j->w, it->m[k].out[q])] != 0) return 0;
    return 1;
}

// The first layer whose outputs are not all in finished shards: its staged input must stay.
static int tune_keep_from(void *u) {
    tune_ctx *t = u;
    job *j = t->j;
    while (t->open_item < j->n_items && item_closed(j, &j->items[t->open_item])) t->open_item++;
    if (t->open_item == j->n_items) return 1 << 30;
    int l = j->items[t->open_item].layer;
    return l < 0 ? 0 : l;
}

static void tune_layer_start(void *u, int layer, int n_layers, size_t n_tuned) {
    tune_ctx *t = u;
    (void)layer, (void)n_layers;
    t->layer_loss = 0;
    t->layer_fallback = 0;
    t->layer_n = n_tuned;
    t->t_layer = fb_now();
}

static void tune_module_done(void *u, const fb_tune_linear *l, const fb_tune_stat *st) {
    tune_ctx *t = u;
    t->layer_loss += st->loss;
    if (st->rtn_fallback) {
        t->layer_fallback++;
        fprintf(t->report, "%s: warning: %s: its Hessian is not positive definite after dampening: quantized "
                           "round-to-nearest (raise dampening_frac or give more samples)\n", t->j->o->tool, l->name);
    }
    if (t->j->o->verbose && t->autoround && st->joint && st->loss_rtn == 0 && st->loss == 0)
        ;  // the routed experts' loss is reported once, on the group's first Linear
    else if (t->j->o->verbose && t->autoround)
        fprintf(t->report, "  layer %d %-60s AutoRound %s MSE %.6g -> %.6g (RTN -> tuned, %.2f s)\n", l->layer, l->name,
                st->joint == 2 ? "block-output (all its Linears jointly)"
                : st->joint ? "experts' block-output" : "output", st->loss_rtn, st->loss, st->seconds);
    else if (t->j->o->verbose)
        fprintf(t->report, "  layer %d %-60s GPTQ loss %.6g%s (%.2f s)\n", l->layer, l->name, st->loss,
                st->dead_columns ? " (dead input columns)" : "", st->seconds);
}

static int tune_layer_done(void *u, int layer, fb_wsrc *ov, fb_err *err) {
    (void)ov;
    tune_ctx *t = u;
    job *j = t->j;
    size_t b = t->next;
    while (b < j->n_items && j->items[b].layer <= layer) b++;
    int rc = 0;
    // A tuned module is read back from the overlay, which holds this layer's only: one of another
    // layer here would be packed from its original weights (RTN codes) without a word.
    for (size_t k = t->next; k < b && !rc; k++)
        for (int mm = 0; mm < j->items[k].nm && j->items[k].type == IT_QUANT && !rc; mm++)
            if (j->items[k].m[mm].tuned && j->items[k].layer != layer)
                rc = fb_fail(err, "%s: tuned in layer %d's loop step but written in layer %d's", src_name(j->s,
                             j->items[k].m[mm].src), j->items[k].layer, layer);
    for (size_t k = t->next; k < b && t->stats && !rc; k++) {  // W4A4 input scales of this segment
        item *it = &j->items[k];
        if (it->type != IT_QUANT || !it->w4a4 || it->skip) continue;  // skip: in a kept shard
        for (int mm = 0; mm < it->nm && !rc; mm++) {
            const char *mod = t->plan->e[it->m[mm].plan].module;
            float a;
            if (fb_calib_stats_absmax(t->stats, mod, &a) != 0)
                rc = fb_fail(err, "module %s: no input absmax was recorded in the layer loop", mod);
            else if (!(a > 0) || !isfinite(a))
                rc = fb_fail(err, "module %s: input absmax %g over the --dataset tokens: its input_global_scale would "
                                  "come from an amax of 0 (give more samples)", mod, (double)a);
            else
                it->m[mm].igs = fb_nvfp4_input_global_scale(a);
        }
    }
    double t0 = fb_now();
    if (!rc) rc = run_segment(j, t->next, b, t->nt, err);
    t->write_s += fb_now() - t0;
    t->next = b;
    if (!rc && !j->o->quiet && t->layer_n)
        fprintf(t->report, "%s: layer %d: %zu modules tuned (%s), loss %.6g%s, %.2f s\n", j->o->tool, layer,
                t->layer_n, t->autoround ? "AutoRound; sum of the units' output MSEs" : "GPTQ", t->layer_loss, t->layer_fallback ? " (round-to-nearest fallbacks)" : "",
                fb_now() - t->t_layer);
    return rc;
}

// ModelOpt's configs (quant/modelopt.h) from the plan: the quantized modules, and as
// "unquantized layers" every kept module with a 2-D weight (embedding, lm_head, routers: the
// modules modelopt's export gives a disabled quantizer), in checkpoint order.
static json_t *modelopt_config(const fb_ckpt *c, const fb_plan *plan, const size_t *logical, size_t n, unsigned used,
                               json_t **hfq) {
    const char **qn = fb_malloc((n ? n : 1) * sizeof *qn), **un = fb_malloc((n ? n : 1) * sizeof *un);
    size_t nq = 0, nu = 0;
    for (size_t i = 0; i < n; i++) {
        const fb_plan_entry *e = &plan->e[i];
        const fb_st_tensor *t = c->tensors[logical[i]].t;
        size_t l = strlen(t->name);
        if (!e->module || l < 7 || strcmp(t->name + l - 7, ".weight")) continue;
        if (e->quantize) qn[nq++] = e->module;
        else if (t->ndim == 2) un[nu++] = e->module;
    }
    json_t *qc = fb_modelopt_config_json(qn, nq, un, nu, (used & (1u << FB_QK_NVFP4)) != 0, hfq);
    free(qn);
    free(un);
    return qc;
}

int fb_quantize_run(const char *src, const char *dst, const fb_quantize_opts *o, FILE *report,
                    fb_quantize_result *res, fb_err *err) {
    double t0 = fb_now();
    memset(res, 0, sizeof *res);
    fb_recipe rec;
    memset(&rec, 0, sizeof rec);
    if (fb_recipe_load(o->recipe_path, &rec, err)) return -1;
    int autoround = rec.tune.present && rec.tune.algo == FB_RALGO_AUTOROUND;
    const char *algo_name = autoround ? "AutoRound" : "GPTQ", *mod_name = rec.tune.name ? rec.tune.name : "GPTQModifier";
    fb_source *s = NULL;
    fb_calib_stats *stats = NULL;
    fb_plan plan;
    memset(&plan, 0, sizeof plan);
    fb_cw *w = NULL;
    out_decl *decls = NULL;
    size_t nd = 0;
    size_t *logical = NULL;
    fb_tensor_desc *desc = NULL;
    item *items = NULL;
    size_t n_items = 0;
    job j;
    memset(&j, 0, sizeof j);
    char *recipe_hex = NULL, *calib_hex = NULL, *data_hex = NULL;
    int rc = 0;
    unsigned char *tuned = NULL;  // per plan entry: GPTQ tunes it
    size_t n_tuned_plan = 0;
    fb_ds_tokens S;
    memset(&S, 0, sizeof S);
    fb_wsrc *wbase = NULL, *overlay = NULL;
    fb_tune_linear *tl = NULL;
    size_t ntl = 0;

    if (o->ar_cuda && !rec.tune.present) {
        rc = fb_fail(err, "%s: --device cuda runs a GPTQModifier's or an AutoRoundModifier's tuning; the recipe has neither",
                     o->recipe_path);
        goto done;
    }
    if (o->ar_cuda && !o->dry_run) {  // before any layer runs on the CPU: say now that the GPU is missing
        char gname[256], why[512];
        if (!fb_engine_cuda_available(gname, sizeof gname, why, sizeof why)) {
            rc = fb_fail(err, "--device cuda: no usable GPU (%s)", why);
            goto done;
        }
    }
    if (!o->dry_run)  // the dry run lists them with the plan
        for (size_t k = 0; k < rec.n_warnings; k++) fprintf(report, "%s: warning: %s\n", o->tool, rec.warnings[k]);
    if (fb_source_open(src, &s, err)) { rc = -1; goto done; }
    s->keep_cache = 1;  // NVFP4 reads each weight twice; compute() releases each when done
    fb_ckpt *c = s->ck;
    // The logical tensors: everything but FP8 block scales.
    logical = fb_malloc((c->n_tensors + 1) * sizeof *logical);
    desc = fb_malloc((c->n_tensors + 1) * sizeof *desc);
    size_t n = 0;
    for (size_t i = 0; i < c->n_tensors; i++)
        if (s->role[i] != FB_SRC_FP8_SCALE) logical[n++] = i;
    // Canonical order (torch named_modules order of the module names), not the source files'
    // order: the output is then the same whether the source is the FP8 release or its
    // fp8-dequant copy (whose writer lays tensors out by alignment).
    cmp_module_ckpt = c;
    qsort(logical, n, sizeof *logical, cmp_module_order);
    for (size_t k = 0; k < n; k++) {
        const fb_st_tensor *t = c->tensors[logical[k]].t;
        desc[k] = (fb_tensor_desc){t->name, t->ndim, t->shape};
    }
    if (fb_plan_build(&rec.cfg, desc, n, &plan, err)) { rc = fb_err_prefix(err, "%s", o->recipe_path); goto done; }
    // Which schemes the plan uses, and whether this tool writes them.
    unsigned used = 0;
    for (size_t i = 0; i < n; i++)
        if (plan.e[i].quantize) used |= 1u << plan.e[i].kind;
    if (!used) { rc = fb_fail(err, "%s: the recipe quantizes no tensor of %s (check targets and ignore)", o->recipe_path, src); goto done; }
    if (used & ~o->allowed_kinds) {
        for (int k = 0; k < 8; k++)
            if ((used & ~o->allowed_kinds) & (1u << k)) {
                rc = fb_fail(err, "%s: scheme %s is not written by %s (use %s)", o->recipe_path, fb_qkind_name((fb_qkind)k),
                             o->tool, k == FB_QK_W4A16 ? "w4a16-quantize" : "nvfp4-quantize");
                break;
            }
        goto done;
    }
    if (o->format == FB_QOUT_AUTOROUND && used != (1u << FB_QK_W4A16)) {
        rc = fb_fail(err, "--format auto_round writes W4A16 only");
        goto done;
    }
    // Which quantized modules the recipe's GPTQModifier tunes (the rest: round-to-nearest).
    tuned = fb_calloc(n + 1, 1);
    for (size_t i = 0; i < n; i++)
        if (plan.e[i].quantize && fb_recipe_tune_applies(&rec, plan.e[i].module, plan.e[i].cls)) {
            tuned[i] = 1;
            n_tuned_plan++;
        }
    if (rec.tune.present && !n_tuned_plan) {  // GPTQModifier raises the same
        rc = fb_fail(err, "%s: the %s tunes none of the modules the recipe quantizes (check its targets "
                          "and ignore)", o->recipe_path, mod_name);
        goto done;
    }
    for (size_t i = 0; i < n && autoround; i++)  // fourbit's SignRound: int4 symmetric groups of 128
        if (tuned[i] && (plan.e[i].kind != FB_QK_W4A16 || rec.cfg.groups[plan.e[i].group].weights.group_size != 128)) {
            rc = fb_fail(err, "%s: module %s: fourbit's AutoRound tunes W4A16 (int4 symmetric, group_size 128) "
                              "weights; this one is %s with group_size %d", o->recipe_path, plan.e[i].module,
                         fb_qkind_name(plan.e[i].kind), (int)rec.cfg.groups[plan.e[i].group].weights.group_size);
            goto done;
        }
    if (n_tuned_plan && o->format == FB_QOUT_AUTOROUND && !autoround) {
        rc = fb_fail(err, "%s: GPTQ results are written as compressed-tensors pack-quantized / nvfp4-pack-quantized; "
                          "--format auto_round with a GPTQModifier is not supported", o->recipe_path);
        goto done;
    }
    if (n_tuned_plan && (o->shard_count > 1 || o->merge)) {
        rc = fb_fail(err, "%s: %s runs one layer loop over the whole model: split jobs (--shard-count, --merge) "
                          "are not supported with a %s", o->recipe_path, algo_name, mod_name);
        goto done;
    }
    if (n_tuned_plan && !o->dataset && !o->dry_run) {
        rc = fb_fail(err, "%s: the %s needs calibration data: pass --dataset D.jsonl (--samples N "
                          "--seq-len L)", o->recipe_path, mod_name);
        goto done;
    }
    // NVFP4 (W4A4) with --dataset: the input scales come from the same pass over the checkpoint.
    int one_pass = (used & (1u << FB_QK_NVFP4)) && o->dataset;
    if (!n_tuned_plan && !one_pass && o->dataset) {
        rc = fb_fail(err, "%s: --dataset is used by recipes that tune (GPTQModifier) or quantize activations "
                          "(NVFP4 W4A4 input scales); this recipe is weight-only round-to-nearest: drop --dataset",
                     o->recipe_path);
        goto done;
    }
    if (one_pass && o->calib_path) {
        rc = fb_fail(err, "%s: --dataset gathers the NVFP4 input scales in the same pass; --calib %s would give "
                          "them too: pass one of the two", o->recipe_path, o->calib_path);
        goto done;
    }
    if (o->format == FB_QOUT_MODELOPT && used != (1u << FB_QK_NVFP4) && used != (1u << FB_QK_NVFP4A16)) {
        // one quant_algo per checkpoint: modelopt writes MIXED_PRECISION otherwise, not modelled here
        rc = fb_fail(err, "%s: --format modelopt writes one scheme, NVFP4 or NVFP4A16, for every quantized Linear",
                     o->recipe_path);
        goto done;
    }
    // The loader rules on the predicted output, before statistics are read or anything is written.
    if (fb_validate_recipe_before_write(c, &rec, err)) { rc = fb_err_prefix(err, "%s", o->recipe_path); goto done; }
    snprintf(res->scheme, sizeof res->scheme, "%s",
             __builtin_popcount(used) == 1 ? fb_qkind_name((fb_qkind)__builtin_ctz(used)) : "mixed");
    int need_calib = (used & (1u << FB_QK_NVFP4)) != 0;
    if (o->calib_path && !need_calib) {  // silently ignoring it would let a user believe it was used
        rc = fb_fail(err, "%s: --calib %s is used only by NVFP4 (W4A4) input scales, and this recipe's scheme is %s "
                          "(weight-only, no calibration): drop --calib, or use an NVFP4 recipe (recipes/minimax.yaml)",
                     o->recipe_path, o->calib_path, __builtin_popcount(used) == 1 ? fb_qkind_name((fb_qkind)__builtin_ctz(used)) : "mixed");
        goto done;
    }
    if (need_calib && (o->dry_run || one_pass) && !o->calib_path) {  // one pass: the layer loop records them
        need_calib = 0;
    }
    if (need_calib) {
        if (!o->calib_path) {
            rc = fb_fail(err, "%s: NVFP4 (W4A4) needs each quantized Linear's input_global_scale: run `calibrate --model %s "
                              "--dataset D.jsonl -o stats.safetensors` and pass --calib stats.safetensors, or pass --dataset "
                              "D.jsonl to observe them in the same pass, or use the weight-only scheme NVFP4A16 "
                              "(recipes/minimax-nvfp4a16.yaml)", o->recipe_path, src);
            goto done;
        }
        if (fb_calib_stats_read(o->calib_path, &stats, err)) { rc = -1; goto done; }
        // Statistics are indexed by (layer, expert): those of another expert numbering (the
        // model before REAP pruning) would give experts other experts' input scales.
        fb_model_config mc;
        fb_err cerr;
        if (c->config && fb_model_config_parse(c->config, &mc, &cerr) == 0 &&
            (stats->n_experts != mc.n_experts || stats->n_layers != mc.n_layers)) {
            rc = fb_fail(err, "%s: statistics of %d layers x %d experts, the checkpoint has %d x %d (%s %d)%s",
                         o->calib_path, stats->n_layers, stats->n_experts, mc.n_layers, mc.n_experts,
                         mc.arch->key_n_experts, mc.n_experts,
                         stats->n_experts > mc.n_experts
                             ? ": a REAP-pruned checkpoint needs the statistics `reap-prune --stats-out` writes"
                             : "");
            goto done;
        }
        // Statistics of another model give wrong input scales silently: refused unless --force.
        int ic = fb_identity_check(s, o->calib_path, err);
        if (ic < 0 && !o->force) {
            char why[sizeof err->msg];
            snprintf(why, sizeof why, "%s", err->msg);
            rc = fb_fail(err, "%.1500s; calibrate with --model %.200s, or pass --force to use these anyway", why, src);
            goto done;
        }
        if (ic < 0) fprintf(report, "%s: warning: %s (--force: used anyway)\n", o->tool, err->msg);
        if (ic == 1)
            fprintf(report, "%s: warning: %s records no source identity (made by an older calibrate): it cannot be "
                            "checked to come from %s\n", o->tool, o->calib_path, src);
    }
    if (o->format == FB_QOUT_AUTOROUND)
        for (size_t i = 0; i < n; i++)
            if (plan.e[i].quantize && plan.e[i].kind == FB_QK_W4A16) {
                const fb_st_tensor *t = c->tensors[logical[i]].t;
                if (t->shape[0] % 8) {
                    rc = fb_fail(err, "%s: tensor %s: AutoRound packing needs out features divisible by 8, got %lld",
                                 src_path(s, logical[i]), t->name, (long long)t->shape[0]);
                    goto done;
                }
            }

    // Provenance.
    recipe_hex = hex_digest(o->recipe_path, err);
    if (!recipe_hex) { rc = -1; goto done; }
    if (o->calib_path && stats) {
        calib_hex = hex_digest(o->calib_path, err);
        if (!calib_hex) { rc = -1; goto done; }
    }
    if (o->dataset && !o->dry_run) {  // the tuning / calibration data: xxh3-128 of each file, comma-separated
        char *buf = NULL;
        const char **paths = NULL;
        size_t np = fb_split_list(o->dataset, &buf, &paths);
        data_hex = fb_calloc(np * 33 + 1, 1);
        for (size_t k = 0; k < np && !rc; k++) {
            char *h = hex_digest(paths[k], err);
            if (!h) rc = -1;
            else {
                if (k) strcat(data_hex, ",");
                strcat(data_hex, h);
                free(h);
            }
        }
        free(paths);
        free(buf);
        if (rc) goto done;
    }
    // where the tuning ran: the GPU's results are the CPU's within rounding, not byte-identical
    const char *tune_device = !o->ar_cuda ? "cpu" : o->ar_gemm == FB_AR_GEMM_TF32 ? "cuda (tf32 GEMMs)"
                              : o->ar_gemm == FB_AR_GEMM_BF16 ? "cuda (bf16 expert GEMMs)" : "cuda";
    const char *mk[7] = {"fourbit.scheme", "fourbit.recipe_xxh3_128", "fourbit.calib_xxh3_128", "fourbit.format",
                         "fourbit.dataset_xxh3_128", "fourbit.tuning", "fourbit.tuning_device"};
    const char *mv[7] = {res->scheme, recipe_hex, calib_hex ? calib_hex : "none",
                         o->format == FB_QOUT_AUTOROUND ? "auto_round:auto_gptq" : o->format == FB_QOUT_MODELOPT ? "modelopt" : "compressed-tensors",
                         data_hex ? data_hex : "none", algo_name, tune_device};
    fb_cw_opts wo = {.max_shard_size = o->max_shard_size, .resume = o->resume, .force = o->force,
                     .allow_nonfinite = o->allow_nan, .tool = o->tool,
                     .shard_index = o->shard_index, .shard_count = o->shard_count, .merge = o->merge,
                     .n_meta = n_tuned_plan ? 7 : o->dataset ? 5 : 4, .meta_keys = mk, .meta_vals = mv};
    if (!o->dry_run) {
        w = fb_cw_create(dst, src, &wo, err);
        if (!w) { rc = -1; goto done; }
    }

    // Output declaration and work items, in source order.
    size_t cap_items = 0;
    int *first_item_of_set = fb_malloc((plan.n_fused + 1) * sizeof(int));
    for (size_t f = 0; f < plan.n_fused; f++) first_item_of_set[f] = -1;
    uint64_t logical_in = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        size_t si = logical[i];
        const fb_st_tensor *t = c->tensors[si].t;
        const fb_plan_entry *e = &plan.e[i];
        fb_dtype ldt = fb_source_logical_dtype(s, si);
        uint64_t lbytes;
        fb_st_nbytes(ldt, t->ndim, t->shape, &lbytes);
        logical_in += lbytes;
        if (!e->quantize) {
            int out = add_out_shape(w, &decls, &nd, t->name, "", ldt, t->ndim, t->shape, err);
            if (out < 0) { rc = -1; break; }
            res->n_kept++;
            int fp8 = s->role[si] == FB_SRC_FP8_WEIGHT;
            uint64_t rows, cols;
            fb_tensor_2d(t, &rows, &cols);
            if (fp8) {
                uint64_t per = s->bm * (COPY_CHUNK / (s->bm * cols) ? COPY_CHUNK / (s->bm * cols) : 1);
                for (uint64_t r = 0; r < rows; r += per) {
                    if (n_items == cap_items) { cap_items = cap_items ? 2 * cap_items : 1024; items = fb_realloc(items, cap_items * sizeof *items); }
                    uint64_t nr = rows - r < per ? rows - r : per;
                    memset(&items[n_items], 0, sizeof *items);
                    items[n_items] = (item){.type = IT_COPY, .src = si, .out = out, .fp8 = 1, .r0 = r, .nrows = nr,
                                            .off = r * cols * 2, .n = nr * cols * 2, .last = r + nr == rows};
                    n_items++;
                }
            } else {
                uint64_t nb = t->nbytes;
                for (uint64_t off = 0; off < nb || off == 0; off += COPY_CHUNK) {
                    if (n_items == cap_items) { cap_items = cap_items ? 2 * cap_items : 1024; items = fb_realloc(items, cap_items * sizeof *items); }
                    uint64_t k = nb - off < COPY_CHUNK ? nb - off : COPY_CHUNK;
                    memset(&items[n_items], 0, sizeof *items);
                    items[n_items] = (item){.type = IT_COPY, .src = si, .out = out, .off = off, .n = k, .last = off + k >= nb};
                    n_items++;
                    if (nb == 0) break;
                }
            }
            continue;
        }
        // A quantized module: declare its tensors.
        res->n_quantized++;
        if (t->ndim != 2) { rc = fb_fail(err, "%s: tensor %s: only 2-D weights can be quantized", src_path(s, si), t->name); break; }
        int64_t R = t->shape[0], C = t->shape[1];
        const fb_qscheme *g = &rec.cfg.groups[e->group];
        size_t G = e->kind == FB_QK_W4A16 ? (size_t)(g->weights.group_size > 0 ? g->weights.group_size : FB_W4A16_GROUP) : 16;
        if (C % (int64_t)G || C % 8) {
            rc = fb_fail(err, "%s: tensor %s: %lld input columns are not a multiple of the group size %zu", src_path(s, si),
                         t->name, (long long)C, G);
            break;
        }
        size_t ml = strlen(t->name);
        char *mod = fb_strdup(t->name);
        if (ml > 7 && !strcmp(mod + ml - 7, ".weight")) mod[ml - 7] = 0;
        member m = {.src = si, .plan = i, .tuned = tuned[i]};
        const fb_qfmt *qf = fb_qfmt_get(e->kind == FB_QK_W4A16 ? (o->format == FB_QOUT_AUTOROUND ? FB_QF_AUTOROUND
                                                                                                : FB_QF_PACK_INT4)
                                                               : o->format == FB_QOUT_MODELOPT ? FB_QF_MODELOPT : FB_QF_NVFP4);
        int w4a4 = e->kind == FB_QK_NVFP4;
        for (int q = 0; q < qf->n_out; q++) {
            if (qf->out[q].w4a4_only && !w4a4) continue;
            int64_t sh[2];
            qf->shape(q, R, C, (int64_t)G, sh);
            m.out[m.n_out++] = add_out(w, &decls, &nd, mod, qf->out[q].suffix, qf->out[q].dtype, qf->out[q].ndim,
                                       sh[0], qf->out[q].ndim > 1 ? sh[1] : 0, err);
        }
        if (w4a4) {
            float a;
            if (!stats) {
                m.igs = 0;  // dry run without statistics
            } else if (fb_calib_stats_absmax(stats, mod, &a) != 0) {
                rc = fb_fail(err, "%s: no input absmax for module %s (was the statistics file made from this model?)",
                             o->calib_path, mod);
            } else if (!(a > 0) || !isfinite(a)) {
                rc = fb_fail(err, "%s: module %s: input absmax %g: its input_global_scale would come from an amax of 0; "
                                  "calibrate with all experts observed (the default) and more samples",
                             o->calib_path, mod, (double)a);
            } else {
                m.igs = qf->input_scale ? qf->input_scale(a) : fb_nvfp4_input_global_scale(a);
            }
        }
        free(mod);
        for (int q = 0; q < m.n_out; q++)
            if (m.out[q] < 0) rc = -1;
        if (rc) break;
        int nv = (e->kind == FB_QK_NVFP4 || e->kind == FB_QK_NVFP4A16);
        if (nv && e->fused >= 0 && first_item_of_set[e->fused] >= 0) {
            item *it = &items[first_item_of_set[e->fused]];
            FB_ASSERT(it->nm < MAX_FUSED);
            it->m[it->nm++] = m;
            continue;
        }
        if (n_items == cap_items) { cap_items = cap_items ? 2 * cap_items : 1024; items = fb_realloc(items, cap_items * sizeof *items); }
        memset(&items[n_items], 0, sizeof *items);
        items[n_items].type = IT_QUANT;
        items[n_items].qk = e->kind;
        items[n_items].qf = qf;
        items[n_items].w4a4 = w4a4;
        items[n_items].group_size = G;
        items[n_items].m[0] = m;
        items[n_items].nm = 1;
        if (nv && e->fused >= 0) {
            first_item_of_set[e->fused] = (int)n_items;
            res->n_fused_sets++;
        }
        n_items++;
    }
    free(first_item_of_set);
    if (rc) goto done;
    {  // each item's decoder layer: tuning writes the items layer by layer
        const char *lprefix = "model.layers";
        fb_err ae;
        const fb_arch *ar = c->config ? fb_arch_from_config(c->config, &ae) : NULL;
        if (ar) lprefix = ar->layers;
        for (size_t k = 0; k < n_items; k++)
            items[k].layer = layer_of(lprefix, src_name(s, items[k].type == IT_QUANT ? items[k].m[0].src : items[k].src));
    }
    res->bytes_in = logical_in;
    for (size_t d = 0; d < nd; d++) res->bytes_out += decls[d].nbytes;

    if (o->dry_run) {
        fprintf(report, "%s: %s -> %s (dry run), recipe %s, scheme %s%s\n", o->tool, src, dst, o->recipe_path, res->scheme,
                o->format == FB_QOUT_AUTOROUND ? ", AutoRound packing" : o->format == FB_QOUT_MODELOPT ? ", ModelOpt NVFP4 (--format modelopt)" : "");
        if (s->is_fp8) fprintf(report, "  source is FP8 block-scaled (%zux%zu): dequantized in memory, tile by tile\n", s->bm, s->bn);
        report_form(report, &rec.cfg);
        for (size_t k = 0; k < rec.n_warnings; k++) fprintf(report, "  warning: %s\n", rec.warnings[k]);
        if ((used & (1u << FB_QK_NVFP4)) && !stats)
            fprintf(report, "  note: NVFP4 (W4A4) needs input_global_scale: --calib STATS from `calibrate`, or --dataset "
                            "D.jsonl to observe them in the same pass\n");
        if (n_tuned_plan && autoround && rec.tune.iters == 0)
            fprintf(report, "  AutoRound iters 0 (auto-round's RTN mode: %s, routed experts round-to-nearest): %zu of the "
                            "quantized modules, on --dataset calibration data, the others are round-to-nearest\n",
                    rec.tune.disable_opt_rtn ? "disable_opt_rtn, attention round-to-nearest too"
                                             : "attention optimized RTN weighted by its input's imatrix", n_tuned_plan);
        else if (n_tuned_plan && autoround)
            fprintf(report, "  AutoRound (SignRound: iters %d, batch_size %d, lr %g, seed 42): %zu of the quantized modules "
                            "are tuned layer by layer on --dataset calibration data, the others are round-to-nearest\n",
                    rec.tune.iters, rec.tune.batch_size, rec.tune.lr > 0 ? rec.tune.lr : 1.0 / rec.tune.iters, n_tuned_plan);
        else if (n_tuned_plan)
            fprintf(report, "  GPTQ (block_size %d, dampening_frac %g, actorder %s): %zu of the quantized modules are tuned "
                            "layer by layer on --dataset calibration data, the others are round-to-nearest\n",
                    rec.tune.block_size, rec.tune.dampening_frac,
                    rec.cfg.groups[0].weights.actorder ? "weight/static" : "none", n_tuned_plan);
        report_plan(report, s, &plan, &rec.cfg, logical, n, o->verbose, rec.tune.present ? tuned : NULL, algo_name);
        fprintf(report, "  %zu modules quantized (%zu fused sets share a global scale), %zu tensors kept\n", res->n_quantized,
                res->n_fused_sets, res->n_kept);
        fprintf(report, "  expected output: %.3f GB of tensors (%.2fx smaller than the %.3f GB BF16 equivalent)\n",
                (double)res->bytes_out / 1e9, (double)logical_in / (double)(res->bytes_out ? res->bytes_out : 1),
                (double)logical_in / 1e9);
        goto done;
    }

    int ns = fb_cw_plan(w, err);
    if (ns < 0) { rc = -1; goto done; }
    res->n_shards = (size_t)ns;
    j.o = o;
    j.s = s;
    j.w = w;
    j.items = items;
    j.n_items = n_items;
    j.pending = fb_calloc((size_t)ns, sizeof *j.pending);
    for (int d = 0; d < fb_cw_n_tensors(w); d++) j.pending[fb_cw_tensor_shard(w, d)]++;
    for (int sh = 0; sh < ns && !rc; sh++) {
        int b = fb_cw_shard_begin(w, sh, err);
        if (b < 0) rc = -1;
        else if (b == 1) res->n_resumed++;
        else if (b == 2) res->n_other_jobs++;
    }
    if (rc) goto done;
    if (fb_cw_notice(w)) fprintf(report, "%s: %s\n", o->tool, fb_cw_notice(w));
    // Items whose outputs all lie in resumed shards need no work.
    for (size_t k = 0; k < n_items; k++) {
        item *it = &items[k];
        if (it->type == IT_COPY) it->skip = fb_cw_shard_skipped(w, fb_cw_tensor_shard(w, it->out));
        else {
            int all = 1;
            for (int mm = 0; mm < it->nm; mm++)
                for (int q = 0; q < it->m[mm].n_out; q++) all &= fb_cw_shard_skipped(w, fb_cw_tensor_shard(w, it->m[mm].out[q]));
            it->skip = all;
        }
    }
    // Per-thread buffers: the largest row block read while quantizing or copying.
    int nt = o->threads < 1 ? 1 : o->threads;
    size_t need = COPY_CHUNK * 2 + 4096;
    for (size_t k = 0; k < n_items; k++) {
        if (items[k].type != IT_QUANT) {
            if (items[k].fp8 && items[k].n * 2 > need) need = items[k].n * 2;
            continue;
        }
        for (int mm = 0; mm < items[k].nm; mm++) {
            size_t C = (size_t)c->tensors[items[k].m[mm].src].t->shape[1];
            size_t b = rows_per_pass(C) * C * 4;
            if (b > need) need = b;
        }
    }
    j.raw = fb_calloc((size_t)nt, sizeof *j.raw);
    j.rows = fb_calloc((size_t)nt, sizeof *j.rows);
    for (int t = 0; t < nt; t++) {
        j.raw[t] = fb_aligned_alloc(need);
        j.rows[t] = fb_aligned_alloc(need);
    }
    int r = 0;
    if (n_tuned_plan || one_pass) {  // the layer loop: tune / observe a layer, then write the items up to it
        fb_model_config mc;
        if (!c->config) {
            rc = fb_fail(err, "%s: no config.json: GPTQ runs the model", src);
            goto done;
        }
        if (fb_model_config_parse(c->config, &mc, err)) { rc = fb_err_prefix(err, "%s/config.json", src); goto done; }
        if (fb_ds_load_tokens(o->dataset, o->data, NULL, mc.vocab, &S, err)) { rc = -1; goto done; }
        res->n_samples = S.n;
        res->n_tokens = S.n_tok;
        if (!(wbase = fb_wsrc_open_ckpt(src, err))) { rc = -1; goto done; }
        overlay = fb_wsrc_overlay_new(wbase);
        j.overlay = overlay;
        tl = fb_calloc(n_tuned_plan + 1, sizeof *tl);
        int last_layer = -1;
        for (size_t k = 0; k < n_items && !rc; k++) {
            item *it = &items[k];
            if (it->layer >= 0) {
                if (it->layer < last_layer)
                    rc = fb_fail(err, "%s: tensor %s of layer %d comes after layer %d's tensors: cannot write layer by "
                                      "layer", src, src_name(s, it->type == IT_QUANT ? it->m[0].src : it->src), it->layer,
                                 last_layer);
                last_layer = it->layer;
            }
            if (it->type != IT_QUANT) continue;
            for (int mm = 0; mm < it->nm && !rc; mm++) {
                if (!it->m[mm].tuned) continue;
                const fb_plan_entry *e = &plan.e[it->m[mm].plan];
                const fb_st_tensor *t = c->tensors[it->m[mm].src].t;
                fb_tune_linear *L = &tl[ntl];
                memset(L, 0, sizeof *L);
                if (fb_arch_parse(mc.arch, e->module, &L->role, &L->layer, &L->expert) || !fb_role_is_linear(L->role)) {
                    rc = fb_fail(err, "%s: module %s is not a Linear of a %s decoder layer: GPTQ cannot tune it (add it "
                                      "to the GPTQModifier's ignore)", src, e->module, mc.arch->label);
                    break;
                }
                L->name = t->name;
                L->R = t->shape[0];
                L->C = t->shape[1];
                L->qf = it->qf;
                L->group = it->group_size;
                L->nvfp4 = it->qf->global_scale;
                L->n_fused = it->nm;
                for (int q = 0; q < it->nm; q++) L->fused[q] = src_name(s, it->m[q].src);
                L->actorder = rec.cfg.groups[e->group].weights.actorder != FB_AO_NONE;
                ntl++;
            }
        }
        if (rc) goto done;
        if (one_pass) stats = fb_calib_stats_new(mc.n_layers, mc.n_experts);
        j.prog = fb_progress_start(o->tool, logical_in, res->n_kept + res->n_quantized, 1);
        tune_ctx tc = {.j = &j, .nt = nt, .autoround = autoround, .report = report, .stats = one_pass ? stats : NULL, .plan = &plan};
        // Resume: the first layer with outputs still to write starts from its staged input.
        char key[512];
        static const char *GEMM[] = {"", " gemm=tf32"};
        snprintf(key, sizeof key, "algo=%s recipe=%s data=%s threads=%d format=%d experts=%d%s%s src=%s",
                 n_tuned_plan ? algo_name : "observe", recipe_hex ? recipe_hex : "", data_hex ? data_hex : "", nt,
                 (int)o->format, o->expert_group, o->ar_cuda ? " device=cuda" : "",
                 o->ar_gemm == 1 ? GEMM[1] : "", src);
        int resume_layer = 0;
        if (o->resume) {
            resume_layer = mc.n_layers;
            for (size_t k = 0; k < n_items; k++)
                if (!items[k].skip && items[k].layer >= 0 && items[k].layer < resume_layer) resume_layer = items[k].layer;
            fb_err se;
            int chains = n_tuned_plan && autoround ? 2 : 1;
            if (resume_layer == mc.n_layers) {
                // every layer's outputs are kept: nothing to run
            } else if (resume_layer > 0 &&
                       !fb_tune_state_ok(fb_cw_staging_dir(w), resume_layer, key, chains, S.n_tok, (size_t)mc.hidden, &se)) {
                if (!o->quiet)
                    fprintf(report, "%s: note: no usable layer state to resume from (%s): the layer loop starts again "
                                    "from layer 0; the finished shards are kept\n", o->tool, se.msg);
                resume_layer = 0;
            } else if (resume_layer > 0 && !o->quiet) {
                fprintf(report, "%s: resuming the layer loop at layer %d from its staged input (layers 0..%d are in "
                                "kept shards)\n", o->tool, resume_layer, resume_layer - 1);
            }
        }
        fb_tune_opts to = {.state_dir = fb_cw_staging_dir(w), .state_key = key, .resume_layer = resume_layer,
                           .keep_from = tune_keep_from,
                           .algo = autoround ? FB_TUNE_AUTOROUND : FB_TUNE_GPTQ, .block_size = rec.tune.block_size,
                           .ar_iters = rec.tune.iters, .ar_batch = rec.tune.batch_size, .ar_lr = rec.tune.lr,
                           .ar_disable_opt_rtn = rec.tune.disable_opt_rtn,
                           .ar_seed = 42, .expert_group = o->expert_group, .ar_cuda = o->ar_cuda && autoround,
                           .gptq_cuda = o->ar_cuda && !autoround, .ar_gemm = o->ar_gemm,
                           .dampening_frac = rec.tune.dampening_frac, .threads = nt, .cancel = o->cancel,
                           .module_done = tune_module_done, .layer_done = tune_layer_done,
                           .layer_start = tune_layer_start, .user = &tc, .absmax = one_pass ? stats : NULL};
        fb_tune_result tr;
        r = (n_tuned_plan && autoround ? fb_tune_run_autoround : fb_tune_run)(wbase, overlay, &mc, &S, tl, ntl, &to, &tr, err);
        if (!r) r = run_segment(&j, tc.next, n_items, nt, err);  // what follows the last layer
        res->n_tuned = tr.n_tuned;
        res->tune_algo = n_tuned_plan ? algo_name : NULL;
        res->n_tune_fallback = tr.n_fallback;
        res->n_tune_factorized = tr.n_factorized;
        res->tune_seconds = tr.seconds;
        res->tune_calib_s = tr.calib_s, res->tune_tune_s = tr.tune_s, res->tune_propagate_s = tr.propagate_s;
        res->tune_load_s = tr.load_s, res->tune_write_s = tc.write_s;
    } else {
        j.prog = fb_progress_start(o->tool, logical_in, res->n_kept + res->n_quantized, o->quiet);
        r = run_segment(&j, 0, n_items, nt, err);
    }
    fb_progress_finish(j.prog);
    for (size_t k = 0; k < n_items; k++)
        for (int mm = 0; mm < MAX_FUSED; mm++)
            for (int q = 0; q < MAX_OUTS; q++) free(items[k].res[mm][q]);
    if (r == -2) { rc = -2; goto done; }
    if (r) { rc = -1; goto done; }
    res->elements_quantized = j.quantized_elems;
    if (fb_cw_split_job(w)) {  // this job's shards are in place; the merge run does the rest
        res->split_job = 1;
        fb_cw_detach(w);
        w = NULL;
        goto done;
    }

    // config.json, quantization_config.json, recipe.yaml, side files.
    if (fb_copy_side_files(s, fb_cw_staging_dir(w), err) < 0) { rc = -1; goto done; }
    json_t *cfg = c->config ? json_deep_copy(c->config) : json_object();
    json_object_del(cfg, "quantization_config");
    json_t *qc = NULL;
    json_t *hfq = NULL;
    if (o->format == FB_QOUT_AUTOROUND) qc = fb_autoround_config_json(&plan, NULL, err);
    else if (o->format == FB_QOUT_MODELOPT) qc = modelopt_config(c, &plan, logical, n, used, &hfq);
    else qc = fb_qconfig_to_json(&plan, NULL);
    if (!qc) { json_decref(cfg); rc = -1; goto done; }
    json_t *rd = json_object_get(cfg, "rotary_dim"), *hd = json_object_get(cfg, "head_dim");
    if (json_is_integer(rd) && json_is_integer(hd) && json_integer_value(hd) > 0 && !json_object_get(cfg, "partial_rotary_factor"))
        json_object_set_new(cfg, "partial_rotary_factor",
                            json_real((double)json_integer_value(rd) / (double)json_integer_value(hd)));
    json_object_set(cfg, "quantization_config", qc);
    char *p = fb_cw_path(w, "config.json");
    // Sorted keys, as save_pretrained / compressed-tensors write config.json.
    if (json_dump_file(cfg, p, JSON_INDENT(2) | JSON_SORT_KEYS) != 0) rc = fb_fail(err, "%s: cannot write: %s", p, strerror(errno));
    free(p);
    if (!rc && o->format == FB_QOUT_AUTOROUND) {
        p = fb_cw_path(w, "quantization_config.json");
        if (json_dump_file(qc, p, JSON_INDENT(2)) != 0) rc = fb_fail(err, "%s: cannot write: %s", p, strerror(errno));
        free(p);
    }
    if (!rc && hfq) {  // modelopt's own file, key order as it writes it
        p = fb_cw_path(w, "hf_quant_config.json");
        if (json_dump_file(hfq, p, JSON_INDENT(4)) != 0) rc = fb_fail(err, "%s: cannot write: %s", p, strerror(errno));
        free(p);
    }
    json_decref(hfq);
    int auto_map = json_object_get(cfg, "auto_map") != NULL;
    json_decref(qc);
    json_decref(cfg);
    if (!rc) {  // the model card (src/io/card.h), never the source's README.md
        char *plan_text = NULL;
        size_t plan_len = 0;
        FILE *pf = open_memstream(&plan_text, &plan_len);
        if (pf) {
            report_plan(pf, s, &plan, &rec.cfg, logical, n, 0, rec.tune.present ? tuned : NULL, algo_name);
            fclose(pf);
        }
        res->left_out = fb_side_files_left_out(s);
        fb_card_info ci = {.tool = o->tool, .src = src, .src_dir = c->dir, .src_config = c->config, .scheme = res->scheme,
                           .format = o->format == FB_QOUT_AUTOROUND ? "auto_round:auto_gptq (AutoRound's GPTQ packing)"
                                     : o->format == FB_QOUT_MODELOPT ? "ModelOpt NVFP4 (quant_method modelopt, hf_quant_config.json)"
                                     : (used & ((1u << FB_QK_NVFP4) | (1u << FB_QK_NVFP4A16))) ? "compressed-tensors nvfp4-pack-quantized"
                                                                                             : "compressed-tensors pack-quantized",
                           .plan = plan_text, .ignore = (const char *const *)rec.cfg.ignore, .n_ignore = rec.cfg.n_ignore,
                           .recipe_path = o->recipe_path, .recipe_text = rec.text, .recipe_len = rec.text_len,
                           .calib_path = calib_hex ? o->calib_path : NULL, .seconds = fb_now() - t0,
                           .bytes_in = res->bytes_in, .bytes_out = res->bytes_out, .n_shards = res->n_shards,
                           .left_out = res->left_out, .has_auto_map = auto_map};
        rc = fb_card_write(fb_cw_staging_dir(w), &ci, err);
        free(plan_text);
    }
    if (!rc) {
        p = fb_cw_path(w, "recipe.yaml");
        FILE *f = fopen(p, "w");
        if (!f) rc = fb_fail(err, "%s: cannot write: %s", p, strerror(errno));
        else {
            fprintf(f, "# written by fourbit %s %s\n# recipe: %s (xxh3-128 %s)\n# calibration: %s%s%s%s\n", o->tool, FB_VERSION,
                    o->recipe_path, recipe_hex, calib_hex ? o->calib_path : "none", calib_hex ? " (xxh3-128 " : "",
                    calib_hex ? calib_hex : "", calib_hex ? ")" : "");
            if (one_pass)
                fprintf(f, "# input scales (NVFP4 W4A4): observed in the quantizer's layer loop on %zu samples (%zu "
                           "tokens) of %s (xxh3-128 %s), template %s\n", res->n_samples, res->n_tokens, o->dataset,
                        data_hex ? data_hex : "none", o->template_what ? o->template_what : "none");
            if (n_tuned_plan)
                fprintf(f, "# %s: %zu modules tuned on %zu samples (%zu tokens) of %s (xxh3-128 %s), template %s, "
                           "device %s\n", algo_name, res->n_tuned, res->n_samples, res->n_tokens, o->dataset,
                        data_hex ? data_hex : "none", o->template_what ? o->template_what : "none", tune_device);
            fwrite(rec.text, 1, rec.text_len, f);
            if (fclose(f) != 0) rc = fb_fail(err, "%s: write error: %s", p, strerror(errno));
        }
        free(p);
    }
    if (!rc && fb_cw_finish(w, err)) rc = -1;
    if (!rc && fb_validate_output(fb_cw_staging_dir(w), err)) rc = -1;
    if (!rc) {
        rc = fb_cw_commit(w, err) ? -1 : 0;
        w = NULL;
    }

done:
    if (w) {
        if (rc == -2) fb_cw_detach(w);
        else fb_cw_abort(w);
    }
    if (j.raw)
        for (int t = 0; t < (o->threads < 1 ? 1 : o->threads); t++) {
            free(j.raw[t]);
            free(j.rows[t]);
        }
    free(j.raw);
    free(j.rows);
    free(j.pending);
    for (size_t d = 0; d < nd; d++) free(decls[d].name);
    free(decls);
    free(items);
    free(desc);
    free(logical);
    free(recipe_hex);
    free(calib_hex);
    free(data_hex);
    free(tuned);
    free(tl);
    fb_ds_tokens_free(&S);
    if (overlay) fb_wsrc_close(overlay);
    if (wbase) fb_wsrc_close(wbase);
    fb_plan_free(&plan);
    fb_calib_stats_free(stats);
    fb_source_close(s);
    fb_recipe_free(&rec);
    res->seconds = fb_now() - t0;
    return rc;
}
