// stats.c: calibration statistics table, its safetensors writer and reader (see stats.h).
#include "calib/stats.h"
#include "common/paths.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "io/safetensors.h"

fb_calib_stats *fb_calib_stats_new(int n_layers, int n_experts) {
    fb_calib_stats *s = fb_calloc(1, sizeof *s);
    s->arch = fb_arch_by_name("minimax_m2");  // the forward sets the model's own
    size_t L = (size_t)n_layers, LE = (size_t)n_layers * (size_t)n_experts;
    s->n_layers = n_layers;
    s->n_experts = n_experts;
    s->done = fb_calloc(L + 1, 1);
    s->qkv_absmax = fb_calloc(L + 1, sizeof(float));
    s->o_absmax = fb_calloc(L + 1, sizeof(float));
    s->w13_absmax = fb_calloc(LE + 1, sizeof(float));
    s->w2_absmax = fb_calloc(LE + 1, sizeof(float));
    s->counts = fb_calloc(LE + 1, sizeof(int64_t));
    s->sal_sum = fb_calloc(LE + 1, sizeof(double));
    s->norm_sum = fb_calloc(L + 1, sizeof(double));
    s->norm_max = fb_calloc(L + 1, sizeof(double));
    s->h_absmax = fb_calloc(L + 1, sizeof(float));
    return s;
}

void fb_calib_stats_free(fb_calib_stats *s) {
    if (!s) return;
    free(s->done);
    free(s->qkv_absmax);
    free(s->o_absmax);
    free(s->w13_absmax);
    free(s->w2_absmax);
    free(s->counts);
    free(s->sal_sum);
    free(s->norm_sum);
    free(s->norm_max);
    free(s->h_absmax);
    free(s);
}

// The three expert Linears sorted by their leaf names (MiniMax: w1, w2, w3 = gate, down, up;
// Qwen3: down_proj, gate_proj, up_proj): the order the file has always listed them in.
static void expert_order(const fb_arch *a, fb_role ord[3]) {
    ord[0] = FB_ROLE_W_GATE, ord[1] = FB_ROLE_W_DOWN, ord[2] = FB_ROLE_W_UP;
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            if (strcmp(a->role[ord[j]].path, a->role[ord[i]].path) < 0) {
                fb_role t = ord[i];
                ord[i] = ord[j];
                ord[j] = t;
            }
}

static float fmaxf_(float a, float b) { return a > b ? a : b; }

int fb_calib_stats_merge(fb_calib_stats *d, const fb_calib_stats *s, fb_err *err) {
    if (d->n_layers != s->n_layers || d->n_experts != s->n_experts)
        return fb_fail(err, "statistics: cannot merge %d layers x %d experts with %d x %d",
                       d->n_layers, d->n_experts, s->n_layers, s->n_experts);
    if (d->arch != s->arch)
        return fb_fail(err, "statistics: cannot merge %s with %s statistics", d->arch->label,
                       s->arch->label);
    if (d->all_experts != s->all_experts)
        return fb_fail(err, "statistics: cannot merge all-experts with routed-only statistics");
    size_t E = (size_t)d->n_experts;
    for (int l = 0; l < d->n_layers; l++) {
        if (!s->done[l]) continue;
        d->done[l] = 1;
        d->qkv_absmax[l] = fmaxf_(d->qkv_absmax[l], s->qkv_absmax[l]);
        d->o_absmax[l] = fmaxf_(d->o_absmax[l], s->o_absmax[l]);
        d->norm_sum[l] += s->norm_sum[l];
        d->norm_max[l] = d->norm_max[l] > s->norm_max[l] ? d->norm_max[l] : s->norm_max[l];
        d->h_absmax[l] = fmaxf_(d->h_absmax[l], s->h_absmax[l]);
        for (size_t e = 0; e < E; e++) {
            size_t i = (size_t)l * E + e;
            d->w13_absmax[i] = fmaxf_(d->w13_absmax[i], s->w13_absmax[i]);
            d->w2_absmax[i] = fmaxf_(d->w2_absmax[i], s->w2_absmax[i]);
            d->counts[i] += s->counts[i];
            d->sal_sum[i] += s->sal_sum[i];
        }
    }
    d->n_tokens += s->n_tokens;
    return 0;
}

double fb_calib_stats_saliency(const fb_calib_stats *s, int l, int e) {
    size_t i = (size_t)l * (size_t)s->n_experts + (size_t)e;
    return s->counts[i] ? s->sal_sum[i] / (double)s->counts[i] : 0.0;
}

// ---- writer ---------------------------------------------------------------------------------

typedef struct w_ent {
    char *name;
    fb_dtype dt;
    int64_t n;         // 1-D length
    const void *data;  // borrowed, or owned in `own`
    void *own;
} w_ent;

