// wsrc_quant.c: weight source over NVFP4 / int4 (compressed-tensors) and AutoRound
// checkpoints, dequantizing on load (see wsrc_quant.h).
#include "calib/wsrc_quant.h"

#include <math.h>
#include <string.h>

#include "io/checkpoint.h"
#include "quant/formats.h"
#include "quant/nvfp4.h"
#include "quant/w4a16.h"

typedef struct wq_ctx {
    fb_ckpt *ck;
    uint32_t zp_word;   // AutoRound: the qzeros word of the symmetric zero point 8
    char fmt[16];
} wq_ctx;

#define WQ_CHUNK_BYTES ((uint64_t)16 << 20)

static const fb_st_tensor *wq_find(const wq_ctx *q, const char *name, const fb_st_file **f) {
    const fb_ckpt_tensor *ct = fb_ckpt_find(q->ck, name);
    if (!ct) return NULL;
    if (f) *f = fb_ckpt_file(q->ck, ct);
    return ct->t;
}

// Finds P<suffix>; buf receives the name.
static const fb_st_tensor *wq_part(const wq_ctx *q, const char *prefix, const char *suffix,
                                   const fb_st_file **f, char *buf, size_t bufsz) {
    size_t a = strlen(prefix), b = strlen(suffix);
    if (a + b >= bufsz) return NULL;
    memcpy(buf, prefix, a);
    memcpy(buf + a, suffix, b + 1);
    return wq_find(q, buf, f);
}

// Splits "P.weight" into P; returns 0 when name does not end in ".weight".
static int weight_prefix(const char *name, char *prefix, size_t sz) {
    size_t n = strlen(name);
    if (n < 8 || strcmp(name + n - 7, ".weight") != 0 || n - 7 >= sz) return 0;
    memcpy(prefix, name, n - 7);
    prefix[n - 7] = 0;
    return 1;
}

static int kind_of(const wq_ctx *q, const char *prefix) {
    char b[512];
    const fb_st_tensor *t;
    if (wq_part(q, prefix, ".weight", NULL, b, sizeof b)) return FB_WQ_PLAIN;
    if ((t = wq_part(q, prefix, ".weight_packed", NULL, b, sizeof b)))
        return t->dtype == FB_U8 ? FB_WQ_NVFP4 : FB_WQ_INT4_CT;
    if (wq_part(q, prefix, ".qweight", NULL, b, sizeof b)) return FB_WQ_AUTOROUND;
    return -1;
}

// Reads a small tensor whole as raw bytes into buf (at most cap bytes).
static int read_small(const fb_st_file *f, const fb_st_tensor *t, void *buf, size_t cap,
                      fb_err *err) {
    if (t->nbytes > cap)
        return fb_fail(err, "%s: tensor %s: %llu bytes, expected at most %zu", f->path, t->name,
                       (unsigned long long)t->nbytes, cap);
    return fb_st_read(f, t, 0, buf, (size_t)t->nbytes, err);
}

// The int4 logical shape from P.weight_shape (I64 [2]); -1 with err when malformed.
static int int4_shape(const wq_ctx *q, const char *prefix, int64_t *rows, int64_t *cols,
                      fb_err *err) {
    char b[512];
    const fb_st_file *f;
    const fb_st_tensor *t = wq_part(q, prefix, ".weight_shape", &f, b, sizeof b);
    if (!t) return fb_fail(err, "%s: tensor %s is missing (int4 pack-quantized weight)",
                           q->ck->path, b);
    int64_t v[2];
    if ((t->dtype != FB_I64 && t->dtype != FB_I32) || t->nelem != 2)
        return fb_fail(err, "%s: tensor %s: expected I64 [2], got %s with %llu elements",
                       f->path, b, fb_dtypes[t->dtype].name, (unsigned long long)t->nelem);
    if (t->dtype == FB_I64) {
        if (read_small(f, t, v, sizeof v, err)) return -1;
    } else {
        int32_t w[2];
        if (read_small(f, t, w, sizeof w, err)) return -1;
        v[0] = w[0];
        v[1] = w[1];
    }
    if (v[0] <= 0 || v[1] <= 0)
        return fb_fail(err, "%s: tensor %s: shape [%lld, %lld] is not positive", f->path, b,
                       (long long)v[0], (long long)v[1]);
    *rows = v[0];
    *cols = v[1];
    return 0;
}

