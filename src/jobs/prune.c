// prune.c: REAP expert pruning (contract in prune.h).
#include "jobs/prune.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "arch/arch.h"
#include "calib/identity.h"
#include "common/pool.h"
#include "common/progress.h"
#include "io/checkpoint.h"
#include "quant/source.h"
#include "quant/validate_hook.h"

// ---- the map ----------------------------------------------------------------------------------

void fb_prune_map_free(fb_prune_map *m) {
    if (!m) return;
    free(m->keep);
    free(m->layer_keep);
    free(m->saliency);
    free(m->counts);
    free(m);
}

static fb_prune_map *map_new(int n_layers, int n_experts, int n_keep) {
    fb_prune_map *m = fb_calloc(1, sizeof *m);
    m->n_layers = n_layers;
    m->n_experts = n_experts;
    m->n_keep = n_keep;
    m->keep = fb_calloc((size_t)n_layers * (size_t)n_keep + 1, sizeof *m->keep);
    m->layer_keep = fb_malloc(((size_t)n_layers + 1) * sizeof *m->layer_keep);
    for (int l = 0; l < n_layers; l++) m->layer_keep[l] = n_keep;
    return m;
}

// Copies the saliency and counts of the statistics into the map (for the report and the file).
static void map_attach_stats(fb_prune_map *m, const fb_calib_stats *s) {
    size_t n = (size_t)m->n_layers * (size_t)m->n_experts;
    m->saliency = fb_malloc((n + 1) * sizeof *m->saliency);
    m->counts = fb_malloc((n + 1) * sizeof *m->counts);
    for (int l = 0; l < m->n_layers; l++)
        for (int e = 0; e < m->n_experts; e++) {
            size_t i = (size_t)l * (size_t)m->n_experts + (size_t)e;
            m->saliency[i] = fb_calib_stats_saliency(s, l, e);
            m->counts[i] = s->counts[i];
        }
}

int fb_prune_keep_for_sparsity(int n_experts, double sparsity, fb_err *err) {
    if (!(sparsity > 0.0 && sparsity < 1.0)) return fb_fail(err, "sparsity must be in (0, 1), got %g", sparsity);
    // llm-compressor: int(num_experts * sparsity), a truncation of the double product.
    int n_drop = (int)((double)n_experts * sparsity);
    if (n_drop < 1)
        return fb_fail(err, "sparsity %g drops no expert of %d (floor(%d * %g) = 0)", sparsity, n_experts, n_experts,
                       sparsity);
    return n_experts - n_drop;
}

// Sort key for the drop order: lowest saliency first; among equal saliencies the higher index
// first (documented tie rule).
typedef struct rank_item { double s; int e; } rank_item;
static int rank_cmp(const void *pa, const void *pb) {
    const rank_item *a = pa, *b = pb;
    if (a->s < b->s) return -1;
    if (a->s > b->s) return 1;
    return b->e - a->e;
}

int fb_prune_select(const fb_calib_stats *s, int n_keep, fb_prune_map **out, fb_err *err) {
    int E = s->n_experts;
    if (n_keep < 1 || n_keep >= E) return fb_fail(err, "experts to keep must be in [1, %d], got %d", E - 1, n_keep);
    for (int l = 0; l < s->n_layers; l++)
        if (!s->done[l]) return fb_fail(err, "statistics: layer %d was not calibrated (no saliency)", l);
    fb_prune_map *m = map_new(s->n_layers, E, n_keep);
    map_attach_stats(m, s);
    rank_item *r = fb_malloc((size_t)E * sizeof *r);
    unsigned char *drop = fb_malloc((size_t)E);
    for (int l = 0; l < s->n_layers; l++) {
        for (int e = 0; e < E; e++) r[e] = (rank_item){m->saliency[(size_t)l * (size_t)E + (size_t)e], e};
        qsort(r, (size_t)E, sizeof *r, rank_cmp);
        memset(drop, 0, (size_t)E);
        for (int k = 0; k < E - n_keep; k++) drop[r[k].e] = 1;
        int n = 0;
        for (int e = 0; e < E; e++)
            if (!drop[e]) m->keep[(size_t)l * (size_t)n_keep + (size_t)n++] = e;
        FB_ASSERT(n == n_keep);
    }
    free(r);
    free(drop);
    *out = m;
    return 0;
}

int fb_prune_map_nonuniform(const fb_prune_map *m) {
    for (int l = 1; l < m->n_layers; l++)
        if (m->layer_keep[l] != m->layer_keep[0]) return 1;
    return 0;
}

// The global drop order: lowest saliency first; ties: the higher expert index, then the
// higher layer, first (prune.h).
typedef struct grank { double s; int l, e; } grank;
static int grank_cmp(const void *pa, const void *pb) {
    const grank *a = pa, *b = pb;
    if (a->s < b->s) return -1;
    if (a->s > b->s) return 1;
    if (a->e != b->e) return b->e - a->e;
    return b->l - a->l;
}

