// autoround.h: AutoRound (auto-round 0.16.1) for int4 symmetric group-128 weights (W4A16), as a
// kernel the layer loop calls per layer. What auto-round does, read from its source
// (algorithms/quantization/{rtn,sign_round}/quantizer.py, wrapper.py, data_type/int.py,
// data_type/utils.py, data_type/gguf.py, compressors/utils.py; spec/autoround-reap-modelopt.md A):
//
// iters 0, optimized RTN ("opt_rtn_int_sym", the default unless disable_opt_rtn):
//   imatrix[k] = sum over the Linear's calibration inputs of x_k^2 (f32) / count, count = number
//   of forward calls' batch rows (samples, not tokens; a uniform factor, it does not move the
//   argmin). Zero entries patched per group row (gguf._imatrix_handle_zero): more than g/2
//   entries <= 1e-30: the row's weights become |w| + sqrt(sum w^2 / 32) (weight dtype); 1..g/2
//   zeros: the zeros get the mean of the row's other entries.
//   Per group (search_scales), in the weight's dtype (bf16 for a bf16 / FP8-dequantized model:
//   every elementwise op rounds to bf16; f32 for an f32 model): gmax = the element of largest |w|
//   (first on ties, sign kept); for d = 8 and d = 8 - 0.06 k, k = -100..100 (k != 0, in that
//   order; 0.06 = 0.75 * 8 / 200 * 2 in double): is = -d * recip(gmax), s = recip(is),
//   L = clamp(rint(is * w), -8, 7), loss = sum_k imatrix_k * f32(s L_k - w_k)^2; a strictly
//   smaller loss replaces the scale. Then |s| >= 1e-5 (sign kept, 0 -> +1e-5),
//   q = clamp(rint(w / s), -8, 7), value s * q; recip(x) = 0 when |x| < 1e-30 else 1 / x.
//   The scale stays in the weight dtype (bf16 values; the export casts it to fp16).
//   MoE default: auto-round turns opt-RTN OFF for routed expert Linears (name contains "expert",
//   not "shared_expert") unless --enable_opt_rtn (base._quantize_layer_via_rtn): on MiniMax-M2
//   every expert gets plain RTN, only attention gets the search. The caller decides (fb_ar_*).
// iters 0 with disable_opt_rtn, plain RTN ("rtn_int_sym"): s = fp16(sign * max(-min0, max0) / 8),
//   sign -1 when the positive side is at least as large, |s| >= fp16(1e-5), q = clamp(rint(w/s)).
//
// iters > 0, SignRound: the unit is a whole decoder block (attention + MoE, nblocks 1); every
// quantized Linear of the block (each expert's gate/up/down separately) gets, all f32:
//   V [rows, cols] rounding offsets (init 0, not clamped: the lr budget keeps |V| <= ~0.5),
//   min_scale, max_scale [rows, cols/128] (init 1, clamped to [0, 1] before every forward),
//   fake quantization int_sym: wmin/wmax = min(0, min)/max(0, max) of the FP group (fixed),
//   a = -wmin * min_scale, b = wmax * max_scale, s = fp16(sign * max(a, b) / 8) (sign +1 iff
//   b < a), |s| >= fp16(1e-5), q = clamp(round_ste(w / s + V), -8, 7), w' = s q (straight-through
//   rounding; clamp, max (ties split the gradient), the fp16 cast and the threshold pass
//   gradients as torch's autograd does: torch 2.15's clamp passes none AT its bounds, so a code
//   of exactly -8 or 7 gets no V gradient; each use of the fp16 scale gets its gradient in fp16).
//   Loss: MSE(mean) of the block output on the quantized chain's input against the FP block's
//   output on the FP chain's input, over the mini-batch, times 1000 for backward.
//   Optimizer: SignSGD p -= lr * sign(grad) (sign(0) = 0), lr = 1/iters (2/iters for >= 1000
//   iters at <= 3 bits), minmax_lr = lr, LinearLR from 1 to 0 over iters (torch's recursive
//   factors in f32), one step per iteration.
//   Mini-batches: batch_size samples (8) from IndexSampler: a shuffled index list walked in
//   order, reshuffled when fewer than a batch remain; shuffled with Python's random (seed 42,
//   set once per run: the state carries over from block to block).
//   Best iteration kept: a strictly smaller mini-batch loss snapshots (V, min, max) before that
//   iteration's step (iteration 0 is RTN); the block is unwrapped with the snapshot.
//   MoE: the experts are tuned jointly against the block output with the real top-k routing
//   (an expert without tokens has zero gradients: it stays RTN).
// NVFP4: auto-round 0.16.1 tunes nv_fp4 too (its own data_type/nvfp.py); not implemented here.
//
// What fourbit implements of SignRound: the whole block (fb_autoround_tune_block, the layer
// loop's unit), the routed-expert part alone (fb_autoround_tune_moe) and one Linear
// (fb_autoround_tune_linear; the last two serve --expert-group), all with analytic gradients and
// the same parameters, fake quantization, loss, optimizer, schedule and best-iteration rule, in
// f32 (auto-round runs the block under bf16 autocast on a bf16 model; on a CPU without bf16 it
// runs f32 as here). The block's forward is the engine's f32 forward (calib/forward.c); the
// router is recomputed on every forward and its top-k choice passes no gradient, as under
// autograd. The mini-batches are drawn with Python's generator seeded with `seed` at each call
// (auto-round seeds once per run, so from its second block on the order differs). Deterministic
// for a given seed (and thread count of the BLAS).
#ifndef FB_CALIB_AUTOROUND_H
#define FB_CALIB_AUTOROUND_H