typedef struct w_list {
    size_t n, cap;
    w_ent *e;
} w_list;

static void w_add(w_list *w, const char *name, fb_dtype dt, int64_t n, const void *data,
                  void *own) {
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 256;
        w->e = fb_realloc(w->e, w->cap * sizeof *w->e);
    }
    w->e[w->n++] = (w_ent){fb_strdup(name), dt, n, data, own};
}

static void add_absmax(w_list *w, const char *module, const float *v) {
    char name[256];
    snprintf(name, sizeof name, "%s.input_absmax", module);
    w_add(w, name, FB_F32, 1, v, NULL);
}

int fb_calib_stats_write(const fb_calib_stats *s, const char *path, size_t n_meta,
                         const char *const *meta_keys, const char *const *meta_vals,
                         fb_err *err) {
    w_list w = {0};
    size_t E = (size_t)s->n_experts;
    const fb_arch *a = s->arch;
    char name[256], mod[224], moe[200];
    // 8-byte tensors first (natural alignment), then the f32 ones.
    for (int pass = 0; pass < 2; pass++) {
        for (int l = 0; l < s->n_layers; l++) {
            if (!s->done[l]) continue;
            const size_t base = (size_t)l * E;
            if (pass == 0) {
                fb_arch_block(a, FB_BLOCK_MOE, l, moe, sizeof moe);
                snprintf(name, sizeof name, "%s.expert_counts", moe);
                w_add(&w, name, FB_I64, (int64_t)E, s->counts + base, NULL);
                double *mean = fb_malloc(E * sizeof(double) + 1);
                for (size_t e = 0; e < E; e++) mean[e] = fb_calib_stats_saliency(s, l, (int)e);
                snprintf(name, sizeof name, "%s.expert_saliency", moe);
                w_add(&w, name, FB_F64, (int64_t)E, mean, mean);
                snprintf(name, sizeof name, "%s.expert_saliency_sum", moe);
                w_add(&w, name, FB_F64, (int64_t)E, s->sal_sum + base, NULL);
                double *hn = fb_malloc(3 * sizeof(double));
                hn[0] = s->n_tokens ? s->norm_sum[l] / (double)s->n_tokens : 0.0;
                hn[1] = s->norm_max[l];
                hn[2] = s->h_absmax[l];
                fb_arch_block(a, FB_BLOCK_LAYER, l, moe, sizeof moe);
                snprintf(name, sizeof name, "%s.hidden_norms", moe);
                w_add(&w, name, FB_F64, 3, hn, hn);
            } else {
                static const fb_role att[] = {FB_ROLE_Q, FB_ROLE_K, FB_ROLE_V, FB_ROLE_O};
                for (int i = 0; i < 4; i++) {
                    fb_arch_module(a, att[i], l, -1, mod, sizeof mod);
                    add_absmax(&w, mod, i < 3 ? &s->qkv_absmax[l] : &s->o_absmax[l]);
                }
                // Expert Linears in checkpoint module order (MiniMax w1, w2, w3).
                fb_role ord[3];
                expert_order(a, ord);
                for (size_t e = 0; e < E; e++) {
                    for (int i = 0; i < 3; i++) {
                        fb_arch_module(a, ord[i], l, (int)e, mod, sizeof mod);
                        add_absmax(&w, mod, ord[i] == FB_ROLE_W_DOWN ? &s->w2_absmax[base + e]
                                                                     : &s->w13_absmax[base + e]);
                    }
                }
            }
        }
    }
    json_t *hdr = json_object();
    json_t *meta = json_object();
    char buf[64];
    json_object_set_new(meta, "format", json_string("pt"));
    json_object_set_new(meta, "fourbit.kind", json_string("calibration-stats"));
    json_object_set_new(meta, "fourbit.stats_version", json_string(FB_CALIB_STATS_VERSION));
    snprintf(buf, sizeof buf, "%d", s->n_layers);
    json_object_set_new(meta, "num_layers", json_string(buf));
    snprintf(buf, sizeof buf, "%d", s->n_experts);
    json_object_set_new(meta, "num_experts", json_string(buf));
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)s->n_tokens);
    json_object_set_new(meta, "tokens", json_string(buf));
    json_object_set_new(meta, "experts_mode", json_string(s->all_experts ? "all" : "routed"));
    json_object_set_new(meta, "architecture", json_string(a->name));
    for (size_t i = 0; i < n_meta; i++)
        json_object_set_new(meta, meta_keys[i], json_string(meta_vals[i] ? meta_vals[i] : ""));
    json_object_set_new(hdr, "__metadata__", meta);
    uint64_t off = 0;
    for (size_t i = 0; i < w.n; i++) {
        uint64_t nb = (uint64_t)w.e[i].n * (uint64_t)fb_dtypes[w.e[i].dt].bits / 8;
        json_t *t = json_object();
        json_object_set_new(t, "dtype", json_string(fb_dtypes[w.e[i].dt].name));
        json_object_set_new(t, "shape", json_pack("[I]", (json_int_t)w.e[i].n));
        json_object_set_new(t, "data_offsets", json_pack("[II]", (json_int_t)off,
                                                         (json_int_t)(off + nb)));
        json_object_set_new(hdr, w.e[i].name, t);
        off += nb;
    }
    char *js = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(hdr);
    size_t jl = strlen(js);
    size_t padded = (jl + 7) & ~(size_t)7;
    int rc = 0;
    char *tmp = fb_malloc(strlen(path) + 8);
    sprintf(tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = fb_fail(err, "%s: cannot create: %s", tmp, strerror(errno));
    } else {
        uint8_t len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
        int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(js, 1, jl, f) == jl;
        for (size_t i = jl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
        for (size_t i = 0; ok && i < w.n; i++) {
            size_t nb = (size_t)w.e[i].n * (size_t)fb_dtypes[w.e[i].dt].bits / 8;
            ok = fwrite(w.e[i].data, 1, nb, f) == nb;  // host is little-endian (x86-64/arm64)
        }
        if (fflush(f) != 0) ok = 0;
        if (ok && fsync(fileno(f)) != 0) ok = 0;
        if (fclose(f) != 0) ok = 0;
        if (!ok) {
            rc = fb_fail(err, "%s: write failed: %s", tmp, strerror(errno));
            unlink(tmp);
        } else if (rename(tmp, path) != 0) {
            rc = fb_fail(err, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
            unlink(tmp);
        } else if (fb_fsync_parent(path, err)) {  // keep the rename over a power cut
            rc = -1;
        }
    }
    free(tmp);
    free(js);
    for (size_t i = 0; i < w.n; i++) {
        free(w.e[i].name);
        free(w.e[i].own);
    }
    free(w.e);
    return rc;
}

// ---- reader ---------------------------------------------------------------------------------

static int meta_int(const fb_st_file *f, const char *key, long long lo, long long *out,
                    fb_err *err) {
    const char *v = fb_st_meta(f, key);
    if (!v) return fb_fail(err, "%s: __metadata__ lacks \"%s\"", f->path, key);
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > (1LL << 40))
        return fb_fail(err, "%s: __metadata__ \"%s\" = \"%s\" is not a valid count", f->path,
                       key, v);
    *out = x;
    return 0;
}

