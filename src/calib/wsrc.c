// wsrc.c: checkpoint-backed and in-memory weight sources (see wsrc.h).
#include "calib/wsrc.h"

#include <string.h>

#include "io/checkpoint.h"
#include "quant/formats.h"
#include "quant/source.h"

void fb_wsrc_close(fb_wsrc *s) {
    if (!s) return;
    if (s->close) s->close(s);
    free(s->desc);
    free(s);
}

static uint64_t row_elems(int ndim, const int64_t *shape) {
    uint64_t n = 1;
    for (int i = 1; i < ndim; i++) n *= (uint64_t)shape[i];
    return n;
}

int fb_wsrc_load_full(fb_wsrc *s, const char *name, int ndim, const int64_t *shape, float *out,
                      fb_err *err) {
    int nd;
    int64_t sh[FB_MAX_DIMS];
    if (!s->shape(s, name, &nd, sh))
        return fb_fail(err, "%s: tensor %s is missing", s->desc, name);
    int same = nd == ndim;
    for (int i = 0; same && i < nd; i++) same = sh[i] == shape[i];
    if (!same) {
        char got[128] = "", want[128] = "";
        for (int i = 0; i < nd; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "",
                     (long long)sh[i]);
        for (int i = 0; i < ndim; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? ", " : "",
                     (long long)shape[i]);
        return fb_fail(err, "%s: tensor %s has shape [%s], expected [%s]", s->desc, name, got,
                       want);
    }
    return s->load(s, name, 0, ndim ? shape[0] : 1, out, err);
}

typedef struct gather_ix {
    int32_t id;
    size_t t;
} gather_ix;

static int gather_cmp(const void *a, const void *b) {
    const gather_ix *x = a, *y = b;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return x->t < y->t ? -1 : x->t > y->t;
}

#define GATHER_SPAN 64

int fb_wsrc_gather_rows(fb_wsrc *s, const char *name, int64_t cols, const int32_t *ids, size_t n,
                        float *out, fb_err *err) {
    if (n == 0) return 0;
    gather_ix *ix = fb_malloc(n * sizeof *ix);
    for (size_t t = 0; t < n; t++) ix[t].id = ids[t], ix[t].t = t;
    qsort(ix, n, sizeof *ix, gather_cmp);
    float *buf = fb_malloc((size_t)GATHER_SPAN * (size_t)cols * sizeof(float));
    int rc = 0;
    for (size_t i = 0; i < n && !rc;) {
        int32_t r0 = ix[i].id;
        size_t j = i;
        while (j < n && ix[j].id - r0 < GATHER_SPAN) j++;  // ix[i..j): rows [r0, ix[j - 1].id]
        int64_t nr = (int64_t)ix[j - 1].id - r0 + 1;
        rc = s->load(s, name, r0, nr, buf, err);
        for (size_t k = i; k < j && !rc; k++)
            memcpy(out + ix[k].t * (size_t)cols, buf + (size_t)(ix[k].id - r0) * (size_t)cols,
                   (size_t)cols * sizeof(float));
        i = j;
    }
    free(buf);
    free(ix);
    return rc;
}

// ---- checkpoint source (quant/source.h: FP8 pairing checked once at open) -------------------

static int ck_shape(fb_wsrc *s, const char *name, int *ndim, int64_t shape[FB_MAX_DIMS]) {
    fb_source *src = s->ctx;
    const fb_ckpt_tensor *ct = fb_ckpt_find(src->ck, name);
    if (!ct) return 0;
    *ndim = ct->t->ndim;
    for (int i = 0; i < ct->t->ndim; i++) shape[i] = ct->t->shape[i];
    return 1;
}

#define CK_CHUNK_BYTES ((uint64_t)16 << 20)