int fb_prune_select_global(const fb_calib_stats *s, long n_drop, int min_experts, fb_prune_map **out, fb_err *err) {
    int E = s->n_experts, L = s->n_layers;
    if (min_experts < 1 || min_experts > E)
        return fb_fail(err, "the floor of experts per layer must be in [1, %d], got %d", E, min_experts);
    long room = (long)L * (long)(E - min_experts);
    if (n_drop < 1 || n_drop > room)
        return fb_fail(err, "dropping %ld of the %d x %d experts is not possible with at least %d per layer (at most %ld "
                            "can go)", n_drop, L, E, min_experts, room);
    for (int l = 0; l < L; l++)
        if (!s->done[l]) return fb_fail(err, "statistics: layer %d was not calibrated (no saliency)", l);
    fb_prune_map *m = map_new(L, E, E);
    map_attach_stats(m, s);
    size_t n = (size_t)L * (size_t)E;
    grank *r = fb_malloc(n * sizeof *r);
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) r[(size_t)l * (size_t)E + (size_t)e] = (grank){m->saliency[(size_t)l * (size_t)E + (size_t)e], l, e};
    qsort(r, n, sizeof *r, grank_cmp);
    unsigned char *drop = fb_calloc(n + 1, 1);
    long dropped = 0;
    for (size_t k = 0; k < n && dropped < n_drop; k++) {
        if (m->layer_keep[r[k].l] <= min_experts) continue;  // this layer is at its floor
        drop[(size_t)r[k].l * (size_t)E + (size_t)r[k].e] = 1;
        m->layer_keep[r[k].l]--;
        dropped++;
    }
    FB_ASSERT(dropped == n_drop);
    int mx = 0;
    for (int l = 0; l < L; l++) mx = m->layer_keep[l] > mx ? m->layer_keep[l] : mx;
    // Rows of the largest count: re-lay keep[] with stride mx.
    free(m->keep);
    m->n_keep = mx;
    m->keep = fb_calloc((size_t)L * (size_t)mx + 1, sizeof *m->keep);
    for (int l = 0; l < L; l++) {
        int i = 0;
        for (int e = 0; e < E; e++)
            if (!drop[(size_t)l * (size_t)E + (size_t)e]) m->keep[(size_t)l * (size_t)mx + (size_t)i++] = e;
        FB_ASSERT(i == m->layer_keep[l]);
    }
    free(r);
    free(drop);
    *out = m;
    return 0;
}

json_t *fb_prune_map_json(const fb_prune_map *m, const fb_arch *a) {
    json_t *o = json_object();
    json_object_set_new(o, "format", json_string("fourbit.reap-map"));
    json_object_set_new(o, "version", json_integer(1));
    json_object_set_new(o, "architecture", json_string(a->name));
    json_object_set_new(o, "num_experts", json_integer(m->n_experts));
    json_object_set_new(o, "num_experts_kept", json_integer(m->n_keep));
    if (fb_prune_map_nonuniform(m)) {
        json_t *pl = json_array();
        for (int l = 0; l < m->n_layers; l++) json_array_append_new(pl, json_integer(m->layer_keep[l]));
        json_object_set_new(o, "per_layer", pl);
    }
    json_t *ret = json_object(), *dr = json_object(), *sal = m->saliency ? json_object() : NULL;
    json_t *cnt = m->counts ? json_object() : NULL;
    unsigned char *kept = fb_malloc((size_t)m->n_experts + 1);
    for (int l = 0; l < m->n_layers; l++) {
        char blk[256];
        fb_arch_block(a, FB_BLOCK_MOE, l, blk, sizeof blk);
        json_t *k = json_array(), *d = json_array();
        memset(kept, 0, (size_t)m->n_experts);
        for (int i = 0; i < m->layer_keep[l]; i++) {
            int e = m->keep[(size_t)l * (size_t)m->n_keep + (size_t)i];
            kept[e] = 1;
            json_array_append_new(k, json_integer(e));
        }
        for (int e = 0; e < m->n_experts; e++)
            if (!kept[e]) json_array_append_new(d, json_integer(e));
        json_object_set_new(ret, blk, k);
        json_object_set_new(dr, blk, d);
        if (sal) {
            json_t *sv = json_array(), *cv = json_array();
            for (int e = 0; e < m->n_experts; e++) {
                size_t i = (size_t)l * (size_t)m->n_experts + (size_t)e;
                json_array_append_new(sv, json_real(m->saliency[i]));
                json_array_append_new(cv, json_integer(m->counts[i]));
            }
            json_object_set_new(sal, blk, sv);
            json_object_set_new(cnt, blk, cv);
        }
    }
    free(kept);
    json_object_set_new(o, "retained", ret);
    json_object_set_new(o, "dropped", dr);
    if (sal) {
        json_object_set_new(o, "saliency", sal);
        json_object_set_new(o, "routed_tokens", cnt);
    }
    return o;
}

