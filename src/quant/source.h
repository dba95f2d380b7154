// source.h: a source checkpoint as the tools read it — BF16/F16/F32, or FP8 block-scaled
// (DeepSeek-V3 / MiniMax-M2 layout) dequantized on the fly exactly like fp8-dequant.
//
// FP8 detection: config.json `quantization_config.quant_method == "fp8"` (weight_block_size
// from it, default [128, 128]), or, without a config, any F8_E4M3 tensor with a
// `<name>_scale_inv` partner. Each FP8 weight `X.weight` (2-D F8_E4M3) pairs with
// `X.weight_scale_inv` (F32, or BF16/F16 upcast exactly) of shape
// [ceil(rows/bm), ceil(cols/bn)]. fb_source_check verifies every pairing once, so later reads
// cannot meet a missing or mis-shaped scale.
#ifndef FB_QUANT_SOURCE_H
#define FB_QUANT_SOURCE_H

#include "io/checkpoint.h"

typedef enum fb_src_role {
    FB_SRC_PLAIN,       // copied / consumed as stored
    FB_SRC_FP8_WEIGHT,  // F8_E4M3 weight with a block scale: logically BF16
    FB_SRC_FP8_SCALE,   // the weight_scale_inv of an FP8 weight: consumed, never output
} fb_src_role;

typedef struct fb_source {
    fb_ckpt *ck;                 // owned
    int is_fp8;                  // the checkpoint carries FP8 block-scaled weights
    size_t bm, bn;               // weight_block_size (rows, cols)
    fb_src_role *role;           // [ck->n_tensors]
    int *partner;                // [ck->n_tensors]: the scale of a weight / weight of a scale, -1
    int keep_cache;              // 0 (default): reads drop the page cache behind them; 1: the
                                 // caller reads a tensor twice and releases it itself
                                 // (fb_source_release). Set before any read, never during.
} fb_source;

// Opens the checkpoint and checks the FP8 pairing (missing scale, wrong shape or dtype,
// non-2-D FP8 weight, scale without weight are errors naming the file and tensor).
int fb_source_open(const char *path, fb_source **out, fb_err *err);
void fb_source_close(fb_source *s);

// Position of a tensor in s->ck->tensors, or -1.
int64_t fb_source_index(const fb_source *s, const char *name);

// The dtype a tensor has once dequantized (BF16 for FP8 weights, else its stored dtype).
fb_dtype fb_source_logical_dtype(const fb_source *s, size_t i);

// Loads the f32 block scale of FP8 weight i (malloc'ed, caller frees; NaN/Inf/negative
// scales are errors naming the tensor and index).
int fb_source_load_scale(const fb_source *s, size_t i, float **out, fb_err *err);

// Reads rows [r0, r0+nrows) of 2-D tensor i as bf16 (FP8: dequantized with `scale` from
// fb_source_load_scale; BF16: as stored; F16/F32: rounded to bf16). `scratch` must hold
// nrows*cols*4 bytes. An FP8 NaN code (0x7F/0xFF) is an error naming the tensor and element
// unless allow_nan.
int fb_source_read_rows_bf16(const fb_source *s, size_t i, const float *scale, uint64_t r0, size_t nrows,
                             uint16_t *out, void *scratch, int allow_nan, fb_err *err);

// The same as f32 values (FP8 and BF16 sources give exactly the bf16 values as f32; F16/F32
// sources are widened / copied without rounding).
int fb_source_read_rows_f32(const fb_source *s, size_t i, const float *scale, uint64_t r0, size_t nrows,
                            float *out, void *scratch, int allow_nan, fb_err *err);

// Rows and columns of a 2-D tensor (1-D: rows = 1).
static inline void fb_tensor_2d(const fb_st_tensor *t, uint64_t *rows, uint64_t *cols) {
    if (t->ndim == 0) { *rows = 1; *cols = 1; }
    else if (t->ndim == 1) { *rows = 1; *cols = (uint64_t)t->shape[0]; }
    else {
        *cols = (uint64_t)t->shape[t->ndim - 1];
        *rows = t->nelem / (*cols ? *cols : 1);
    }
}

// Drops the page cache of source tensor i (for callers that set keep_cache).
void fb_source_release(const fb_source *s, size_t i);

// What a writer does with entry `name` of the source directory (is_dir: a subfolder):
// 1 copied, 0 left out (*why says why, a static string), -1 not a side file (shards, the
// index, config.json, manifests: the writer makes its own). The policy and its reasons are
// one table in source.c.
int fb_side_file_policy(const char *name, int is_dir, const char **why);

// Copies every regular top-level file of the source directory that fb_side_file_policy says
// to copy (tokenizer, generation config, chat template, remote code, licences) into dir.
// Nothing for a source given as a bare .safetensors file. Returns the number copied or -1.
int fb_copy_side_files(const fb_source *s, const char *dir, fb_err *err);

// The entries of the source directory a writer leaves out, sorted by name, as a new JSON
// array of {"name", "why"} (subfolders end in "/"); empty for a bare .safetensors source.
json_t *fb_side_files_left_out(const fb_source *s);

#endif