static int wq_shape(fb_wsrc *s, const char *name, int *ndim, int64_t shape[FB_MAX_DIMS]) {
    wq_ctx *q = s->ctx;
    const fb_st_tensor *t = wq_find(q, name, NULL);
    if (t) {
        *ndim = t->ndim;
        for (int i = 0; i < t->ndim; i++) shape[i] = t->shape[i];
        return 1;
    }
    char p[512], b[512];
    if (!weight_prefix(name, p, sizeof p)) return 0;
    switch (kind_of(q, p)) {
    case FB_WQ_NVFP4:
        t = wq_part(q, p, ".weight_packed", NULL, b, sizeof b);
        if (t->ndim != 2) return 0;
        *ndim = 2;
        shape[0] = t->shape[0];
        shape[1] = t->shape[1] * 2;
        return 1;
    case FB_WQ_INT4_CT: {
        int64_t r, c;
        fb_err e;
        if (int4_shape(q, p, &r, &c, &e)) return 0;
        *ndim = 2;
        shape[0] = r;
        shape[1] = c;
        return 1;
    }
    case FB_WQ_AUTOROUND:
        t = wq_part(q, p, ".qweight", NULL, b, sizeof b);
        if (t->ndim != 2) return 0;
        *ndim = 2;
        shape[0] = t->shape[1];
        shape[1] = t->shape[0] * 8;
        return 1;
    default:
        return 0;
    }
}

static int check_2d(const fb_st_file *f, const fb_st_tensor *t, fb_dtype dt, int64_t d0,
                    int64_t d1, fb_err *err) {
    if (t->dtype != dt || t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1)
        return fb_fail(err, "%s: tensor %s: expected %s [%lld, %lld], got %s of %d dims "
                            "[%lld, %lld]", f->path, t->name, fb_dtypes[dt].name, (long long)d0,
                       (long long)d1, fb_dtypes[t->dtype].name, t->ndim,
                       (long long)(t->ndim > 0 ? t->shape[0] : 0),
                       (long long)(t->ndim > 1 ? t->shape[1] : 0));
    return 0;
}

// A positive finite F32 scalar (weight_global_scale / input_global_scale).
static int read_gs(const fb_st_file *f, const fb_st_tensor *t, float *out, fb_err *err) {
    if (t->dtype != FB_F32 || t->nelem != 1)
        return fb_fail(err, "%s: tensor %s: expected F32 [1], got %s with %llu elements",
                       f->path, t->name, fb_dtypes[t->dtype].name, (unsigned long long)t->nelem);
    if (read_small(f, t, out, sizeof *out, err)) return -1;
    if (!isfinite(*out) || !(*out > 0))
        return fb_fail(err, "%s: tensor %s: global scale %g is not finite and positive",
                       f->path, t->name, (double)*out);
    return 0;
}

static int load_plain(const fb_st_file *f, const fb_st_tensor *t, int64_t r0, int64_t nrows,
                      float *out, fb_err *err) {
    int64_t rows = t->ndim ? t->shape[0] : 1;
    uint64_t cols = 1;
    for (int i = 1; i < t->ndim; i++) cols *= (uint64_t)t->shape[i];
    if (r0 < 0 || nrows < 0 || r0 + nrows > rows)
        return fb_fail(err, "%s: tensor %s: rows [%lld, %lld) outside [0, %lld)", f->path,
                       t->name, (long long)r0, (long long)(r0 + nrows), (long long)rows);
    fb_dtype dt = t->dtype;
    if (dt != FB_BF16 && dt != FB_F16 && dt != FB_F32 && dt != FB_F64)
        return fb_fail(err, "%s: tensor %s: dtype %s is not a plain weight dtype (BF16, F16, "
                            "F32, F64)", f->path, t->name, fb_dtypes[dt].name);
    uint64_t rowbytes = cols * (uint64_t)fb_dtypes[dt].bits / 8;
    int64_t chunk = (int64_t)(WQ_CHUNK_BYTES / (rowbytes ? rowbytes : 1));
    if (chunk < 1) chunk = 1;
    if (chunk > nrows) chunk = nrows;
    uint8_t *buf = fb_malloc((size_t)((uint64_t)chunk * rowbytes) + 1);
    int rc = 0;
    for (int64_t r = 0; r < nrows && !rc; r += chunk) {
        int64_t n = nrows - r < chunk ? nrows - r : chunk;
        if (fb_st_read(f, t, (uint64_t)(r0 + r) * rowbytes, buf, (size_t)((uint64_t)n * rowbytes),
                       err))
            rc = -1;
        else
            fb_to_f32(dt, buf, out + (uint64_t)r * cols, (size_t)((uint64_t)n * cols));
    }
    free(buf);
    return rc;
}

