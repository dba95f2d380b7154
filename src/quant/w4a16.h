// w4a16.h: int4 symmetric group quantization of weights (W4A16), in two on-disk layouts.
//
// 1. compressed-tensors "pack-quantized" (spec/compressed-tensors.md §6; CT 0.18, RTN as
//    llm-compressor's QuantizationModifier runs it). For W [rows, cols], group G (128):
//      weight_packed  I32  [rows, cols/8]   offset-binary nibbles u = q+8, 8 per word along
//                                           the row: word j = sum_i u[8j+i] << 4i (column 8j
//                                           in bits 0-3)
//      weight_scale   BF16 [rows, cols/G]
//      weight_shape   I64  [2] = {rows, cols}  (written by the caller)
//    Math per group (every step one f32 op, RNE; "/7.5" = (q_max - q_min)/2):
//      m = max|w|; s = BF16(m / 7.5); s = 2^-7 if s == 0 (bf16 eps, CT >= 0.13)
//      y = BF16(w / s)            (bf16 / bf16 -> bf16: a double rounding, kept on purpose)
//      q = round_half_even(clamp(y, -8, 7))
//    Dequant: w' = BF16(q * s).
//
// 2. AutoRound "auto_round:auto_gptq" (GPTQ v1) packing (spec/autoround-reap-modelopt.md
//    §A.3-A.4.1; auto-round 0.16 model-free quantize_weight_rtn, plain RTN = iters 0):
//      qweight  I32  [cols/8, rows]   word [r][o] = sum_j (q[o][8r+j] + 8) << 4j  (transposed:
//                                     packed along the input dim, one column per output row)
//      qzeros   I32  [cols/G, ceil(rows/8)]  zero point 8 stored as 8-1 = 7 per nibble:
//                                     every word 0x77777777 (0x88888888 for the "auto_round"
//                                     packing that stores the zero point directly)
//      scales   F16  [cols/G, rows]   transposed, SIGNED
//      g_idx    I32  [cols] = i / G   only for the auto_gptq format (not auto_round)
//    Math per group ("full-range symmetric"; rtn_int_sym):
//      mx = max(max(w), 0); mn = -min(min(w), 0)
//      v  = (mx < mn) ? +mn : -mx        (the extreme element maps to -8; ties -> negative;
//                                         an all-zero group gives -0.0)
//      s  = F16(v / 8);  s = +-F16(1e-5) if |s| < 1e-5, keeping the sign of s < 0, and
//           +F16(1e-5) for +-0  (torch.where(s < 0, clamp(max=-1e-5), clamp(min=1e-5)))
//      q  = clamp(round_half_even(w / (float)s), -8, 7)      (f32 division)
//    Dequant: w' = (float)s * q, exact in f32 (callers round to their dtype).
//
// Inputs, as in nvfp4.h: rows of f32 values that are exactly bf16 (from BF16 tensors or
// fb_fp8_dequant_f32), finite (callers reject NaN/Inf). Work is per row, so any row range can
// be done by any thread in any order (streaming); cols % G == 0 and cols % 8 == 0 (FB_ASSERT).
// Each quantizer has a scalar reference (*_ref) and a fast path (AVX-512 / AVX2 / NEON, chosen
// at run time) that gives identical bytes.
#ifndef FB_QUANT_W4A16_H
#define FB_QUANT_W4A16_H

#include <stddef.h>
#include <stdint.h>

#define FB_W4A16_GROUP 128            // the W4A16 preset's group size
#define FB_W4A16_CT_EPS 0x1p-7f       // bf16 eps: replaces a zero compressed-tensors scale
#define FB_AUTOROUND_ZEROS_GPTQ 0x77777777u  // qzeros word, auto_round:auto_gptq / auto_gptq
#define FB_AUTOROUND_ZEROS_DIRECT 0x88888888u // qzeros word, "auto_round" (zp stored as is)

// ---- compressed-tensors pack-quantized --------------------------------------------------

