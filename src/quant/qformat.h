// qformat.h: the output-format table. One file per format (src/quant/qformat_<name>.c)
// describes, as data and three functions, everything fourbit knows of a quantized Linear in that
// format:
//   - the tensors it is stored as (suffix, dtype, shape from the logical weight [R, C] and the
//     group size G), in the order the writer declares them;
//   - how rows of the f32 weight are quantized into them, and the small tensors filled once the
//     rows are done (global scale, input scale, logical shape, zero points);
//   - how a stored module is recognised, its logical shape, and its rows dequantized back to f32
//     exactly as the format defines (ref-runner's weight source).
// The writer (jobs/quantize.c), its --dry-run plan, the recipe preview (validate_recipe.c) and the
// quantized weight source (calib/wsrc_quant.c) iterate these entries; nothing else spells a
// quantized tensor's suffix.
//
// Today's formats:
//   FB_QF_NVFP4      compressed-tensors nvfp4-pack-quantized (NVFP4, and NVFP4A16 without the
//                    input scale)
//   FB_QF_PACK_INT4  compressed-tensors pack-quantized, int4 symmetric groups
//   FB_QF_AUTOROUND  AutoRound's GPTQ packing (auto_round:auto_gptq), int4 symmetric groups
//   FB_QF_MODELOPT   NVIDIA ModelOpt's NVFP4 HF checkpoint (quant_method modelopt: weight u8,
//                    weight_scale, weight_scale_2, input_scale), NVFP4 and W4A16_NVFP4
// Adding a format: one file defining `const fb_qfmt fb_qfmt_<name>` and its line in the registry
// (FORMATS[] in qformat.c). See README "Extending fourbit".
#ifndef FB_QUANT_QFORMAT_H
#define FB_QUANT_QFORMAT_H

#include <stdint.h>

#include "common/fb.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

typedef enum fb_qfmt_id {
    FB_QF_NVFP4 = 0,
    FB_QF_PACK_INT4,
    FB_QF_AUTOROUND,
    FB_QF_MODELOPT,
    FB_QF_COUNT
} fb_qfmt_id;

#define FB_QFMT_MAX_OUT 4

typedef struct fb_qfmt_out {
    const char *suffix;  // appended to the module name (".weight_packed")
    fb_dtype dtype;
    int ndim;            // 0 (a scalar, shape []), 1 or 2
    int w4a4_only;       // written only when activations are quantized too (input scale)
} fb_qfmt_out;

// What reading a stored module needs besides its tensors.
typedef struct fb_qfmt_read {
    const fb_ckpt *ck;
    uint32_t zp_word;    // AutoRound: the qzeros word of the symmetric zero point 8
} fb_qfmt_read;

typedef struct fb_qfmt {
    const char *name;           // "nvfp4-pack-quantized", "pack-quantized", "auto_round:auto_gptq"
    int n_out;
    fb_qfmt_out out[FB_QFMT_MAX_OUT];
    int global_scale;           // 1: a per-tensor global scale from the amax of the rows comes
                                // first (a fused set shares the one of its largest member)
    int fixed_group;            // group size the format fixes (16 for NVFP4), 0 = the recipe's
    // The per-tensor scale of a fused set from its members' weight amax, and the input scale
    // from a Linear's input absmax (W4A4). NULL: compressed-tensors' (fb_nvfp4_fused_global_scale,
    // fb_nvfp4_input_global_scale). A scale that is not finite and > 0 refuses the tensor.
    float (*fused_scale)(const float *amax, size_t n);
    float (*input_scale)(float act_absmax);
    // Shape of output k of a weight [R, C] with group size G.
    void (*shape)(int k, int64_t R, int64_t C, int64_t G, int64_t shape[2]);
    // Quantizes rows [r0, r0+nr) of the f32 weight [R, C] into the whole-tensor output buffers
    // (out[k] holds output k of the whole tensor). gscale: the global scale (global_scale
    // formats), else unused. Row ranges may come in any order.
    void (*quantize_rows)(const float *rows, size_t nr, size_t R, size_t C, size_t G, size_t r0,
                          float gscale, void *const out[]);
    // Fills the small outputs once every row is done. igs: the input global scale (w4a4).
    void (*finish)(size_t R, size_t C, size_t G, float gscale, float igs, void *const out[]);
    // Optional (NULL: the format cannot store tuned weights): re-encodes the codes of rows
    // [r0, r0+nr) from weights already on the grid of the scales that quantize_rows stored in
    // out (GPTQ's fake-quantized weights, quantized against the observer's scales of the
    // original weight, as llm-compressor compresses them). quantize_rows on the original rows
    // comes first (it writes the scales).
    void (*pack_fixed)(const float *rows, size_t nr, size_t R, size_t C, size_t G, size_t r0,
                       float gscale, void *const out[]);
    // Optional (int4 formats): stores rows [r0, r0+nr) with the given scales instead of the
    // observer's (AutoRound's tuned scales: scales [nr, C/G], f32 values, signed as auto-round's
    // are): each scale rounded to the format's scale dtype, each code clamp(round(w / s), -8, 7)
    // as the format's own quantization computes it against that stored scale. It writes every
    // byte that quantize_rows writes for those rows (the rest comes from finish), so the
    // quantizer does not read or quantize the original rows of a module stored this way.
    void (*pack_scaled)(const float *rows, const float *scales, size_t nr, size_t R, size_t C,
                        size_t G, size_t r0, void *const out[]);
    // Reading. `prefix` is the module name ("model.layers.0.self_attn.q_proj").
    // 1 when the module is stored in this format (its first tensor present, of its dtype).
    int (*detect)(const fb_qfmt_read *rd, const char *prefix);
    // The logical weight shape [R, C]; -1 with err (naming the tensor) when malformed.
    int (*logical_shape)(const fb_qfmt_read *rd, const char *prefix, int64_t *R, int64_t *C,
                         fb_err *err);
    // Dequantizes rows [r0, r0+nrows) of the weight `name` (= prefix.weight) into out (f32,
    // nrows x C), checking every tensor's dtype, shape and values; -1 with err naming the
    // tensor.
    int (*load_rows)(const fb_qfmt_read *rd, const char *prefix, const char *name, int64_t r0,
                     int64_t nrows, float *out, fb_err *err);
} fb_qfmt;