static int rows_check(const char *path, const char *name, int64_t r0, int64_t nrows,
                      int64_t rows, fb_err *err) {
    if (r0 < 0 || nrows < 0 || r0 + nrows > rows)
        return fb_fail(err, "%s: tensor %s: rows [%lld, %lld) outside [0, %lld)", path, name,
                       (long long)r0, (long long)(r0 + nrows), (long long)rows);
    return 0;
}

static int load_nvfp4(wq_ctx *q, const char *p, const char *name, int64_t r0, int64_t nrows,
                      float *out, fb_err *err) {
    char bp[512], bs[512], bg[512];
    const fb_st_file *fp = NULL, *fs = NULL, *fg = NULL;
    const fb_st_tensor *tp = wq_part(q, p, ".weight_packed", &fp, bp, sizeof bp);
    const fb_st_tensor *ts = wq_part(q, p, ".weight_scale", &fs, bs, sizeof bs);
    const fb_st_tensor *tg = wq_part(q, p, ".weight_global_scale", &fg, bg, sizeof bg);
    if (!ts || !tg)
        return fb_fail(err, "%s: tensor %s is missing (NVFP4 weight %s)", q->ck->path,
                       ts ? bg : bs, name);
    if (tp->ndim != 2) return check_2d(fp, tp, FB_U8, 0, 0, err);
    int64_t R = tp->shape[0], C = tp->shape[1] * 2;
    if (C % FB_NVFP4_GROUP)
        return fb_fail(err, "%s: tensor %s: %lld columns are not a multiple of 16", fp->path,
                       bp, (long long)C);
    if (check_2d(fs, ts, FB_F8_E4M3, R, C / FB_NVFP4_GROUP, err)) return -1;
    float g;
    if (read_gs(fg, tg, &g, err)) return -1;
    if (rows_check(fp->path, name, r0, nrows, R, err)) return -1;
    size_t pb = (size_t)C / 2, sb = (size_t)C / FB_NVFP4_GROUP;
    int64_t chunk = (int64_t)(WQ_CHUNK_BYTES / pb);
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
                rc = fb_fail(err, "%s: tensor %s: row %lld, group %zu: scale is an fp8 NaN "
                                  "code 0x%02X", fs->path, bs, (long long)(r0 + r) + (long long)(i / sb),
                             i % sb, sc[i]);
                break;
            }
        if (!rc) fb_nvfp4_dequant_rows(pk, sc, (size_t)n, (size_t)C, g, out + (size_t)r * (size_t)C);
    }
    free(pk);
    free(sc);
    return rc;
}

