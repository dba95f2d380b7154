// qformat_nvfp4.c: compressed-tensors nvfp4-pack-quantized (spec/compressed-tensors.md §2, §6):
//   P.weight_packed        U8  [R, C/2]   two E2M1 codes a byte, low nibble first
//   P.weight_scale         F8  [R, C/16]  e4m3 scale of each 16-element group
//   P.weight_global_scale  F32 [1]        shared by a fused set (q/k/v, an expert's gate/up)
//   P.input_global_scale   F32 [1]        W4A4 only, from the calibrated input absmax
// The math is quant/nvfp4.h; this file is the format's layout.
#include <string.h>

#include "quant/formats.h"
#include "quant/nvfp4.h"
#include "quant/qformat.h"

static void shape(int k, int64_t R, int64_t C, int64_t G, int64_t sh[2]) {
    (void)G;
    switch (k) {
    case 0: sh[0] = R, sh[1] = C / 2; break;
    case 1: sh[0] = R, sh[1] = C / FB_NVFP4_GROUP; break;
    default: sh[0] = 1, sh[1] = 0; break;
    }
}

static void quantize_rows(const float *rows, size_t nr, size_t R, size_t C, size_t G, size_t r0,
                          float g, void *const out[]) {
    (void)R, (void)G;
    fb_nvfp4_quantize_rows(rows, nr, C, g, (uint8_t *)out[0] + r0 * C / 2,
                           (uint8_t *)out[1] + r0 * C / FB_NVFP4_GROUP);
}

static void pack_fixed(const float *rows, size_t nr, size_t R, size_t C, size_t G, size_t r0,
                       float g, void *const out[]) {
    (void)R, (void)G;
    fb_nvfp4_pack_rows_fixed(rows, nr, C, g, (const uint8_t *)out[1] + r0 * C / FB_NVFP4_GROUP,
                             (uint8_t *)out[0] + r0 * C / 2);
}

static void finish(size_t R, size_t C, size_t G, float g, float igs, void *const out[]) {
    (void)R, (void)C, (void)G;
    memcpy(out[2], &g, 4);
    if (out[3]) memcpy(out[3], &igs, 4);
}

static int detect(const fb_qfmt_read *rd, const char *p) {
    char b[512];
    const fb_st_tensor *t = fb_qf_part(rd, p, ".weight_packed", NULL, b, sizeof b);
    return t && t->dtype == FB_U8;
}

static int logical_shape(const fb_qfmt_read *rd, const char *p, int64_t *R, int64_t *C, fb_err *err) {
    char b[512];
    const fb_st_file *f;
    const fb_st_tensor *t = fb_qf_part(rd, p, ".weight_packed", &f, b, sizeof b);
    if (!t || t->ndim != 2) return t ? fb_qf_check_2d(f, t, FB_U8, 0, 0, err) : -1;
    *R = t->shape[0];
    *C = t->shape[1] * 2;
    return 0;
}

static int load_rows(const fb_qfmt_read *rd, const char *p, const char *name, int64_t r0,
                     int64_t nrows, float *out, fb_err *err) {
    static const char *const sfx[3] = {".weight_packed", ".weight_scale", ".weight_global_scale"};
    return fb_qf_fp4_rows(rd, p, name, sfx, "NVFP4", fb_nvfp4_dequant_rows, r0, nrows, out, err);
}

const fb_qfmt fb_qfmt_nvfp4 = {
    .name = "nvfp4-pack-quantized",
    .n_out = 4,
    .out = {
        {".weight_packed", FB_U8, 2, 0},
        {".weight_scale", FB_F8_E4M3, 2, 0},
        {".weight_global_scale", FB_F32, 1, 0},
        {".input_global_scale", FB_F32, 1, 1},
    },
    .global_scale = 1,
    .fixed_group = FB_NVFP4_GROUP,
    .shape = shape,
    .quantize_rows = quantize_rows,
    .finish = finish,
    .pack_fixed = pack_fixed,
    .detect = detect,
    .logical_shape = logical_shape,
    .load_rows = load_rows,
};