static int ck_load(fb_wsrc *s, const char *name, int64_t r0, int64_t nrows, float *out,
                   fb_err *err) {
    fb_source *src = s->ctx;
    int64_t i = fb_source_index(src, name);
    if (i < 0) return fb_fail(err, "%s: tensor %s is missing", s->desc, name);
    const fb_st_tensor *t = src->ck->tensors[i].t;
    const fb_st_file *f = fb_ckpt_file(src->ck, &src->ck->tensors[i]);
    int64_t rows = t->ndim ? t->shape[0] : 1;
    uint64_t cols = row_elems(t->ndim, t->shape);
    if (r0 < 0 || nrows < 0 || r0 + nrows > rows)
        return fb_fail(err, "%s: tensor %s: rows [%lld, %lld) outside [0, %lld)", f->path, name,
                       (long long)r0, (long long)(r0 + nrows), (long long)rows);
    if (src->role[i] == FB_SRC_FP8_SCALE || !fb_dtypes[t->dtype].is_float ||
        fb_dtypes[t->dtype].bits < 8)
        return fb_fail(err, "%s: tensor %s: dtype %s is not a weight dtype", f->path, name,
                       fb_dtypes[t->dtype].name);
    uint64_t rowbytes = cols * (uint64_t)fb_dtypes[t->dtype].bits / 8;
    int64_t chunk = (int64_t)(CK_CHUNK_BYTES / (cols ? cols * 4 : 4));
    if (chunk < 1) chunk = 1;
    if (chunk > nrows) chunk = nrows;
    int rc = 0;
    if (t->ndim == 2) {
        float *scale = NULL;
        if (src->role[i] == FB_SRC_FP8_WEIGHT && fb_source_load_scale(src, (size_t)i, &scale, err))
            return -1;
        void *scratch = fb_malloc((size_t)((uint64_t)chunk * cols * 4) + 1);
        for (int64_t r = 0; r < nrows && !rc; r += chunk) {
            int64_t n = nrows - r < chunk ? nrows - r : chunk;
            rc = fb_source_read_rows_f32(src, (size_t)i, scale, (uint64_t)(r0 + r), (size_t)n,
                                         out + (uint64_t)r * cols, scratch, 0, err);
            fb_st_release(f, t->offset + (uint64_t)(r0 + r) * rowbytes, (uint64_t)n * rowbytes);
        }
        free(scratch);
        free(scale);
        return rc;
    }
    // 1-D (norms, biases) and other ranks: plain floats as stored.
    uint8_t *buf = fb_malloc((size_t)((uint64_t)chunk * rowbytes) + 1);
    for (int64_t r = 0; r < nrows && !rc; r += chunk) {
        int64_t n = nrows - r < chunk ? nrows - r : chunk;
        uint64_t off = (uint64_t)(r0 + r) * rowbytes;
        if (fb_st_read(f, t, off, buf, (size_t)((uint64_t)n * rowbytes), err)) rc = -1;
        else if (fb_to_f32(t->dtype, buf, out + (uint64_t)r * cols, (size_t)((uint64_t)n * cols)))
            rc = fb_fail(err, "%s: tensor %s: cannot convert dtype %s", f->path, name,
                         fb_dtypes[t->dtype].name);
    }
    free(buf);
    return rc;
}

// Index of the first e4m3 NaN code (low 7 bits all set) in b[0..n), or -1. Eight bytes at a
// time: (x & 0x7F) + 1 carries into bit 7 exactly when the low 7 bits are 0x7F, never into the
// next byte.
static int64_t fp8_find_nan(const uint8_t *b, uint64_t n) {
    const uint64_t lo = 0x7F7F7F7F7F7F7F7Full, one = 0x0101010101010101ull,
                   hi = 0x8080808080808080ull;
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, b + i, 8);
        if (((x & lo) + one) & hi) break;
    }
    for (; i < n; i++)
        if ((b[i] & 0x7F) == 0x7F) return (int64_t)i;
    return -1;
}

static int ck_load_fp8(fb_wsrc *s, const char *name, int64_t r0, int64_t nrows, uint8_t *bytes,
                       float **scale, int *bm, int *bn, fb_err *err) {
    fb_source *src = s->ctx;
    int64_t i = fb_source_index(src, name);
    if (i < 0) return fb_fail(err, "%s: tensor %s is missing", s->desc, name);
    if (src->role[i] != FB_SRC_FP8_WEIGHT) return 0;  // fb_source_check: FP8 weights are 2-D
    if (!bytes) return 1;
    const fb_st_tensor *t = src->ck->tensors[i].t;
    const fb_st_file *f = fb_ckpt_file(src->ck, &src->ck->tensors[i]);
    int64_t rows = t->shape[0];
    uint64_t cols = (uint64_t)t->shape[1];
    if (r0 < 0 || nrows < 0 || r0 + nrows > rows)
        return fb_fail(err, "%s: tensor %s: rows [%lld, %lld) outside [0, %lld)", f->path, name,
                       (long long)r0, (long long)(r0 + nrows), (long long)rows);
    uint64_t off = (uint64_t)r0 * cols, n = (uint64_t)nrows * cols;
    for (uint64_t d = 0; d < n; d += CK_CHUNK_BYTES) {  // drop the page cache behind us
        uint64_t m = n - d < CK_CHUNK_BYTES ? n - d : CK_CHUNK_BYTES;
        if (fb_st_read(f, t, off + d, bytes + d, (size_t)m, err)) return -1;
        fb_st_release(f, t->offset + off + d, m);
    }
    int64_t at = fp8_find_nan(bytes, n);
    if (at >= 0)  // the message of the f32 path (quant/source.c)
        return fb_fail(err, "%s: tensor %s: NaN code at [%llu, %llu] (use --allow-nan to convert "
                       "it to NaN)", f->path, name,
                       (unsigned long long)((uint64_t)r0 + (uint64_t)at / cols),
                       (unsigned long long)((uint64_t)at % cols));
    if (fb_source_load_scale(src, (size_t)i, scale, err)) return -1;
    *bm = (int)src->bm;
    *bn = (int)src->bn;
    return 1;
}

