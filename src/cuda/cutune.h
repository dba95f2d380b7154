// cutune.h: AutoRound's SignRound on a whole decoder block (fb_autoround_tune_block,
// calib/autoround.h) on an NVIDIA GPU, with the CPU functions' arguments and semantics.
//
// What runs where. The weights come from the host (fb_ar_block, f32) and the tuned ones go back
// there (w = s * q, scales, codes), nothing modified on failure. Everything else lives on the
// device: x and target (all samples), one mini-batch's activations, and per tuned Linear its FP
// weight w0, V, the best-V snapshot (f32, [rows, cols] each) and its per-group min/max factors,
// snapshots and FP group min/max, and its fake-quantized weight wq, refreshed by each SignSGD
// step for its group (so no Linear is fake-quantized in the forward or again in the backward).
// The experts' rows of one mini-batch (gathered inputs, gate / up products, outputs: every
// (token, expert) pair) are kept from the forward for the backward. A full MiniMax-M2 block
// (768 expert Linears of 3072 x 1536) on 64 x 2048 tokens, batch 8 x 2048, takes 70.6 GiB with
// activations and inputs (fb_cuda_autoround_block_bytes; f32 / tf32 GEMMs, bf16 about 8 GiB
// less), inside an 80 GB H100. The best-iteration snapshot is written by each Linear's step of
// an iteration whose loss is the best so far (the parameters it read before stepping).
//
// Streams: the experts' forward and backward are spread over lanes (fb_ar_opts.cuda_lanes, 4 by
// default), each a non-blocking stream with its own cuBLAS handle and scratch; the lanes start
// and end on events of the main (default) stream. The experts' outputs are combined, and their
// input gradients added, by one kernel per token over its experts in ascending order, the order
// of one expert after another: the results are the same bytes for every number of lanes.
//
// Math: f32 throughout. GEMMs are cublasSgemm (no TF32: CUBLAS_DEFAULT_MATH) in the CPU's
// shapes (fb_ar_opts.gemm tf32: cublasGemmEx on tensor cores, f32 in and out; gemm bf16: the
// same, and the routed experts' GEMMs on operands stored in bf16, f32 accumulation and results);
// attention per causal block of rows (L / 8 rows: the block's queries against the keys up to
// its end, its keys' dV / dK from the rows from its start on: 9/16 of the L x L products), each
// GEMM batched over the (sample, KV group) pairs of up to 8 samples for one query head of each
// group at a time (so dK and dV add a group's heads in head order); the experts as per-expert
// gathered GEMMs over the tokens routed to them (lists built on the host from the routing,
// ascending token order, each expert's rows padded with zero rows to a multiple of 16 so that
// its GEMMs come in few shapes, expert outputs added in ascending expert order as the CPU). Own kernels mirror calib/autoround.c step for step: RMSNorm (f64 sums),
// RoPE, causal softmax, routers (one thread per token, the CPU's sequential loops), SwiGLU, the
// fake quantizer and the SignSGD step (32 groups per block, each group's scale-gradient sums added by one lane in the CPU's order, the
// fp16 roundings, the clamp-gradient and sign rules). The mini-batches are the CPU's
// (fb_autoround_sample_order), the LinearLR factors and best-iteration rule signround()'s.
// The GEMMs' and reductions' summation order differs from the BLAS's: gradients agree to f32
// rounding, and a tuning run follows the CPU's until a near-zero gradient takes the other sign
// (then both are samples of the same process; see tests/test_cutune.c for the tolerances).
//
// Built without CUDA (no nvcc, CUDA=0) both functions fail with a message saying so.
#ifndef FB_CUDA_CUTUNE_H
#define FB_CUDA_CUTUNE_H

#ifdef __cplusplus
extern "C" {
#endif

#include "calib/autoround.h"

// fb_autoround_tune_block on the GPU (device 0). Fails (nothing modified) on what the CPU
// function refuses, when CUDA is not built or no GPU is usable, and when the block does not fit
// the device's free memory (the message names the bytes needed, by part, and the bytes free).
int fb_cuda_autoround_tune_block(const float *x, const float *target, size_t nsamples, size_t seq, fb_ar_block *b,
                                 const fb_ar_opts *o, fb_ar_result *res, fb_err *err);

// fb_autoround_block_grad on the GPU: *loss = 1000 * MSE over all rows, grads[j] the Linears'
// weight gradients (q, k, v, o, then gate, up, down per expert; NULL entries skipped), written
// on the host. All nsamples * seq rows in one pass.
int fb_cuda_autoround_block_grad(const float *x, const float *target, size_t nsamples, size_t seq,
                                 const fb_ar_block *b, double *loss, float **grads, fb_err *err);

// What the last successful call on this thread measured (benchmarks): device bytes the tuner
// allocated at its peak, GEMM floating-point operations issued (2 m n k each), and times.
typedef struct fb_cutune_info {
    size_t device_bytes;    // peak of the tuner's own allocations (cuBLAS workspace not included)
    double setup_s;         // checks, uploads, allocations
    double check_s;         // of which the host's input checks (finite weights, shapes)
    double download_s;      // the results back to the host (staged, then replaced)
    double iters_s;         // the SignRound iterations (forward, backward, steps), synchronised
    double full_s;          // the two full-data MSE passes (RTN and final)
    double iter_flop;       // GEMM flops of all iterations (divide by iters for one)
    double full_flop;       // GEMM flops of the two full passes
    // the iterations' device time by section (CUDA events on the stream, summed over iterations):
    // [0] the fake-quantized attention weights, attention and router forward, the routing lists
    // (a host round trip); [1] the experts' forward; [2] the loss and the best-iteration snapshot;
    // [3] the experts' backward and SignSGD steps; [4] the router, attention backward and steps
    double sect_s[5];
    double moe_issue_s[2];  // host seconds issuing the experts' forward / backward (launch-bound
                            // when close to sect_s[1] / sect_s[3])
} fb_cutune_info;
void fb_cuda_autoround_last_info(fb_cutune_info *info);

// The device bytes fb_cuda_autoround_tune_block allocates for a block of this configuration
// (attention Linear j tuned when attn_tuned[j], the routed experts when experts_tuned),
// nsamples x seq tokens, batch_size (8 when 0): its own buffers, the sizes it checks against the
// device's free memory before allocating (the CUDA context and cuBLAS workspace come on top).
// Computed on the host, no GPU needed; 0 for a configuration it refuses, or without CUDA.
size_t fb_cuda_autoround_block_bytes(const fb_model_config *cfg, size_t nsamples, size_t seq, size_t batch_size,
                                     const int attn_tuned[4], int experts_tuned);

#ifdef __cplusplus
}
#endif

#endif