int fb_prune_map_read(const char *path, const fb_arch *a, int n_layers, int n_experts, fb_prune_map **out,
                      fb_err *err) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) return fb_fail(err, "%s:%d: %s", path, je.line, je.text);
    int rc = -1;
    fb_prune_map *m = NULL;
    json_t **by_layer = NULL;
    json_t *ret = json_object_get(root, "retained");
    if (!json_is_object(root)) { fb_fail(err, "%s: not a JSON object", path); goto done; }
    if (!ret) ret = root;  // llm-compressor's report_path file: {block: [kept...]}
    else {
        const char *arch = json_string_value(json_object_get(root, "architecture"));
        json_t *ne = json_object_get(root, "num_experts");
        if (arch && strcmp(arch, a->name)) {
            fb_fail(err, "%s: a map of a %s model, the checkpoint is %s", path, arch, a->name);
            goto done;
        }
        if (ne && json_integer_value(ne) != n_experts) {
            fb_fail(err, "%s: a map of %lld experts per layer, the checkpoint has %d", path,
                    (long long)json_integer_value(ne), n_experts);
            goto done;
        }
    }
    if (!json_is_object(ret)) { fb_fail(err, "%s: \"retained\" is not an object", path); goto done; }
    // Keys are matched by their layer index ("<layers>.L" then "." or the end), so the module
    // names of the checkpoint ("model.layers.3.block_sparse_moe") and those of a transformers
    // model in llm-compressor's report ("model.layers.3.mlp") both work.
    by_layer = fb_calloc((size_t)n_layers + 1, sizeof *by_layer);
    const char *key;
    json_t *val;
    size_t pl = strlen(a->layers);
    json_object_foreach(ret, key, val) {
        char *end = NULL;
        long l = -1;
        if (!strncmp(key, a->layers, pl) && key[pl] == '.') l = strtol(key + pl + 1, &end, 10);
        if (l < 0 || !end || end == key + pl + 1 || (*end && *end != '.') || l >= n_layers) {
            fb_fail(err, "%s: \"%s\" names no MoE block of the checkpoint (%s.L..., L < %d)", path, key, a->layers,
                    n_layers);
            goto done;
        }
        if (by_layer[l]) {
            fb_fail(err, "%s: \"%s\": layer %ld is listed twice", path, key, l);
            goto done;
        }
        by_layer[l] = val;
    }
    int mx = 0;
    for (int l = 0; l < n_layers; l++) {
        char blk[256];
        fb_arch_block(a, FB_BLOCK_MOE, l, blk, sizeof blk);
        json_t *k = by_layer[l];
        if (!json_is_array(k)) {
            fb_fail(err, "%s: %s: missing (or not a list of expert indices)", path, blk);
            goto done;
        }
        int n = json_array_size(k) > (size_t)n_experts ? n_experts + 1 : (int)json_array_size(k);
        if (n < 1 || n > n_experts) {
            fb_fail(err, "%s: %s keeps %d experts: must be in [1, %d]", path, blk, n, n_experts);
            goto done;
        }
        if (n > mx) mx = n;
    }
    m = map_new(n_layers, n_experts, mx);
    for (int l = 0; l < n_layers; l++) {
        char blk[256];
        fb_arch_block(a, FB_BLOCK_MOE, l, blk, sizeof blk);
        json_t *k = by_layer[l];
        int n = (int)json_array_size(k);
        m->layer_keep[l] = n;
        for (int i = 0; i < n; i++) {
            json_t *v = json_array_get(k, (size_t)i);
            json_int_t e = json_is_integer(v) ? json_integer_value(v) : -1;
            if (e < 0 || e >= n_experts) {
                fb_fail(err, "%s: %s[%d]: not an expert index in [0, %d)", path, blk, i, n_experts);
                goto done;
            }
            if (i > 0 && e <= m->keep[(size_t)l * (size_t)mx + (size_t)i - 1]) {
                fb_fail(err, "%s: %s[%d] = %lld: indices must be strictly increasing (kept experts keep their order)",
                        path, blk, i, (long long)e);
                goto done;
            }
            m->keep[(size_t)l * (size_t)mx + (size_t)i] = (int)e;
        }
    }
    rc = 0;
    *out = m;
    m = NULL;
done:
    free(by_layer);
    fb_prune_map_free(m);
    json_decref(root);
    return rc;
}

fb_calib_stats *fb_prune_stats(const fb_calib_stats *s, const fb_prune_map *m) {
    fb_calib_stats *d = fb_calib_stats_new(s->n_layers, m->n_keep);
    d->arch = s->arch;
    d->all_experts = s->all_experts;
    d->n_tokens = s->n_tokens;
    for (int l = 0; l < s->n_layers; l++) {
        d->done[l] = s->done[l];
        d->qkv_absmax[l] = s->qkv_absmax[l];
        d->o_absmax[l] = s->o_absmax[l];
        d->norm_sum[l] = s->norm_sum[l];
        d->norm_max[l] = s->norm_max[l];
        d->h_absmax[l] = s->h_absmax[l];
        for (int i = 0; i < m->n_keep; i++) {
            size_t di = (size_t)l * (size_t)m->n_keep + (size_t)i;
            size_t si = (size_t)l * (size_t)s->n_experts + (size_t)m->keep[di];
            d->w13_absmax[di] = s->w13_absmax[si];
            d->w2_absmax[di] = s->w2_absmax[si];
            d->counts[di] = s->counts[si];
            d->sal_sum[di] = s->sal_sum[si];
        }
    }
    return d;
}

// ---- tensor classification -------------------------------------------------------------------

typedef enum { ACT_COPY = 0, ACT_SLICE, ACT_DROP } act;

// Splits a tensor name into (role, layer, expert) of the module the architecture knows, and
// the suffix after it ("" for a parameter such as the router bias). -1 when no prefix of the
// name is a module of the family.
static int parse_tensor(const fb_arch *a, const char *name, fb_role *r, int *l, int *e, size_t *mod_len) {
    if (fb_arch_parse(a, name, r, l, e) == 0) {
        *mod_len = strlen(name);
        return 0;
    }
    char buf[1024];
    if (strlen(name) >= sizeof buf) return -1;
    strcpy(buf, name);
    for (char *d = strrchr(buf, '.'); d; d = strrchr(buf, '.')) {
        *d = 0;
        if (fb_arch_parse(a, buf, r, l, e) == 0) {
            *mod_len = (size_t)(d - buf);
            return 0;
        }
    }
    return -1;
}

