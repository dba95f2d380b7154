// cufwd.h: the layer-wise MoE forward on an NVIDIA GPU (sm_90 Hopper, sm_100/120/121
// Blackwell: Makefile CUDA_ARCH): the same math as calib/forward.c (calib/mm.h; the family's
// names, router and q/k norm from arch/arch.h), with hidden states kept on the device. Behind
// the engine interface (calib/engine.h) through cuda/cuengine.h.
//
// Built only when nvcc is present (the Makefile defines FB_HAVE_CUDA and compiles
// src/cuda/*.cu); callers guard their use with #ifdef FB_HAVE_CUDA.
//
// Numerics. Weights come from a weight source (calib/wsrc.h). FP8 block-scaled weights of a
// source with `load_fp8` (a checkpoint) travel raw: e4m3 bytes and f32 block scales are read
// into pinned host memory, copied to the device, and dequantized there by the fp8-dequant
// kernel (bf16(float(e4m3) * scale), f32 product, RNE), giving the very bf16 values the host
// dequant gives (widened to f32 in f32 GEMM mode). Other weights come as f32 (NVFP4 / int4 /
// BF16 already dequantized to bf16-exact values on the host), are uploaded and, in the
// default mode, converted to bf16 on the device (exact: the values are bf16 already). Expert
// weights are read by host threads one group ahead (double-buffered) while the device computes
// the current group. GEMMs are
// cuBLAS with bf16 inputs and f32 accumulation/output (CUBLAS_COMPUTE_32F); activations are
// rounded to bf16 at each GEMM input, as a bf16 model does. With gemm_f32 every GEMM is an
// f32 cublasSgemm (no TF32) on f32 activations, so the result follows the CPU engine to
// f32 rounding differences (summation order). Everything else is f32 kernels mirroring
// mm.c: RMSNorm (sum of squares in f64 per row, as the CPU), rotate-half RoPE on the first
// rotary_dim dims (angles pos * inv_freq in f32, cosf/sinf), causal GQA attention with a
// row softmax in f32 (max subtracted), sigmoid router with the correction bias used for the
// choice only (ties to the lower index), SwiGLU, routing-weighted combine in ascending expert
// order. Experts run in routed mode (each expert on its routed tokens) or all-experts mode
// (w1/w3 of every expert on every token: calibration), giving the same layer output (in bf16
// GEMM mode the all-experts gate-up product is stored in bf16, as a bf16 model holds it; the
// routed path keeps it in f32).
//
// Memory on the device: hidden states + MoE accumulator (2 x tokens x hidden f32), one layer's
// attention and router weights, `expert_group` experts' weights, per-token-chunk scratch, and
// lm_head (V x H, bf16 or f32) once logits are asked for.
#ifndef FB_CUDA_CUFWD_H
#define FB_CUDA_CUFWD_H