static int load_int4(wq_ctx *q, const char *p, const char *name, int64_t r0, int64_t nrows,
                     float *out, fb_err *err) {
    char bp[512], bs[512];
    const fb_st_file *fp = NULL, *fs = NULL;
    const fb_st_tensor *tp = wq_part(q, p, ".weight_packed", &fp, bp, sizeof bp);
    const fb_st_tensor *ts = wq_part(q, p, ".weight_scale", &fs, bs, sizeof bs);
    if (!ts) return fb_fail(err, "%s: tensor %s is missing (int4 weight %s)", q->ck->path, bs, name);
    int64_t R, C;
    if (int4_shape(q, p, &R, &C, err)) return -1;
    if (C % 8) return fb_fail(err, "%s: %s.weight_shape: %lld columns are not a multiple of 8",
                              fp->path, p, (long long)C);
    if (check_2d(fp, tp, FB_I32, R, C / 8, err)) return -1;
    if (ts->ndim != 2 || ts->shape[0] != R || ts->shape[1] <= 0 || C % ts->shape[1])
        return fb_fail(err, "%s: tensor %s: shape does not give groups of [%lld, %lld]",
                       fs->path, bs, (long long)R, (long long)C);
    int64_t G = C / ts->shape[1];
    if (check_2d(fs, ts, FB_BF16, R, C / G, err)) return -1;
    if (G % 8 && G != C)
        return fb_fail(err, "%s: tensor %s: group size %lld is not a multiple of 8", fs->path, bs,
                       (long long)G);
    if (rows_check(fp->path, name, r0, nrows, R, err)) return -1;
    size_t pw = (size_t)C / 8, sw = (size_t)(C / G);
    int64_t chunk = (int64_t)(WQ_CHUNK_BYTES / (pw * 4));
    if (chunk < 1) chunk = 1;
    if (chunk > nrows) chunk = nrows;
    int32_t *pk = fb_malloc((size_t)chunk * pw * 4 + 4);
    uint16_t *sc = fb_malloc((size_t)chunk * sw * 2 + 2);
    int rc = 0;
    for (int64_t r = 0; r < nrows && !rc; r += chunk) {
        int64_t n = nrows - r < chunk ? nrows - r : chunk;
        if (fb_st_read(fp, tp, (uint64_t)(r0 + r) * pw * 4, pk, (size_t)n * pw * 4, err) ||
            fb_st_read(fs, ts, (uint64_t)(r0 + r) * sw * 2, sc, (size_t)n * sw * 2, err)) {
            rc = -1;
            break;
        }
        int64_t bad = fb_find_nonfinite(FB_BF16, sc, (size_t)n * sw, 1);
        if (bad >= 0) {
            rc = fb_fail(err, "%s: tensor %s: row %lld, group %lld: scale is not finite", fs->path,
                         bs, (long long)(r0 + r + bad / (int64_t)sw), (long long)(bad % (int64_t)sw));
            break;
        }
        fb_w4a16_dequant_rows(pk, sc, (size_t)n, (size_t)C, (size_t)G,
                              out + (size_t)r * (size_t)C);
    }
    free(pk);
    free(sc);
    return rc;
}

