// qformat.c: the output-format registry and the helpers the format files share (see qformat.h).
#include "quant/qformat.h"
#include "quant/formats.h"
#include "quant/nvfp4.h"

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

int fb_qf_fp4_rows(const fb_qfmt_read *rd, const char *p, const char *name, const char *const sfx[3],
                   const char *what, fb_qf_fp4_dequant dequant, int64_t r0, int64_t nrows, float *out,
                   fb_err *err) {
    char bp[512], bs[512], bg[512];
    const fb_st_file *fp = NULL, *fs = NULL, *fg = NULL;
    const fb_st_tensor *tp = fb_qf_part(rd, p, sfx[0], &fp, bp, sizeof bp);
    const fb_st_tensor *ts = fb_qf_part(rd, p, sfx[1], &fs, bs, sizeof bs);
    const fb_st_tensor *tg = fb_qf_part(rd, p, sfx[2], &fg, bg, sizeof bg);
    if (!tp || !ts || !tg)
        return fb_fail(err, "%s: tensor %s is missing (%s weight %s)", rd->ck->path,
                       !tp ? bp : !ts ? bs : bg, what, name);
    if (tp->ndim != 2) return fb_qf_check_2d(fp, tp, FB_U8, 0, 0, err);
    int64_t R = tp->shape[0], C = tp->shape[1] * 2;
    if (C % FB_NVFP4_GROUP)
        return fb_fail(err, "%s: tensor %s: %lld columns are not a multiple of 16", fp->path,
                       bp, (long long)C);
    if (fb_qf_check_2d(fs, ts, FB_F8_E4M3, R, C / FB_NVFP4_GROUP, err)) return -1;
    float s;
    if (fb_qf_read_gs(fg, tg, &s, err)) return -1;  // F32, one element, finite and > 0
    if (fb_qf_rows_check(fp->path, name, r0, nrows, R, err)) return -1;
    size_t pb = (size_t)C / 2, sb = (size_t)C / FB_NVFP4_GROUP;
    int64_t chunk = (int64_t)(FB_QF_CHUNK_BYTES / pb);
    if (chunk < 1) chunk = 1;
    if (chunk > nrows) chunk = nrows;
    uint8_t *pk = fb_malloc((size_t)chunk * pb + 1), *sc = fb_malloc((size_t)chunk * sb + 1);
    int rc = 0;
    for (int64_t r = 0; r < nrows && !rc; r += chunk) {
        int64_t n = nrows - r < chunk ? nrows - r : chunk;
        if (fb_st_read(fp, tp, (uint64_t)(r0 + r) * pb, pk, (size_t)n * pb, err) ||
            fb_st_read(fs, ts, (uint64_t)(r0 + r) * sb, sc, (size_t)n * sb, err)) {
            rc = -1;
            break;
        }
        for (size_t i = 0; i < (size_t)n * sb; i++)
            if (fb_e4m3_is_nan(sc[i])) {
                rc = fb_fail(err, "%s: tensor %s: row %lld, group %zu: scale is an fp8 NaN code 0x%02X",
                             fs->path, bs, (long long)(r0 + r) + (long long)(i / sb), i % sb, sc[i]);
                break;
            }
        if (!rc) dequant(pk, sc, (size_t)n, (size_t)C, s, out + (size_t)r * (size_t)C);
    }
    free(pk);
    free(sc);
    return rc;
}