static void ck_close(fb_wsrc *s) { fb_source_close(s->ctx); }

fb_wsrc *fb_wsrc_open_ckpt(const char *path, fb_err *err) {
    fb_source *src;
    if (fb_source_open(path, &src, err)) return NULL;
    fb_wsrc *s = fb_calloc(1, sizeof *s);
    s->shape = ck_shape;
    s->load = ck_load;
    s->load_fp8 = ck_load_fp8;
    s->close = ck_close;
    s->ctx = src;
    s->config = src->ck->config;
    s->desc = fb_strdup(path);
    return s;
}

// ---- in-memory source --------------------------------------------------------------------

typedef struct mem_t {
    char *name;
    int ndim;
    int64_t shape[FB_MAX_DIMS];
    float *data;
} mem_t;

typedef struct mem_ctx {
    size_t n, cap;
    mem_t *t;
    json_t *config;
} mem_ctx;

static const mem_t *mem_find(const mem_ctx *m, const char *name) {
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->t[i].name, name) == 0) return &m->t[i];
    return NULL;
}

static int mem_shape(fb_wsrc *s, const char *name, int *ndim, int64_t shape[FB_MAX_DIMS]) {
    const mem_t *t = mem_find(s->ctx, name);
    if (!t) return 0;
    *ndim = t->ndim;
    memcpy(shape, t->shape, sizeof t->shape);
    return 1;
}

static int mem_load(fb_wsrc *s, const char *name, int64_t r0, int64_t nrows, float *out,
                    fb_err *err) {
    const mem_t *t = mem_find(s->ctx, name);
    if (!t) return fb_fail(err, "%s: tensor %s is missing", s->desc, name);
    int64_t rows = t->ndim ? t->shape[0] : 1;
    if (r0 < 0 || nrows < 0 || r0 + nrows > rows)
        return fb_fail(err, "%s: tensor %s: rows [%lld, %lld) outside [0, %lld)", s->desc, name,
                       (long long)r0, (long long)(r0 + nrows), (long long)rows);
    uint64_t cols = row_elems(t->ndim, t->shape);
    memcpy(out, t->data + (uint64_t)r0 * cols, (size_t)((uint64_t)nrows * cols) * sizeof(float));
    return 0;
}

static void mem_close(fb_wsrc *s) {
    mem_ctx *m = s->ctx;
    for (size_t i = 0; i < m->n; i++) {
        free(m->t[i].name);
        free(m->t[i].data);
    }
    free(m->t);
    if (m->config) json_decref(m->config);
    free(m);
}

fb_wsrc *fb_wsrc_mem_new(json_t *config) {
    mem_ctx *m = fb_calloc(1, sizeof *m);
    if (config) m->config = json_incref(config);
    fb_wsrc *s = fb_calloc(1, sizeof *s);
    s->shape = mem_shape;
    s->load = mem_load;
    s->close = mem_close;
    s->ctx = m;
    s->config = m->config;
    s->desc = fb_strdup("<memory>");
    return s;
}

// Adds a tensor whose data is `data` (taken when own, else copied).
static int mem_add(fb_wsrc *s, const char *name, int ndim, const int64_t *shape, float *data, int own,
                   fb_err *err) {
    mem_ctx *m = s->ctx;
    if (mem_find(m, name)) return fb_fail(err, "<memory>: duplicate tensor %s", name);
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 64;
        m->t = fb_realloc(m->t, m->cap * sizeof *m->t);
    }
    mem_t *t = &m->t[m->n++];
    memset(t, 0, sizeof *t);
    t->name = fb_strdup(name);
    t->ndim = ndim;
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        n *= (uint64_t)shape[i];
    }
    if (own) t->data = data;
    else {
        t->data = fb_malloc((size_t)n * sizeof(float) + 1);
        memcpy(t->data, data, (size_t)n * sizeof(float));
    }
    return 0;
}