#include <stddef.h>
// The cancel flag is C11's atomic_int; nvcc reads this header as C++ (cuda/cutune.cu), where
// std::atomic_int is the same lock-free int.
#ifdef __cplusplus
extern "C++" {  // this header may be read inside an extern "C" block
#include <atomic>
}
typedef std::atomic_int fb_ar_atomic_int;
#else
#include <stdatomic.h>
typedef atomic_int fb_ar_atomic_int;
#endif
#include <stdint.h>

#include "arch/arch.h"
#include "common/fb.h"

#define FB_AR_GROUP 128  // W4A16 group size (columns per scale)

// The dtype auto-round's optimized-RTN search computes in: the weight's dtype.
typedef enum fb_ar_dtype { FB_AR_F32 = 0, FB_AR_BF16 } fb_ar_dtype;

// imatrix[k] += sum over rows of x[r, k]^2 (x: rows x C, f32). Divide by the number of samples
// with fb_autoround_imatrix_scale afterwards.
void fb_autoround_imatrix_add(float *imatrix, size_t C, const float *x, size_t rows);
// imatrix /= n (n > 0).
void fb_autoround_imatrix_scale(float *imatrix, size_t C, size_t n);

// auto-round's optimized RTN (opt_rtn_int_sym) of W (R x C, f32 values of the weight as held
// in dtype dt: bf16 values when dt is FB_AR_BF16), group 128, imatrix [C] or NULL. Writes
// scale [R, C/128] (the f32 values of the search's scales, in dt), q [R, C] (codes in [-8, 7],
// optional) and out [R, C] (fake-quantized weights s*q rounded to dt, optional). Fails on
// C % 128, a non-finite weight or imatrix entry (naming the row / column); writes nothing then.
int fb_autoround_opt_rtn(const float *W, size_t R, size_t C, const float *imatrix, fb_ar_dtype dt,
                         float *scale, int8_t *q, float *out, fb_err *err);

// Plain RTN (rtn_int_sym, disable_opt_rtn): fp16 scales (as f32) [R, C/128], q, out = bf16 of
// s*q when dt is FB_AR_BF16, else s*q (exact in f32). Same failures as above.
int fb_autoround_rtn(const float *W, size_t R, size_t C, fb_ar_dtype dt, float *scale, int8_t *q,
                     float *out, fb_err *err);