// The format entry of an id.
const fb_qfmt *fb_qfmt_get(fb_qfmt_id id);

// The format a stored module is in (FB_QF_COUNT when none: a plain or missing weight).
fb_qfmt_id fb_qfmt_detect(const fb_qfmt_read *rd, const char *prefix);

// Output bytes of output k for a weight [R, C] (0 for a w4a4-only output when !w4a4).
uint64_t fb_qfmt_out_bytes(const fb_qfmt *f, int k, int64_t R, int64_t C, int64_t G, int w4a4);

// ---- helpers for the format files ---------------------------------------------------------------

// Finds <prefix><suffix> in the checkpoint; buf receives the name. NULL when absent.
const fb_st_tensor *fb_qf_part(const fb_qfmt_read *rd, const char *prefix, const char *suffix,
                               const fb_st_file **f, char *buf, size_t bufsz);
// Reads a small tensor whole (at most cap bytes).
int fb_qf_read_small(const fb_st_file *f, const fb_st_tensor *t, void *buf, size_t cap, fb_err *err);
// Fails unless t is dt [d0, d1]; called with 0, 0 it always fails, with the message of what t is.
int fb_qf_check_2d(const fb_st_file *f, const fb_st_tensor *t, fb_dtype dt, int64_t d0, int64_t d1,
                   fb_err *err);
// A positive finite F32 scalar (weight_global_scale / input_global_scale).
int fb_qf_read_gs(const fb_st_file *f, const fb_st_tensor *t, float *out, fb_err *err);
// Fails when rows [r0, r0+nrows) are outside [0, rows).
int fb_qf_rows_check(const char *path, const char *name, int64_t r0, int64_t nrows, int64_t rows,
                     fb_err *err);

// The row reader of the FP4 formats (compressed-tensors NVFP4, ModelOpt NVFP4): packed u8
// [R, C/2] + fp8 e4m3 block scales [R, C/16] + one F32 per-tensor scale, named <p><sfx[0..2]>;
// rows [r0, r0+nrows) are read in chunks, fp8 NaN scale codes refused naming row and group,
// and `dequant` (the format's fb_*_dequant_rows) turns each chunk into f32. `what` names the
// format in the missing-tensor message.
typedef void (*fb_qf_fp4_dequant)(const uint8_t *packed, const uint8_t *scale, size_t nrows,
                                  size_t cols, float s, float *out);
int fb_qf_fp4_rows(const fb_qfmt_read *rd, const char *p, const char *name, const char *const sfx[3],
                   const char *what, fb_qf_fp4_dequant dequant, int64_t r0, int64_t nrows, float *out,
                   fb_err *err);

// Bytes read per chunk while dequantizing.
#define FB_QF_CHUNK_BYTES ((uint64_t)16 << 20)

#endif