// 1 when name lies under the experts block of some layer (so it must parse as an expert).
static int under_experts(const fb_arch *a, const char *name) {
    size_t n = strlen(a->layers);
    if (strncmp(name, a->layers, n) || name[n] != '.') return 0;
    char *end;
    long l = strtol(name + n + 1, &end, 10);
    if (end == name + n + 1 || *end != '.' || l < 0 || l > (1 << 20)) return 0;
    char blk[256];
    if (fb_arch_block(a, FB_BLOCK_EXPERTS, (int)l, blk, sizeof blk)) return 0;
    size_t bn = strlen(blk);
    return !strncmp(name, blk, bn) && name[bn] == '.';
}

typedef struct plan_t {
    act a;
    char *name;    // output name (NULL for dropped)
    int64_t shape[8];
    int layer;
} plan_t;

// Decides what happens to every source tensor. Fails naming the tensor when an expert tensor
// cannot be renumbered or a router tensor cannot be sliced.
static int classify(const fb_ckpt *c, const fb_arch *a, const fb_prune_map *m, const int *newidx, plan_t *pl,
                    fb_err *err) {
    for (size_t i = 0; i < c->n_tensors; i++) {
        const fb_st_tensor *t = c->tensors[i].t;
        const char *file = c->file_names[c->tensors[i].file];
        plan_t *p = &pl[i];
        p->a = ACT_COPY;
        p->layer = -1;
        for (int d = 0; d < t->ndim && d < 8; d++) p->shape[d] = t->shape[d];
        fb_role r;
        int l, e;
        size_t ml;
        if (parse_tensor(a, t->name, &r, &l, &e, &ml)) {
            if (under_experts(a, t->name))
                return fb_fail(err, "%s: tensor %s: under the experts block but not an expert Linear of %s: cannot renumber",
                               file, t->name, a->label);
            p->name = fb_strdup(t->name);
            continue;
        }
        fb_scope sc = fb_role_scope(r);
        if ((sc == FB_SCOPE_EXPERT || r == FB_ROLE_ROUTER || r == FB_ROLE_ROUTER_BIAS) && l >= m->n_layers)
            return fb_fail(err, "%s: tensor %s: layer %d >= num_hidden_layers %d (no saliency for it)", file, t->name, l,
                           m->n_layers);
        p->layer = l;
        if (sc == FB_SCOPE_EXPERT) {
            if (e >= m->n_experts)
                return fb_fail(err, "%s: tensor %s: expert %d >= %d experts in config.json", file, t->name, e,
                               m->n_experts);
            int ne = newidx[(size_t)l * (size_t)m->n_experts + (size_t)e];
            if (ne < 0) {
                p->a = ACT_DROP;
                continue;
            }
            char mod[512];
            if (fb_arch_module(a, r, l, ne, mod, sizeof mod))
                return fb_fail(err, "%s: tensor %s: name too long", file, t->name);
            size_t n = strlen(mod) + strlen(t->name + ml) + 1;
            p->name = fb_malloc(n);
            snprintf(p->name, n, "%s%s", mod, t->name + ml);
            continue;
        }
        p->name = fb_strdup(t->name);
        if (r != FB_ROLE_ROUTER && r != FB_ROLE_ROUTER_BIAS) continue;
        // The router's rows are the experts: slice dimension 0. A tensor of the router whose
        // dimension 0 is not the expert count (a block scale, a global scale) cannot be sliced.
        if (t->ndim >= 1 && t->shape[0] == m->n_experts) {
            p->a = ACT_SLICE;
            p->shape[0] = m->layer_keep[l];
        } else {
            return fb_fail(err, "%s: tensor %s: dimension 0 is %lld, not the %d experts: a router stored this way "
                                "(block-quantized?) cannot be sliced row by row",
                           file, t->name, t->ndim ? (long long)t->shape[0] : 0LL, m->n_experts);
        }
    }
    return 0;
}

// ---- the job ---------------------------------------------------------------------------------

typedef struct chunk {
    int out;           // output tensor index
    size_t src;        // source tensor index
    int slice;         // 1: the kept rows of the whole tensor
    uint64_t off, n;   // output byte range (copy: also the source range)
} chunk;

typedef struct job {
    fb_ckpt *c;
    fb_cw *w;
    const fb_prune_map *m;
    const plan_t *pl;
    chunk *chunks;
    size_t n_chunks;
    unsigned char **buf;  // per thread
    fb_progress *prog;
} job;

static int compute(void *ctx, size_t k, int tid, fb_err *err) {
    job *j = ctx;
    chunk *c = &j->chunks[k];
    const fb_ckpt_tensor *ct = &j->c->tensors[c->src];
    const fb_st_file *f = j->c->files[ct->file];
    if (!c->slice) {
        if (fb_st_read(f, ct->t, c->off, j->buf[tid], c->n, err)) return -1;
        fb_st_release(f, ct->t->offset + c->off, c->n);
        return 0;
    }
    int l = j->pl[c->src].layer;
    uint64_t row = ct->t->nbytes / (uint64_t)j->m->n_experts;
    for (int i = 0; i < j->m->layer_keep[l]; i++) {
        uint64_t e = (uint64_t)j->m->keep[(size_t)l * (size_t)j->m->n_keep + (size_t)i];
        if (fb_st_read(f, ct->t, e * row, j->buf[tid] + (uint64_t)i * row, row, err)) return -1;
    }
    fb_st_release(f, ct->t->offset, ct->t->nbytes);
    return 0;
}

