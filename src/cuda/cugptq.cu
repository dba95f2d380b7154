// cugptq.cu: GPTQ for one Linear on the GPU (see cugptq.h). calib/gptq.c is the code it follows
// step for step; the names below are the same (perm, Hd, U, Uf, Wp, W1, E1).
//
// Layout: row-major everywhere, as the CPU. cuSOLVER is column-major: a row-major symmetric
// matrix is its own column-major transpose, so the fill modes are the CPU's LAPACK ones (gptq.c
// hinv_upper says why). The block's working columns are kept transposed (W1t, E1t: [bw][R]) so
// that the row threads of one column step touch consecutive addresses.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vector>

#include "cuda/cugptq.h"

namespace {

thread_local fb_cugptq_info g_info;

// The calling thread's stream and library handles (cugptq.h: one set per thread, kept), released
// when the thread exits: the quantizers' worker threads are created per layer (common/pool.c), and
// a cuBLAS handle holds a workspace of megabytes on the device.
struct Ctx {
    int ready = 0;
    cudaStream_t st = nullptr;
    cublasHandle_t cb = nullptr;
    cusolverDnHandle_t cs = nullptr;
    void *pin = nullptr;      // pinned staging for W up and down (factored_run), pin_bytes long
    size_t pin_bytes = 0;
    ~Ctx() {
        if (pin) cudaFreeHost(pin);
        if (cs) cusolverDnDestroy(cs);
        if (cb) cublasDestroy(cb);
        if (st) cudaStreamDestroy(st);
    }
};
thread_local Ctx g_ctx;

#define CK(call)                                                                                                    \
    do {                                                                                                            \
        cudaError_t e_ = (call);                                                                                    \
        if (e_ != cudaSuccess)                                                                                      \
            return fb_fail(err, "GPTQ on CUDA: %s (%s:%d): %s", #call, __FILE__, __LINE__, cudaGetErrorString(e_)); \
    } while (0)
#define CB(call)                                                                                                    \
    do {                                                                                                            \
        cublasStatus_t s_ = (call);                                                                                 \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                                            \
            return fb_fail(err, "GPTQ on CUDA: cuBLAS %s (%s:%d): status %d", #call, __FILE__, __LINE__, (int)s_);   \
    } while (0)
#define CS(call)                                                                                                    \
    do {                                                                                                            \
        cusolverStatus_t s_ = (call);                                                                               \
        if (s_ != CUSOLVER_STATUS_SUCCESS)                                                                          \
            return fb_fail(err, "GPTQ on CUDA: cuSOLVER %s (%s:%d): status %d", #call, __FILE__, __LINE__, (int)s_); \
    } while (0)
#define KC() CK(cudaGetLastError())
#define TRY(call)              \
    do {                       \
        if ((call)) return -1; \
    } while (0)

// Device 0, this thread's stream and handles. A failure says why (no GPU: "no usable GPU").
int ctx_get(Ctx **out, fb_err *err) {
    Ctx &c = g_ctx;
    if (!c.ready) {
        int ndev = 0;
        cudaError_t e = cudaGetDeviceCount(&ndev);
        if (e != cudaSuccess || ndev < 1) {
            cudaGetLastError();
            return fb_fail(err, "GPTQ on CUDA: no usable GPU (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        }
        CK(cudaSetDevice(0));
        if (!c.st) CK(cudaStreamCreateWithFlags(&c.st, cudaStreamNonBlocking));
        if (!c.cb) {
            CB(cublasCreate(&c.cb));
            CB(cublasSetMathMode(c.cb, CUBLAS_DEFAULT_MATH));  // no TF32: the CPU path is the truth
            CB(cublasSetStream(c.cb, c.st));
        }
        if (!c.cs) {
            CS(cusolverDnCreate(&c.cs));
            CS(cusolverDnSetStream(c.cs, c.st));
        }
        c.ready = 1;
    }
    CK(cudaSetDevice(0));
    *out = &c;
    return 0;
}

// Stream-ordered device allocations of one call, freed together (success or failure).
struct Mem {
    cudaStream_t st;
    size_t bytes = 0;
    std::vector<void *> p;
    explicit Mem(cudaStream_t s) : st(s) {}
    ~Mem() {
        for (void *q : p) cudaFreeAsync(q, st);
        cudaStreamSynchronize(st);
    }
};

template <typename T> int dalloc(Mem &m, T **p, size_t n, const char *what, fb_err *err) {
    size_t b = (n ? n : 1) * sizeof(T);
    void *q = nullptr;
    cudaError_t e = cudaMallocAsync(&q, b, m.st);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return fb_fail(err, "GPTQ on CUDA: the device has no room for %s (%zu bytes; %zu allocated before): %s", what, b,
                       m.bytes, cudaGetErrorString(e));
    }
    m.p.push_back(q);
    m.bytes += b;
    *p = (T *)q;
    return 0;
}

unsigned nblk(size_t n, unsigned t) { return (unsigned)((n + t - 1) / t); }

// ---- the fake quantizer (gptq.c fq) -----------------------------------------------------------

__device__ inline float bf16r(float f) {  // formats.h fb_f32_to_bf16 then back: RNE, NaN -> 0x7FC0
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return __uint_as_float(0x7FC00000u);
    return __uint_as_float(((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16) << 16);
}

__device__ inline float fp4r(float y) {  // nvfp4.c fb_nvfp4_fp4_nibble then fb_nvfp4_fp4_value
    const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    y = fminf(fmaxf(y, -6.0f), 6.0f);
    float a = fabsf(y);
    unsigned idx = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) + (a > 5.0f);
    return y < 0.0f ? -mag[idx] : mag[idx];
}

__device__ inline float fq(int nvfp4, float w, float s) {
    if (!nvfp4) {
        float q = rintf(__fdiv_rn(w, s));  // torch.round: half to even
        q = q < -8.0f ? -8.0f : q > 7.0f ? 7.0f : q;
        return bf16r(__fmul_rn(q, s));
    }
    return __fmul_rn(fp4r(__fdiv_rn(w, s)), s);
}

// ---- kernels ------------------------------------------------------------------------------------

// Hd[i][j] = H[perm[i]][perm[j]] in f64; the diagonal from dg (dead columns 1, dampened).
__global__ void k_permute_h(const float *H, const int *perm, const double *dg, size_t C, double *Hd) {
    size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y;
    if (j >= C) return;
    Hd[i * C + j] = i == j ? dg[i] : (double)H[(size_t)perm[i] * C + perm[j]];
}

// Wp[r][j] = W[r][perm[j]], 0 for a dead column.
__global__ void k_permute_w(const float *W, const int *perm, const unsigned char *dead, size_t C, float *Wp) {
    size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x, r = blockIdx.y;
    if (j >= C) return;
    Wp[r * C + j] = dead[j] ? 0.0f : W[r * C + perm[j]];
}

// W[r][perm[j]] = Wp[r][j].
__global__ void k_unpermute_w(const float *Wp, const int *perm, size_t C, float *W) {
    size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x, r = blockIdx.y;
    if (j >= C) return;
    W[r * C + perm[j]] = Wp[r * C + j];
}

// bad |= a diagonal element of A that is not > 0 or not finite (gptq.c diag_ok).
__global__ void k_diag_ok(const double *A, size_t n, int *bad) {
    size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    double d = A[j * n + j];
    if (!(d > 0) || !isfinite(d)) atomicOr(bad, 1);
}

// The inverse's row-major lower triangle (dpotri 'U' on the column-major view) mirrored into the
// upper one: A symmetric for the second potrf.
__global__ void k_mirror(double *A, size_t n) {
    size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y;
    if (j >= n || j <= i) return;
    A[i * n + j] = A[j * n + i];
}

// Uf = f32 of the row-major upper triangle (lower zeroed); bad |= a non-finite element of it.
__global__ void k_upper_f32(const double *A, size_t n, float *Uf, int *bad) {
    size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y;
    if (j >= n) return;
    double v = j < i ? 0.0 : A[i * n + j];
    if (!isfinite(v)) atomicOr(bad, 1);
    Uf[i * n + j] = (float)v;
}

__global__ void k_identity(float *Uf, size_t n) {
    size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y;
    if (j >= n) return;
    Uf[i * n + j] = i == j ? 1.0f : 0.0f;
}

// W1t[i][r] = Wp[r][i1 + i] and back.
__global__ void k_load_block(const float *Wp, size_t R, size_t C, size_t i1, size_t bw, float *W1t) {
    size_t r = (size_t)blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y;
    if (r >= R || i >= bw) return;
    W1t[i * R + r] = Wp[r * C + i1 + i];
}
__global__ void k_store_block(const float *W1t, size_t R, size_t C, size_t i1, size_t bw, float *Wp) {
    size_t r = (size_t)blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y;
    if (r >= R || i >= bw) return;
    Wp[r * C + i1 + i] = W1t[i * R + r];
}

// The in-block column steps of gptq.c, one thread per row r, columns in order: q = fq(w, s),
// e = (w - q) / U_cc, the rest of the row's block w_k -= e * U_c,k; W1t[i] becomes q (the CPU's
// Wp[:, col] = q), E1t[i] e. Loss: this row's sum of (f32 e*e) / 2 in f64, added to rowloss[r].
__global__ void k_block(float *W1t, float *E1t, const float *Uf, size_t C, size_t i1, size_t bw, size_t R,
                        const float *scales, size_t NG, const int *gcol, int nvfp4, float gs, double *rowloss) {
    size_t r = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= R) return;
    double loss = 0;
    for (size_t i = 0; i < bw; i++) {
        size_t col = i1 + i;
        float d = Uf[col * C + col];
        float s = scales[r * NG + gcol[col]];
        if (nvfp4) s = __fdiv_rn(s, gs);
        float w = W1t[i * R + r];
        float q = fq(nvfp4, w, s);
        float e = __fdiv_rn(__fsub_rn(w, q), d);
        W1t[i * R + r] = q;
        E1t[i * R + r] = e;
        loss += (double)__fmul_rn(e, e) / 2;
        const float *u = Uf + col * C + i1;
        for (size_t k = i + 1; k < bw; k++) W1t[k * R + r] = __fsub_rn(W1t[k * R + r], __fmul_rn(e, u[k]));
    }
    rowloss[r] += loss;
}

// The same column steps with one warp per row (blocks of up to 32 * NS columns): lane l holds the
// row's columns l, l + 32, ... of the block in registers; every lane computes column i's q and e
// (the same inputs, so the same values), the lanes update their own columns after i. Each element
// sees the CPU's operations in the CPU's order, as in k_block. Reads and writes Wp (row-major,
// coalesced) directly; E1 row-major [R][bw], as gptq.c's.
template <int NS>
__global__ void k_block_warp(float *Wp, float *E1, const float *Uf, size_t C, size_t i1, int bw, size_t R,
                             const float *scales, size_t NG, const int *gcol, int nvfp4, float gs, double *rowloss) {
    size_t r = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = (int)(threadIdx.x & 31);
    if (r >= R) return;  // a whole warp: r is the warp's
    float *wr = Wp + r * C + i1;
    float w[NS];
#pragma unroll
    for (int s = 0; s < NS; s++) {
        int k = s * 32 + lane;
        w[s] = k < bw ? wr[k] : 0.0f;
    }
    double loss = 0;
#pragma unroll
    for (int s = 0; s < NS; s++) {
        for (int l = 0; l < 32; l++) {
            int i = s * 32 + l;
            if (i >= bw) break;
            size_t col = i1 + (size_t)i;
            float wi = __shfl_sync(0xffffffffu, w[s], l);
            float d = Uf[col * C + col];
            float sc = scales[r * NG + gcol[col]];
            if (nvfp4) sc = __fdiv_rn(sc, gs);
            float q = fq(nvfp4, wi, sc);
            float e = __fdiv_rn(__fsub_rn(wi, q), d);
            if (lane == l) {
                w[s] = q;
                E1[r * (size_t)bw + (size_t)i] = e;
            }
            loss += (double)__fmul_rn(e, e) / 2;
            const float *u = Uf + col * C + i1;
#pragma unroll
            for (int s2 = 0; s2 < NS; s2++) {
                int k = s2 * 32 + lane;
                if (k > i && k < bw) w[s2] = __fsub_rn(w[s2], __fmul_rn(e, u[k]));
            }
        }
    }
#pragma unroll
    for (int s = 0; s < NS; s++) {
        int k = s * 32 + lane;
        if (k < bw) wr[k] = w[s];
    }
    if (lane == 0) rowloss[r] += loss;
}

// ---- the factorization (gptq.c hinv_upper): 0, or 1 when not positive definite -------------------

int hinv_upper(Ctx &c, Mem &m, double *A, size_t n, float *Uf, int *d_bad, int *d_info, int *npd, fb_err *err) {
    int ni = (int)n, lw1 = 0, lw2 = 0, lw3 = 0, info = 0, bad = 0;
    CS(cusolverDnDpotrf_bufferSize(c.cs, CUBLAS_FILL_MODE_UPPER, ni, A, ni, &lw1));
    CS(cusolverDnDpotri_bufferSize(c.cs, CUBLAS_FILL_MODE_UPPER, ni, A, ni, &lw2));
    CS(cusolverDnDpotrf_bufferSize(c.cs, CUBLAS_FILL_MODE_LOWER, ni, A, ni, &lw3));
    int lw = lw1 > lw2 ? lw1 : lw2;
    lw = lw > lw3 ? lw : lw3;
    double *work;
    TRY(dalloc(m, &work, (size_t)lw, "the cuSOLVER workspace", err));
    dim3 g2(nblk(n, 256), (unsigned)n);
    *npd = 1;
    CK(cudaMemsetAsync(d_bad, 0, sizeof(int), c.st));
    CS(cusolverDnDpotrf(c.cs, CUBLAS_FILL_MODE_UPPER, ni, A, ni, work, lw, d_info));  // L of H = L L^T
    k_diag_ok<<<nblk(n, 256), 256, 0, c.st>>>(A, n, d_bad);
    KC();
    CK(cudaMemcpyAsync(&info, d_info, sizeof info, cudaMemcpyDeviceToHost, c.st));
    CK(cudaMemcpyAsync(&bad, d_bad, sizeof bad, cudaMemcpyDeviceToHost, c.st));
    CK(cudaStreamSynchronize(c.st));
    if (info != 0 || bad) return 0;
    CS(cusolverDnDpotri(c.cs, CUBLAS_FILL_MODE_UPPER, ni, A, ni, work, lw, d_info));  // H^-1, one triangle
    CK(cudaMemcpyAsync(&info, d_info, sizeof info, cudaMemcpyDeviceToHost, c.st));
    CK(cudaStreamSynchronize(c.st));
    if (info != 0) return 0;
    k_mirror<<<g2, 256, 0, c.st>>>(A, n);
    KC();
    CS(cusolverDnDpotrf(c.cs, CUBLAS_FILL_MODE_LOWER, ni, A, ni, work, lw, d_info));  // U, row-major upper
    k_diag_ok<<<nblk(n, 256), 256, 0, c.st>>>(A, n, d_bad);
    KC();
    k_upper_f32<<<g2, 256, 0, c.st>>>(A, n, Uf, d_bad);
    KC();
    CK(cudaMemcpyAsync(&info, d_info, sizeof info, cudaMemcpyDeviceToHost, c.st));
    CK(cudaMemcpyAsync(&bad, d_bad, sizeof bad, cudaMemcpyDeviceToHost, c.st));
    CK(cudaStreamSynchronize(c.st));
    if (info != 0 || bad) return 0;
    *npd = 0;
    return 0;
}

struct dsort {
    double v;
    size_t i;
};
int by_desc(const void *a, const void *b) {
    const dsort *x = (const dsort *)a, *y = (const dsort *)b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

inline double damp_frac(const fb_gptq_opts *o) { return fb_gptq_damp(o); }

// The grid limits on top of what the CPU refuses (gptq.h's checks).
int grid_fits(size_t R, size_t C, fb_err *err) {
    if (C > 65535 || R > 65535)  // a grid's y dimension holds a row or column index; int for cuSOLVER
        return fb_fail(err, "GPTQ on CUDA: a [%zu, %zu] weight: at most 65535 rows and columns", R, C);
    return 0;
}

}  // namespace

// The factor (cugptq.h): device buffers from the default memory pool (stream-ordered, allocated on
// the factorizing thread's stream, synchronised before the factor is handed out, freed on the
// freeing thread's stream), host copies of what the per-weight setup reads.
struct fb_cuda_gptq_factor {
    size_t C = 0;
    int actorder = 0;
    double percdamp = 0;
    std::vector<int> perm;       // [C] permuted column j is original column perm[j]
    size_t n_dead = 0;
    int npd = 0;                 // 1: not positive definite, dUf = I
    float *dUf = nullptr;        // [C x C] U in f32, row-major upper
    int *dperm = nullptr;        // [C]
    unsigned char *ddead = nullptr;  // [C] by permuted column
    size_t bytes = 0;
};

namespace {

void factor_release(fb_cuda_gptq_factor *f) {
    void *p[3] = {f->dUf, f->dperm, f->ddead};
    Ctx *c = nullptr;
    fb_err e;
    int have = ctx_get(&c, &e) == 0;
    for (void *q : p)
        if (q) {
            if (have) cudaFreeAsync(q, c->st);  // no call uses it any more (each synchronised its stream)
            else cudaFree(q);
        }
    delete f;
}

int factorize_run(const float *H, size_t C, const fb_gptq_opts *o, fb_cuda_gptq_factor **out, fb_err *err) {
    double pd = damp_frac(o);
    if (fb_gptq_check_hessian(C, o, err)) return -1;
    if (C > 65535) return fb_fail(err, "GPTQ on CUDA: a Hessian of %zu columns: at most 65535", C);
    double t0 = fb_now();
    Ctx *cp;
    TRY(ctx_get(&cp, err));
    Ctx &c = *cp;
    // Host: the ordering, dead columns and dampening, in gptq.c's code and order.
    std::vector<int> perm(C);
    for (size_t j = 0; j < C; j++) perm[j] = (int)j;
    if (o->actorder) {
        std::vector<dsort> d(C);
        for (size_t j = 0; j < C; j++) d[j] = dsort{H[j * C + j], j};
        qsort(d.data(), C, sizeof(dsort), by_desc);
        for (size_t j = 0; j < C; j++) perm[j] = (int)d[j].i;
    }
    std::vector<double> dg(C);
    std::vector<unsigned char> dead(C);
    size_t ndead = 0;
    double mean = 0;
    for (size_t j = 0; j < C; j++) {
        dg[j] = (double)H[(size_t)perm[j] * C + perm[j]];
        if (dg[j] == 0) {
            dg[j] = 1;
            dead[j] = 1;
            ndead++;
        }
        mean += (float)dg[j];
    }
    float damp = (float)pd * (float)(mean / (double)C);
    for (size_t j = 0; j < C; j++) dg[j] = (float)((float)dg[j] + damp);
    // The factor's own buffers: kept (in fm) only when everything succeeded.
    Mem fm(c.st), m(c.st);
    float *dUf;
    int *dperm;
    unsigned char *ddead;
    TRY(dalloc(fm, &dUf, C * C, "the f32 factor", err));
    TRY(dalloc(fm, &dperm, C, "the permutation", err));
    TRY(dalloc(fm, &ddead, C, "the dead columns", err));
    float *dH;
    double *dA, *ddg;
    int *dflags;
    TRY(dalloc(m, &dA, C * C, "the f64 Hessian", err));
    TRY(dalloc(m, &dH, C * C, "the f32 Hessian", err));
    TRY(dalloc(m, &ddg, C, "the diagonal", err));
    TRY(dalloc(m, &dflags, 2, "the flags", err));
    CK(cudaMemcpyAsync(dH, H, C * C * sizeof(float), cudaMemcpyHostToDevice, c.st));
    CK(cudaMemcpyAsync(ddg, dg.data(), C * sizeof(double), cudaMemcpyHostToDevice, c.st));
    CK(cudaMemcpyAsync(dperm, perm.data(), C * sizeof(int), cudaMemcpyHostToDevice, c.st));
    CK(cudaMemcpyAsync(ddead, dead.data(), C, cudaMemcpyHostToDevice, c.st));
    CK(cudaStreamSynchronize(c.st));
    double t1 = fb_now();
    dim3 gC(nblk(C, 256), (unsigned)C);
    k_permute_h<<<gC, 256, 0, c.st>>>(dH, dperm, ddg, C, dA);
    KC();
    int npd = 0;
    TRY(hinv_upper(c, m, dA, C, dUf, dflags, dflags + 1, &npd, err));
    if (npd) {  // not positive definite: identity factor, i.e. plain RTN with the same scales
        k_identity<<<gC, 256, 0, c.st>>>(dUf, C);
        KC();
    }
    CK(cudaStreamSynchronize(c.st));
    double t2 = fb_now();
    fb_cuda_gptq_factor *f = new fb_cuda_gptq_factor;
    f->C = C, f->actorder = o->actorder != 0, f->percdamp = pd, f->perm = std::move(perm);
    f->n_dead = ndead, f->npd = npd;
    f->dUf = dUf, f->dperm = dperm, f->ddead = ddead, f->bytes = fm.bytes;
    fm.p.clear();  // now the factor's
    g_info = fb_cugptq_info{fm.bytes + m.bytes, t1 - t0, t2 - t1, 0, 0};
    *out = f;
    return 0;
}

// This thread's pinned staging buffer of at least `bytes` (Ctx::pin; grown, never shrunk).
int pinned(Ctx &c, size_t bytes, void **out, fb_err *err) {
    if (c.pin_bytes < bytes) {
        if (c.pin) cudaFreeHost(c.pin);
        c.pin = nullptr, c.pin_bytes = 0;
        CK(cudaHostAlloc(&c.pin, bytes, cudaHostAllocDefault));
        c.pin_bytes = bytes;
    }
    *out = c.pin;
    return 0;
}

int factored_run(float *W, size_t R, size_t C, const fb_cuda_gptq_factor *f, const float *scales,
                 const fb_gptq_opts *o, fb_gptq_result *res, fb_err *err) {
    TRY(fb_gptq_check_factored(R, C, f ? f->C : 0, f ? f->actorder : 0, f ? f->percdamp : 0, f != nullptr, o, err));
    TRY(grid_fits(R, C, err));
    size_t G = o->group, B = o->blocksize ? o->blocksize : 128;
    if (B > C) B = C;
    size_t NG = C / G;
    double t0 = fb_now();
    Ctx *cp;
    TRY(ctx_get(&cp, err));
    Ctx &c = *cp;
    std::vector<int> gcol(C);
    for (size_t j = 0; j < C; j++) gcol[j] = (int)((size_t)f->perm[j] / G);
    Mem m(c.st);
    float *dW, *dWp, *dS, *dW1t, *dE1t;
    double *drl;
    int *dgcol;
    TRY(dalloc(m, &dW, R * C, "the weight", err));
    TRY(dalloc(m, &dWp, R * C, "the permuted weight", err));
    TRY(dalloc(m, &dS, R * NG, "the scales", err));
    TRY(dalloc(m, &dW1t, B > 256 ? R * B : 1, "the block's columns", err));  // k_block only
    TRY(dalloc(m, &dE1t, R * B, "the block's errors", err));
    TRY(dalloc(m, &drl, R, "the row losses", err));
    TRY(dalloc(m, &dgcol, C, "the column groups", err));
    // W and the scales through the pinned buffer: a pageable copy is staged by the driver anyway,
    // in smaller pieces and synchronously.
    float *pin;
    TRY(pinned(c, (R * C + R * NG) * sizeof(float), (void **)&pin, err));
    memcpy(pin, W, R * C * sizeof(float));
    memcpy(pin + R * C, scales, R * NG * sizeof(float));
    CK(cudaMemcpyAsync(dW, pin, R * C * sizeof(float), cudaMemcpyHostToDevice, c.st));
    CK(cudaMemcpyAsync(dS, pin + R * C, R * NG * sizeof(float), cudaMemcpyHostToDevice, c.st));
    CK(cudaMemcpyAsync(dgcol, gcol.data(), C * sizeof(int), cudaMemcpyHostToDevice, c.st));
    CK(cudaMemsetAsync(drl, 0, R * sizeof(double), c.st));
    CK(cudaStreamSynchronize(c.st));
    double t1 = fb_now();
    const float *dUf = f->dUf;
    dim3 gR(nblk(C, 256), (unsigned)R);
    k_permute_w<<<gR, 256, 0, c.st>>>(dW, f->dperm, f->ddead, C, dWp);
    KC();
    // The block-wise error feedback.
    const float minus1 = -1.0f, one = 1.0f;
    const int nvfp4 = o->qtype == FB_GPTQ_NVFP4;
    for (size_t i1 = 0; i1 < C; i1 += B) {
        size_t i2 = i1 + B < C ? i1 + B : C, bw = i2 - i1;
        if (bw <= 256) {  // a warp per row, the block's columns in registers
            unsigned g = nblk(R * 32, 128);
            int b = (int)bw;
            if (bw <= 32) k_block_warp<1><<<g, 128, 0, c.st>>>(dWp, dE1t, dUf, C, i1, b, R, dS, NG, dgcol, nvfp4, o->global_scale, drl);
            else if (bw <= 64) k_block_warp<2><<<g, 128, 0, c.st>>>(dWp, dE1t, dUf, C, i1, b, R, dS, NG, dgcol, nvfp4, o->global_scale, drl);
            else if (bw <= 128) k_block_warp<4><<<g, 128, 0, c.st>>>(dWp, dE1t, dUf, C, i1, b, R, dS, NG, dgcol, nvfp4, o->global_scale, drl);
            else k_block_warp<8><<<g, 128, 0, c.st>>>(dWp, dE1t, dUf, C, i1, b, R, dS, NG, dgcol, nvfp4, o->global_scale, drl);
            KC();
            if (i2 < C)  // W[:, i2:] -= Err1 @ U[i1:i2, i2:] (column-major: Wp^T -= U_blk^T E1^T, E1 row-major)
                CB(cublasSgemm(c.cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)(C - i2), (int)R, (int)bw, &minus1, dUf + i1 * C + i2,
                               (int)C, dE1t, (int)bw, &one, dWp + i2, (int)C));
            continue;
        }
        dim3 gb(nblk(R, 128), (unsigned)bw);
        k_load_block<<<gb, 128, 0, c.st>>>(dWp, R, C, i1, bw, dW1t);
        KC();
        k_block<<<nblk(R, 64), 64, 0, c.st>>>(dW1t, dE1t, dUf, C, i1, bw, R, dS, NG, dgcol, nvfp4, o->global_scale,
                                              drl);
        KC();
        k_store_block<<<gb, 128, 0, c.st>>>(dW1t, R, C, i1, bw, dWp);
        KC();
        if (i2 < C)  // W[:, i2:] -= Err1 @ U[i1:i2, i2:] (column-major: Wp^T -= U_blk^T E1^T; E1t is E1 there)
            CB(cublasSgemm(c.cb, CUBLAS_OP_N, CUBLAS_OP_T, (int)(C - i2), (int)R, (int)bw, &minus1, dUf + i1 * C + i2,
                           (int)C, dE1t, (int)R, &one, dWp + i2, (int)C));
    }
    k_unpermute_w<<<gR, 256, 0, c.st>>>(dWp, f->dperm, C, dW);
    KC();
    CK(cudaStreamSynchronize(c.st));
    double t2 = fb_now();
    std::vector<double> rl(R);
    CK(cudaMemcpyAsync(pin, dW, R * C * sizeof(float), cudaMemcpyDeviceToHost, c.st));
    CK(cudaMemcpyAsync(rl.data(), drl, R * sizeof(double), cudaMemcpyDeviceToHost, c.st));
    CK(cudaStreamSynchronize(c.st));
    double loss = 0;
    for (size_t r = 0; r < R; r++) loss += rl[r];
    memcpy(W, pin, R * C * sizeof(float));  // nothing modified before this point
    res->loss = loss;
    res->rtn_fallback = f->npd;
    res->dead_columns = f->n_dead;
    double t3 = fb_now();
    g_info = fb_cugptq_info{m.bytes, t1 - t0, 0, t2 - t1, t3 - t2};
    return 0;
}

}  // namespace

extern "C" int fb_cuda_gptq_factorize(const float *H, size_t C, const fb_gptq_opts *o, fb_cuda_gptq_factor **out,
                                      fb_err *err) {
    *out = nullptr;
    return factorize_run(H, C, o, out, err);
}

extern "C" int fb_cuda_gptq_quantize_factored(float *W, size_t R, size_t C, const fb_cuda_gptq_factor *f,
                                              const float *scales, const fb_gptq_opts *o, fb_gptq_result *res,
                                              fb_err *err) {
    fb_gptq_result r;
    memset(&r, 0, sizeof r);
    memset(res, 0, sizeof *res);
    if (factored_run(W, R, C, f, scales, o, &r, err)) return -1;
    *res = r;
    return 0;
}

extern "C" int fb_cuda_gptq_factor_rtn_fallback(const fb_cuda_gptq_factor *f) { return f->npd; }
extern "C" size_t fb_cuda_gptq_factor_dead_columns(const fb_cuda_gptq_factor *f) { return f->n_dead; }

extern "C" void fb_cuda_gptq_factor_free(fb_cuda_gptq_factor *f) {
    if (f) factor_release(f);
}

extern "C" int fb_cuda_gptq_quantize(float *W, size_t R, size_t C, float *H, const float *scales,
                                     const fb_gptq_opts *o, fb_gptq_result *res, fb_err *err) {
    memset(res, 0, sizeof *res);
    if (fb_gptq_check_weight(R, C, o, err) || grid_fits(R, C, err)) return -1;  // before any device work, as the CPU refuses it
    fb_cuda_gptq_factor *f;
    if (factorize_run(H, C, o, &f, err)) return -1;
    fb_cugptq_info fi = g_info;
    int rc = fb_cuda_gptq_quantize_factored(W, R, C, f, scales, o, res, err);
    fb_cuda_gptq_factor_free(f);
    if (!rc) {
        fb_cugptq_info qi = g_info;
        g_info = fb_cugptq_info{fi.device_bytes + qi.device_bytes, fi.upload_s + qi.upload_s, fi.factor_s,
                                qi.update_s, qi.download_s};
    }
    return rc;
}

extern "C" int fb_cuda_gptq_hessian_add(float *dH, size_t C, const float *dx, size_t rows, fb_err *err) {
    if (!C || C > (size_t)INT32_MAX / 2 || rows > (size_t)INT32_MAX)
        return fb_fail(err, "GPTQ on CUDA: a Hessian of %zu columns over %zu rows", C, rows);
    if (!rows) return 0;
    Ctx *cp;
    TRY(ctx_get(&cp, err));
    Ctx &c = *cp;
    const float two = 2.0f, one = 1.0f;
    // column-major: H^T (= H) += 2 * x^T x, x^T being dx [C x rows] with ld C
    CB(cublasSgemm(c.cb, CUBLAS_OP_N, CUBLAS_OP_T, (int)C, (int)C, (int)rows, &two, dx, (int)C, dx, (int)C, &one, dH,
                   (int)C));
    CK(cudaStreamSynchronize(c.st));
    return 0;
}

extern "C" void fb_cuda_gptq_last_info(fb_cugptq_info *info) { *info = g_info; }