typedef struct fb_ar_opts {
    int iters;              // SignSGD iterations (auto-round default 200); >= 1
    float lr;               // <= 0: 1 / iters
    float minmax_lr;        // <= 0: lr
    int disable_minmax;     // 1: tune V only (enable_minmax_tuning false)
    size_t batch_size;      // samples per iteration (default 8 when 0), at most nsamples
    uint64_t seed;          // mini-batch order: random.seed(seed) (auto-round's default is 42)
    int not_use_best_mse;   // 1: keep the last iterate instead of the best one
    double *loss_trace;     // optional [iters]: each iteration's mini-batch loss (-v, tests)
    fb_ar_atomic_int *cancel;  // optional: polled every iteration; set: the tuning functions return
                            // -2 (err says so) with nothing replaced
    int gemm;               // fb_ar_gemm: the GEMMs' arithmetic, CUDA only (the CPU refuses all but f32)
    int cuda_lanes;         // CUDA only: streams the experts' passes are spread over (0: 4; 1..32);
                            // speed only, the results are the same for every number
} fb_ar_opts;

// GEMM arithmetic of the CUDA tuner (cuda/cutune.h). F32: cuBLAS f32 without tensor cores, the
// CPU's to f32 rounding (the default, what the agreement tests check). TF32: tensor cores, f32 in
// and out with the products' inputs rounded to TF32 (cuBLAS COMPUTE_32F_FAST_TF32, f32
// accumulation; auto-round's bf16 autocast rounds them further): another sample of the same
// tuning, not the f32 one to rounding. (cuBLAS's COMPUTE_32F_FAST_16BF on f32 operands gave the
// TF32 results bit for bit on the H100.) BF16: the routed experts' GEMMs (the bulk of a MoE
// block's) on operands stored and rounded to bf16 as auto-round's autocast rounds every matmul's
// (the gathered inputs, the fake-quantized weights, SwiGLU's output, the gradients flowing in),
// f32 accumulation and f32 results; the attention, router and all elementwise math as TF32 / f32.
typedef enum fb_ar_gemm { FB_AR_GEMM_F32 = 0, FB_AR_GEMM_TF32, FB_AR_GEMM_BF16 } fb_ar_gemm;

// One quantized Linear: in, its f32 weight; out, the tuned fake-quantized weight and what a
// packer writes (scales, codes). Buffers are the caller's.
typedef struct fb_ar_linear {
    float *w;               // [rows, cols] in: f32 weight; out: s * q (f32, exact)
    size_t rows, cols;      // cols % 128 == 0
    float *scale;           // out: [rows, cols/128] fp16 scale values (signed, full range /8)
    int8_t *q;              // out, optional: [rows, cols] codes in [-8, 7]
} fb_ar_linear;

// One SwiGLU expert: gate [I, H], up [I, H], down [H, I].
typedef struct fb_ar_expert {
    fb_ar_linear gate, up, down;
} fb_ar_expert;

typedef struct fb_ar_result {
    double init_loss;       // iteration 0's mini-batch MSE (RTN)
    double best_loss;       // the kept iteration's mini-batch MSE
    int best_iter;
    double rtn_mse;         // MSE over every sample with RTN weights (before tuning)
    double final_mse;       // MSE over every sample with the returned weights
} fb_ar_result;

// SignRound on the routed-expert part of one block. x: [nsamples * seq, H] the MoE input
// (quantized chain), route: [nsamples * seq, n_experts] routing weights (0 = not routed),
// target: [nsamples * seq, H] the FP MoE output (FP chain), or NULL to use the experts' own FP
// weights on x. Tunes every expert's gate/up/down jointly and replaces their weights (see
// fb_ar_linear; the weights are read until the end, then replaced). Memory: 3 weight-sized f32
// arrays per Linear (fake-quantized weight, V, best V) plus one gradient scratch and one batch's
// activations: a caller bounds it by passing the experts in groups (each group's own FP output as
// target, the others' error then held fixed: an approximation of the joint block loss).
// GEMMs through BLAS (its threads). Fails on inconsistent shapes or non-finite
// weights (nothing modified then).
int fb_autoround_tune_moe(const float *x, size_t nsamples, size_t seq, size_t H, const float *route,
                          size_t n_experts, const float *target, fb_ar_expert *ex, const fb_ar_opts *o,
                          fb_ar_result *res, fb_err *err);

// The routed-expert output with the experts' FP weights (ex[e].*.w): out [n_tok, H] = sum over
// e of route[t, e] * down_e(silu(gate_e x_t) * up_e x_t), as fb_autoround_tune_moe computes its
// target (GEMMs through BLAS). The layer loop uses it to split a block's output into the part the
// experts make and the rest.
void fb_autoround_moe_forward(const float *x, size_t n_tok, size_t H, const float *route, size_t n_experts,
                              const fb_ar_expert *ex, float *out);