static int load_autoround(wq_ctx *q, const char *p, const char *name, int64_t r0, int64_t nrows,
                          float *out, fb_err *err) {
    char bq[512], bs[512], bz[512], bgi[512];
    const fb_st_file *fq = NULL, *fs = NULL, *fz = NULL, *fgi = NULL;
    const fb_st_tensor *tq = wq_part(q, p, ".qweight", &fq, bq, sizeof bq);
    const fb_st_tensor *ts = wq_part(q, p, ".scales", &fs, bs, sizeof bs);
    const fb_st_tensor *tz = wq_part(q, p, ".qzeros", &fz, bz, sizeof bz);
    const fb_st_tensor *tg = wq_part(q, p, ".g_idx", &fgi, bgi, sizeof bgi);
    if (!ts || !tz)
        return fb_fail(err, "%s: tensor %s is missing (AutoRound weight %s)", q->ck->path,
                       ts ? bz : bs, name);
    if (tq->dtype != FB_I32 || tq->ndim != 2) return check_2d(fq, tq, FB_I32, 0, 0, err);
    int64_t R = tq->shape[1], C = tq->shape[0] * 8;
    if (ts->ndim != 2 || ts->shape[1] != R || ts->shape[0] <= 0 || C % ts->shape[0])
        return fb_fail(err, "%s: tensor %s: shape does not give groups of a [%lld, %lld] "
                            "weight", fs->path, bs, (long long)R, (long long)C);
    int64_t G = C / ts->shape[0];
    if (check_2d(fs, ts, FB_F16, C / G, R, err)) return -1;
    if (check_2d(fz, tz, FB_I32, C / G, (R + 7) / 8, err)) return -1;
    if (rows_check(fq->path, name, r0, nrows, R, err)) return -1;
    int rc = 0;
    int32_t *qw = NULL, *qz = NULL, *gi = NULL;
    uint16_t *sc = NULL;
    if (fb_st_read_all(fq, tq, (void **)&qw, err) || fb_st_read_all(fs, ts, (void **)&sc, err) ||
        fb_st_read_all(fz, tz, (void **)&qz, err)) {
        rc = -1;
        goto out;
    }
    for (uint64_t i = 0; i < tz->nelem; i++)
        if ((uint32_t)qz[i] != q->zp_word) {
            rc = fb_fail(err, "%s: tensor %s: element %llu is 0x%08X, expected 0x%08X (symmetric "
                              "zero point 8 for this packing); asymmetric int4 is not supported",
                         fz->path, bz, (unsigned long long)i, (uint32_t)qz[i], q->zp_word);
            goto out;
        }
    if (tg) {
        if (tg->dtype != FB_I32 || tg->ndim != 1 || tg->shape[0] != C) {
            rc = fb_fail(err, "%s: tensor %s: expected I32 [%lld]", fgi->path, bgi, (long long)C);
            goto out;
        }
        if (fb_st_read_all(fgi, tg, (void **)&gi, err)) { rc = -1; goto out; }
        for (int64_t i = 0; i < C; i++)
            if (gi[i] != (int32_t)(i / G)) {
                rc = fb_fail(err, "%s: tensor %s: element %lld is %d, expected %lld (act-order "
                                  "g_idx is not supported)", fgi->path, bgi, (long long)i, gi[i],
                             (long long)(i / G));
                goto out;
            }
    }
    {
        int64_t bad = fb_find_nonfinite(FB_F16, sc, (size_t)ts->nelem, 1);
        if (bad >= 0) {
            rc = fb_fail(err, "%s: tensor %s: element %lld is not finite", fs->path, bs,
                         (long long)bad);
            goto out;
        }
    }
    fb_autoround_dequant_rows(qw, sc, (size_t)nrows, (size_t)C, (size_t)G, (size_t)r0, (size_t)R,
                              out);
out:
    free(qw); free(sc); free(qz); free(gi);
    return rc;
}

static int wq_load(fb_wsrc *s, const char *name, int64_t r0, int64_t nrows, float *out,
                   fb_err *err) {
    wq_ctx *q = s->ctx;
    const fb_st_file *f;
    const fb_st_tensor *t = wq_find(q, name, &f);
    if (t) return load_plain(f, t, r0, nrows, out, err);
    char p[512];
    int k = weight_prefix(name, p, sizeof p) ? kind_of(q, p) : -1;
    switch (k) {
    case FB_WQ_NVFP4: return load_nvfp4(q, p, name, r0, nrows, out, err);
    case FB_WQ_INT4_CT: return load_int4(q, p, name, r0, nrows, out, err);
    case FB_WQ_AUTOROUND: return load_autoround(q, p, name, r0, nrows, out, err);
    default: return fb_fail(err, "%s: tensor %s is missing (neither stored nor quantized)",
                            s->desc, name);
    }
}

static void wq_close(fb_wsrc *s) {
    wq_ctx *q = s->ctx;
    fb_ckpt_close(q->ck);
    free(q);
}

