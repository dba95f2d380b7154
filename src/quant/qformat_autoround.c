// qformat_autoround.c: AutoRound's GPTQ packing, auto_round:auto_gptq, int4 symmetric groups
// (spec/autoround-reap-modelopt.md §A.4):
//   P.qweight  I32 [C/8, R]         eight int4 codes a word along the input dimension
//   P.qzeros   I32 [C/G, ceil(R/8)] the symmetric zero point 8, stored minus one (0x77777777;
//                                   0x88888888 in the plain "auto_round" packing, read only)
//   P.scales   F16 [C/G, R]
//   P.g_idx    I32 [C]              optional on read (i / G: no act-order); never written
// The math is quant/w4a16.h; this file is the format's layout.
#include <string.h>

#include "quant/formats.h"
#include "quant/qformat.h"
#include "quant/w4a16.h"

static void shape(int k, int64_t R, int64_t C, int64_t G, int64_t sh[2]) {
    switch (k) {
    case 0: sh[0] = C / 8, sh[1] = R; break;
    case 1: sh[0] = C / G, sh[1] = (R + 7) / 8; break;
    default: sh[0] = C / G, sh[1] = R; break;
    }
}

static void quantize_rows(const float *rows, size_t nr, size_t R, size_t C, size_t G, size_t r0,
                          float g, void *const out[]) {
    (void)g;
    fb_autoround_quantize_rows(rows, nr, C, G, r0, R, out[0], out[2]);
}

static void pack_scaled(const float *rows, const float *scales, size_t nr, size_t R, size_t C, size_t G,
                        size_t r0, void *const out[]) {
    uint16_t *sc = out[2];  // [C/G, R]
    for (size_t r = 0; r < nr; r++)
        for (size_t k = 0; k < C / G; k++) sc[k * R + r0 + r] = fb_f32_to_f16(scales[r * (C / G) + k]);
    fb_autoround_pack_rows_fixed(rows, nr, C, G, r0, R, sc, out[0]);
}

static void finish(size_t R, size_t C, size_t G, float g, float igs, void *const out[]) {
    (void)g, (void)igs;
    fb_autoround_qzeros(C, R, G, 1, out[1]);
}

static int detect(const fb_qfmt_read *rd, const char *p) {
    char b[512];
    return fb_qf_part(rd, p, ".qweight", NULL, b, sizeof b) != NULL;
}

static int logical_shape(const fb_qfmt_read *rd, const char *p, int64_t *R, int64_t *C, fb_err *err) {
    char b[512];
    const fb_st_file *f;
    const fb_st_tensor *t = fb_qf_part(rd, p, ".qweight", &f, b, sizeof b);
    if (!t || t->ndim != 2) return t ? fb_qf_check_2d(f, t, FB_I32, 0, 0, err) : -1;
    *R = t->shape[1];
    *C = t->shape[0] * 8;
    return 0;
}

static int load_rows(const fb_qfmt_read *rd, const char *p, const char *name, int64_t r0,
                     int64_t nrows, float *out, fb_err *err) {
    char bq[512], bs[512], bz[512], bgi[512];
    const fb_st_file *fq = NULL, *fs = NULL, *fz = NULL, *fgi = NULL;
    const fb_st_tensor *tq = fb_qf_part(rd, p, ".qweight", &fq, bq, sizeof bq);
    const fb_st_tensor *ts = fb_qf_part(rd, p, ".scales", &fs, bs, sizeof bs);
    const fb_st_tensor *tz = fb_qf_part(rd, p, ".qzeros", &fz, bz, sizeof bz);
    const fb_st_tensor *tg = fb_qf_part(rd, p, ".g_idx", &fgi, bgi, sizeof bgi);
    if (!ts || !tz)
        return fb_fail(err, "%s: tensor %s is missing (AutoRound weight %s)", rd->ck->path,
                       ts ? bz : bs, name);
    if (tq->dtype != FB_I32 || tq->ndim != 2) return fb_qf_check_2d(fq, tq, FB_I32, 0, 0, err);
    int64_t R = tq->shape[1], C = tq->shape[0] * 8;
    if (ts->ndim != 2 || ts->shape[1] != R || ts->shape[0] <= 0 || C % ts->shape[0])
        return fb_fail(err, "%s: tensor %s: shape does not give groups of a [%lld, %lld] "
                            "weight", fs->path, bs, (long long)R, (long long)C);
    int64_t G = C / ts->shape[0];
    if (fb_qf_check_2d(fs, ts, FB_F16, C / G, R, err)) return -1;
    if (fb_qf_check_2d(fz, tz, FB_I32, C / G, (R + 7) / 8, err)) return -1;
    if (fb_qf_rows_check(fq->path, name, r0, nrows, R, err)) return -1;
    int rc = 0;
    int32_t *qw = NULL, *qz = NULL, *gi = NULL;
    uint16_t *sc = NULL;
    if (fb_st_read_all(fq, tq, (void **)&qw, err) || fb_st_read_all(fs, ts, (void **)&sc, err) ||
        fb_st_read_all(fz, tz, (void **)&qz, err)) {
        rc = -1;
        goto out;
    }
    for (uint64_t i = 0; i < tz->nelem; i++)
        if ((uint32_t)qz[i] != rd->zp_word) {
            rc = fb_fail(err, "%s: tensor %s: element %llu is 0x%08X, expected 0x%08X (symmetric "
                              "zero point 8 for this packing); asymmetric int4 is not supported",
                         fz->path, bz, (unsigned long long)i, (uint32_t)qz[i], rd->zp_word);
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

const fb_qfmt fb_qfmt_autoround = {
    .name = "auto_round:auto_gptq",
    .n_out = 3,
    .out = {
        {".qweight", FB_I32, 2, 0},
        {".qzeros", FB_I32, 2, 0},
        {".scales", FB_F16, 2, 0},
    },
    .global_scale = 0,
    .fixed_group = 0,
    .shape = shape,
    .quantize_rows = quantize_rows,
    .pack_scaled = pack_scaled,
    .finish = finish,
    .detect = detect,
    .logical_shape = logical_shape,
    .load_rows = load_rows,
};
