// runner.h: runs a reference and a quantized MiniMax-M2 checkpoint over the same tokens, layer
// by layer in lockstep, and measures how far apart they are (what `ref-runner` reports; the
// statistics follow llama.cpp's `perplexity --kl-divergence`).
//
// Procedure: two forward engines (calib/forward.h on the CPU, cuda/cufwd.h on a GPU), one per
// source, both in routed (inference) mode. For each layer l: layer l of the reference, layer l
// of the quantized model, then the cosine similarity of the two hidden states of every token
// (mean and min over tokens, and the relative L2 error ||hq - hr|| / ||hr|| over all tokens).
// Memory: the two engines' hidden states + one layer's weights of each (+ each lm_head, kept
// once loaded, V x H f32).
// After the last layer, logits of both in blocks of tokens; for every token t that has a next
// token in its sequence (the "scored" positions), in f64:
//   log p = logits - logsumexp(logits)           (each model)
//   NLL   = -log p[ids[t+1]]                     -> perplexity exp(mean NLL) of each model
//   KL(ref || quant) = sum_v p_ref[v] (log p_ref[v] - log p_quant[v])   (>= 0; exactly 0 when
//                      the two logit rows are identical)
//   top-1 agreement: argmax of the two rows equal (ties: lowest index)
// KL is summarised as mean, median, p99 and max over the scored positions; quantiles are
// numpy's default (linear interpolation between order statistics at p*(n-1)).
//
// W4A4 emulation (emulate_w4a4, NVFP4 checkpoints with input_global_scale): the input rows of
// every quantized Linear of the quantized model are replaced, before the GEMM, by what vLLM's
// NVFP4 emulation path (nvfp4_emulation_utils.py: ref_nvfp4_quant + dequant) feeds its matmul:
//   x = BF16(x)                                   (the model runs in bf16)
//   per 16 columns: m = max|x|; s = gs * (m * f32(1/6)); s = clamp(s, -448, 448);
//                   s = FP8_E4M3(s) as f32;  o = 1 / (s * (1 / gs))  (0 where the divisor is 0)
//                   q = FP4_RNE(clamp(x * o, -6, 6));  x' = BF16(q * (s / gs))
// with gs the Linear's input_global_scale (the largest of q/k/v for the fused qkv input, of
// w1/w3 for an expert's gate-up input; equal in a valid checkpoint). This is the Blackwell
// (W4A4) numerics; on Hopper vLLM runs the same checkpoint weight-only (activations bf16).
#ifndef FB_CALIB_RUNNER_H
#define FB_CALIB_RUNNER_H

#include "calib/forward.h"
#include "calib/wsrc.h"
#include "quant/nvfp4.h"

typedef enum fb_device { FB_DEV_CPU = 0, FB_DEV_CUDA = 1 } fb_device;

typedef struct fb_runner_opts {
    int threads;          // CPU workers (0 = every CPU)
    int expert_group;     // CPU engine: experts held at once (0 = 32)
    int device;           // FB_DEV_CPU or FB_DEV_CUDA
    int cuda_gemm_f32;    // CUDA: f32 GEMMs instead of bf16 inputs with f32 accumulation
    int emulate_w4a4;     // fake-quantize quantized Linears' inputs (see above)
    int max_layers;       // run only the first N layers (0 = all): hidden states compared,
                          // no logits (n_scored = 0, perplexities and KL left 0)
    size_t logit_block;   // tokens per logits block (0 = 64)
    // Progress (main thread): phase "layer" (layer l of n) or "logits" (l tokens of n done).
    void (*progress)(void *user, const char *phase, size_t done, size_t total);
    void *progress_user;
} fb_runner_opts;

typedef struct fb_runner_layer {
    double cos_mean, cos_min;  // over tokens
    double rel_l2;             // ||hq - hr||_F / ||hr||_F over all tokens
} fb_runner_layer;

typedef struct fb_runner_result {
    int n_layers;              // layers run
    fb_runner_layer *layers;   // [n_layers] (owned; fb_runner_result_free)
    size_t n_tokens, n_seq, n_scored;
    double nll_ref, nll_quant;  // mean NLL over the scored positions
    double ppl_ref, ppl_quant;
    double kld_mean, kld_median, kld_p99, kld_max;
    double top1;               // fraction of scored positions whose argmax agrees
    size_t n_emulated;         // Linear input blocks fake-quantized (0 without emulation)
    double seconds;            // whole run
    double ref_seconds, quant_seconds;  // time in each engine (layers + logits)
    char device[128];          // "cpu (N threads)" or the GPU's name
} fb_runner_result;

// Runs both sources over the tokens (n_seq sequences; sequence s = [starts[s], starts[s+1])).
// Both must describe the same MiniMax-M2 architecture (config.json compared field by field).
// Fails with err naming the source and tensor on a load error, on a config mismatch, on
// emulate_w4a4 without any input_global_scale, or (device CUDA) when CUDA is not built or no
// GPU is usable. res is filled on success (free with fb_runner_result_free).
int fb_runner_run(fb_wsrc *ref, fb_wsrc *quant, const int32_t *ids, size_t n_tok,
                  const size_t *starts, size_t n_seq, const fb_runner_opts *o,
                  fb_runner_result *res, fb_err *err);

void fb_runner_result_free(fb_runner_result *r);

// ---- pieces, exposed for tests -----------------------------------------------------------------

// Compares one position's two logit rows (V values each): NLL of token `next` under each
// (next < 0: not scored, NLLs set to 0), KL(ref || quant), and whether the argmaxes agree.
void fb_runner_compare_row(const float *lr, const float *lq, size_t V, int32_t next,
                           double *nll_r, double *nll_q, double *kl, int *agree);

// numpy-style quantile (linear interpolation at p*(n-1)) of n sorted values; 0 for n == 0.
double fb_runner_quantile(const double *sorted, size_t n, double p);


// Whether this build has the CUDA path and a GPU is usable: 1 and the device name, or 0 and
// the reason in why (always 0 "built without CUDA" when FB_HAVE_CUDA is not defined).
int fb_runner_cuda_available(char *name, size_t name_sz, char *why, size_t why_sz);

// The --device choice of calibrate and ref-runner: NULL picks cuda when a GPU is usable, else
// cpu; "cpu" or "cuda" as asked. Returns FB_DEV_CPU / FB_DEV_CUDA; -1 with err for an unknown
// name (a usage error), -2 with err when cuda was asked but no GPU is usable.
int fb_runner_pick_device(const char *name, fb_err *err);

#endif
