// fp8block.h: block-scaled FP8 -> BF16/F32 dequantization (DeepSeek-V3 / MiniMax-M2 layout).
//
// A weight W [rows, cols] stored as F8_E4M3 comes with `weight_scale_inv` S, F32 (BF16/F16
// upcast exactly) of shape [ceil(rows/bm), ceil(cols/bn)], (bm, bn) = weight_block_size
// from config.json (128x128 for MiniMax-M2). Edge tiles may be partial; they use the scale of
// their (partial) tile. Each element is, exactly as compressed-tensors and DeepSeek's
// converter compute it:   bf16_rne( (float)fp8 * S[r/bm][c/bn] )   (one f32 multiply, one
// rounding; never a double product, never a bf16 scale).
#ifndef FB_QUANT_FP8BLOCK_H
#define FB_QUANT_FP8BLOCK_H

#include <stddef.h>
#include <stdint.h>

// Dequantizes rows [r0, r0+nrows) of an FP8 weight with `cols` columns. `w` points at the
// first byte of row r0 (nrows*cols bytes); `scale` at the full F32 scale tensor
// ([ceil(rows/bm), ceil(cols/bn)], row-major). Output `out` is nrows*cols bf16 values.
// Returns the row-major element index (relative to w) of the first NaN code (0x7F/0xFF), or
// -1 when there is none; NaN codes are still converted (to 0x7FC0) so callers may allow them.
int64_t fb_fp8_dequant_bf16(const uint8_t *w, const float *scale, uint64_t r0, size_t nrows,
                            size_t cols, size_t bm, size_t bn, uint16_t *out);

// The same to f32 (the product, before bf16 rounding, rounded to bf16 then widened — i.e.
// exactly the value fp8-dequant writes, as f32). For quantizers that consume f32 rows.
int64_t fb_fp8_dequant_f32(const uint8_t *w, const float *scale, uint64_t r0, size_t nrows,
                           size_t cols, size_t bm, size_t bn, float *out);

// The fast path in use: "avx512", "avx2", "neon" or "scalar" (a per-tile lookup table).
// Chosen once; FB_QUANT_IMPL=scalar|avx2|avx512|neon in the environment caps it (tests,
// benchmarks; the rules are in quant/simd_cpu.h).
const char *fb_fp8_dequant_impl(void);

// Scalar reference implementation of fb_fp8_dequant_bf16 (the truth the fast path is tested
// against).
int64_t fb_fp8_dequant_bf16_ref(const uint8_t *w, const float *scale, uint64_t r0, size_t nrows,
                                size_t cols, size_t bm, size_t bn, uint16_t *out);

#endif
