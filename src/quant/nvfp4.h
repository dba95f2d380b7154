// nvfp4.h: NVFP4 weight quantization, bit-exact with compressed-tensors 0.18, 0.19 and 0.20.1
// (the three give the same bytes)
// ("nvfp4-pack-quantized"; spec/compressed-tensors.md §0–§4, §10).
//
// A weight W [rows, cols] (cols % 16 == 0) of bf16 values becomes
//   weight_packed       u8      [rows, cols/2]   two FP4 E2M1 nibbles per byte, column 2j in
//                                                the LOW nibble, 2j+1 in the high nibble;
//                                                nibble = sign<<3 | index into
//                                                {0, .5, 1, 1.5, 2, 3, 4, 6}
//   weight_scale        e4m3fn  [rows, cols/16]  one fp8 scale per 16 consecutive columns
//   weight_global_scale f32     [1]              g, a DIVISOR (~2688 / amax)
//
// The arithmetic, every step one IEEE f32 operation with round-to-nearest-even:
//   g   = BF16(BF16(1/max(amax, 2^-126)) * 2688);  g = 1 if g is Inf/NaN     (§1.1)
//   per 16-group: m = max|w|; s1 = BF16(m/6); s2 = g*s1; s3 = FP8(min(s2, 448));
//                 s3 = 0.125 if s3 == 0                                         (§1.2)
//   per element:  t = s3/g; y = w/t; clamp to [-6, 6]; FP4 round-half-even;
//                 sign bit = (y < 0), so a negative value that rounds to 0 is 0x8 (-0)
//                 while -0.0 itself gives 0x0                                   (§0.1, §1.3)
// The reciprocal-then-multiply of g is not the same as one division 2688/amax (two bf16
// roundings), and the element step is two divisions in this order, never w*g/s3.
//
// Inputs. Every function takes rows of f32 values that are exactly representable in bf16
// (the tools widen BF16 tensors, or dequantize FP8 with fb_fp8_dequant_f32, which rounds to
// bf16). Values that are not bf16-exact still give a deterministic result, but it is not
// the reference's (the reference rounds to bf16 first). NaN/Inf inputs are undefined in the
// reference: callers must reject them; fb_nvfp4_absmax() shows them in its result.
//
// Streaming. Quantizing is two passes: (1) fb_nvfp4_absmax over all rows of the tensor (or
// of every tensor of a fused set: q/k/v of a layer, w1/w3 of an expert), then one global
// scale g from the largest amax; (2) fb_nvfp4_quantize_rows over any row ranges, in any
// order, from any number of threads (the functions are pure: no shared state).
//
// Kernels. Each has a scalar reference (*_ref, the ground truth, tested against the golden
// files of the real compressed-tensors) and a fast path (AVX-512 / AVX2 chosen at run time
// with __builtin_cpu_supports on x86-64, NEON on aarch64, scalar elsewhere) tested to give
// identical bytes.
#ifndef FB_QUANT_NVFP4_H
#define FB_QUANT_NVFP4_H

#include <stddef.h>
#include <stdint.h>

#define FB_NVFP4_GROUP 16          // columns per fp8 block scale
#define FB_NVFP4_FP4_MAX 6.0f      // largest E2M1 magnitude
#define FB_NVFP4_FP8_MAX 448.0f    // largest e4m3fn magnitude
#define FB_NVFP4_SCALE_EPS 0.125f  // _get_dtype_eps(float8_e4m3fn): replaces a zero scale

// max |x| over n values, exact (an integer max over the sign-cleared bit patterns; never
// rounds). Returns +0 for n == 0. Non-finite inputs show in the result: +Inf if there is an
// Inf and no NaN, a NaN if there is a NaN; callers check isfinite() and reject the tensor
// (fb_find_nonfinite in quant/formats.h gives the index for the message). Fast path.
float fb_nvfp4_absmax(const float *x, size_t n);
float fb_nvfp4_absmax_ref(const float *x, size_t n);

