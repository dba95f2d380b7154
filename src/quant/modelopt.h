// modelopt.h: the NVFP4 arithmetic of NVIDIA ModelOpt's Hugging Face export (nvidia-modelopt
// 0.47, bit-exact with its quant_utils / NVFP4QTensor on bf16 weights), behind the output format
// FB_QF_MODELOPT (src/quant/qformat_modelopt.c, which states the formulas). It differs from
// compressed-tensors' NVFP4 (quant/nvfp4.h) in the per-tensor scale (amax/2688 in f32, a
// multiplier, against compressed-tensors' bf16 2688/amax divisor) and hence in the block
// scales and codes; the packing and the E2M1 rounding are the same.
#ifndef FB_QUANT_MODELOPT_H
#define FB_QUANT_MODELOPT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

// The nvidia-modelopt release whose export fourbit's bytes and configs match (tests/golden/modelopt),
// written as hf_quant_config.json's producer version.
#define FB_MODELOPT_VERSION "0.47.0"

// weight_scale_2 of a fused set (q/k/v, an expert's w1/w3) from the amax of each member:
// max(amax) / 2688 in f32. 0 when every amax is 0 (modelopt's export then divides 0 by 0:
// the caller refuses the tensor).
float fb_modelopt_weight_scale2(const float *amax, size_t n);

// input_scale (W4A4) from the absmax of a Linear's bf16 inputs: BF16(|absmax|) / 2688 in f32.
float fb_modelopt_input_scale(float act_absmax);

// Quantizes nrows rows of cols (cols % 16 == 0) bf16-exact finite values with weight_scale_2
// s2 > 0 into packed[nrows * cols/2] and scale[nrows * cols/16] (e4m3 bytes). Thread-safe, no
// allocation. Fast path: AVX2 on x86-64, capped by FB_QUANT_IMPL (quant/simd_cpu.h);
// tests/test_modelopt.c checks it byte for byte against the scalar reference _ref, which needs
// fb_formats_init() first.
void fb_modelopt_quantize_rows(const float *w, size_t nrows, size_t cols, float s2, uint8_t *packed,
                               uint8_t *scale);
void fb_modelopt_quantize_rows_ref(const float *w, size_t nrows, size_t cols, float s2, uint8_t *packed,
                                   uint8_t *scale);

// The path fb_modelopt_quantize_rows uses in this process: "avx2" or "scalar".
const char *fb_modelopt_impl(void);

// Dequantizes as NVFP4QTensor.dequantize to bf16: w' = BF16(e2m1 * (float(scale) * s2)),
// written as f32. Scale bytes that are fp8 NaN codes give NaN.
void fb_modelopt_dequant_rows(const uint8_t *packed, const uint8_t *scale, size_t nrows, size_t cols,
                              float s2, float *out);

// The two configs of a ModelOpt checkpoint: returns config.json's quantization_config
// (convert_hf_quant_config_format's: config_groups, ignore, quant_algo, producer,
// quant_method "modelopt") and sets *hf_quant_config (get_quant_config's: producer, quantization
// {quant_algo, kv_cache_quant_algo null, group_size 16, exclude_modules}). quant_algo is
// "NVFP4" (w4a4) or "W4A16_NVFP4". exclude_modules / ignore summarise `unquantized` (the modules
// with a 2-D weight left in bf16, e.g. lm_head, embed_tokens, the routers) with modelopt's prefix
// wildcards, none of which matches a name of `quantized`. Caller decrefs both.
json_t *fb_modelopt_config_json(const char *const *quantized, size_t nq, const char *const *unquantized, size_t nu,
                                int w4a4, json_t **hf_quant_config);

#endif