#ifdef __cplusplus
extern "C" {  // the library's C headers carry no linkage blocks of their own
#endif

#include "calib/forward.h"
#include "calib/mm.h"
#include "calib/stats.h"
#include "calib/wsrc.h"

typedef struct fb_cufwd_opts {
    int gemm_f32;          // 1: f32 GEMMs on f32 activations; 0: bf16 inputs, f32 accumulate
    int all_experts;       // 1: calibration mode
    int expert_group;      // experts whose weights are on the device at once (0 = 16)
    int token_chunk;       // token rows per expert GEMM in all-experts mode (0 = 8192)
    int host_threads;      // threads loading/dequantizing weights on the host (0 = every CPU)
    // W4A4 activation emulation: the input global scale of a Linear input (role as in
    // fb_fwd_hooks, expert = -1 for attention), or 0 for none. NULL for no emulation.
    float (*act_gs)(void *user, fb_role role, int layer, int expert);
    void *act_user;
    fb_calib_stats *stats; // statistics (input absmax per Linear, counts, saliency); NULL
    // Host hooks (calib/forward.h), called at the CPU engine's points with host copies of what
    // they see (linear_input's changes are copied back). NULL for none. Costs a device-to-host
    // copy per call: for algorithms prototyped on the host, not for speed.
    const fb_fwd_hooks *hooks;
    // Polled at the start of each layer and of each expert group (as the CPU forward polls
    // the cancellation flag): nonzero ends the layer with -1 and "interrupted (forward)".
    // NULL: never (the engine passes common/cancel.h's fb_cancelled).
    int (*cancelled)(void);
} fb_cufwd_opts;

typedef struct fb_cufwd fb_cufwd;

// Timing of the device forward (seconds, host wall clock around synchronised phases).
typedef struct fb_cufwd_timing {
    double load_s;     // engine time spent on weights: waiting for host reads, attention
                       // weights' reads, uploads and device dequant (reads of the next expert
                       // group that overlap compute are not in it)
    double read_s;     // host reads of weights (wall time of each read, overlapped or not;
                       // for non-FP8 weights of experts, host dequant included)
    double wait_s;     // part of load_s spent waiting for expert reads (not hidden by compute)
    double upload_s;   // host-to-device copies of weights
    double dequant_s;  // FP8 dequant on the device
    double fp8_bytes;  // FP8 weight bytes uploaded raw
    double attn_s;     // norms, projections, attention, router
    double expert_s;   // expert GEMMs, SwiGLU, combine
    double gemm_flops; // 2*m*n*k of all GEMMs (projections, attention, experts, lm_head)
    size_t n_emulated; // Linear input blocks fake-quantized (act_gs != 0)
} fb_cufwd_timing;

// 1 when a CUDA device is usable (name filled), else 0 with the reason in why.
int fb_cuda_probe(char *name, size_t name_sz, char *why, size_t why_sz);

// A device forward over model cfg reading weights from src (both borrowed). NULL with err set
// when no GPU is usable or the options are invalid.
fb_cufwd *fb_cufwd_new(fb_wsrc *src, const fb_model_config *cfg, const fb_cufwd_opts *o,
                       fb_err *err);
void fb_cufwd_free(fb_cufwd *f);

// As fb_fwd_set_tokens (embeddings looked up on the host, uploaded).
int fb_cufwd_set_tokens(fb_cufwd *f, const int32_t *ids, size_t n_tok, const size_t *starts,
                        size_t n_seq, fb_err *err);

// Runs layer `layer` (the next one). Fails naming the tensor, or with the CUDA/cuBLAS error.
int fb_cufwd_layer(fb_cufwd *f, int layer, fb_err *err);

// As fb_fwd_set_hidden: uploads h (host, n_tok x hidden) and makes `layer` the next one.
int fb_cufwd_set_hidden(fb_cufwd *f, int layer, const float *h, fb_err *err);

// Copies the current hidden states (n_tok x hidden f32) to out (host).
int fb_cufwd_hidden(fb_cufwd *f, float *out, fb_err *err);

// Logits of tokens [t0, t0+n) (n x vocab f32, host buffer) after the final norm and lm_head.
int fb_cufwd_logits(fb_cufwd *f, size_t t0, size_t n, float *out, fb_err *err);

const fb_cufwd_timing *fb_cufwd_get_timing(const fb_cufwd *f);

// ---- benchmark helpers ------------------------------------------------------------------------

// Measures cuBLAS bf16 GEMM throughput (bf16 inputs, f32 accumulate, f32 output) for
// m x n x k, `iters` repetitions after a warm-up. Returns TFLOP/s, or -1 with err set.
double fb_cuda_gemm_tflops(int m, int n, int k, int iters, int out_f32, fb_err *err);

// Measures the device FP8 block-scaled dequant kernel (e4m3 bytes * block scale -> bf16, the
// fp8-dequant numerics) over rows x cols, and the host-to-device copy rate of the fp8 bytes
// from pinned memory. Fills GB/s of fp8 input consumed by each. Returns 0 or -1.
int fb_cuda_fp8_dequant_rate(int rows, int cols, int iters, double *dequant_gbs,
                             double *h2d_gbs, fb_err *err);

// Dequantizes FP8 block-scaled rows on the device (for tests): in[rows*cols] e4m3 bytes,
// scale[ceil(rows/bm) * ceil(cols/bn)] f32, out bf16 bits; host buffers. Returns 0 or -1.
int fb_cuda_fp8_dequant_host(const uint8_t *in, const float *scale, int rows, int cols, int bm,
                             int bn, uint16_t *out, fb_err *err);

// One synthetic full-size layer on the device (every weight resident in bf16, random values;
// no checkpoint): n_seq sequences of seq_len tokens, experts in all-experts (calibration) or
// routed mode; runs `layers` layers (the first warms up) and reports the last one's wall time,
// GEMM FLOPs (2*m*n*k, causal attention counted in full), attention+router and expert times.
int fb_cuda_bench_layer(const fb_model_config *cfg, size_t n_seq, size_t seq_len, int all_experts,
                        int layers, double *secs, double *flops, double *attn_s, double *expert_s,
                        fb_err *err);

#ifdef __cplusplus
}
#endif

#endif