// SignRound on one Linear against its own output (auto-round's layer-wise tuning,
// _quantize_layer: the unit is the Linear, not the block): x [nsamples * seq, cols] its input on
// the quantized chain, target [nsamples * seq, rows] its FP output on the FP chain's input. Same
// parameters, fake quantization, optimizer, schedule, mini-batches and best-iteration rule as
// fb_autoround_tune_moe; loss MSE(x W'^T, target). The layer loop uses it for the attention
// Linears (see jobs/tune.h). Replaces L->w with s * q and fills L->scale / L->q.
int fb_autoround_tune_linear(const float *x, const float *target, size_t nsamples, size_t seq, fb_ar_linear *L,
                             const fb_ar_opts *o, fb_ar_result *res, fb_err *err);

// One decoder block for joint SignRound (auto-round's unit): attention (RMSNorm, q/k/v, q/k
// norm, partial RoPE, causal GQA softmax attention, o_proj, residual), RMSNorm, router and routed
// SwiGLU experts (residual), in f32 as the engine's f32 forward computes it (calib/forward.c).
// Weights are the caller's f32 arrays: the fixed ones are only read; each Linear marked tuned
// is replaced at the end by s * q with its scales (fb_ar_linear).
typedef struct fb_ar_block {
    const fb_model_config *cfg;     // shapes, eps, rope, q/k norm kind, router kind
    const float *ln1, *ln2;         // [hidden] input / post-attention RMSNorm weights
    const float *q_norm, *k_norm;   // per cfg->qk_norm ([heads * head_dim] or [head_dim]); NULL if none
    const float *router;            // [experts, hidden]
    const float *router_bias;       // [experts] correction bias (sigmoid router), or NULL
    fb_ar_linear *attn[4];          // q [Dq, H], k [Dk, H], v [Dk, H], o [H, Dq]
    int attn_tuned[4];
    fb_ar_expert *experts;          // [experts]
    int experts_tuned;              // all routed experts tuned, or none
} fb_ar_block;

// SignRound on a whole block, as auto-round tunes it: every tuned Linear's V and min/max factors
// by one loss, the MSE of the block output on x [nsamples * seq, H] (the quantized chain's block
// input; samples of seq tokens, positions 0..seq-1) against target [nsamples * seq, H] (the FP
// block's output on the FP chain), back-propagated through the experts, the routing weights
// (the router recomputed on every forward, its top-k choice passing no gradient, as autograd
// does), the norms, the attention and RoPE. Same parameters, quantizer, optimizer, schedule,
// mini-batches and best-iteration rule as fb_autoround_tune_moe. Memory: fb_autoround_tune_moe's
// per tuned Linear plus one batch's activations (bs * seq tokens; attention probabilities are
// recomputed in the backward per sample and head, [seq, seq] at a time). GEMMs through BLAS.
// Fails on inconsistent shapes, non-finite inputs or weights (nothing modified then).
int fb_autoround_tune_block(const float *x, const float *target, size_t nsamples, size_t seq, fb_ar_block *b,
                            const fb_ar_opts *o, fb_ar_result *res, fb_err *err);

// The block's loss and gradients with the Linears' weights as given (no quantization): *loss =
// 1000 * MSE(block(x), target) over all rows, grads[j] = dloss/dW of Linear j (q, k, v, o, then
// gate, up, down of each expert; a NULL entry is skipped). For gradient checks (tests); the
// forward and backward are fb_autoround_tune_block's. x holds nsamples * seq rows.
int fb_autoround_block_grad(const float *x, const float *target, size_t nsamples, size_t seq, const fb_ar_block *b,
                            double *loss, float **grads, fb_err *err);

// The samples of each SignRound iteration as fb_autoround_tune_* draw them (auto-round's
// IndexSampler after random.seed(o->seed)): order [o->iters * bs], iteration it's samples at
// order[it * bs .. it * bs + bs), bs = o->batch_size (8 when 0) but at most nsamples. For other
// implementations of the same loop (cuda/cutune.h) to walk the very same mini-batches.
void fb_autoround_sample_order(size_t nsamples, const fb_ar_opts *o, size_t *order);

#endif
