// cugptq.h: GPTQ for one Linear (fb_gptq_quantize, calib/gptq.h) on an NVIDIA GPU, with the CPU
// function's arguments and semantics; calib/gptq.c is the truth it is tested against
// (tests/test_cugptq.c).
//
// What runs where. The host does what is O(C) and order-sensitive in the same code as the CPU:
// the activation ordering (diag(H) sorted descending, ties by index), the dead columns and the
// dampening value (the mean diagonal summed in the CPU's order). The device does the rest:
// H permuted into f64, the dead columns' diagonal 1 and the dampened diagonal written, then
// cuSOLVER Dn in f64 as LAPACK on the CPU: potrf, potri, the mirrored inverse, potrf of it; the
// factor rounded to f32. Not positive definite (any potrf / potri info, a non-positive or
// non-finite factor diagonal, a non-finite factor element): U = I, plain RTN with the same
// scales, rtn_fallback = 1, never NaN. The error feedback is the CPU's in blocks of `blocksize`
// columns: own kernel for the in-block column steps (one warp per row, the block's columns in its
// lanes' registers, for blocks of up to 256 columns; one thread per row above), each element
// getting the CPU's f32 operations in the CPU's order (no FMA contraction: __fmul_rn / __fsub_rn),
// the same fake quantizer (INT4: rint, clamp [-8, 7], bf16(q * s); NVFP4: E2M1 RNE of w / eff,
// times eff); cublasSgemm (no TF32: CUBLAS_DEFAULT_MATH) for the trailing update.
// What differs from the CPU: the f64 factorization's rounding (cuSOLVER vs OpenBLAS) and the
// trailing SGEMM's summation order. Both change an f32 weight by an ulp or so, which can move an
// element that sits near a rounding boundary to the neighbouring level; the error feedback then
// carries that difference on. The loss is summed per row in f64, then over rows.
//
// Threads: every calling thread gets its own CUDA stream, cuBLAS and cuSOLVER handles and pinned
// staging buffer (created on its first call, released when the thread exits), so the quantizers'
// per-Linear worker threads may call concurrently; device memory is stream-ordered
// (cudaMallocAsync) and freed before return, except a factor's (fb_cuda_gptq_factorize), which
// stays on the device until fb_cuda_gptq_factor_free: one factorization per distinct Hessian,
// shared by the Linears it feeds, as on the CPU (calib/gptq.h).
//
// Built without CUDA (no nvcc, CUDA=0) every function fails with a message saying so.
#ifndef FB_CUDA_CUGPTQ_H
#define FB_CUDA_CUGPTQ_H

#ifdef __cplusplus
extern "C" {
#endif

#include "calib/gptq.h"

// fb_gptq_quantize on the GPU (device 0): same arguments, same result within the rounding above.
// W is replaced only on success; H is not modified (the CPU function may destroy it). Fails, with
// nothing modified, on what the CPU function refuses, when CUDA is not built, when no GPU is
// usable and when the device has no room (the message says how many bytes).
// It is fb_cuda_gptq_factorize, fb_cuda_gptq_quantize_factored, fb_cuda_gptq_factor_free.
int fb_cuda_gptq_quantize(float *W, size_t R, size_t C, float *H, const float *scales, const fb_gptq_opts *o,
                          fb_gptq_result *res, fb_err *err);

// One factorization for several Linears (calib/gptq.h's fb_gptq_factorize on the GPU). The factor
// lives in device memory (U in f32, the permutation, the dead columns; the host keeps their O(C)
// copies and the flags): C^2 floats plus O(C). It was made on one thread's stream, which was
// synchronised before return, so any thread may then use it at the same time (each on its own
// stream; the factor is only read). Freed by fb_cuda_gptq_factor_free once no call uses it.
typedef struct fb_cuda_gptq_factor fb_cuda_gptq_factor;

// Factorizes H (C x C, f32, host memory, not modified) under o->actorder and o->percdamp, as
// fb_gptq_factorize (a non-PD H gives the identity factor and the fallback flag). *out NULL on
// failure: the CPU function's refusals, no CUDA, no GPU, no room on the device.
int fb_cuda_gptq_factorize(const float *H, size_t C, const fb_gptq_opts *o, fb_cuda_gptq_factor **out, fb_err *err);

// GPTQ of W with a factor of its Hessian (fb_gptq_quantize_factored on the GPU): W is uploaded
// through this thread's pinned staging buffer (kept between calls, grown as needed, released when
// the thread exits), the update runs on this thread's stream, W comes back the same way. Refuses,
// W untouched, what fb_gptq_quantize_factored refuses.
int fb_cuda_gptq_quantize_factored(float *W, size_t R, size_t C, const fb_cuda_gptq_factor *f, const float *scales,
                                   const fb_gptq_opts *o, fb_gptq_result *res, fb_err *err);

// The factor's fallback flag and dead columns (as fb_gptq_factor_rtn_fallback / _dead_columns).
int fb_cuda_gptq_factor_rtn_fallback(const fb_cuda_gptq_factor *f);
size_t fb_cuda_gptq_factor_dead_columns(const fb_cuda_gptq_factor *f);

// Frees a factor (NULL: nothing). No call may be using it.
void fb_cuda_gptq_factor_free(fb_cuda_gptq_factor *f);

// fb_gptq_hessian_add on device memory: dH (C x C, f32) += 2 * dx^T dx for `rows` rows dx (rows x C,
// f32), both device pointers, one cublasSgemm (alpha 2, no TF32) on the calling thread's stream,
// synchronised before return. Equal to the CPU's within f32 summation order (the CPU scales x by
// sqrt(2) first, then multiplies). For a caller whose activations already live on the GPU.
int fb_cuda_gptq_hessian_add(float *dH, size_t C, const float *dx, size_t rows, fb_err *err);

// What the last successful call on this thread measured (benchmarks): fb_cuda_gptq_factorize
// fills device_bytes (its peak), upload_s and factor_s; fb_cuda_gptq_quantize_factored fills
// device_bytes (its own, the factor not counted), upload_s, update_s, download_s (factor_s 0);
// fb_cuda_gptq_quantize the two's sums (device_bytes: the larger).
typedef struct fb_cugptq_info {
    size_t device_bytes;   // device allocations (cuSOLVER workspace included)
    double upload_s;       // host-side ordering + uploads
    double factor_s;       // permutation, dampening, potrf / potri / potrf, f32 factor (synchronised)
    double update_s;       // the block-wise error feedback (synchronised)
    double download_s;     // result and loss back to the host
} fb_cugptq_info;
void fb_cuda_gptq_last_info(fb_cugptq_info *info);

#ifdef __cplusplus
}
#endif

#endif