// The weight global scale g of a tensor (or fused set) whose max |w| is amax (a bf16 value,
// as fb_nvfp4_absmax of bf16-exact rows gives). compressed-tensors' generate_gparam in bf16:
// g = BF16(BF16(1/max(amax, 2^-126)) * 2688), and 1.0 when that overflows (amax below about
// 7.9e-36: all-zero tensors, subnormal amax) or amax is NaN. Store it as the f32
// weight_global_scale. Always finite and > 0.
float fb_nvfp4_global_scale(float amax);

// The shared global scale of a fused set (q/k/v of a layer, w1/w3 of an expert): the global
// scale of the largest of the n amax values (= the smallest member g). n >= 1.
float fb_nvfp4_fused_global_scale(const float *amax, size_t n);

// input_global_scale of a W4A4 (NVFP4) Linear from the absmax of its bf16 input activations
// over the calibration set (spec §3: the same generate_gparam formula in the activation
// dtype). act_absmax is first rounded to bf16 (a no-op for an absmax of bf16 activations),
// negative values are taken as their magnitude.
float fb_nvfp4_input_global_scale(float act_absmax);

// Quantizes nrows rows of `cols` columns (cols % 16 == 0; FB_ASSERT) with global scale g
// (from fb_nvfp4_global_scale, shared by the whole tensor). w is row-major, nrows*cols
// values. Writes packed[nrows * cols/2] and scale[nrows * cols/16] (e4m3fn bytes), both
// row-major, i.e. the rows' slices of weight_packed / weight_scale. Inputs must be finite.
// Thread-safe, no allocation. Fast path.
void fb_nvfp4_quantize_rows(const float *w, size_t nrows, size_t cols, float g,
                            uint8_t *packed, uint8_t *scale);
void fb_nvfp4_quantize_rows_ref(const float *w, size_t nrows, size_t cols, float g,
                                uint8_t *packed, uint8_t *scale);

// Encodes nrows rows with the given e4m3 group scales (scale[nrows * cols/16], e.g. the
// observer's scales of the original weight that GPTQ quantized against) and global scale g into
// packed[nrows * cols/2]: each nibble fb_nvfp4_fp4_nibble(w / (s3/g)), the quantize path's
// formula with the scale fixed. Scalar.
void fb_nvfp4_pack_rows_fixed(const float *w, size_t nrows, size_t cols, float g,
                              const uint8_t *scale, uint8_t *packed);

// One FP4 nibble of an already scaled value y = w / (s3/g): clamp to [-6, 6], round half to
// even on the E2M1 grid, sign bit iff y < 0 (so -0.0 -> 0x0, -0.1 -> 0x8). Reference code.
uint8_t fb_nvfp4_fp4_nibble(float y);

// The value of an FP4 nibble (0x0..0xF): +-{0, .5, 1, 1.5, 2, 3, 4, 6}; 0x8 gives -0.0.
float fb_nvfp4_fp4_value(uint8_t nibble);

// Dequantizes nrows rows (compressed-tensors' decompress, spec §1.5):
// w' = BF16(fp4 * (scale_fp8 / g)). out gets nrows*cols f32 values (each bf16-exact).
// Scale bytes that are fp8 NaN codes give NaN. Thread-safe.
void fb_nvfp4_dequant_rows(const uint8_t *packed, const uint8_t *scale, size_t nrows,
                           size_t cols, float g, float *out);

// The same, writing bf16 bits (the dtype compressed-tensors decompresses to).
void fb_nvfp4_dequant_rows_bf16(const uint8_t *packed, const uint8_t *scale, size_t nrows,
                                size_t cols, float g, uint16_t *out);

// The fast path fb_nvfp4_quantize_rows and fb_nvfp4_absmax use on this CPU: "avx512",
// "avx2", "neon" or "scalar". Chosen once per process; FB_QUANT_IMPL=scalar|avx2|avx512|neon
// in the environment caps the choice (tests, benchmarks; rules in quant/simd_cpu.h).
const char *fb_nvfp4_impl(void);

// vLLM's NVFP4 activation fake-quantization (W4A4 emulation, jobs/runner.h): in place on `rows`
// rows of `cols` (cols % 16 == 0) with input global scale gs (> 0): each value rounded to bf16,
// a 16-element block's fp8 scale from gs * amax/6, E2M1 codes, dequantized back to bf16.
void fb_w4a4_fake_quant_rows(float *x, size_t rows, size_t cols, float gs);

#endif