static int commit(void *ctx, size_t k, int tid, fb_err *err) {
    job *j = ctx;
    chunk *c = &j->chunks[k];
    if (fb_cw_write(j->w, c->out, c->off, j->buf[tid], c->n, err)) return -1;
    int last = k + 1 == j->n_chunks || j->chunks[k + 1].out != c->out;
    fb_progress_add(j->prog, c->n, last ? 1 : 0);
    return 0;
}

#define CHUNK_BYTES (4u << 20)

static void push(job *j, size_t *cap, chunk c) {
    if (j->n_chunks == *cap) {
        *cap = *cap ? 2 * *cap : 1024;
        j->chunks = fb_realloc(j->chunks, *cap * sizeof *j->chunks);
    }
    j->chunks[j->n_chunks++] = c;
}

// The object holding the expert count (text_config when the model nests it).
static json_t *cfg_holder(json_t *cfg, const char *key) {
    json_t *tc = json_object_get(cfg, "text_config");
    if (json_is_object(tc) && json_object_get(tc, key)) return tc;
    return cfg;
}

static void report_dry(FILE *f, const fb_arch *a, const fb_prune_map *m, const char *src, const char *dst,
                       uint64_t bytes_in, uint64_t bytes_out) {
    if (fb_prune_map_nonuniform(m)) {
        fprintf(f, "reap-prune: %s -> %s (dry run): %d experts per layer -> per-layer counts", src, dst, m->n_experts);
        for (int l = 0; l < m->n_layers; l++) fprintf(f, "%s%d", l ? ", " : " ", m->layer_keep[l]);
        fprintf(f, " (%d layers)\n", m->n_layers);
    } else
        fprintf(f, "reap-prune: %s -> %s (dry run): %d -> %d experts in each of %d layers\n", src, dst, m->n_experts,
                m->n_keep, m->n_layers);
    unsigned char *kept = fb_malloc((size_t)m->n_experts + 1);
    for (int l = 0; l < m->n_layers; l++) {
        char blk[256];
        fb_arch_block(a, FB_BLOCK_MOE, l, blk, sizeof blk);
        memset(kept, 0, (size_t)m->n_experts);
        for (int i = 0; i < m->layer_keep[l]; i++) kept[m->keep[(size_t)l * (size_t)m->n_keep + (size_t)i]] = 1;
        fprintf(f, "  %s: keep %d, drop", blk, m->layer_keep[l]);
        for (int e = 0; e < m->n_experts; e++) {
            if (kept[e]) continue;
            size_t i = (size_t)l * (size_t)m->n_experts + (size_t)e;
            if (m->saliency)
                fprintf(f, " %d (saliency %.6g, %lld tokens)", e, m->saliency[i], (long long)m->counts[i]);
            else fprintf(f, " %d", e);
        }
        if (m->layer_keep[l] == m->n_experts) fprintf(f, " nothing");
        fputc('\n', f);
    }
    free(kept);
    fprintf(f, "  read %.6f GB, write %.6f GB, saved %.6f GB (%.1f%%)\n", (double)bytes_in / 1e9,
            (double)bytes_out / 1e9, (double)(bytes_in - bytes_out) / 1e9,
            bytes_in ? 100.0 * (double)(bytes_in - bytes_out) / (double)bytes_in : 0.0);
}

void fb_prune_result_free(fb_prune_result *r) {
    free(r->layer_keep);
    r->layer_keep = NULL;
}

