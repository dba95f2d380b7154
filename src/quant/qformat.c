// qformat.c: the output-format registry and the helpers the format files share (see qformat.h).
#include "quant/qformat.h"

#include <math.h>
#include <string.h>

// ---- the registry: one line per format -----------------------------------------------------------

extern const fb_qfmt fb_qfmt_nvfp4;
extern const fb_qfmt fb_qfmt_pack_int4;
extern const fb_qfmt fb_qfmt_autoround;
extern const fb_qfmt fb_qfmt_modelopt;

static const fb_qfmt *const FORMATS[FB_QF_COUNT] = {
    [FB_QF_NVFP4] = &fb_qfmt_nvfp4,
    [FB_QF_PACK_INT4] = &fb_qfmt_pack_int4,
    [FB_QF_AUTOROUND] = &fb_qfmt_autoround,
    [FB_QF_MODELOPT] = &fb_qfmt_modelopt,
};

const fb_qfmt *fb_qfmt_get(fb_qfmt_id id) { return (unsigned)id < FB_QF_COUNT ? FORMATS[id] : NULL; }

fb_qfmt_id fb_qfmt_detect(const fb_qfmt_read *rd, const char *prefix) {
    for (int i = 0; i < FB_QF_COUNT; i++)
        if (FORMATS[i]->detect(rd, prefix)) return (fb_qfmt_id)i;
    return FB_QF_COUNT;
}

uint64_t fb_qfmt_out_bytes(const fb_qfmt *f, int k, int64_t R, int64_t C, int64_t G, int w4a4) {
    if (f->out[k].w4a4_only && !w4a4) return 0;
    int64_t sh[2] = {1, 1};
    f->shape(k, R, C, G, sh);
    uint64_t n = (uint64_t)sh[0] * (uint64_t)(f->out[k].ndim > 1 ? sh[1] : 1);
    return n * (uint64_t)fb_dtypes[f->out[k].dtype].bits / 8;
}

// ---- helpers -------------------------------------------------------------------------------------

const fb_st_tensor *fb_qf_part(const fb_qfmt_read *rd, const char *prefix, const char *suffix,
                               const fb_st_file **f, char *buf, size_t bufsz) {
    size_t a = strlen(prefix), b = strlen(suffix);
    if (a + b >= bufsz) return NULL;
    memcpy(buf, prefix, a);
    memcpy(buf + a, suffix, b + 1);
    const fb_ckpt_tensor *ct = fb_ckpt_find(rd->ck, buf);
    if (!ct) return NULL;
    if (f) *f = fb_ckpt_file(rd->ck, ct);
    return ct->t;
}

int fb_qf_read_small(const fb_st_file *f, const fb_st_tensor *t, void *buf, size_t cap, fb_err *err) {
    if (t->nbytes > cap)
        return fb_fail(err, "%s: tensor %s: %llu bytes, expected at most %zu", f->path, t->name,
                       (unsigned long long)t->nbytes, cap);
    return fb_st_read(f, t, 0, buf, (size_t)t->nbytes, err);
}

int fb_qf_check_2d(const fb_st_file *f, const fb_st_tensor *t, fb_dtype dt, int64_t d0, int64_t d1,
                   fb_err *err) {
    if (t->dtype != dt || t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1)
        return fb_fail(err, "%s: tensor %s: expected %s [%lld, %lld], got %s of %d dims "
                            "[%lld, %lld]", f->path, t->name, fb_dtypes[dt].name, (long long)d0,
                       (long long)d1, fb_dtypes[t->dtype].name, t->ndim,
                       (long long)(t->ndim > 0 ? t->shape[0] : 0),
                       (long long)(t->ndim > 1 ? t->shape[1] : 0));
    return 0;
}

int fb_qf_read_gs(const fb_st_file *f, const fb_st_tensor *t, float *out, fb_err *err) {
    if (t->dtype != FB_F32 || t->nelem != 1)
        return fb_fail(err, "%s: tensor %s: expected F32 [1], got %s with %llu elements",
                       f->path, t->name, fb_dtypes[t->dtype].name, (unsigned long long)t->nelem);
    if (fb_qf_read_small(f, t, out, sizeof *out, err)) return -1;
    if (!isfinite(*out) || !(*out > 0))
        return fb_fail(err, "%s: tensor %s: global scale %g is not finite and positive",
                       f->path, t->name, (double)*out);
    return 0;
}

int fb_qf_rows_check(const char *path, const char *name, int64_t r0, int64_t nrows, int64_t rows,
                     fb_err *err) {
    if (r0 < 0 || nrows < 0 || r0 + nrows > rows)
        return fb_fail(err, "%s: tensor %s: rows [%lld, %lld) outside [0, %lld)", path, name,
                       (long long)r0, (long long)(r0 + nrows), (long long)rows);
    return 0;
}