// Reads a 1-D tensor of n elements of dtype dt into dst; missing = -2 (not an error here).
static int read_vec(const fb_st_file *f, const char *name, fb_dtype dt, int64_t n, void *dst,
                    fb_err *err) {
    const fb_st_tensor *t = fb_st_find(f, name);
    if (!t) return -2;
    if (t->dtype != dt || t->ndim != 1 || t->shape[0] != n)
        return fb_fail(err, "%s: tensor %s: expected %s [%lld], found %s with %d dims", f->path,
                       name, fb_dtypes[dt].name, (long long)n, fb_dtypes[t->dtype].name,
                       t->ndim);
    return fb_st_read(f, t, 0, dst, (size_t)t->nbytes, err);
}

static int read_absmax(const fb_st_file *f, const char *module, float *dst, fb_err *err) {
    char name[256];
    snprintf(name, sizeof name, "%s.input_absmax", module);
    int rc = read_vec(f, name, FB_F32, 1, dst, err);
    if (rc == -2) return fb_fail(err, "%s: tensor %s is missing", f->path, name);
    if (rc) return -1;
    if (!isfinite(*dst) || *dst < 0)
        return fb_fail(err, "%s: tensor %s: value %g is not a finite absmax", f->path, name,
                       (double)*dst);
    return 0;
}