int fb_prune_run(const char *src, const char *dst, const fb_prune_opts *o, FILE *report, fb_prune_result *res,
                 fb_err *err) {
    double t0 = fb_now();
    memset(res, 0, sizeof *res);
    int modes = (o->sparsity != 0.0) + (o->n_keep != 0) + (o->keep_path != NULL);
    if (modes != 1) return fb_fail(err, "give exactly one of --sparsity, --experts and --keep");
    if (!o->keep_path && !o->stats_path) return fb_fail(err, "--stats STATS is needed to rank the experts");
    if (o->stats_out && !o->stats_path) return fb_fail(err, "--stats-out needs --stats");
    if (o->stats_out && o->per_layer)
        return fb_fail(err, "--stats-out with --per-layer: the statistics table holds one expert count per model");
    if (o->min_experts && !o->per_layer) return fb_fail(err, "--min-experts needs --per-layer");
    fb_ckpt *c = NULL;
    fb_calib_stats *st = NULL;
    fb_prune_map *m = NULL;
    plan_t *pl = NULL;
    int *newidx = NULL;
    int rc = -1;
    // The checkpoint as stored, not fb_source: nothing is dequantized, and an NVFP4 source
    // holds F8_E4M3 tensors (weight_scale) that are not FP8 block-scaled weights.
    if (fb_ckpt_open(src, &c, err)) return -1;
    fb_model_config mc;
    if (!c->config) {
        fb_fail(err, "%s: no config.json: the expert count and the family are unknown", src);
        goto out;
    }
    if (fb_model_config_parse(c->config, &mc, err)) {
        fb_err_prefix(err, "%s/config.json", src);
        goto out;
    }
    const fb_arch *a = mc.arch;
    int E = mc.n_experts, L = mc.n_layers;
    if (o->stats_path) {
        if (fb_calib_stats_read(o->stats_path, &st, err)) goto out;
        if (st->arch != a) {
            fb_fail(err, "%s: statistics of a %s model, %s is %s", o->stats_path, st->arch->label, src, a->label);
            goto out;
        }
        if (st->n_layers != L || st->n_experts != E) {
            fb_fail(err, "%s: statistics of %d layers x %d experts, %s has %d x %d (another model?)", o->stats_path,
                    st->n_layers, st->n_experts, src, L, E);
            goto out;
        }
        for (int l = 0; l < L; l++)
            if (!st->done[l]) {
                char blk[256];
                fb_arch_block(a, FB_BLOCK_MOE, l, blk, sizeof blk);
                fb_fail(err, "%s: layer %d (%s) was not calibrated: no saliency to rank its experts", o->stats_path, l,
                        blk);
                goto out;
            }
    }
    int floor_k = o->min_experts ? o->min_experts : mc.top_k;
    if (o->per_layer && (floor_k < mc.top_k || floor_k > E)) {
        fb_fail(err, "--min-experts %d: must be in [num_experts_per_tok %d, %d]: fewer experts than the router's top-%d "
                     "leave it nothing to choose from", floor_k, mc.top_k, E, mc.top_k);
        goto out;
    }
    if (o->keep_path) {
        if (fb_prune_map_read(o->keep_path, a, L, E, &m, err)) goto out;
        if (st) map_attach_stats(m, st);
        if (fb_prune_map_nonuniform(m) && !o->per_layer) {
            int l = 1;
            while (m->layer_keep[l] == m->layer_keep[0]) l++;
            fb_fail(err, "%s: layer %d keeps %d experts, layer 0 keeps %d: every layer must keep the same number (a "
                         "per-layer map needs --per-layer)", o->keep_path, l, m->layer_keep[l], m->layer_keep[0]);
            goto out;
        }
        long kept = 0;
        for (int l = 0; l < L; l++) kept += m->layer_keep[l];
        if (kept == (long)L * E) {
            fb_fail(err, "%s: every layer keeps all %d experts: nothing to prune", o->keep_path, E);
            goto out;
        }
    } else if (o->per_layer) {
        // The budget of uniform pruning, spread by one global ranking (prune.h).
        long n_drop;
        if (o->sparsity != 0.0) {
            int nk = fb_prune_keep_for_sparsity(E, o->sparsity, err);
            if (nk < 0) goto out;
            n_drop = (long)L * (E - nk);
        } else if (o->n_keep < 1 || o->n_keep >= E) {
            fb_fail(err, "--experts %d: must be in [%d, %d] (the model has %d experts per layer)", o->n_keep, mc.top_k, E - 1, E);
            goto out;
        } else {
            n_drop = (long)L * (E - o->n_keep);
        }
        if (fb_prune_select_global(st, n_drop, floor_k, &m, err)) goto out;
    } else {
        int n_keep = o->n_keep;
        if (o->sparsity != 0.0) {
            n_keep = fb_prune_keep_for_sparsity(E, o->sparsity, err);
            if (n_keep < 0) goto out;
        } else if (n_keep < 1 || n_keep >= E) {
            fb_fail(err, "--experts %d: must be in [%d, %d] (the model has %d experts per layer)", n_keep, mc.top_k, E - 1,
                    E);
            goto out;
        }
        if (fb_prune_select(st, n_keep, &m, err)) goto out;
    }
    for (int l = 0; l < L; l++)
        if (mc.top_k > m->layer_keep[l] || (o->per_layer && m->layer_keep[l] < floor_k)) {
            char blk[256];
            fb_arch_block(a, FB_BLOCK_MOE, l, blk, sizeof blk);
            if (mc.top_k > m->layer_keep[l])
                fb_fail(err, "num_experts_per_tok %d > %d experts kept%s%s: the router could not pick its top-%d", mc.top_k,
                        m->layer_keep[l], fb_prune_map_nonuniform(m) ? " in " : " per layer", fb_prune_map_nonuniform(m) ? blk : "",
                        mc.top_k);
            else
                fb_fail(err, "%s keeps %d experts, below --min-experts %d", blk, m->layer_keep[l], floor_k);
            goto out;
        }
    int nonuni = fb_prune_map_nonuniform(m);
    res->layer_keep = fb_malloc(((size_t)L + 1) * sizeof *res->layer_keep);
    memcpy(res->layer_keep, m->layer_keep, (size_t)L * sizeof *res->layer_keep);
    res->nonuniform = nonuni;
    // vLLM builds one expert count in every layer (prune.h): a non-uniform result would not load.
    if (nonuni && !o->allow_nonuniform && !o->dry_run) {
        char list[512];
        size_t k = 0;
        for (int l = 0; l < L && k < sizeof list - 16; l++)
            k += (size_t)snprintf(list + k, sizeof list - k, "%s%d", l ? ", " : "", m->layer_keep[l]);
        fb_fail(err, "per-layer expert counts [%s]: no vLLM release can load them (MiniMaxM2MoE / Qwen3MoeSparseMoeBlock "
                     "build %s experts and gate rows in every layer; a smaller layer fails the gate's weight loader), nor "
                     "can transformers or fourbit's engines; pass --allow-nonuniform to write them anyway "
                     "(config.json gets compressed-tensors' moe_sparsity_config), or prune uniformly",
                list, a->key_n_experts);
        goto out;
    }
    newidx = fb_malloc(((size_t)L * (size_t)E + 1) * sizeof *newidx);
    for (size_t i = 0; i < (size_t)L * (size_t)E; i++) newidx[i] = -1;
    for (int l = 0; l < L; l++)
        for (int i = 0; i < m->layer_keep[l]; i++) newidx[(size_t)l * (size_t)E + (size_t)m->keep[(size_t)l * (size_t)m->n_keep + (size_t)i]] = i;
    pl = fb_calloc(c->n_tensors + 1, sizeof *pl);
    if (classify(c, a, m, newidx, pl, err)) goto out;
    // Every kept expert must exist in every layer (a source already pruned or broken is
    // refused here rather than by the validator after the copy).
    for (int l = 0; l < L; l++)
        for (int i = 0; i < m->layer_keep[l]; i++) {
            char nm[512];
            int e = m->keep[(size_t)l * (size_t)m->n_keep + (size_t)i];
            fb_arch_module(a, FB_ROLE_W_DOWN, l, e, nm, sizeof nm);
            size_t n = strlen(nm);
            int found = 0;
            for (size_t t = 0; t < c->n_tensors && !found; t++)
                found = !strncmp(c->tensors[t].t->name, nm, n) && c->tensors[t].t->name[n] == '.';
            if (!found) {
                fb_fail(err, "%s: %s.*: expert %d of layer %d is kept but has no tensors in the checkpoint", src, nm, e, l);
                goto out;
            }
        }
    uint64_t bytes_in = 0, bytes_out = 0;
    for (size_t i = 0; i < c->n_tensors; i++) {
        const fb_st_tensor *t = c->tensors[i].t;
        bytes_in += t->nbytes;
        if (pl[i].a == ACT_COPY) { bytes_out += t->nbytes; res->n_copied++; }
        else if (pl[i].a == ACT_SLICE) {
            bytes_out += t->nbytes / (uint64_t)E * (uint64_t)m->layer_keep[pl[i].layer];
            res->n_sliced++;
        }
        else res->n_dropped++;
    }
    res->n_experts = E;
    res->n_keep = m->n_keep;
    res->n_layers = L;
    res->bytes_in = bytes_in;
    res->bytes_out = bytes_out;
    if (o->dry_run) {
        if (report) report_dry(report, a, m, src, dst, bytes_in, bytes_out);
        rc = 0;
        goto out;
    }

    char opbuf[160], keepbuf[32];
    if (nonuni) snprintf(opbuf, sizeof opbuf, "reap expert pruning %d -> per-layer counts (largest %d)", E, m->n_keep);
    else snprintf(opbuf, sizeof opbuf, "reap expert pruning %d -> %d experts per layer", E, m->n_keep);
    snprintf(keepbuf, sizeof keepbuf, "%d", m->n_keep);
    const char *mk[] = {"fourbit.operation", "fourbit.experts_kept"};
    const char *mv[] = {opbuf, keepbuf};
    fb_cw_opts wo = {.max_shard_size = o->max_shard_size, .resume = o->resume, .force = o->force,
                     .allow_nonfinite = o->allow_nan, .tool = o->tool,
                     .shard_index = o->shard_index, .shard_count = o->shard_count, .merge = o->merge, .n_meta = 2,
                     .meta_keys = mk, .meta_vals = mv};
    fb_cw *w = fb_cw_create(dst, src, &wo, err);
    if (!w) goto out;
    int threads = o->threads > 0 ? o->threads : 1;
    size_t *src_of = fb_malloc((c->n_tensors + 1) * sizeof *src_of);
    int wrc = 0;
    size_t max_buf = CHUNK_BYTES;
    for (size_t i = 0; i < c->n_tensors && !wrc; i++) {
        if (pl[i].a == ACT_DROP) continue;
        const fb_st_tensor *t = c->tensors[i].t;
        int idx = fb_cw_add(w, pl[i].name, t->dtype, t->ndim, pl[i].shape, err);
        if (idx < 0) wrc = -1;
        else src_of[idx] = i;
        if (pl[i].a == ACT_SLICE && t->nbytes > max_buf) max_buf = t->nbytes;
    }
    int n_shards = wrc ? -1 : fb_cw_plan(w, err);
    if (n_shards < 0) wrc = -1;
    job j = {.c = c, .w = w, .m = m, .pl = pl};
    j.buf = fb_calloc((size_t)threads, sizeof *j.buf);
    for (int t = 0; t < threads; t++) j.buf[t] = fb_aligned_alloc(max_buf);
    j.prog = fb_progress_start(o->tool, bytes_out, res->n_copied + res->n_sliced, o->quiet);
    for (int sh = 0; sh < n_shards && !wrc; sh++) {
        int b = fb_cw_shard_begin(w, sh, err);
        if (b < 0) { wrc = -1; break; }
        const int *members;
        int nm = fb_cw_shard_tensors(w, sh, &members);
        if (b == 1 || b == 2) {  // verified from an earlier run / written by another split job
            res->n_resumed += b == 1;
            res->n_other_jobs += b == 2;
            for (int k = 0; k < nm; k++) fb_progress_add(j.prog, fb_cw_tensor_bytes(w, members[k]), 1);
            continue;
        }
        size_t cap = 0;
        j.n_chunks = 0;
        j.chunks = NULL;
        for (int k = 0; k < nm; k++) {
            size_t i = src_of[members[k]];
            uint64_t nb = fb_cw_tensor_bytes(w, members[k]);
            if (pl[i].a == ACT_SLICE) {
                push(&j, &cap, (chunk){members[k], i, 1, 0, nb});
                continue;
            }
            for (uint64_t off = 0; off < nb || (off == 0 && nb == 0); off += CHUNK_BYTES) {
                uint64_t n = nb - off < CHUNK_BYTES ? nb - off : CHUNK_BYTES;
                push(&j, &cap, (chunk){members[k], i, 0, off, n});
                if (nb == 0) break;
            }
        }
        fb_ordered_job oj = {.n_items = j.n_chunks, .n_threads = threads, .compute = compute, .commit = commit,
                             .ctx = &j, .cancel = o->cancel};
        int r = fb_run_ordered(&oj, err);
        if (r == -2) wrc = -2;
        else if (r) wrc = -1;
        free(j.chunks);
        j.chunks = NULL;
        if (!wrc && fb_cw_shard_end(w, sh, err)) wrc = -1;
    }
    fb_progress_finish(j.prog);
    for (int t = 0; t < threads; t++) free(j.buf[t]);
    free(j.buf);
    free(src_of);
    res->n_shards = n_shards > 0 ? (size_t)n_shards : 0;

    if (!wrc && fb_cw_split_job(w)) {  // the merge run writes the rest
        res->split_job = 1;
        fb_cw_detach(w);
        rc = 0;
        goto out;
    }
    if (!wrc) {
        // fb_copy_side_files reads only the checkpoint of its source.
        fb_source side = {.ck = c};
        if (fb_copy_side_files(&side, fb_cw_staging_dir(w), err) < 0) wrc = -1;
    }
    if (!wrc) {
        json_t *cfg = json_deep_copy(c->config);
        json_object_set_new(cfg_holder(cfg, a->key_n_experts), a->key_n_experts, json_integer(m->n_keep));
        if (o->per_layer) {
            // compressed-tensors 0.20 ExpertSparsityConfig, as its model_dump() writes it; where
            // its QuantizationConfig holds it (prune.h). MiniMax-M2 and Qwen3-MoE have an MoE
            // block in every layer: no null entries.
            json_t *ms = json_object(), *ne = json_array();
            json_object_set_new(ms, "method", json_string("prune"));
            for (int l = 0; l < L; l++) json_array_append_new(ne, json_integer(m->layer_keep[l]));
            json_object_set_new(ms, "num_experts", ne);
            json_t *qc = json_object_get(cfg, "quantization_config");
            json_object_set_new(json_is_object(qc) ? qc : cfg, "moe_sparsity_config", ms);
        }
        char *p = fb_cw_path(w, "config.json");
        if (json_dump_file(cfg, p, JSON_INDENT(2)) != 0) wrc = fb_fail(err, "%s: cannot write: %s", p, strerror(errno));
        free(p);
        json_decref(cfg);
    }
    if (!wrc) {
        json_t *mj = fb_prune_map_json(m, a);
        char *p = fb_cw_path(w, FB_PRUNE_MAP_NAME);
        if (json_dump_file(mj, p, JSON_INDENT(2)) != 0) wrc = fb_fail(err, "%s: cannot write: %s", p, strerror(errno));
        free(p);
        json_decref(mj);
    }
    if (!wrc && fb_cw_finish(w, err)) wrc = -1;
    if (!wrc && fb_validate_output_allowing(fb_cw_staging_dir(w), nonuni ? "moe.nonuniform" : NULL, err)) wrc = -1;
    if (wrc == -2 || (wrc && o->cancel && atomic_load(o->cancel))) {  // interrupted: keep for --resume
        fb_cw_detach(w);
        rc = -2;
    } else if (wrc) {
        fb_cw_abort(w);
    } else if (fb_cw_commit(w, err)) {
        rc = -1;
    } else {
        rc = 0;
    }
    if (rc == 0 && o->stats_out) {
        fb_calib_stats *ps = fb_prune_stats(st, m);
        // The pruned checkpoint's identity (calib/identity.h), so that the quantizer's --calib
        // check compares these statistics with DST, not with the unpruned source. A source the
        // identity cannot be read from (an already-quantized checkpoint) gets none: the
        // quantizer then warns that it cannot check.
        char idc[33] = "", *idl = NULL;
        fb_source *ds = NULL;
        fb_err ierr;
        int have_id = fb_source_open(dst, &ds, &ierr) == 0 &&
                      fb_source_identity(ds, ps->n_layers, idc, &idl, &ierr) == 0;
        if (ds) fb_source_close(ds);
        const char *mk2[] = {"tool", "version", "fourbit.pruned_from", "fourbit.experts_kept", "model",
                             FB_ID_KEY_CONFIG, FB_ID_KEY_LAYERS};
        const char *mv2[] = {o->tool, FB_VERSION, o->stats_path, keepbuf, dst, idc, idl};
        if (fb_calib_stats_write(ps, o->stats_out, have_id ? 7 : 5, mk2, mv2, err)) rc = -1;
        free(idl);
        fb_calib_stats_free(ps);
    }
out:
    if (pl)
        for (size_t i = 0; i < c->n_tensors; i++) free(pl[i].name);
    free(pl);
    free(newidx);
    fb_prune_map_free(m);
    fb_calib_stats_free(st);
    fb_ckpt_close(c);
    res->seconds = fb_now() - t0;
    return rc;
}