int fb_wsrc_mem_add(fb_wsrc *s, const char *name, int ndim, const int64_t *shape,
                    const float *data, fb_err *err) {
    return mem_add(s, name, ndim, shape, (float *)data, 0, err);
}

// ---- overlay: in-memory replacements over another source -----------------------------------------

typedef struct ovl_ctx {
    fb_wsrc *base;   // borrowed
    fb_wsrc *mem;    // owned: the replacements
} ovl_ctx;

static int ovl_shape(fb_wsrc *s, const char *name, int *ndim, int64_t shape[FB_MAX_DIMS]) {
    ovl_ctx *o = s->ctx;
    return o->mem->shape(o->mem, name, ndim, shape) || o->base->shape(o->base, name, ndim, shape);
}

static int ovl_load(fb_wsrc *s, const char *name, int64_t r0, int64_t nrows, float *out, fb_err *err) {
    ovl_ctx *o = s->ctx;
    int nd;
    int64_t sh[FB_MAX_DIMS];
    fb_wsrc *src = o->mem->shape(o->mem, name, &nd, sh) ? o->mem : o->base;
    return src->load(src, name, r0, nrows, out, err);
}

// Raw FP8 only for tensors not replaced (a replacement is f32).
static int ovl_load_fp8(fb_wsrc *s, const char *name, int64_t r0, int64_t nrows, uint8_t *bytes,
                        float **scale, int *bm, int *bn, fb_err *err) {
    ovl_ctx *o = s->ctx;
    int nd;
    int64_t sh[FB_MAX_DIMS];
    if (o->mem->shape(o->mem, name, &nd, sh) || !o->base->load_fp8) return 0;
    return o->base->load_fp8(o->base, name, r0, nrows, bytes, scale, bm, bn, err);
}

static void ovl_close(fb_wsrc *s) {
    ovl_ctx *o = s->ctx;
    fb_wsrc_close(o->mem);
    free(o);
}

fb_wsrc *fb_wsrc_overlay_new(fb_wsrc *base) {
    ovl_ctx *o = fb_calloc(1, sizeof *o);
    o->base = base;
    o->mem = fb_wsrc_mem_new(NULL);
    fb_wsrc *s = fb_calloc(1, sizeof *s);
    s->shape = ovl_shape;
    s->load = ovl_load;
    s->load_fp8 = ovl_load_fp8;
    s->close = ovl_close;
    s->ctx = o;
    s->config = base->config;
    size_t n = strlen(base->desc ? base->desc : "") + 16;
    s->desc = fb_malloc(n);
    snprintf(s->desc, n, "%s (overlaid)", base->desc ? base->desc : "");
    return s;
}

static int overlay_put(fb_wsrc *s, const char *name, int ndim, const int64_t *shape, float *data, int own,
                       fb_err *err) {
    ovl_ctx *o = s->ctx;
    mem_ctx *m = o->mem->ctx;
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->t[i].name, name) == 0) {  // replace in place (same element count required)
            uint64_t a = 1, b = 1;
            for (int d = 0; d < m->t[i].ndim; d++) a *= (uint64_t)m->t[i].shape[d];
            for (int d = 0; d < ndim; d++) b *= (uint64_t)shape[d];
            if (a != b) return fb_fail(err, "overlay: tensor %s changes size", name);
            if (own) {
                free(m->t[i].data);
                m->t[i].data = data;
            } else memcpy(m->t[i].data, data, (size_t)b * sizeof(float));
            return 0;
        }
    return mem_add(o->mem, name, ndim, shape, data, own, err);
}

int fb_wsrc_overlay_put(fb_wsrc *s, const char *name, int ndim, const int64_t *shape, const float *data,
                        fb_err *err) {
    return overlay_put(s, name, ndim, shape, (float *)data, 0, err);
}

int fb_wsrc_overlay_put_owned(fb_wsrc *s, const char *name, int ndim, const int64_t *shape, float **data,
                              fb_err *err) {
    if (overlay_put(s, name, ndim, shape, *data, 1, err)) return -1;
    *data = NULL;
    return 0;
}

void fb_wsrc_overlay_clear(fb_wsrc *s) {
    ovl_ctx *o = s->ctx;
    fb_wsrc_close(o->mem);
    o->mem = fb_wsrc_mem_new(NULL);
}