static const char *cfg_str(const json_t *o, const char *key) {
    const json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

fb_wsrc *fb_wsrc_open_quant(const char *path, fb_err *err) {
    fb_ckpt *ck;
    char *owner = fb_ckpt_shard_owner(path);
    if (owner) {
        fb_fail(err, "%s is a file of the checkpoint directory %s; pass the directory", path, owner);
        free(owner);
        return NULL;
    }
    if (fb_ckpt_open(path, &ck, err)) return NULL;
    wq_ctx *q = fb_calloc(1, sizeof *q);
    q->ck = ck;
    q->zp_word = FB_AUTOROUND_ZEROS_GPTQ;
    const json_t *qc = ck->config ? json_object_get(ck->config, "quantization_config") : NULL;
    const char *pf = qc ? cfg_str(qc, "packing_format") : NULL;
    if (pf && strstr(pf, "gptq") == NULL && strncmp(pf, "auto_round", 10) == 0)
        q->zp_word = FB_AUTOROUND_ZEROS_DIRECT;
    // The format's name, from the tensors present.
    size_t n_fp4 = 0, n_int4 = 0, n_ar = 0, n_igs = 0;
    for (size_t i = 0; i < ck->n_tensors; i++) {
        const fb_st_tensor *t = ck->tensors[i].t;
        size_t n = strlen(t->name);
        struct { const char *suf; fb_dtype dt; size_t *cnt; } tab[] = {
            {".weight_packed", FB_U8, &n_fp4}, {".weight_packed", FB_I32, &n_int4},
            {".qweight", FB_I32, &n_ar}, {".input_global_scale", FB_F32, &n_igs},
        };
        for (size_t j = 0; j < sizeof tab / sizeof tab[0]; j++) {
            size_t ls = strlen(tab[j].suf);
            if (n > ls && !strcmp(t->name + n - ls, tab[j].suf) && t->dtype == tab[j].dt)
                (*tab[j].cnt)++;
        }
    }
    int kinds = (n_fp4 > 0) + (n_int4 > 0) + (n_ar > 0);
    const char *fmt = kinds > 1 ? "mixed"
                      : n_fp4 ? (n_igs ? "nvfp4" : "nvfp4a16")
                      : n_int4 ? "w4a16"
                      : n_ar ? "auto_round" : "plain";
    snprintf(q->fmt, sizeof q->fmt, "%s", fmt);
    fb_wsrc *s = fb_calloc(1, sizeof *s);
    s->shape = wq_shape;
    s->load = wq_load;
    s->close = wq_close;
    s->ctx = q;
    s->config = ck->config;
    s->desc = fb_strdup(path);
    return s;
}

int fb_wsrc_is_quant(const fb_wsrc *s) { return s && s->close == wq_close; }

fb_wsrc *fb_wsrc_open_auto(const char *path, fb_err *err) {
    // Peek at config.json only: the checkpoint is opened once by whichever source fits.
    char *cp = fb_path_join(path, "config.json");
    json_error_t je;
    json_t *cfg = json_load_file(cp, 0, &je);
    free(cp);
    const char *qm = NULL;
    const json_t *qc = cfg ? json_object_get(cfg, "quantization_config") : NULL;
    if (json_is_object(qc)) qm = cfg_str(qc, "quant_method");
    int quant = qm && (!strcmp(qm, "compressed-tensors") || !strcmp(qm, "auto-round") ||
                       !strcmp(qm, "intel/auto-round"));
    if (cfg) json_decref(cfg);
    return quant ? fb_wsrc_open_quant(path, err) : fb_wsrc_open_ckpt(path, err);
}

int fb_wsrc_quant_kind(fb_wsrc *s, const char *prefix) {
    if (fb_wsrc_is_quant(s)) return kind_of(s->ctx, prefix);
    char b[512];
    int nd;
    int64_t sh[FB_MAX_DIMS];
    snprintf(b, sizeof b, "%s.weight", prefix);
    return s->shape(s, b, &nd, sh) ? FB_WQ_PLAIN : -1;
}

int fb_wsrc_quant_input_gs(fb_wsrc *s, const char *prefix, float *gs, fb_err *err) {
    if (!fb_wsrc_is_quant(s)) return 0;
    char b[512];
    const fb_st_file *f;
    const fb_st_tensor *t = wq_part(s->ctx, prefix, ".input_global_scale", &f, b, sizeof b);
    if (!t) return 0;
    return read_gs(f, t, gs, err) ? -1 : 1;
}

const char *fb_wsrc_quant_format(const fb_wsrc *s) {
    if (!fb_wsrc_is_quant(s)) return "plain";
    return ((const wq_ctx *)s->ctx)->fmt;
}
