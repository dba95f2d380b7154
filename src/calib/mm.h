// mm.h: the math of one MoE decoder layer, in f32 (the model description is fb_model_config,
// arch/arch.h; the per-family differences are its router and q/k-norm kinds).
//
// The forward is the one the loaders compute (spec/loaders-vllm-transformers.md §1.4, §5.2,
// checked against transformers 5.23 modeling_minimax_m2.py):
//   decoder layer: h += o_proj(attn(rmsnorm(h, ln1)));  h += moe(rmsnorm(h, ln2))
//   rmsnorm(x, w) = w * (x * rsqrt(mean(x^2) + eps))        variance in f32 (we sum in f64)
//   attention: q = q_norm(q_proj x) over ALL heads at once (width heads*head_dim, "per_layer"),
//              k = k_norm(k_proj x) likewise, v = v_proj x; neox (rotate-half) RoPE on the
//              first rotary_dim dims of each head, the rest passes through;
//              inv_freq[i] = 1 / theta^(2i/rotary_dim) (f32), angle = pos * inv_freq (f32);
//              GQA (heads/kv_heads q heads per kv head), causal, scale head_dim^-0.5,
//              softmax in f32 (max subtracted).
//   router:    logits = x @ gate^T in f32; s = sigmoid(logits); the top-k experts by
//              s + e_score_correction_bias (bias only for the choice; ties -> lower index);
//              weights = s[chosen] / sum(s[chosen]); no routed scaling factor (neither vLLM
//              nor transformers applies one for MiniMax-M2).
//   expert e:  y = w2( silu(w1 x) * (w3 x) ), silu(g) = g / (1 + exp(-g));
//              moe(x) = sum over chosen e, in ascending expert order, of weight_e * y_e.
//   logits = lm_head(rmsnorm(h, model.norm)).
// Partial rotary: vLLM reads config.rotary_dim; transformers >= 5.x turns rotary_dim into
// partial_rotary_factor = rotary_dim / head_dim (older releases rotated all head_dim dims,
// spec §5.1). We take rotary_dim, else partial_rotary_factor * head_dim, else head_dim, and
// refuse a config where the two disagree.
#ifndef FB_CALIB_MM_H
#define FB_CALIB_MM_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "arch/arch.h"
#include "common/fb.h"

// ---- kernels (scalar reference code; all f32 in, f32 out) ------------------------------------

// y[r] = w * (x[r] * rsqrt(mean(x[r]^2) + eps)) for `rows` rows of `n`. y may equal x.
void fb_mm_rmsnorm(const float *x, const float *w, float eps, size_t rows, size_t n, float *y);

// inv_freq[i] = 1 / theta^(2i/rotary_dim) for i < rotary_dim/2, in f32 as torch computes it.
void fb_mm_rope_inv_freq(double theta, int rotary_dim, float *inv_freq);

// Applies rotate-half RoPE in place to `n_heads` heads of `head_dim` (one token, position
// `pos`), on the first rotary_dim dims of each head. inv_freq from fb_mm_rope_inv_freq.
void fb_mm_rope(float *x, int n_heads, int head_dim, int rotary_dim, const float *inv_freq,
                int64_t pos);

// In-place softmax of n values (max subtracted, f32 exp, divided by the f32 sum).
void fb_mm_softmax(float *x, size_t n);

// Router (FB_ROUTER_SIGMOID_BIAS) for one token: from E logits, picks the k experts with the largest
// sigmoid(logit) + bias (bias may be NULL; ties broken toward the lower expert index), writes
// their indices (ascending score order is not promised; they are sorted by expert index) and
// the renormalized unbiased sigmoid weights. scratch: E floats.
void fb_mm_route(const float *logits, const float *bias, int E, int k, int32_t *idx,
                 float *weight, float *scratch);

// Router (FB_ROUTER_SOFTMAX, Qwen3-MoE) for one token: p = softmax(logits) in f32, the k
// largest p (ties -> lower index), their weights p (divided by their sum, summed in descending
// order as torch.topk returns them, when `norm`); indices sorted ascending. scratch: E floats.
void fb_mm_route_softmax(const float *logits, int E, int k, int norm, int32_t *idx,
                         float *weight, float *scratch);

// silu(g) * u elementwise, n values, into out (may alias g).
void fb_mm_swiglu(const float *g, const float *u, size_t n, float *out);

// ---- bf16 activations (fb_fwd_opts.bf16: the forward of a bf16 transformers model) ----------
// Every kernel below takes bf16-exact inputs and rounds where torch rounds a bf16 tensor: an
// op on bf16 tensors computes in f32 and rounds its result to bf16 (round to nearest even).

// x[i] = bf16(x[i]) for n values.
void fb_mm_bf16(float *x, size_t n);

// transformers' RMSNorm of a bf16 tensor: x to f32, variance = mean(x^2) in f32,
// x * rsqrt(variance + eps) rounded to bf16, times the bf16 weight, rounded again.
void fb_mm_rmsnorm_bf16(const float *x, const float *w, float eps, size_t rows, size_t n, float *y);

// apply_rotary_pos_emb on bf16 q/k: cos and sin computed in f32 and rounded to bf16 (the
// rotary embedding returns them in the activation dtype), then x*cos and rotate_half(x)*sin
// rounded, and their sum rounded.
void fb_mm_rope_bf16(float *x, int n_heads, int head_dim, int rotary_dim, const float *inv_freq,
                     int64_t pos);

// The SwiGLU of bf16 tensors: bf16(bf16(silu(g)) * u).
void fb_mm_swiglu_bf16(const float *g, const float *u, size_t n, float *out);

#endif
