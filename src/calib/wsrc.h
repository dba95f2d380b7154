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
// ref-runner) fills in the same struct: the three callbacks and `ctx`.
//
// Thread safety: `shape` and `load` may be called from several threads at once.
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

// Closes any source and frees it.
void fb_wsrc_close(fb_wsrc *s);

// Convenience: loads a whole tensor, checking it has exactly the expected shape (ndim dims).
// `out` must hold the product of the shape.
int fb_wsrc_load_full(fb_wsrc *s, const char *name, int ndim, const int64_t *shape, float *out,
                      fb_err *err);

#endif
