// wsrc_quant.c: weight source over NVFP4 / int4 (compressed-tensors) and AutoRound
// checkpoints, dequantizing on load (see wsrc_quant.h).
#include "calib/wsrc_quant.h"

#include <math.h>
#include <string.h>

#include "io/checkpoint.h"
#include "quant/formats.h"
#include "quant/qformat.h"
#include "quant/w4a16.h"

typedef struct wq_ctx {
    fb_ckpt *ck;
    fb_qfmt_read rd;    // the checkpoint and the AutoRound zero-point word
    char fmt[32];
} wq_ctx;

#define WQ_CHUNK_BYTES FB_QF_CHUNK_BYTES

static const fb_st_tensor *wq_find(const wq_ctx *q, const char *name, const fb_st_file **f) {
    const fb_ckpt_tensor *ct = fb_ckpt_find(q->ck, name);
    if (!ct) return NULL;
    if (f) *f = fb_ckpt_file(q->ck, ct);
    return ct->t;
}

// Splits "P.weight" into P; returns 0 when name does not end in ".weight".
static int weight_prefix(const char *name, char *prefix, size_t sz) {
    size_t n = strlen(name);
    if (n < 8 || strcmp(name + n - 7, ".weight") != 0 || n - 7 >= sz) return 0;
    memcpy(prefix, name, n - 7);
    prefix[n - 7] = 0;
    return 1;
}

// FB_WQ_* of the output-format table's ids.
static const int WQ_OF[FB_QF_COUNT] = {
    [FB_QF_NVFP4] = FB_WQ_NVFP4, [FB_QF_PACK_INT4] = FB_WQ_INT4_CT, [FB_QF_AUTOROUND] = FB_WQ_AUTOROUND,
    [FB_QF_MODELOPT] = FB_WQ_MODELOPT,
};

// The format of module P: plain (P.weight stored), one of the table's, or -1.
static int kind_of(const wq_ctx *q, const char *prefix, fb_qfmt_id *id) {
    char b[512];
    // the table first: ModelOpt stores its packed codes as P.weight
    *id = fb_qfmt_detect(&q->rd, prefix);
    if (*id < FB_QF_COUNT) return WQ_OF[*id];
    return fb_qf_part(&q->rd, prefix, ".weight", NULL, b, sizeof b) ? FB_WQ_PLAIN : -1;
}