int fb_calib_stats_read(const char *path, fb_calib_stats **out, fb_err *err) {
    fb_st_file *f;
    if (fb_st_open(path, &f, err)) return -1;
    fb_calib_stats *s = NULL;
    int rc = -1;
    const char *kind = fb_st_meta(f, "fourbit.kind");
    const char *ver = fb_st_meta(f, "fourbit.stats_version");
    long long L, E, T;
    if (!kind || strcmp(kind, "calibration-stats") != 0) {
        fb_fail(err, "%s: not a fourbit calibration statistics file (__metadata__ "
                     "fourbit.kind is %s)", path, kind ? kind : "absent");
        goto done;
    }
    if (!ver || strcmp(ver, FB_CALIB_STATS_VERSION) != 0) {
        fb_fail(err, "%s: statistics version %s, this fourbit reads %s", path,
                ver ? ver : "absent", FB_CALIB_STATS_VERSION);
        goto done;
    }
    if (meta_int(f, "num_layers", 0, &L, err) || meta_int(f, "num_experts", 1, &E, err) ||
        meta_int(f, "tokens", 0, &T, err))
        goto done;
    const char *an = fb_st_meta(f, "architecture");
    // Files of version 1 written before the key existed are all MiniMax-M2.
    const fb_arch *a = fb_arch_by_name(an ? an : "minimax_m2");
    if (!a) {
        fb_fail(err, "%s: __metadata__ architecture \"%s\" is not a known family", path, an);
        goto done;
    }
    s = fb_calib_stats_new((int)L, (int)E);
    s->arch = a;
    s->n_tokens = (uint64_t)T;
    const char *mode = fb_st_meta(f, "experts_mode");
    s->all_experts = mode && strcmp(mode, "all") == 0;
    char name[256], mod[224], moe[200];
    double *tmp = fb_malloc((size_t)E * sizeof(double) + 24);
    for (int l = 0; l < (int)L; l++) {
        size_t base = (size_t)l * (size_t)E;
        fb_arch_block(a, FB_BLOCK_MOE, l, moe, sizeof moe);
        snprintf(name, sizeof name, "%s.expert_counts", moe);
        int r = read_vec(f, name, FB_I64, E, s->counts + base, err);
        if (r == -2) continue;  // layer not recorded
        if (r) goto fail;
        s->done[l] = 1;
        snprintf(name, sizeof name, "%s.expert_saliency_sum", moe);
        r = read_vec(f, name, FB_F64, E, s->sal_sum + base, err);
        if (r == -2) fb_fail(err, "%s: tensor %s is missing", path, name);
        if (r) goto fail;
        fb_arch_block(a, FB_BLOCK_LAYER, l, moe, sizeof moe);
        snprintf(name, sizeof name, "%s.hidden_norms", moe);
        r = read_vec(f, name, FB_F64, 3, tmp, err);
        if (r == -2) fb_fail(err, "%s: tensor %s is missing", path, name);
        if (r) goto fail;
        s->norm_sum[l] = tmp[0] * (double)s->n_tokens;
        s->norm_max[l] = tmp[1];
        s->h_absmax[l] = (float)tmp[2];
        static const fb_role att[] = {FB_ROLE_Q, FB_ROLE_K, FB_ROLE_V, FB_ROLE_O};
        for (int i = 0; i < 4; i++) {
            float v;
            fb_arch_module(a, att[i], l, -1, mod, sizeof mod);
            if (read_absmax(f, mod, &v, err)) goto fail;
            // q/k/v: one input, recorded once; keep the max should a file differ.
            if (i < 3) s->qkv_absmax[l] = fmaxf_(s->qkv_absmax[l], v);
            else s->o_absmax[l] = v;
        }
        fb_role ord[3];
        expert_order(a, ord);
        for (long long e = 0; e < E; e++) {
            for (int i = 0; i < 3; i++) {
                float v;
                fb_arch_module(a, ord[i], l, (int)e, mod, sizeof mod);
                if (read_absmax(f, mod, &v, err)) goto fail;
                float *dst = ord[i] == FB_ROLE_W_DOWN ? &s->w2_absmax[base + (size_t)e]
                                                      : &s->w13_absmax[base + (size_t)e];
                *dst = fmaxf_(*dst, v);
            }
        }
    }
    free(tmp);
    *out = s;
    s = NULL;
    rc = 0;
    goto done;
fail:
    free(tmp);
done:
    fb_calib_stats_free(s);
    fb_st_close(f);
    return rc;
}

int fb_calib_stats_input_absmax(const fb_calib_stats *s, fb_role r, int l, int e, float *out) {
    if (l < 0 || l >= s->n_layers || !s->done[l]) return -1;
    size_t i = (size_t)l * (size_t)s->n_experts + (size_t)e;
    switch (r) {
    case FB_ROLE_Q: case FB_ROLE_K: case FB_ROLE_V: *out = s->qkv_absmax[l]; return 0;
    case FB_ROLE_O: *out = s->o_absmax[l]; return 0;
    case FB_ROLE_W_GATE: case FB_ROLE_W_UP: case FB_ROLE_W_DOWN:
        if (e < 0 || e >= s->n_experts) return -1;
        *out = r == FB_ROLE_W_DOWN ? s->w2_absmax[i] : s->w13_absmax[i];
        return 0;
    default: return -1;
    }
}

int fb_calib_stats_absmax(const fb_calib_stats *s, const char *module, float *out) {
    fb_role r;
    int l, e;
    if (fb_arch_parse(s->arch, module, &r, &l, &e)) return -1;
    return fb_calib_stats_input_absmax(s, r, l, e, out);
}
