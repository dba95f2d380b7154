// wsrc_quant.h: a weight source (calib/wsrc.h) over a 4-bit quantized checkpoint, giving each
// quantized Linear's weight back as f32, dequantized exactly as its format defines.
//
// The engine asks for `P.weight`; where the checkpoint holds a quantized form of P instead,
// the source reports the logical shape [out, in] and dequantizes rows on the fly:
//
//   compressed-tensors "nvfp4-pack-quantized" (NVFP4 and NVFP4A16; spec/compressed-tensors.md
//   §1.5, §2): P.weight_packed U8 [out, in/2], P.weight_scale F8_E4M3 [out, in/16],
//   P.weight_global_scale F32 [1] (a divisor g):  w = BF16(fp4 * (scale_fp8 / g))
//   (quant/nvfp4.h fb_nvfp4_dequant_rows; compressed-tensors' decompress, bf16 result).
//
//   compressed-tensors "pack-quantized" int4 (W4A16, §6): P.weight_packed I32 [out, in/8],
//   P.weight_scale BF16 [out, in/G], P.weight_shape I64 [2] = {out, in}:
//   w = BF16(q * s) (quant/w4a16.h fb_w4a16_dequant_rows).
//
//   AutoRound / GPTQ v1 packing (spec/autoround-reap-modelopt.md §A.3-A.4): P.qweight I32
//   [in/8, out], P.scales F16 [in/G, out], P.qzeros I32 [in/G, ceil(out/8)], optional
//   P.g_idx I32 [in]: w = (float)s * q, exact in f32 (fb_autoround_dequant_rows). Only the
//   symmetric scheme fourbit and AutoRound's RTN write is accepted: every qzeros word must be
//   0x77777777 (packing "auto_round:auto_gptq" / "auto_gptq", zero point stored minus one) or
//   0x88888888 ("auto_round"), and g_idx, when present, must be i / G (no act-order).
//   vLLM's Marlin kernels round the fp16 scale to the bf16 model dtype before multiplying;
//   that differs from the format's exact product by at most 2^-9 relative and is not applied.
//
// The quantized form is told by the tensors present (and the packed dtype: U8 = NVFP4,
// I32 = int4 pack-quantized), so mixed-precision checkpoints work. Every other tensor
// (embeddings, norms, router gates, lm_head, ignored Linears) is read as stored (BF16 / F16 /
// F32, widened exactly). FP8 block-scaled checkpoints are not handled here: fb_wsrc_open_auto
// picks fb_wsrc_open_ckpt for anything that is not compressed-tensors or AutoRound.
//
// Every load checks dtypes and shapes of the parts against each other and fails naming the
// file and tensor (a scale that is an fp8 NaN code, a global scale that is not finite and
// positive, qzeros that are not the symmetric constant).
//
// W4A4 (NVFP4 with input_activations): the checkpoint also holds P.input_global_scale F32 [1]
// per Linear; fb_wsrc_quant_input_gs gives it to the runner, which emulates vLLM's dynamic
// activation quantization (calib/runner.h).
//
// Thread safety: as wsrc.h (pread only; no shared mutable state).
#ifndef FB_CALIB_WSRC_QUANT_H
#define FB_CALIB_WSRC_QUANT_H

#include "calib/wsrc.h"

typedef enum fb_wq_kind {
    FB_WQ_PLAIN = 0,   // stored as P.weight (not quantized)
    FB_WQ_NVFP4,       // weight_packed U8 + weight_scale F8_E4M3 + weight_global_scale
    FB_WQ_INT4_CT,     // weight_packed I32 + weight_scale BF16 + weight_shape
    FB_WQ_AUTOROUND,   // qweight + scales + qzeros (+ g_idx)
    FB_WQ_MODELOPT,    // ModelOpt NVFP4: weight U8 + weight_scale F8_E4M3 + weight_scale_2
} fb_wq_kind;

// Opens a compressed-tensors or AutoRound checkpoint directory as a weight source. Fails
// (naming the path) when the directory is not a checkpoint; a checkpoint without any
// quantized tensor is accepted (every tensor is then plain). Release with fb_wsrc_close.
fb_wsrc *fb_wsrc_open_quant(const char *path, fb_err *err);

// Opens any checkpoint for the forward: compressed-tensors (config quant_method
// "compressed-tensors"), ModelOpt ("modelopt") and AutoRound ("auto-round" / "intel/auto-round") through
// fb_wsrc_open_quant, everything else (BF16, FP8 block-scaled) through fb_wsrc_open_ckpt.
fb_wsrc *fb_wsrc_open_auto(const char *path, fb_err *err);

// 1 when s was opened by fb_wsrc_open_quant.
int fb_wsrc_is_quant(const fb_wsrc *s);

// How Linear `prefix` (e.g. "model.layers.0.self_attn.q_proj", no ".weight") is stored in a
// quantized source: FB_WQ_* , or -1 when neither P.weight nor a quantized form exists. A
// source that is not a quantized one answers FB_WQ_PLAIN for an existing P.weight.
int fb_wsrc_quant_kind(fb_wsrc *s, const char *prefix);

// The input_global_scale of Linear `prefix` (W4A4 NVFP4; for ModelOpt 1/input_scale, the
// input_scale_inv vLLM quantizes activations with). Returns 1 and *gs when the tensor
// exists (one F32, finite and > 0), 0 when the Linear has none (or s is not a quantized
// source), -1 with err set when it exists but is malformed.
int fb_wsrc_quant_input_gs(fb_wsrc *s, const char *prefix, float *gs, fb_err *err);

// A short name of the checkpoint's format for reports: "nvfp4", "nvfp4a16", "w4a16",
// "auto_round", "mixed", or "plain" (owned by the source; never NULL).
const char *fb_wsrc_quant_format(const fb_wsrc *s);

#endif