// Quantizes nrows rows of `cols` columns, group size `group` (cols % group == 0,
// cols % 8 == 0). Writes packed[nrows * cols/8] (the rows' slice of weight_packed) and
// scale[nrows * cols/group] (bf16 bits, the rows' slice of weight_scale). Thread-safe,
// no allocation. Fast path.
void fb_w4a16_quantize_rows(const float *w, size_t nrows, size_t cols, size_t group,
                            int32_t *packed, uint16_t *scale);
void fb_w4a16_quantize_rows_ref(const float *w, size_t nrows, size_t cols, size_t group,
                                int32_t *packed, uint16_t *scale);

// Encodes nrows rows with the given scales (bf16 bits [nrows * cols/group], e.g. the
// observer's scales of the original weight that GPTQ quantized against) into packed
// [nrows * cols/8]: compressed-tensors' compress of a weight already on that grid, each code
// clamp(round(BF16(w / s)), -8, 7) + 8 as fb_w4a16_quantize_rows computes it. Scalar.
void fb_w4a16_pack_rows_fixed(const float *w, size_t nrows, size_t cols, size_t group,
                              const uint16_t *scale, int32_t *packed);

// Dequantizes nrows rows of pack-quantized data: out[nrows * cols] = BF16(q * s) as f32.
void fb_w4a16_dequant_rows(const int32_t *packed, const uint16_t *scale, size_t nrows,
                           size_t cols, size_t group, float *out);

// ---- AutoRound / GPTQ packing -------------------------------------------------------------

// Quantizes output rows [o0, o0 + nrows) of a weight with `cols` input columns and writes
// them into the FULL transposed tensors: qweight [cols/8, ld] and scales [cols/group, ld]
// (fp16 bits), at columns o0 .. o0+nrows-1 (ld = the weight's total row count, "out").
// w points at row o0 (nrows*cols values). Different row ranges touch disjoint elements, so
// threads may fill one tensor together. Fast path.
void fb_autoround_quantize_rows(const float *w, size_t nrows, size_t cols, size_t group,
                                size_t o0, size_t ld, int32_t *qweight, uint16_t *scales);
void fb_autoround_quantize_rows_ref(const float *w, size_t nrows, size_t cols, size_t group,
                                    size_t o0, size_t ld, int32_t *qweight, uint16_t *scales);

// Encodes output rows [o0, o0 + nrows) with the scales already in the FULL scales tensor
// [cols/group, ld] (fp16 bits; e.g. AutoRound's tuned ones) into qweight [cols/8, ld]: each
// code clamp(round(w / s), -8, 7) + 8 as fb_autoround_quantize_rows computes it. Scalar.
void fb_autoround_pack_rows_fixed(const float *w, size_t nrows, size_t cols, size_t group, size_t o0,
                                  size_t ld, const uint16_t *scales, int32_t *qweight);

// Fills qzeros [cols/group, ceil(out/8)] for the symmetric scheme: every word
// FB_AUTOROUND_ZEROS_GPTQ when zp_minus_one (auto_round:auto_gptq, auto_gptq), else
// FB_AUTOROUND_ZEROS_DIRECT.
void fb_autoround_qzeros(size_t cols, size_t out, size_t group, int zp_minus_one,
                         int32_t *qzeros);

// Fills g_idx [cols] = i / group (written by the auto_gptq format only).
void fb_autoround_g_idx(size_t cols, size_t group, int32_t *g_idx);

// Dequantizes output rows [o0, o0 + nrows) from the full transposed tensors (as written
// above) into out[nrows * cols] (row-major [out, in]): w' = (float)s * q, exact.
void fb_autoround_dequant_rows(const int32_t *qweight, const uint16_t *scales, size_t nrows,
                               size_t cols, size_t group, size_t o0, size_t ld, float *out);

// The fast path the quantizers use on this CPU: "avx512", "avx2", "neon" or "scalar". Chosen
// once per process; FB_QUANT_IMPL=scalar|avx2|avx512|neon in the environment caps the choice
// (tests, benchmarks; rules in quant/simd_cpu.h).
const char *fb_w4a16_impl(void);

#endif
