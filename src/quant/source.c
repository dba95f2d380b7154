// source.c: see source.h.
#include "quant/source.h"

#include <dirent.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

#include "arch/arch.h"
#include "quant/formats.h"
#include "quant/fp8block.h"

static const char SCALE_SUFFIX[] = "_scale_inv";

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

void fb_source_close(fb_source *s) {
    if (!s) return;
    fb_ckpt_close(s->ck);
    free(s->role);
    free(s->partner);
    free(s);
}

int64_t fb_source_index(const fb_source *s, const char *name) {
    const fb_ckpt_tensor *ct = fb_ckpt_find(s->ck, name);
    return ct ? (int64_t)(ct - s->ck->tensors) : -1;
}

static const char *tpath(const fb_source *s, size_t i) { return s->ck->files[s->ck->tensors[i].file]->path; }

int fb_source_open(const char *path, fb_source **out, fb_err *err) {
    *out = NULL;
    char *owner = fb_ckpt_shard_owner(path);
    if (owner) {
        fb_fail(err, "%s is a file of the checkpoint directory %s; pass the directory (a shard alone has no config.json "
                     "and part of the tensors)", path, owner);
        free(owner);
        return -1;
    }
    fb_source *s = fb_calloc(1, sizeof *s);
    if (fb_ckpt_open(path, &s->ck, err) != 0) {
        free(s);
        return -1;
    }
    fb_ckpt *c = s->ck;
    s->bm = s->bn = 128;
    json_t *qc = c->config ? json_object_get(c->config, "quantization_config") : NULL;
    int rc = 0;
    // An already-quantized checkpoint given as the source: say so, before any tensor rule
    // (its weight_scale tensors would otherwise read as FP8 scales without weights).
    const char *qkind = NULL;
    char qb[160];
    if (qc && json_is_object(qc)) {
        const char *qm = json_string_value(json_object_get(qc, "quant_method"));
        const char *fmt = json_string_value(json_object_get(qc, "format"));
        if (qm && strcmp(qm, "fp8") != 0) qkind = fmt ? fmt : qm;
        if (qm && fmt && !strcmp(qm, "compressed-tensors")) qkind = fmt;
        if (qkind) {
            snprintf(qb, sizeof qb, "%s%s%s", qm, strcmp(qm, qkind) ? " " : "", strcmp(qm, qkind) ? qkind : "");
            qkind = qb;
        }
    }
    for (size_t i = 0; !qkind && i < c->n_tensors; i++) {
        const char *nm = c->tensors[i].t->name;
        if (ends_with(nm, ".weight_packed") || ends_with(nm, ".qweight")) qkind = ends_with(nm, ".qweight") ? "GPTQ/AutoRound" : "compressed-tensors";
    }
    if (qkind) {
        fb_fail(err, "%s: this checkpoint is already quantized (%s); pass the FP8 or BF16 source it was made from", path, qkind);
        fb_source_close(s);
        return -1;
    }
    // Per-layer expert counts (reap-prune --per-layer): every engine builds one count per model.
    if (fb_cfg_refuse_nonuniform(c->config, err)) {
        fb_err_prefix(err, "%s", path);
        fb_source_close(s);
        return -1;
    }
    if (qc && json_is_object(qc)) {
        const char *qm = json_string_value(json_object_get(qc, "quant_method"));
        if (qm && !strcmp(qm, "fp8")) {
            s->is_fp8 = 1;
            json_t *bs = json_object_get(qc, "weight_block_size");
            if (bs) {
                if (!json_is_array(bs) || json_array_size(bs) != 2 || !json_is_integer(json_array_get(bs, 0)) ||
                    !json_is_integer(json_array_get(bs, 1)) || json_integer_value(json_array_get(bs, 0)) <= 0 ||
                    json_integer_value(json_array_get(bs, 1)) <= 0)
                    rc = fb_fail(err, "%s/config.json: quantization_config.weight_block_size must be [rows, cols] of positive integers",
                                 c->dir);
                else {
                    s->bm = (size_t)json_integer_value(json_array_get(bs, 0));
                    s->bn = (size_t)json_integer_value(json_array_get(bs, 1));
                }
            }
        }
    }
    s->role = fb_calloc(c->n_tensors ? c->n_tensors : 1, sizeof *s->role);
    s->partner = fb_malloc((c->n_tensors ? c->n_tensors : 1) * sizeof *s->partner);
    for (size_t i = 0; i < c->n_tensors; i++) s->partner[i] = -1;
    for (size_t i = 0; i < c->n_tensors && !rc; i++) {
        const fb_st_tensor *t = c->tensors[i].t;
        if (ends_with(t->name, SCALE_SUFFIX)) {
            size_t n = strlen(t->name) - strlen(SCALE_SUFFIX);
            char *wname = strndup(t->name, n);
            int64_t wi = fb_source_index(s, wname);
            if (wi < 0 || c->tensors[wi].t->dtype != FB_F8_E4M3)
                rc = fb_fail(err, "%s: tensor %s: block scale without an F8_E4M3 weight %s%s", tpath(s, i), t->name,
                             wname, wi < 0 ? " (missing)" : " (not FP8)");
            free(wname);
            if (rc) break;
            s->role[i] = FB_SRC_FP8_SCALE;
            s->partner[i] = (int)wi;
            s->is_fp8 = 1;
        }
    }
    for (size_t i = 0; i < c->n_tensors && !rc; i++) {
        const fb_st_tensor *t = c->tensors[i].t;
        if (t->dtype == FB_F8_E5M2 || t->dtype == FB_F8_E4M3FNUZ || t->dtype == FB_F8_E5M2FNUZ) {
            rc = fb_fail(err, "%s: tensor %s: %s weights are not supported (block-scaled F8_E4M3 only)", tpath(s, i),
                         t->name, fb_dtypes[t->dtype].name);
            break;
        }
        if (t->dtype != FB_F8_E4M3) continue;
        size_t n = strlen(t->name);
        char *sname = fb_malloc(n + sizeof SCALE_SUFFIX);
        memcpy(sname, t->name, n);
        memcpy(sname + n, SCALE_SUFFIX, sizeof SCALE_SUFFIX);
        int64_t si = fb_source_index(s, sname);
        if (si < 0) {
            rc = fb_fail(err, "%s: tensor %s: F8_E4M3 weight without its block scale %s", tpath(s, i), t->name, sname);
            free(sname);
            break;
        }
        free(sname);
        const fb_st_tensor *st = c->tensors[si].t;
        if (t->ndim != 2) {
            rc = fb_fail(err, "%s: tensor %s: F8_E4M3 weight has %d dimensions, block dequant needs 2", tpath(s, i), t->name,
                         t->ndim);
            break;
        }
        int64_t want0 = (t->shape[0] + (int64_t)s->bm - 1) / (int64_t)s->bm,
                want1 = (t->shape[1] + (int64_t)s->bn - 1) / (int64_t)s->bn;
        if (st->ndim != 2) {
            rc = fb_fail(err, "%s: tensor %s: block scale has %d dimensions, want 2", tpath(s, (size_t)si), st->name, st->ndim);
            break;
        }
        if (st->shape[0] != want0 || st->shape[1] != want1) {
            rc = fb_fail(err, "%s: tensor %s: shape [%lld, %lld] but weight %s [%lld, %lld] with %zux%zu blocks needs [%lld, %lld]",
                         tpath(s, (size_t)si), st->name, (long long)st->shape[0], (long long)st->shape[1], t->name,
                         (long long)t->shape[0], (long long)t->shape[1], s->bm, s->bn, (long long)want0, (long long)want1);
            break;
        }
        if (st->dtype != FB_F32 && st->dtype != FB_BF16 && st->dtype != FB_F16) {
            rc = fb_fail(err, "%s: tensor %s: block scale dtype %s (want F32, BF16 or F16)", tpath(s, (size_t)si), st->name,
                         fb_dtypes[st->dtype].name);
            break;
        }
        s->role[i] = FB_SRC_FP8_WEIGHT;
        s->partner[i] = (int)si;
    }
    if (rc) {
        fb_source_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

fb_dtype fb_source_logical_dtype(const fb_source *s, size_t i) {
    return s->role[i] == FB_SRC_FP8_WEIGHT ? FB_BF16 : s->ck->tensors[i].t->dtype;
}

int fb_source_load_scale(const fb_source *s, size_t i, float **out, fb_err *err) {
    *out = NULL;
    FB_ASSERT(s->role[i] == FB_SRC_FP8_WEIGHT);
    size_t si = (size_t)s->partner[i];
    const fb_ckpt_tensor *ct = &s->ck->tensors[si];
    void *raw;
    if (fb_st_read_all(s->ck->files[ct->file], ct->t, &raw, err) != 0) return -1;
    float *sc = fb_malloc(ct->t->nelem * sizeof(float) + 1);
    fb_to_f32(ct->t->dtype, raw, sc, ct->t->nelem);
    free(raw);
    for (uint64_t k = 0; k < ct->t->nelem; k++) {
        if (!isfinite(sc[k]) || sc[k] < 0) {
            fb_fail(err, "%s: tensor %s: block scale [%llu, %llu] is %g (must be finite and >= 0)", tpath(s, si),
                    ct->t->name, (unsigned long long)(k / (uint64_t)ct->t->shape[1]),
                    (unsigned long long)(k % (uint64_t)ct->t->shape[1]), (double)sc[k]);
            free(sc);
            return -1;
        }
    }
    *out = sc;
    return 0;
}

static int read_rows_raw(const fb_source *s, size_t i, uint64_t r0, size_t nrows, void *buf, fb_err *err) {
    const fb_ckpt_tensor *ct = &s->ck->tensors[i];
    uint64_t rows, cols;
    fb_tensor_2d(ct->t, &rows, &cols);
    FB_ASSERT(r0 + nrows <= rows);
    uint64_t row_bytes = cols * (uint64_t)fb_dtypes[ct->t->dtype].bits / 8;
    const fb_st_file *f = s->ck->files[ct->file];
    if (fb_st_read(f, ct->t, r0 * row_bytes, buf, nrows * row_bytes, err) != 0) return -1;
    if (!s->keep_cache) fb_st_release(f, ct->t->offset + r0 * row_bytes, nrows * row_bytes);
    return 0;
}

void fb_source_release(const fb_source *s, size_t i) {
    const fb_ckpt_tensor *ct = &s->ck->tensors[i];
    fb_st_release(s->ck->files[ct->file], ct->t->offset, ct->t->nbytes);
}

static int nan_error(const fb_source *s, size_t i, uint64_t r0, int64_t at, uint64_t cols, fb_err *err) {
    const fb_st_tensor *t = s->ck->tensors[i].t;
    uint64_t r = r0 + (uint64_t)at / cols, c = (uint64_t)at % cols;
    return fb_fail(err, "%s: tensor %s: NaN code at [%llu, %llu] (use --allow-nan to convert it to NaN)", tpath(s, i),
                   t->name, (unsigned long long)r, (unsigned long long)c);
}

int fb_source_read_rows_bf16(const fb_source *s, size_t i, const float *scale, uint64_t r0, size_t nrows,
                             uint16_t *out, void *scratch, int allow_nan, fb_err *err) {
    const fb_st_tensor *t = s->ck->tensors[i].t;
    uint64_t rows, cols;
    fb_tensor_2d(t, &rows, &cols);
    size_t n = nrows * (size_t)cols;
    if (s->role[i] == FB_SRC_FP8_WEIGHT) {
        if (read_rows_raw(s, i, r0, nrows, scratch, err)) return -1;
        int64_t at = fb_fp8_dequant_bf16(scratch, scale, r0, nrows, cols, s->bm, s->bn, out);
        if (at >= 0 && !allow_nan) return nan_error(s, i, r0, at, cols, err);
        return 0;
    }
    switch (t->dtype) {
    case FB_BF16: return read_rows_raw(s, i, r0, nrows, out, err);
    case FB_F16: case FB_F32:
        if (read_rows_raw(s, i, r0, nrows, scratch, err)) return -1;
        for (size_t k = 0; k < n; k++) {
            float v;
            fb_load_f32(t->dtype, scratch, k, &v);
            out[k] = fb_f32_to_bf16(v);
        }
        return 0;
    default:
        return fb_fail(err, "%s: tensor %s: dtype %s cannot be read as bf16", tpath(s, i), t->name, fb_dtypes[t->dtype].name);
    }
}

int fb_source_read_rows_f32(const fb_source *s, size_t i, const float *scale, uint64_t r0, size_t nrows,
                            float *out, void *scratch, int allow_nan, fb_err *err) {
    const fb_st_tensor *t = s->ck->tensors[i].t;
    uint64_t rows, cols;
    fb_tensor_2d(t, &rows, &cols);
    size_t n = nrows * (size_t)cols;
    if (s->role[i] == FB_SRC_FP8_WEIGHT) {
        if (read_rows_raw(s, i, r0, nrows, scratch, err)) return -1;
        int64_t at = fb_fp8_dequant_f32(scratch, scale, r0, nrows, cols, s->bm, s->bn, out);
        if (at >= 0 && !allow_nan) return nan_error(s, i, r0, at, cols, err);
        return 0;
    }
    switch (t->dtype) {
    case FB_BF16: case FB_F16: case FB_F32: case FB_F64:
        if (read_rows_raw(s, i, r0, nrows, scratch, err)) return -1;
        fb_to_f32(t->dtype, scratch, out, n);
        return 0;
    default:
        return fb_fail(err, "%s: tensor %s: dtype %s cannot be read as f32", tpath(s, i), t->name, fb_dtypes[t->dtype].name);
    }
}

// What a writer does with each entry of the source directory. Copied: everything a loader or
// a user of the output needs beside the weights -- tokenizer files, chat template,
// generation_config.json, licence and notice files, remote code (*.py named by auto_map) and
// any other top-level file we do not know to be about the source alone. Left out, and listed
// in the tool's summary and the card: the source's README.md (the card of another model: the
// writer puts its own), training logs (they describe the run that made the source), hidden
// files (.gitattributes lists the source repository's LFS patterns; the Hub writes its own on
// upload) and subfolders (figures, docs: not read by any loader).
static const struct {
    const char *prefix, *suffix;  // both must match (NULL = any)
    const char *why;
} LEFT_OUT[] = {
    {"README", NULL, "the source's model card; this output gets its own README.md"},
    {"readme", NULL, "the source's model card; this output gets its own README.md"},
    {"train-log", NULL, "training log of the run that made the source, not of this output"},
    {"train_log", NULL, "training log of the run that made the source, not of this output"},
    {"trainer_state.json", NULL, "training state of the source run"},
    {"training_args", NULL, "training arguments of the source run"},
    {"train_results", NULL, "training results of the source run"},
    {"all_results", NULL, "training / evaluation results of the source, not of this output"},
    {"eval_results", NULL, "evaluation results of the source, not of this output"},
    {"events.out.tfevents", NULL, "TensorBoard log of the source run"},
    {NULL, ".log", "log file of the source run"},
};

int fb_side_file_policy(const char *nm, int is_dir, const char **why) {
    *why = NULL;
    if (!strcmp(nm, ".") || !strcmp(nm, "..") || ends_with(nm, ".safetensors") ||
        !strcmp(nm, "model.safetensors.index.json") || !strcmp(nm, "config.json") ||
        !strncmp(nm, "fourbit-manifest", 16) || ends_with(nm, ".tmp") || !strcmp(nm, ".fourbit-staging"))
        return -1;
    if (nm[0] == '.') {
        *why = !strcmp(nm, ".gitattributes") ? "the source repository's git/LFS attributes; the Hub writes its own on upload"
                                             : "hidden file";
        return 0;
    }
    if (is_dir) {
        *why = "subfolder: no loader reads it (figures, docs); copy it by hand if the output needs it";
        return 0;
    }
    for (size_t i = 0; i < sizeof LEFT_OUT / sizeof LEFT_OUT[0]; i++)
        if ((!LEFT_OUT[i].prefix || !strncmp(nm, LEFT_OUT[i].prefix, strlen(LEFT_OUT[i].prefix))) &&
            (!LEFT_OUT[i].suffix || ends_with(nm, LEFT_OUT[i].suffix))) {
            *why = LEFT_OUT[i].why;
            return 0;
        }
    return 1;
}

// Side files come from a checkpoint directory only: a bare .safetensors file's neighbours are
// not its side files.
static int src_is_dir(const fb_source *s) {
    struct stat st;
    return stat(s->ck->path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Sorted entry names of the source directory (NULL when it cannot be listed).
static char **list_dir(const char *dir, size_t *n) {
    DIR *d = opendir(dir);
    if (!d) return NULL;
    char **v = NULL;
    size_t k = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        v = fb_realloc(v, (k + 1) * sizeof *v);
        v[k++] = fb_strdup(e->d_name);
    }
    closedir(d);
    if (k) qsort(v, k, sizeof *v, cmp_name);
    *n = k;
    return v ? v : fb_calloc(1, sizeof *v);
}

json_t *fb_side_files_left_out(const fb_source *s) {
    json_t *a = json_array();
    size_t n = 0;
    char **v = src_is_dir(s) ? list_dir(s->ck->dir, &n) : NULL;
    for (size_t i = 0; i < n; i++) {
        char *sp = fb_path_join(s->ck->dir, v[i]);
        struct stat st;
        int isd = stat(sp, &st) == 0 && S_ISDIR(st.st_mode);
        const char *why;
        if (fb_side_file_policy(v[i], isd, &why) == 0) {
            char nm[512];  // "figures/" reads better than "figures"
            snprintf(nm, sizeof nm, "%s%s", v[i], isd ? "/" : "");
            json_array_append_new(a, json_pack("{s:s, s:s}", "name", nm, "why", why));
        }
        free(sp);
        free(v[i]);
    }
    free(v);
    return a;
}

int fb_copy_side_files(const fb_source *s, const char *dir, fb_err *err) {
    if (!src_is_dir(s)) return 0;
    size_t n = 0;
    char **v = list_dir(s->ck->dir, &n);
    if (!v) return fb_fail(err, "%s: cannot list directory", s->ck->dir);
    int copied = 0, rc = 0;
    for (size_t i = 0; i < n; i++) {
        char *sp = fb_path_join(s->ck->dir, v[i]);
        struct stat st;
        const char *why;
        if (!rc && stat(sp, &st) == 0 && S_ISREG(st.st_mode) && fb_side_file_policy(v[i], 0, &why) == 1) {
            char *dp = fb_path_join(dir, v[i]);
            rc = fb_copy_file(sp, dp, err);
            free(dp);
            copied++;
        }
        free(sp);
        free(v[i]);
    }
    free(v);
    return rc ? -1 : copied;
}
