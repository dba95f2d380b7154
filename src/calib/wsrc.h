// wsrc.h: weight sources for the layer-wise forward: "give me rows r0..r0+n of tensor NAME
// as f32".
//
// The engine (calib/forward.h) never touches files: it asks a source for each weight by its
// checkpoint name (`model.layers.3.self_attn.q_proj.weight`, `...experts.7.w2.weight`,
// `model.embed_tokens.weight`, ...) and for the config. A tensor of shape [d0, d1, ...] is
// seen as d0 rows of d1*d2*... values (a 1-D tensor is d0 rows of one value).
//
// Sources provided here:
//   - a checkpoint directory (or one .safetensors file) holding BF16 / F16 / F32 weights or
//     FP8 E4M3 block-scaled ones (`W` + `W_scale_inv`, dequantized exactly as fp8-dequant
//     does: bf16_rne(fp8 * scale) widened to f32, src/quant/fp8block.h);
//   - an in-memory table of f32 tensors (tests, synthetic benchmarks).
// Another source (a quantized NVFP4 / W4A16 checkpoint dequantized as its format defines, for
// ref-runner) fills in the same struct: the callbacks and `ctx`.
//
// Raw FP8 access (optional): a source whose weights are FP8 E4M3 block-scaled may also give
// them as stored (`load_fp8`: e4m3 bytes + the f32 block scales), so that a GPU engine uploads
// one byte a weight and dequantizes on the device with the same numerics
// (bf16_rne(float(e4m3) * scale)). Sources without it leave it NULL; callers then use `load`.
//
// Thread safety: `shape`, `load` and `load_fp8` may be called from several threads at once.
#ifndef FB_CALIB_WSRC_H
#define FB_CALIB_WSRC_H

#include <jansson.h>

#include "common/fb.h"
#include "io/safetensors.h"

typedef struct fb_wsrc fb_wsrc;
struct fb_wsrc {
    // Returns 1 and fills ndim/shape when the tensor exists, 0 when it does not.
    int (*shape)(fb_wsrc *s, const char *name, int *ndim, int64_t shape[FB_MAX_DIMS]);
    // Reads rows [r0, r0+nrows) of tensor `name` as f32 into out (nrows * row-size floats).
    // Fails naming the tensor (missing, rows out of range, unsupported dtype, I/O error).
    int (*load)(fb_wsrc *s, const char *name, int64_t r0, int64_t nrows, float *out, fb_err *err);
    // Optional (NULL: none). When tensor `name` is a 2-D FP8 E4M3 block-scaled weight, reads
    // rows [r0, r0+nrows) as stored into `bytes` (nrows * cols e4m3 codes), sets *scale to the
    // whole tensor's f32 block scales ([ceil(rows/bm), ceil(cols/bn)] row-major, malloc'ed,
    // the caller frees; index it with global row numbers r0 + r) and *bm/*bn to the block
    // size, and returns 1. Returns 0, reading nothing, when the tensor exists but is not FP8
    // block-scaled (use `load`). `bytes` NULL: only answers 1 or 0 (no read, *scale untouched).
    // Returns -1 with err set naming the tensor for a missing tensor, rows out of range, an I/O
    // error, or an FP8 NaN code (0x7F/0xFF: `load` fails on it too).
    int (*load_fp8)(fb_wsrc *s, const char *name, int64_t r0, int64_t nrows, uint8_t *bytes,
                    float **scale, int *bm, int *bn, fb_err *err);
    // Releases ctx and everything the source owns (not the struct's storage when embedded).
    void (*close)(fb_wsrc *s);
    void *ctx;
    const json_t *config;  // config.json (owned by the source); NULL when absent
    char *desc;            // what it reads (path), for messages and provenance
};

// Opens a checkpoint directory or a .safetensors file as a source. Returns NULL with err set.
// Release with fb_wsrc_close.
fb_wsrc *fb_wsrc_open_ckpt(const char *path, fb_err *err);

// An empty in-memory source; tensors are added with fb_wsrc_mem_add. `config` is borrowed
// (incref'ed) and may be NULL.
fb_wsrc *fb_wsrc_mem_new(json_t *config);

// Adds (copies) an f32 tensor to an in-memory source. Returns 0, or -1 for a duplicate name.
int fb_wsrc_mem_add(fb_wsrc *s, const char *name, int ndim, const int64_t *shape,
                    const float *data, fb_err *err);

// An overlay over `base` (borrowed; it must outlive the overlay): tensors put into the overlay
// (f32, in memory) replace the base's of the same name, everything else is read from the base.
// For sequential algorithms (GPTQ, AutoRound): a layer re-run with its quantized weights.
fb_wsrc *fb_wsrc_overlay_new(fb_wsrc *base);
// Adds or replaces (same element count) a tensor of the overlay (copied).
int fb_wsrc_overlay_put(fb_wsrc *s, const char *name, int ndim, const int64_t *shape,
                        const float *data, fb_err *err);
// As fb_wsrc_overlay_put, but the overlay takes *data (malloc'ed; freed by it) and sets *data to
// NULL: no copy of what a tuner already holds (a MiniMax-M2 block's experts are 14.5 GB in f32).
// On failure *data stays the caller's.
int fb_wsrc_overlay_put_owned(fb_wsrc *s, const char *name, int ndim, const int64_t *shape,
                              float **data, fb_err *err);
// Drops every replacement.
void fb_wsrc_overlay_clear(fb_wsrc *s);

// Closes any source and frees it.
void fb_wsrc_close(fb_wsrc *s);

// Convenience: loads a whole tensor, checking it has exactly the expected shape (ndim dims).
// `out` must hold the product of the shape.
int fb_wsrc_load_full(fb_wsrc *s, const char *name, int ndim, const int64_t *shape, float *out,
                      fb_err *err);

// Rows ids[0..n) of the 2-D tensor `name` (cols per row; every id already checked against its
// rows) into out [n, cols], as s->load gives them: each distinct row read once, in ascending
// order, rows less than 64 apart in one read. An embedding lookup of 131,072 tokens is then a
// few reads, not one pread (and page-cache release) per token.
int fb_wsrc_gather_rows(fb_wsrc *s, const char *name, int64_t cols, const int32_t *ids, size_t n,
                        float *out, fb_err *err);

#endif
