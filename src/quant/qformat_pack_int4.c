// qformat_pack_int4.c: compressed-tensors pack-quantized, int4 symmetric groups
// (spec/compressed-tensors.md §7):
//   P.weight_packed  I32  [R, C/8]  eight int4 codes (offset by 8) a word, low nibble first
//   P.weight_scale   BF16 [R, C/G]  one scale per group of G columns
//   P.weight_shape   I64  [2]       the logical [R, C]
// The math is quant/w4a16.h; this file is the format's layout.
#include <string.h>

#include "quant/formats.h"
#include "quant/qformat.h"
#include "quant/w4a16.h"

static void shape(int k, int64_t R, int64_t C, int64_t G, int64_t sh[2]) {
    switch (k) {
    case 0: sh[0] = R, sh[1] = C / 8; break;
    case 1: sh[0] = R, sh[1] = C / G; break;
    default: sh[0] = 2, sh[1] = 0; break;
    }
}

static void quantize_rows(const float *rows, size_t nr, size_t R, size_t C, size_t G, size_t r0,
                          float g, void *const out[]) {
    (void)R, (void)g;
    fb_w4a16_quantize_rows(rows, nr, C, G, (int32_t *)out[0] + r0 * (C / 8),
                           (uint16_t *)out[1] + r0 * (C / G));
}

static void pack_fixed(const float *rows, size_t nr, size_t R, size_t C, size_t G, size_t r0,
                       float g, void *const out[]) {
    (void)R, (void)g;
    fb_w4a16_pack_rows_fixed(rows, nr, C, G, (const uint16_t *)out[1] + r0 * (C / G),
                             (int32_t *)out[0] + r0 * (C / 8));
}

static void pack_scaled(const float *rows, const float *scales, size_t nr, size_t R, size_t C, size_t G,
                        size_t r0, void *const out[]) {
    (void)R;
    uint16_t *sc = (uint16_t *)out[1] + r0 * (C / G);
    for (size_t i = 0; i < nr * (C / G); i++) sc[i] = fb_f32_to_bf16(scales[i]);
    fb_w4a16_pack_rows_fixed(rows, nr, C, G, sc, (int32_t *)out[0] + r0 * (C / 8));
}

static void finish(size_t R, size_t C, size_t G, float g, float igs, void *const out[]) {
    (void)G, (void)g, (void)igs;
    int64_t shp[2] = {(int64_t)R, (int64_t)C};
    memcpy(out[2], shp, 16);
}

static int detect(const fb_qfmt_read *rd, const char *p) {
    char b[512];
    const fb_st_tensor *t = fb_qf_part(rd, p, ".weight_packed", NULL, b, sizeof b);
    return t && t->dtype != FB_U8;
}

static int logical_shape(const fb_qfmt_read *rd, const char *p, int64_t *rows, int64_t *cols,
                         fb_err *err) {
    char b[512];
    const fb_st_file *f;
    const fb_st_tensor *t = fb_qf_part(rd, p, ".weight_shape", &f, b, sizeof b);
    if (!t) return fb_fail(err, "%s: tensor %s is missing (int4 pack-quantized weight)",
                           rd->ck->path, b);
    int64_t v[2];
    if ((t->dtype != FB_I64 && t->dtype != FB_I32) || t->nelem != 2)
        return fb_fail(err, "%s: tensor %s: expected I64 [2], got %s with %llu elements",
                       f->path, b, fb_dtypes[t->dtype].name, (unsigned long long)t->nelem);
    if (t->dtype == FB_I64) {
        if (fb_qf_read_small(f, t, v, sizeof v, err)) return -1;
    } else {
        int32_t w[2];
        if (fb_qf_read_small(f, t, w, sizeof w, err)) return -1;
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

static int load_rows(const fb_qfmt_read *rd, const char *p, const char *name, int64_t r0,
                     int64_t nrows, float *out, fb_err *err) {
    char bp[512], bs[512];
    const fb_st_file *fp = NULL, *fs = NULL;
    const fb_st_tensor *tp = fb_qf_part(rd, p, ".weight_packed", &fp, bp, sizeof bp);
    const fb_st_tensor *ts = fb_qf_part(rd, p, ".weight_scale", &fs, bs, sizeof bs);
    if (!ts) return fb_fail(err, "%s: tensor %s is missing (int4 weight %s)", rd->ck->path, bs, name);
    int64_t R, C;
    if (logical_shape(rd, p, &R, &C, err)) return -1;
    if (C % 8) return fb_fail(err, "%s: %s.weight_shape: %lld columns are not a multiple of 8",
                              fp->path, p, (long long)C);
    if (fb_qf_check_2d(fp, tp, FB_I32, R, C / 8, err)) return -1;
    if (ts->ndim != 2 || ts->shape[0] != R || ts->shape[1] <= 0 || C % ts->shape[1])
        return fb_fail(err, "%s: tensor %s: shape does not give groups of [%lld, %lld]",
                       fs->path, bs, (long long)R, (long long)C);
    int64_t G = C / ts->shape[1];
    if (fb_qf_check_2d(fs, ts, FB_BF16, R, C / G, err)) return -1;
    if (G % 8 && G != C)
        return fb_fail(err, "%s: tensor %s: group size %lld is not a multiple of 8", fs->path, bs,
                       (long long)G);
    if (fb_qf_rows_check(fp->path, name, r0, nrows, R, err)) return -1;
    size_t pw = (size_t)C / 8, sw = (size_t)(C / G);
    int64_t chunk = (int64_t)(FB_QF_CHUNK_BYTES / (pw * 4));
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

const fb_qfmt fb_qfmt_pack_int4 = {
    .name = "pack-quantized",
    .n_out = 3,
    .out = {
        {".weight_packed", FB_I32, 2, 0},
        {".weight_scale", FB_BF16, 2, 0},
        {".weight_shape", FB_I64, 1, 0},
    },
    .global_scale = 0,
    .fixed_group = 0,
    .shape = shape,
    .quantize_rows = quantize_rows,
    .finish = finish,
    .pack_fixed = pack_fixed,
    .pack_scaled = pack_scaled,
    .detect = detect,
    .logical_shape = logical_shape,
    .load_rows = load_rows,
};