static int wq_shape(fb_wsrc *s, const char *name, int *ndim, int64_t shape[FB_MAX_DIMS]) {
    wq_ctx *q = s->ctx;
    char p[512];
    fb_qfmt_id id;
    int k = weight_prefix(name, p, sizeof p) ? kind_of(q, p, &id) : FB_WQ_PLAIN;
    const fb_st_tensor *t = k > FB_WQ_PLAIN ? NULL : wq_find(q, name, NULL);
    if (t) {
        *ndim = t->ndim;
        for (int i = 0; i < t->ndim; i++) shape[i] = t->shape[i];
        return 1;
    }
    if (k <= FB_WQ_PLAIN) return 0;
    int64_t r, c;
    fb_err e;
    if (fb_qfmt_get(id)->logical_shape(&q->rd, p, &r, &c, &e)) return 0;
    *ndim = 2;
    shape[0] = r;
    shape[1] = c;
    return 1;
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

static int wq_load(fb_wsrc *s, const char *name, int64_t r0, int64_t nrows, float *out,
                   fb_err *err) {
    wq_ctx *q = s->ctx;
    const fb_st_file *f;
    char p[512];
    fb_qfmt_id id = FB_QF_COUNT;
    int k = weight_prefix(name, p, sizeof p) ? kind_of(q, p, &id) : -1;
    const fb_st_tensor *t = k > FB_WQ_PLAIN ? NULL : wq_find(q, name, &f);
    if (t) return load_plain(f, t, r0, nrows, out, err);
    if (k > FB_WQ_PLAIN) return fb_qfmt_get(id)->load_rows(&q->rd, p, name, r0, nrows, out, err);
    return fb_fail(err, "%s: tensor %s is missing (neither stored nor quantized)", s->desc, name);
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
    q->rd.ck = ck;
    q->rd.zp_word = FB_AUTOROUND_ZEROS_GPTQ;
    const json_t *qc = ck->config ? json_object_get(ck->config, "quantization_config") : NULL;
    const char *pf = qc ? cfg_str(qc, "packing_format") : NULL;
    if (pf && strstr(pf, "gptq") == NULL && strncmp(pf, "auto_round", 10) == 0)
        q->rd.zp_word = FB_AUTOROUND_ZEROS_DIRECT;
    // The format's name, from the tensors present.
    size_t n_fp4 = 0, n_int4 = 0, n_ar = 0, n_igs = 0, n_mo = 0, n_mois = 0;
    for (size_t i = 0; i < ck->n_tensors; i++) {
        const fb_st_tensor *t = ck->tensors[i].t;
        size_t n = strlen(t->name);
        struct { const char *suf; fb_dtype dt; size_t *cnt; } tab[] = {
            {".weight_packed", FB_U8, &n_fp4}, {".weight_packed", FB_I32, &n_int4},
            {".qweight", FB_I32, &n_ar}, {".input_global_scale", FB_F32, &n_igs},
            {".weight_scale_2", FB_F32, &n_mo}, {".input_scale", FB_F32, &n_mois},
        };
        for (size_t j = 0; j < sizeof tab / sizeof tab[0]; j++) {
            size_t ls = strlen(tab[j].suf);
            if (n > ls && !strcmp(t->name + n - ls, tab[j].suf) && t->dtype == tab[j].dt)
                (*tab[j].cnt)++;
        }
    }
    int kinds = (n_fp4 > 0) + (n_int4 > 0) + (n_ar > 0) + (n_mo > 0);
    const char *fmt = kinds > 1 ? "mixed"
                      : n_fp4 ? (n_igs ? "nvfp4" : "nvfp4a16")
                      : n_mo ? (n_mois ? "modelopt-nvfp4" : "modelopt-nvfp4a16")
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
    int quant = qm && (!strcmp(qm, "compressed-tensors") || !strcmp(qm, "modelopt") || !strcmp(qm, "auto-round") ||
                       !strcmp(qm, "intel/auto-round"));
    if (cfg) json_decref(cfg);
    return quant ? fb_wsrc_open_quant(path, err) : fb_wsrc_open_ckpt(path, err);
}

int fb_wsrc_quant_kind(fb_wsrc *s, const char *prefix) {
    fb_qfmt_id id;
    if (fb_wsrc_is_quant(s)) return kind_of(s->ctx, prefix, &id);
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
    const fb_st_tensor *t = fb_qf_part(&((wq_ctx *)s->ctx)->rd, prefix, ".input_global_scale", &f, b, sizeof b);
    if (t) return fb_qf_read_gs(f, t, gs, err) ? -1 : 1;
    if (fb_qfmt_detect(&((wq_ctx *)s->ctx)->rd, prefix) != FB_QF_MODELOPT) return 0;
    t = fb_qf_part(&((wq_ctx *)s->ctx)->rd, prefix, ".input_scale", &f, b, sizeof b);
    if (!t) return 0;
    float is;
    if (fb_qf_read_gs(f, t, &is, err)) return -1;
    *gs = 1.0f / is;  // vLLM ModelOptNvFp4LinearMethod: input_scale_inv = 1 / input_scale
    if (!isfinite(*gs)) return fb_fail(err, "%s: tensor %s: input_scale %g has no finite inverse", f->path, b, (double)is);
    return 1;
}

const char *fb_wsrc_quant_format(const fb_wsrc *s) {
    if (!fb_wsrc_is_quant(s)) return "plain";
    return ((const wq_ctx *)s->ctx)->fmt;
}
