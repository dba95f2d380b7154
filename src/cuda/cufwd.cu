// cufwd.cu: the MiniMax-M2 layer-wise forward on a GPU (see cufwd.h), and benchmark helpers.
//
// Layout: row-major everywhere, as the CPU engine. A GEMM y[m,n] = x[m,k] @ w[n,k]^T is one
// cublasGemmEx with (op T on w, op N on x) in cuBLAS's column-major view. Elementwise steps
// that have an add avoid FMA contraction with __fadd_rn/__fmul_rn where the CPU engine rounds
// each operation (RoPE, the routing-weighted combine), so those agree bit for bit given equal
// inputs; reductions (RMSNorm in f64, softmax sums) differ from the CPU's sequential order.
// The targets this object was compiled for, set by the Makefile from CUDA_ARCH; named by the
// device check when a GPU has no usable image.
#ifndef FB_CUDA_ARCHS
#define FB_CUDA_ARCHS "(arch list not recorded)"
#endif
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <algorithm>
#include <vector>

#include "cuda/cufwd.h"
#include "cuda/blockreduce.h"

// ---- error plumbing ----------------------------------------------------------------------------

#define CK(call)                                                                           \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess)                                                             \
            return fb_fail(err, "CUDA: %s (%s:%d): %s", #call, __FILE__, __LINE__,         \
                           cudaGetErrorString(e_));                                        \
    } while (0)
#define CB(call)                                                                           \
    do {                                                                                   \
        cublasStatus_t s_ = (call);                                                        \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                   \
            return fb_fail(err, "cuBLAS: %s (%s:%d): status %d", #call, __FILE__, __LINE__, \
                           (int)s_);                                                       \
    } while (0)
#define KCHECK() CK(cudaGetLastError())

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef __nv_bfloat16 bf16;

// ---- kernels ---------------------------------------------------------------------------------

__device__ double block_sum_d(double v) { return fb_block_reduce<double>(v, 0.0, fb_op_add()); }

__device__ float block_sum_f(float v) { return fb_block_reduce<float>(v, 0.0f, fb_op_add()); }

__device__ float block_max_f(float v) { return fb_block_reduce<float>(v, -INFINITY, fb_op_max()); }

// y[r] = w * (x[r] * 1/sqrt(mean(x^2) + eps)), sum of squares in f64 (as mm.c).
__global__ void k_rmsnorm(const float *x, const float *w, float eps, int n, float *y) {
    const float *xr = x + (size_t)blockIdx.x * n;
    float *yr = y + (size_t)blockIdx.x * n;
    double ss = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (double)xr[i] * (double)xr[i];
    ss = block_sum_d(ss);
    float var = (float)(ss / (double)n);
    float inv = 1.0f / sqrtf(var + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = __fmul_rn(w[i], __fmul_rn(xr[i], inv));
}

// Per token (block): q_norm / k_norm (norm_mode FB_QKN_ALL_HEADS: over all heads at once;
// FB_QKN_PER_HEAD: each head with one [hd] weight), then rotate-half RoPE.
__global__ void k_qknorm_rope(float *qkv, int ld, const float *qn, const float *kn, float eps,
                              const float *inv_freq, int nh, int nkv, int hd, int rd, int norm_mode) {
    int t = blockIdx.x;
    float *q = qkv + (size_t)t * ld, *k = q + (size_t)nh * hd;
    int Dq = nh * hd, Dk = nkv * hd;
    if (norm_mode == FB_QKN_PER_HEAD) {
        for (int h = 0; h < nh + nkv; h++) {
            float *x = h < nh ? q + (size_t)h * hd : k + (size_t)(h - nh) * hd;
            const float *w = h < nh ? qn : kn;
            double ss = 0;
            for (int i = threadIdx.x; i < hd; i += blockDim.x) ss += (double)x[i] * (double)x[i];
            ss = block_sum_d(ss);
            float inv = 1.0f / sqrtf((float)(ss / (double)hd) + eps);
            for (int i = threadIdx.x; i < hd; i += blockDim.x) x[i] = __fmul_rn(w[i], __fmul_rn(x[i], inv));
            __syncthreads();
        }
    } else if (norm_mode == FB_QKN_ALL_HEADS) {
        double ss = 0;
        for (int i = threadIdx.x; i < Dq; i += blockDim.x) ss += (double)q[i] * (double)q[i];
        ss = block_sum_d(ss);
        float inv = 1.0f / sqrtf((float)(ss / (double)Dq) + eps);
        double sk = 0;
        for (int i = threadIdx.x; i < Dk; i += blockDim.x) sk += (double)k[i] * (double)k[i];
        sk = block_sum_d(sk);
        float invk = 1.0f / sqrtf((float)(sk / (double)Dk) + eps);
        for (int i = threadIdx.x; i < Dq; i += blockDim.x) q[i] = __fmul_rn(qn[i], __fmul_rn(q[i], inv));
        for (int i = threadIdx.x; i < Dk; i += blockDim.x) k[i] = __fmul_rn(kn[i], __fmul_rn(k[i], invk));
        __syncthreads();
    }
    int half = rd / 2;
    float p = (float)t;
    for (int idx = threadIdx.x; idx < (nh + nkv) * half; idx += blockDim.x) {
        int head = idx / half, i = idx % half;
        float *x = head < nh ? q + (size_t)head * hd : k + (size_t)(head - nh) * hd;
        float a = __fmul_rn(p, inv_freq[i]);
        float c = cosf(a), s = sinf(a);
        float x1 = x[i], x2 = x[i + half];
        x[i] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(-x2, s));
        x[i + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
    }
}

template <typename T> __device__ inline T from_f(float v);
template <> __device__ inline float from_f<float>(float v) { return v; }
template <> __device__ inline bf16 from_f<bf16>(float v) { return __float2bfloat16_rn(v); }

// Causal softmax of score rows (row r = head b * L + query i; keys 0..i), scaled first.
template <typename T>
__global__ void k_softmax(const float *S, T *P, int L, float scale) {
    size_t r = blockIdx.x;
    int i = (int)(r % (size_t)L), n = i + 1;
    const float *s = S + r * (size_t)L;
    T *p = P + r * (size_t)L;
    float m = -INFINITY;
    for (int k = threadIdx.x; k < n; k += blockDim.x) m = fmaxf(m, __fmul_rn(s[k], scale));
    m = block_max_f(m);
    float sum = 0;
    for (int k = threadIdx.x; k < n; k += blockDim.x) sum += expf(__fmul_rn(s[k], scale) - m);
    sum = block_sum_f(sum);
    for (int k = threadIdx.x; k < L; k += blockDim.x)
        p[k] = from_f<T>(k < n ? expf(__fmul_rn(s[k], scale) - m) / sum : 0.0f);
}

__global__ void k_to_bf16(const float *x, bf16 *y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (size_t)gridDim.x * blockDim.x) y[i] = __float2bfloat16_rn(x[i]);
}

__global__ void k_add(float *h, const float *a, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (size_t)gridDim.x * blockDim.x) h[i] = __fadd_rn(h[i], a[i]);
}

// max |x| into *out (float bits as unsigned: valid for non-negative values).
__global__ void k_absmax(const float *x, size_t n, unsigned *out) {
    float m = 0;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (size_t)gridDim.x * blockDim.x) m = fmaxf(m, fabsf(x[i]));
    m = block_max_f(m);
    if (threadIdx.x == 0) atomicMax(out, __float_as_uint(m));
}

// vLLM's NVFP4 activation emulation (runner.h), one thread per group of 16.
__device__ inline float bf16r(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
__device__ inline float fp4_rne(float y) {
    float a = fminf(fabsf(y), 6.0f), q;
    if (a <= 0.25f) q = 0.0f;
    else if (a < 0.75f) q = 0.5f;
    else if (a <= 1.25f) q = 1.0f;
    else if (a < 1.75f) q = 1.5f;
    else if (a <= 2.5f) q = 2.0f;
    else if (a < 3.5f) q = 3.0f;
    else if (a <= 5.0f) q = 4.0f;
    else q = 6.0f;
    return y < 0 ? -q : q;
}
__global__ void k_fake_quant(float *x, size_t groups, float gs) {
    size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= groups) return;
    float *v = x + g * 16;
    float m = 0, r6 = (float)(1.0 / 6.0), rgs = gs == 0.0f ? 0.0f : 1.0f / gs;
    float t[16];
#pragma unroll
    for (int i = 0; i < 16; i++) {
        t[i] = bf16r(v[i]);
        m = fmaxf(m, fabsf(t[i]));
    }
    float s = __fmul_rn(gs, __fmul_rn(m, r6));
    s = fminf(fmaxf(s, -448.0f), 448.0f);
    __nv_fp8_storage_t b = __nv_cvt_float_to_fp8(s, __NV_SATFINITE, __NV_E4M3);
    __half_raw hr = __nv_cvt_fp8_to_halfraw(b, __NV_E4M3);
    s = __half2float(__half(hr));
    float d = __fmul_rn(s, rgs);
    float o = d == 0.0f ? 0.0f : 1.0f / d;
    float bs = s / gs;
#pragma unroll
    for (int i = 0; i < 16; i++) v[i] = bf16r(__fmul_rn(fp4_rne(__fmul_rn(t[i], o)), bs));
}

// Softmax router for one token per thread (mm.c fb_mm_route_softmax). E <= 1024, k <= 64.
__global__ void k_route_softmax(const float *lg, int E, int k, int norm, int ntok, int32_t *idx,
                                float *wt) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= ntok) return;
    const float *l = lg + (size_t)t * E;
    float m = -INFINITY, sum = 0;
    for (int e = 0; e < E; e++) m = fmaxf(m, l[e]);
    for (int e = 0; e < E; e++) sum = __fadd_rn(sum, expf(l[e] - m));
    unsigned ch[32];
    for (int i = 0; i < 32; i++) ch[i] = 0;
    float tsum = 0;
    for (int j = 0; j < k; j++) {
        int best = -1;
        float bv = 0;
        for (int e = 0; e < E; e++) {
            if (ch[e >> 5] >> (e & 31) & 1u) continue;
            float p = expf(l[e] - m) / sum;
            if (best < 0 || p > bv) { best = e; bv = p; }
        }
        ch[best >> 5] |= 1u << (best & 31);
        tsum = __fadd_rn(tsum, bv);
    }
    int n = 0;
    int32_t *id = idx + (size_t)t * k;
    float *w = wt + (size_t)t * k;
    for (int e = 0; e < E && n < k; e++)
        if (ch[e >> 5] >> (e & 31) & 1u) id[n++] = e;
    for (int j = 0; j < k; j++) {
        float p = expf(l[id[j]] - m) / sum;
        w[j] = norm ? p / tsum : p;
    }
}

// Router for one token per thread (mm.c fb_mm_route). E <= 1024.
__global__ void k_route(const float *lg, const float *bias, int E, int k, int ntok, int32_t *idx,
                        float *wt) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= ntok) return;
    const float *l = lg + (size_t)t * E;
    unsigned ch[32];
    for (int i = 0; i < 32; i++) ch[i] = 0;
    for (int j = 0; j < k; j++) {
        int best = -1;
        float bv = 0;
        for (int e = 0; e < E; e++) {
            if (ch[e >> 5] >> (e & 31) & 1u) continue;
            float s = 1.0f / (1.0f + expf(-l[e]));
            float v = bias ? __fadd_rn(s, bias[e]) : s;
            if (best < 0 || v > bv) { best = e; bv = v; }
        }
        ch[best >> 5] |= 1u << (best & 31);
    }
    int n = 0;
    float sum = 0;
    int32_t *id = idx + (size_t)t * k;
    float *w = wt + (size_t)t * k;
    for (int e = 0; e < E && n < k; e++)
        if (ch[e >> 5] >> (e & 31) & 1u) id[n++] = e;
    for (int j = 0; j < k; j++) sum += 1.0f / (1.0f + expf(-l[id[j]]));
    for (int j = 0; j < k; j++) w[j] = (1.0f / (1.0f + expf(-l[id[j]]))) / sum;
}

// out[r] = src[(idx[r] - base) * ld .. + n]
__global__ void k_gather(const float *src, int ld, const int32_t *idx, int base, int rows, int n,
                         float *out) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *s = src + (size_t)(idx[r] - base) * ld;
        float *o = out + (size_t)r * n;
        for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = s[i];
    }
}

// P[r, j] = silu(G[r, j]) * G[r, I + j]
__global__ void k_swiglu(const float *G, int I, size_t rows, float *P) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t n = rows * (size_t)I;
    for (; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / (size_t)I, j = i % (size_t)I;
        float g = G[r * 2 * I + j], u = G[r * 2 * I + I + j];
        P[i] = __fmul_rn(g / (1.0f + expf(-g)), u);
    }
}

__device__ inline float to_f(float v) { return v; }
__device__ inline float to_f(bf16 v) { return __bfloat162float(v); }

// SwiGLU of every row of a gate-up product of either type (the expert_input_all hook).
template <typename T>
__global__ void k_swiglu_any(const T *G, int I, size_t rows, float *P) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t n = rows * (size_t)I;
    for (; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / (size_t)I, j = i % (size_t)I;
        float g = to_f(G[r * 2 * I + j]), u = to_f(G[r * 2 * I + I + j]);
        P[i] = __fmul_rn(g / (1.0f + expf(-g)), u);
    }
}

// All-experts mode: max |silu(G[:, j]) * G[:, I + j]| over the rows, without storing it.
template <typename T>
__global__ void k_swiglu_absmax(const T *G, int I, size_t rows, unsigned *amax) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t n = rows * (size_t)I;
    float m = 0;
    for (; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / (size_t)I, j = i % (size_t)I;
        float g = to_f(G[r * 2 * I + j]), u = to_f(G[r * 2 * I + I + j]);
        m = fmaxf(m, fabsf(__fmul_rn(g / (1.0f + expf(-g)), u)));
    }
    m = block_max_f(m);
    if (threadIdx.x == 0) atomicMax(amax, __float_as_uint(m));
}

// out[r] = swiglu of row (idx[r] - base) of G
template <typename T>
__global__ void k_gather_swiglu(const T *G, int I, const int32_t *idx, int base, int rows,
                                float *out) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const T *g = G + (size_t)(idx[r] - base) * 2 * I;
        float *o = out + (size_t)r * I;
        for (int j = threadIdx.x; j < I; j += blockDim.x) {
            float a = to_f(g[j]);
            o[j] = __fmul_rn(a / (1.0f + expf(-a)), to_f(g[I + j]));
        }
    }
}

// acc[tok[r]] += wt[r] * Y[r] (one token at most once per launch); rsal[r] = wt*||Y[r]|| (each
// row's saliency term, summed per expert on the host in row order: an atomicAdd across blocks
// summed in whatever order the blocks ran, so the statistics differed from run to run).
__global__ void k_combine(float *acc, const float *Y, const int32_t *tok, const float *wt, int base,
                          int H, double *rsal) {
    int r = blockIdx.x;
    const float *y = Y + (size_t)r * H;
    float *a = acc + (size_t)(tok[r] - base) * H;
    float w = wt[r];
    double ss = 0;
    for (int d = threadIdx.x; d < H; d += blockDim.x) {
        ss += (double)y[d] * (double)y[d];
        a[d] = __fadd_rn(a[d], __fmul_rn(y[d], w));
    }
    if (rsal) {
        ss = block_sum_d(ss);
        if (threadIdx.x == 0) rsal[r] = (double)w * sqrt(ss);
    }
}

// Per-token L2 norm of h (layer-output statistics).
__global__ void k_rownorm(const float *h, int H, double *out) {
    const float *x = h + (size_t)blockIdx.x * H;
    double ss = 0;
    for (int d = threadIdx.x; d < H; d += blockDim.x) ss += (double)x[d] * (double)x[d];
    ss = block_sum_d(ss);
    if (threadIdx.x == 0) out[blockIdx.x] = sqrt(ss);
}

// Deterministic pseudo-random fill (benchmarks): uniform in [-scale, scale).
__device__ inline float hash_unit(size_t i, unsigned seed) {
    unsigned long long z = (unsigned long long)i * 0x9E3779B97F4A7C15ull + seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
}
__global__ void k_fill_bf16(bf16 *x, size_t n, float scale, unsigned seed) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] = __float2bfloat16_rn(hash_unit(i, seed) * scale);
}
__global__ void k_fill_f32(float *x, size_t n, float scale, float offset, unsigned seed) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] = offset + hash_unit(i, seed) * scale;
}
__global__ void k_fill_u8(unsigned char *x, size_t n, unsigned seed) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned v = (unsigned)((hash_unit(i, seed) + 1.0f) * 127.0f);
        x[i] = (unsigned char)((v & 0x7F) == 0x7F ? v - 1 : v);  // no NaN codes
    }
}

// FP8 block-scaled dequant (fp8-dequant numerics: BF16(float(fp8) * scale), the product in f32
// rounded to nearest even), 8 bytes a thread. Row r of `in` is row r0 + r of the tensor (the
// block scale's row index); `cols` must be a multiple of 8. T = float widens the bf16 value
// exactly (the f32 GEMM mode; what the host's fb_fp8_dequant_f32 gives).
__device__ inline void store8(bf16 *out, size_t i, const bf16 *o) {
    reinterpret_cast<uint4 *>(out)[i] = *reinterpret_cast<const uint4 *>(o);
}
__device__ inline void store8(float *out, size_t i, const bf16 *o) {
    float4 a = make_float4(__bfloat162float(o[0]), __bfloat162float(o[1]), __bfloat162float(o[2]),
                           __bfloat162float(o[3]));
    float4 b = make_float4(__bfloat162float(o[4]), __bfloat162float(o[5]), __bfloat162float(o[6]),
                           __bfloat162float(o[7]));
    reinterpret_cast<float4 *>(out)[2 * i] = a;
    reinterpret_cast<float4 *>(out)[2 * i + 1] = b;
}
template <typename T>
__global__ void k_fp8_dequant(const unsigned char *in, const float *scale, int rows, int cols,
                              int r0, int bm, int bn, T *out) {
    size_t n8 = (size_t)rows * cols / 8;
    int sc = (cols + bn - 1) / bn;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n8; i += (size_t)gridDim.x * blockDim.x) {
        size_t e0 = i * 8;
        int r = (int)(e0 / cols) + r0, c = (int)(e0 % cols);
        float s = scale[(size_t)(r / bm) * sc + c / bn];
        uint2 v = reinterpret_cast<const uint2 *>(in)[i];
        unsigned char b[8];
        memcpy(b, &v, 8);
        __align__(16) bf16 o[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            __half_raw hr = __nv_cvt_fp8_to_halfraw(b[j], __NV_E4M3);
            o[j] = __float2bfloat16_rn(__fmul_rn(__half2float(__half(hr)), s));
        }
        store8(out, i, o);
    }
}

// ---- the engine --------------------------------------------------------------------------------

// One expert group read on the host (double-buffered: the next group is read by a background
// thread while the current one is uploaded and computed). FP8 groups hold raw e4m3 bytes in
// pinned memory plus each tensor's block scales; other sources fill `f32` (dequantized by
// the source on the host, uploaded as before).
struct grp_buf {
    struct fb_cufwd *f;
    int l, e0, g;
    int fp8;               // every tensor of the group is FP8 block-scaled (raw bytes in `bytes`)
    uint8_t *bytes;        // pinned, [n_slots][3 I H]
    size_t bytes_cap;
    float *f32;            // pageable, [n_slots][3 I H]
    size_t f32_cap;
    std::vector<float *> sc;    // [3 g] block scales (malloc'ed by the source)
    std::vector<int> bm, bn;    // [3 g]
    pthread_t th;
    int running;           // th started, not joined
    int next, failed;      // work queue of the reader threads
    pthread_mutex_t mu;
    fb_err err;
    double read_s;         // wall time of this group's read
};

struct fb_cufwd {
    fb_model_config cfg;
    fb_cufwd_opts o;
    fb_wsrc *src;          // NULL: synthetic weights (benchmarks)
    cublasHandle_t cb;
    int f32;               // GEMM operand type f32 (else bf16)
    size_t wsz;            // bytes of a GEMM operand element
    size_t ntok, nseq, max_seq;
    std::vector<size_t> starts;
    int next_layer;
    float *h, *acc, *xn2;  // [ntok, H]
    int32_t *ridx_d;
    float *rw_d;
    std::vector<int32_t> ridx;
    std::vector<float> rw;
    // layer weights
    float *ln1, *ln2, *qn, *kn, *bias, *gate, *inv_freq;
    void *wqkv, *wo;
    int n_slots;
    void **w13, **w2;      // [n_slots] device: [2I, H] and [H, I]
    void *all_experts_w;   // synthetic: every expert resident
    // scratch (grown on demand)
    struct buf { void *p; size_t cap; } s_f32a, s_f32b, s_f32c, s_w1, s_w2, s_S, s_P, s_idx, s_wt,
        s_stage, s_rsal;       // s_rsal: [N * top_k] doubles, a routed row's saliency term
    unsigned *absmax_d;    // [2 + 2E] qkv, o, w13[E], w2[E]
    double *norms_d;       // [ntok]
    float *fnorm;
    void *head;
    float *hbuf;           // host staging for loads
    size_t hbuf_cap;
    uint8_t *hb8;          // pinned host staging of raw FP8 bytes (attention, lm_head)
    size_t hb8_cap;
    buf s_fp8, s_scale;    // device staging of raw FP8 bytes and their block scales
    grp_buf gb[2];         // expert groups on the host
    cudaEvent_t ev[3];     // upload start, upload end, dequant end
    fb_cufwd_timing tm;
};

static int grow(fb_cufwd::buf *b, size_t bytes, fb_err *err) {
    if (b->cap >= bytes) return 0;
    if (b->p) cudaFree(b->p);
    b->p = NULL;
    b->cap = 0;
    CK(cudaMalloc(&b->p, bytes + 256));
    b->cap = bytes;
    return 0;
}

static unsigned grid_for(size_t n) {
    size_t g = (n + 255) / 256;
    return (unsigned)(g > 65535 * 8 ? 65535 * 8 : g < 1 ? 1 : g);
}

// y[m,n] (ld ldy, f32) = x[m,k] (ld ldx) @ w[n,k]^T (ld ldw), operands f32 or bf16.
static int gemm(fb_cufwd *f, const void *x, int ldx, const void *w, int ldw, float *y, int ldy,
                int m, int n, int k, fb_err *err) {
    if (m == 0 || n == 0) return 0;
    const float one = 1.0f, zero = 0.0f;
    cudaDataType_t dt = f->f32 ? CUDA_R_32F : CUDA_R_16BF;
    CB(cublasGemmEx(f->cb, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, w, dt, ldw, x, dt, ldx, &zero,
                    y, CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    f->tm.gemm_flops += 2.0 * m * (double)n * k;
    return 0;
}

// The same with a bf16 output (all-experts mode's gate-up product in bf16 GEMM mode: what a
// bf16 model holds there; halves the traffic of the largest intermediate).
static int gemm_bf16out(fb_cufwd *f, const void *x, int ldx, const void *w, int ldw, bf16 *y,
                        int ldy, int m, int n, int k, fb_err *err) {
    if (m == 0 || n == 0) return 0;
    const float one = 1.0f, zero = 0.0f;
    CB(cublasGemmEx(f->cb, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, w, CUDA_R_16BF, ldw, x,
                    CUDA_R_16BF, ldx, &zero, y, CUDA_R_16BF, ldy, CUBLAS_COMPUTE_32F,
                    CUBLAS_GEMM_DEFAULT));
    f->tm.gemm_flops += 2.0 * m * (double)n * k;
    return 0;
}

// Converts f32 activations to the GEMM operand type (a no-op pointer pass-through in f32 mode).
static int to_op(fb_cufwd *f, const float *x, size_t n, fb_cufwd::buf *b, const void **out,
                 fb_err *err) {
    if (f->f32) {
        *out = x;
        return 0;
    }
    if (grow(b, n * 2, err)) return -1;
    k_to_bf16<<<grid_for(n), 256>>>(x, (bf16 *)b->p, n);
    KCHECK();
    *out = b->p;
    return 0;
}

// A Linear input on the device: the W4A4 emulation (act_gs), then the host linear_input hook
// on a host copy (copied back: the GEMM uses what the hook left).
static int fake_quant(fb_cufwd *f, float *x, size_t rows, size_t cols, int layer, fb_role role,
                      int expert, fb_err *err) {
    if (f->o.act_gs) {
        float gs = f->o.act_gs(f->o.act_user, role, layer, expert);
        if (gs > 0) {
            if (cols % 16) return fb_fail(err, "W4A4 emulation: input width %zu is not a multiple of 16", cols);
            size_t g = rows * cols / 16;
            if (g) k_fake_quant<<<(unsigned)((g + 255) / 256), 256>>>(x, g, gs);
            KCHECK();
            f->tm.n_emulated += g;
        }
    }
    const fb_fwd_hooks *h = f->o.hooks;
    if (h && h->linear_input && rows) {
        std::vector<float> hx(rows * cols);
        CK(cudaMemcpy(hx.data(), x, rows * cols * 4, cudaMemcpyDeviceToHost));
        if (h->linear_input(h->user, role, layer, expert, hx.data(), rows, cols, err)) return -1;
        CK(cudaMemcpy(x, hx.data(), rows * cols * 4, cudaMemcpyHostToDevice));
    }
    return 0;
}

// Host hooks that only observe: a host copy of device rows.
static int hook_expert_input_all(fb_cufwd *f, fb_role role, int layer, int expert, size_t t0,
                                 const float *x, size_t rows, size_t cols, fb_err *err) {
    const fb_fwd_hooks *h = f->o.hooks;
    if (!h || !h->expert_input_all || !rows) return 0;
    std::vector<float> hx(rows * cols);
    CK(cudaMemcpy(hx.data(), x, rows * cols * 4, cudaMemcpyDeviceToHost));
    return h->expert_input_all(h->user, role, layer, expert, t0, hx.data(), rows, cols, err);
}

// tok: host array of the rows' absolute token indices.
static int hook_expert_output(fb_cufwd *f, int layer, int expert, const int32_t *tok,
                              const float *y, size_t rows, size_t cols, fb_err *err) {
    const fb_fwd_hooks *h = f->o.hooks;
    if (!h || !h->expert_output || !rows) return 0;
    std::vector<float> hy(rows * cols);
    CK(cudaMemcpy(hy.data(), y, rows * cols * 4, cudaMemcpyDeviceToHost));
    return h->expert_output(h->user, layer, expert, tok, hy.data(), rows, cols, err);
}

static int absmax(const float *x, size_t n, unsigned *slot, fb_err *err) {
    if (!n) return 0;
    size_t g = (n + 255) / 256;
    k_absmax<<<(unsigned)(g > 4096 ? 4096 : g), 256>>>(x, n, slot);
    KCHECK();
    return 0;
}

extern "C" int fb_cuda_probe(char *name, size_t name_sz, char *why, size_t why_sz) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        snprintf(why, why_sz, "no CUDA device usable (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        if (name_sz) name[0] = 0;
        return 0;
    }
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess || p.major < 8) {
        snprintf(why, why_sz, "CUDA device 0 (%s) has compute capability %d.%d; sm_80+ needed "
                              "(this build holds " FB_CUDA_ARCHS ")", p.name, p.major, p.minor);
        return 0;
    }
    // A capable GPU may still find no image in the fat binary (SASS for other archs, no PTX
    // it can JIT): ask for one kernel's attributes now rather than fail at the first launch.
    cudaFuncAttributes fa;
    if (cudaFuncGetAttributes(&fa, k_add) != cudaSuccess) {
        cudaGetLastError();  // not a sticky error: clear it so later calls start clean
        snprintf(why, why_sz, "CUDA device 0 (%s, sm_%d%d) has no usable kernel image: this build "
                              "holds " FB_CUDA_ARCHS "; rebuild with CUDA_ARCH=\"-gencode "
                              "arch=compute_%d%d,code=sm_%d%d\"", p.name, p.major, p.minor,
                 p.major, p.minor, p.major, p.minor);
        return 0;
    }
    snprintf(name, name_sz, "%s", p.name);
    return 1;
}

static int alloc_f(float **p, size_t n, fb_err *err) {
    CK(cudaMalloc((void **)p, n * sizeof(float) + 64));
    return 0;
}

static void grp_join(grp_buf *b);
static void grp_free_scales(grp_buf *b);

static fb_cufwd *cufwd_new_common(const fb_model_config *cfg, const fb_cufwd_opts *o, fb_err *err) {
    char name[96], why[256];
    if (!fb_cuda_probe(name, sizeof name, why, sizeof why)) {
        fb_fail(err, "%s", why);
        return NULL;
    }
    if (cfg->n_experts > 1024 || cfg->top_k > cfg->n_experts || cfg->top_k > 64) {
        fb_fail(err, "CUDA forward: %d experts, %d per token (at most 1024 and 64)", cfg->n_experts,
                cfg->top_k);
        return NULL;
    }
    if (!cfg->arch) {
        fb_fail(err, "CUDA forward: the model config names no architecture");
        return NULL;
    }
    fb_cufwd *f = new fb_cufwd();
    f->cfg = *cfg;
    if (o) f->o = *o;
    if (f->o.stats) f->o.stats->arch = cfg->arch;
    f->f32 = f->o.gemm_f32;
    f->wsz = f->f32 ? 4 : 2;
    if (f->o.expert_group <= 0) f->o.expert_group = 16;
    if (f->o.expert_group > cfg->n_experts) f->o.expert_group = cfg->n_experts;
    if (f->o.token_chunk <= 0) f->o.token_chunk = 8192;
    if (cublasCreate(&f->cb) != CUBLAS_STATUS_SUCCESS) {
        fb_fail(err, "cuBLAS: cublasCreate failed");
        delete f;
        return NULL;
    }
    cublasSetMathMode(f->cb, CUBLAS_DEFAULT_MATH);  // no TF32 for f32 GEMMs
    int E = cfg->n_experts;
    std::vector<float> inv((size_t)cfg->rotary_dim / 2 + 1);
    fb_mm_rope_inv_freq(cfg->rope_theta, cfg->rotary_dim, inv.data());
    if (alloc_f(&f->inv_freq, inv.size(), err) ||
        cudaMemcpy(f->inv_freq, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMalloc((void **)&f->absmax_d, (2 + 2 * (size_t)E) * sizeof(unsigned)) != cudaSuccess) {
        if (!err->msg[0]) fb_fail(err, "CUDA: allocation failed");
        fb_cufwd_free(f);
        return NULL;
    }
    for (auto &e : f->ev)
        if (cudaEventCreate(&e) != cudaSuccess) {
            fb_fail(err, "CUDA: cudaEventCreate failed");
            fb_cufwd_free(f);
            return NULL;
        }
    f->n_slots = f->o.expert_group;
    f->w13 = (void **)calloc((size_t)f->n_slots, sizeof(void *));
    f->w2 = (void **)calloc((size_t)f->n_slots, sizeof(void *));
    return f;
}

extern "C" fb_cufwd *fb_cufwd_new(fb_wsrc *src, const fb_model_config *cfg, const fb_cufwd_opts *o,
                                  fb_err *err) {
    err->msg[0] = 0;
    fb_cufwd *f = cufwd_new_common(cfg, o, err);
    if (f) f->src = src;
    return f;
}

static void free_layer_w(fb_cufwd *f) {
    float **fp[] = {&f->ln1, &f->ln2, &f->qn, &f->kn, &f->bias, &f->gate};
    for (auto p : fp) { if (*p) cudaFree(*p); *p = NULL; }
    if (f->wqkv) cudaFree(f->wqkv);
    if (f->wo) cudaFree(f->wo);
    f->wqkv = f->wo = NULL;
}

extern "C" void fb_cufwd_free(fb_cufwd *f) {
    if (!f) return;
    free_layer_w(f);
    if (!f->all_experts_w)
        for (int i = 0; i < f->n_slots; i++) {
            if (f->w13 && f->w13[i]) cudaFree(f->w13[i]);
            if (f->w2 && f->w2[i]) cudaFree(f->w2[i]);
        }
    if (f->all_experts_w) cudaFree(f->all_experts_w);
    free(f->w13);
    free(f->w2);
    fb_cufwd::buf *bs[] = {&f->s_f32a, &f->s_f32b, &f->s_f32c, &f->s_w1, &f->s_w2, &f->s_S,
                           &f->s_P, &f->s_idx, &f->s_wt, &f->s_stage, &f->s_fp8, &f->s_scale, &f->s_rsal};
    for (auto b : bs) if (b->p) cudaFree(b->p);
    void *ps[] = {f->h, f->acc, f->xn2, f->ridx_d, f->rw_d, f->inv_freq, f->absmax_d, f->norms_d, f->fnorm, f->head};
    for (auto p : ps) if (p) cudaFree(p);
    free(f->hbuf);
    if (f->hb8) cudaFreeHost(f->hb8);
    for (auto &b : f->gb) {
        grp_join(&b);
        grp_free_scales(&b);
        if (b.bytes) cudaFreeHost(b.bytes);
        free(b.f32);
    }
    for (auto e : f->ev) if (e) cudaEventDestroy(e);
    if (f->cb) cublasDestroy(f->cb);
    delete f;
}

extern "C" const fb_cufwd_timing *fb_cufwd_get_timing(const fb_cufwd *f) { return &f->tm; }

static float *host_buf(fb_cufwd *f, size_t n) {
    if (f->hbuf_cap < n) {
        free(f->hbuf);
        f->hbuf = (float *)fb_malloc(n * sizeof(float) + 64);
        f->hbuf_cap = n;
    }
    return f->hbuf;
}

// Grows a pinned host buffer (contents lost).
static int grow_pinned(uint8_t **p, size_t *cap, size_t bytes, fb_err *err) {
    if (*cap >= bytes) return 0;
    if (*p) cudaFreeHost(*p);
    *p = NULL;
    *cap = 0;
    CK(cudaMallocHost((void **)p, bytes + 64));
    *cap = bytes;
    return 0;
}

// Uploads n f32 host values into a device buffer of the operand type (dst allocated by caller).
static int upload_op(fb_cufwd *f, const float *hsrc, size_t n, void *dst, fb_err *err) {
    if (f->f32) {
        CK(cudaMemcpy(dst, hsrc, n * 4, cudaMemcpyHostToDevice));
        return 0;
    }
    if (grow(&f->s_stage, n * 4, err)) return -1;
    CK(cudaMemcpy(f->s_stage.p, hsrc, n * 4, cudaMemcpyHostToDevice));
    k_to_bf16<<<grid_for(n), 256>>>((const float *)f->s_stage.p, (bf16 *)dst, n);
    KCHECK();
    return 0;
}

// 0 when tensor `name` is [d0, d1] (ndim 2) or [d0] (ndim 1), else -1 with the message of
// fb_wsrc_load_full.
static int check_shape(fb_cufwd *f, const char *name, int ndim, int64_t d0, int64_t d1,
                       fb_err *err) {
    int nd;
    int64_t sh[FB_MAX_DIMS];
    if (!f->src->shape(f->src, name, &nd, sh))
        return fb_fail(err, "%s: tensor %s is missing", f->src->desc, name);
    if (nd == ndim && sh[0] == d0 && (ndim < 2 || sh[1] == d1)) return 0;
    char got[128] = "";
    for (int i = 0; i < nd; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "",
                 (long long)sh[i]);
    if (ndim == 2)
        return fb_fail(err, "%s: tensor %s has shape [%s], expected [%lld, %lld]", f->src->desc,
                       name, got, (long long)d0, (long long)d1);
    return fb_fail(err, "%s: tensor %s has shape [%s], expected [%lld]", f->src->desc, name, got,
                   (long long)d0);
}

// 1 when weight `name` can travel raw: the source has load_fp8, says the tensor is FP8
// block-scaled, and the row length suits the dequant kernel (a multiple of 8).
static int raw_fp8(fb_cufwd *f, const char *name, int64_t cols) {
    if (!f->src->load_fp8 || cols % 8) return 0;
    fb_err e;
    return f->src->load_fp8(f->src, name, 0, 0, NULL, NULL, NULL, NULL, &e) == 1;
}

// Dequantizes rows x cols e4m3 bytes already on the device (`dbytes`) with host block scales
// `sc` (the whole tensor's, nsc floats; rows are the tensor's first rows) into dst (operand
// type). Times the kernel into tm.dequant_s when `timed` (the caller synchronises).
static int dequant_dev(fb_cufwd *f, const uint8_t *dbytes, const float *dsc, int64_t rows,
                       int64_t cols, int bm, int bn, void *dst, fb_err *err) {
    size_t n = (size_t)rows * (size_t)cols;
    if (!n) return 0;
    if (f->f32)
        k_fp8_dequant<float><<<grid_for(n / 8), 256>>>(dbytes, dsc, (int)rows, (int)cols, 0, bm, bn,
                                                       (float *)dst);
    else
        k_fp8_dequant<bf16><<<grid_for(n / 8), 256>>>(dbytes, dsc, (int)rows, (int)cols, 0, bm, bn,
                                                      (bf16 *)dst);
    KCHECK();
    return 0;
}

// Loads 2-D weight `name` [d0, d1] into device memory dst of the operand type: raw FP8 bytes
// uploaded and dequantized on the device when the source offers them, else f32 from the
// source (host dequant) converted on the device.
static int load_w(fb_cufwd *f, const char *name, int64_t d0, int64_t d1, void *dst, fb_err *err) {
    if (check_shape(f, name, 2, d0, d1, err)) return -1;
    size_t n = (size_t)d0 * (size_t)d1;
    if (!raw_fp8(f, name, d1)) {
        float *hb = host_buf(f, n);
        if (f->src->load(f->src, name, 0, d0, hb, err)) return -1;
        return upload_op(f, hb, n, dst, err);
    }
    if (grow_pinned(&f->hb8, &f->hb8_cap, n, err)) return -1;
    float *sc = NULL;
    int bm = 0, bn = 0;
    double t0 = now_s();
    int r = f->src->load_fp8(f->src, name, 0, d0, f->hb8, &sc, &bm, &bn, err);
    f->tm.read_s += now_s() - t0;
    if (r != 1) {
        free(sc);
        return r < 0 ? -1 : fb_fail(err, "%s: tensor %s: no longer FP8", f->src->desc, name);
    }
    size_t nsc = (size_t)((d0 + bm - 1) / bm) * (size_t)((d1 + bn - 1) / bn);
    int rc = -1;
    t0 = now_s();
    if (!grow(&f->s_fp8, n, err) && !grow(&f->s_scale, nsc * 4, err) &&
        cudaMemcpy(f->s_fp8.p, f->hb8, n, cudaMemcpyHostToDevice) == cudaSuccess &&
        cudaMemcpy(f->s_scale.p, sc, nsc * 4, cudaMemcpyHostToDevice) == cudaSuccess) {
        double t1 = now_s();
        f->tm.upload_s += t1 - t0;
        f->tm.fp8_bytes += n;
        if (!dequant_dev(f, (const uint8_t *)f->s_fp8.p, (const float *)f->s_scale.p, d0, d1, bm,
                         bn, dst, err) &&
            cudaDeviceSynchronize() == cudaSuccess) {
            f->tm.dequant_s += now_s() - t1;
            rc = 0;
        }
    }
    free(sc);
    if (rc && !err->msg[0]) fb_fail(err, "CUDA: upload of %s failed", name);
    return rc;
}

// Loads a whole tensor (shape d0 x d1) from the source into a fresh device buffer: f32 when
// as_f32, else the operand type.
static int load_dev(fb_cufwd *f, const char *name, int ndim, int64_t d0, int64_t d1, int as_f32,
                    void **out, fb_err *err) {
    size_t n = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
    if (!as_f32 && ndim == 2) {
        CK(cudaMalloc(out, n * f->wsz + 64));
        return load_w(f, name, d0, d1, *out, err);
    }
    float *hb = host_buf(f, n);
    int64_t shape[2] = {d0, d1};
    if (fb_wsrc_load_full(f->src, name, ndim, shape, hb, err)) return -1;
    CK(cudaMalloc(out, n * (as_f32 ? 4 : f->wsz) + 64));
    if (as_f32) {
        CK(cudaMemcpy(*out, hb, n * 4, cudaMemcpyHostToDevice));
        return 0;
    }
    return upload_op(f, hb, n, *out, err);
}

extern "C" int fb_cufwd_set_tokens(fb_cufwd *f, const int32_t *ids, size_t n_tok,
                                   const size_t *starts, size_t n_seq, fb_err *err) {
    const fb_model_config *c = &f->cfg;
    if (n_seq == 0 || starts[0] != 0 || starts[n_seq] != n_tok)
        return fb_fail(err, "forward: sequence boundaries do not cover the %zu tokens", n_tok);
    size_t max_seq = 0;
    for (size_t s = 0; s < n_seq; s++) {
        if (starts[s + 1] <= starts[s]) return fb_fail(err, "forward: sequence %zu is empty", s);
        if (starts[s + 1] - starts[s] > max_seq) max_seq = starts[s + 1] - starts[s];
    }
    size_t H = (size_t)c->hidden;
    float *ps[] = {f->h, f->acc, f->xn2, f->rw_d};
    for (auto p : ps) if (p) cudaFree(p);
    if (f->ridx_d) cudaFree(f->ridx_d);
    if (f->norms_d) cudaFree(f->norms_d);
    f->h = f->acc = f->xn2 = f->rw_d = NULL;
    f->ridx_d = NULL;
    f->norms_d = NULL;
    if (alloc_f(&f->h, n_tok * H, err) || alloc_f(&f->acc, n_tok * H, err) ||
        alloc_f(&f->xn2, n_tok * H, err) || alloc_f(&f->rw_d, n_tok * c->top_k, err))
        return -1;
    CK(cudaMalloc((void **)&f->ridx_d, n_tok * c->top_k * sizeof(int32_t) + 64));
    CK(cudaMalloc((void **)&f->norms_d, n_tok * sizeof(double) + 64));
    f->starts.assign(starts, starts + n_seq + 1);
    f->ntok = n_tok;
    f->nseq = n_seq;
    f->max_seq = max_seq;
    f->next_layer = 0;
    if (!f->src) return 0;  // synthetic: the caller fills h
    char en[256];
    if (fb_arch_tensor(c->arch, FB_ROLE_EMBED, 0, 0, en, sizeof en))
        return fb_fail(err, "forward: the architecture names no embedding");
    int nd;
    int64_t sh[FB_MAX_DIMS];
    if (!f->src->shape(f->src, en, &nd, sh))
        return fb_fail(err, "%s: tensor %s is missing", f->src->desc, en);
    if (nd != 2 || sh[1] != c->hidden || sh[0] < c->vocab)
        return fb_fail(err, "%s: tensor %s: shape is not [%d, %d]", f->src->desc, en, c->vocab,
                       c->hidden);
    double t0 = now_s();
    float *hb = host_buf(f, n_tok * H);
    for (size_t t = 0; t < n_tok; t++)
        if (ids[t] < 0 || ids[t] >= sh[0])
            return fb_fail(err, "forward: token %zu: id %d outside the vocabulary", t, ids[t]);
    if (fb_wsrc_gather_rows(f->src, en, (int64_t)H, ids, n_tok, hb, err)) return -1;
    CK(cudaMemcpy(f->h, hb, n_tok * H * 4, cudaMemcpyHostToDevice));
    f->tm.load_s += now_s() - t0;
    if (f->o.stats) f->o.stats->n_tokens = n_tok;
    return 0;
}

static int load_attn(fb_cufwd *f, int l, fb_err *err) {
    const fb_model_config *c = &f->cfg;
    free_layer_w(f);
    int64_t H = c->hidden, Dq = (int64_t)c->n_heads * c->head_dim,
            Dk = (int64_t)c->n_kv_heads * c->head_dim, E = c->n_experts;
    const fb_arch *ar = c->arch;
    char n[256];
#define LN(role) (fb_arch_tensor(ar, (role), l, 0, n, sizeof n) ? "(unnamed)" : n)
    if (load_dev(f, LN(FB_ROLE_LN_IN), 1, H, 0, 1, (void **)&f->ln1, err) ||
        load_dev(f, LN(FB_ROLE_LN_POST), 1, H, 0, 1, (void **)&f->ln2, err))
        return -1;
    size_t nq = (size_t)((Dq + 2 * Dk) * H);
    struct { fb_role r; int64_t rows, at; } parts[] = {
        {FB_ROLE_Q, Dq, 0}, {FB_ROLE_K, Dk, Dq}, {FB_ROLE_V, Dk, Dq + Dk}};
    CK(cudaMalloc(&f->wqkv, nq * f->wsz + 64));
    for (auto &p : parts)
        if (load_w(f, LN(p.r), p.rows, H, (char *)f->wqkv + (size_t)(p.at * H) * f->wsz, err))
            return -1;
    if (load_dev(f, LN(FB_ROLE_O), 2, H, Dq, 0, &f->wo, err)) return -1;
    int64_t nqw = c->qk_norm == FB_QKN_PER_HEAD ? c->head_dim : Dq;
    int64_t nkw = c->qk_norm == FB_QKN_PER_HEAD ? c->head_dim : Dk;
    if (c->qk_norm &&
        (load_dev(f, LN(FB_ROLE_Q_NORM), 1, nqw, 0, 1, (void **)&f->qn, err) ||
         load_dev(f, LN(FB_ROLE_K_NORM), 1, nkw, 0, 1, (void **)&f->kn, err)))
        return -1;
    if (load_dev(f, LN(FB_ROLE_ROUTER), 2, E, H, 1, (void **)&f->gate, err))
        return -1;
    if (c->router == FB_ROUTER_SIGMOID_BIAS && c->use_routing_bias &&
        fb_arch_tensor(ar, FB_ROLE_ROUTER_BIAS, l, 0, n, sizeof n) == 0) {
        int nd;
        int64_t sh[FB_MAX_DIMS];
        if (f->src->shape(f->src, n, &nd, sh) &&
            load_dev(f, n, 1, E, 0, 1, (void **)&f->bias, err))
            return -1;
    }
#undef LN
    return 0;
}

// Expert tensor k (0 w1, 1 w3, 2 w2) of expert e: name, rows, cols, offset in the group slot.
static void expert_tensor(const fb_model_config *c, int l, int e, int k, char *name, size_t nsz,
                          int64_t *rows, int64_t *cols, size_t *at) {
    static const fb_role w[] = {FB_ROLE_W_GATE, FB_ROLE_W_UP, FB_ROLE_W_DOWN};
    if (fb_arch_tensor(c->arch, w[k], l, e, name, nsz)) snprintf(name, nsz, "(unnamed)");
    size_t IH = (size_t)c->inter * c->hidden;
    *rows = k < 2 ? c->inter : c->hidden;
    *cols = k < 2 ? c->hidden : c->inter;
    *at = (size_t)k * IH;
}

static void grp_fail(grp_buf *b, const fb_err *e) {
    pthread_mutex_lock(&b->mu);
    if (!b->failed) { b->failed = 1; b->err = *e; }
    pthread_mutex_unlock(&b->mu);
}

// Reader thread: takes tensors off the group's queue (3 per expert) until none is left.
static void *grp_worker(void *p) {
    grp_buf *b = (grp_buf *)p;
    const fb_model_config *c = &b->f->cfg;
    size_t IH = (size_t)c->inter * c->hidden;
    fb_wsrc *src = b->f->src;
    for (;;) {
        pthread_mutex_lock(&b->mu);
        int t = b->failed ? 3 * b->g : b->next++;
        pthread_mutex_unlock(&b->mu);
        if (t >= 3 * b->g) break;
        int i = t / 3, k = t % 3;
        char n[256];
        int64_t rows, cols;
        size_t at;
        expert_tensor(c, b->l, b->e0 + i, k, n, sizeof n, &rows, &cols, &at);
        fb_err e;
        int rc;
        if (b->fp8) {
            rc = src->load_fp8(src, n, 0, rows, b->bytes + (size_t)i * 3 * IH + at, &b->sc[t],
                               &b->bm[t], &b->bn[t], &e);
            if (rc == 0) rc = fb_fail(&e, "%s: tensor %s: no longer FP8", src->desc, n);
            else if (rc == 1) rc = 0;
        } else {
            int64_t sh[2] = {rows, cols};
            rc = fb_wsrc_load_full(src, n, 2, sh, b->f32 + (size_t)i * 3 * IH + at, &e);
        }
        if (rc) grp_fail(b, &e);
    }
    return NULL;
}

// Reads experts b->e0 .. +g of layer b->l into b on the host (several threads).
static void *grp_read(void *p) {
    grp_buf *b = (grp_buf *)p;
    fb_cufwd *f = b->f;
    double t0 = now_s();
    int nth = f->o.host_threads > 0 ? f->o.host_threads : fb_ncpu();
    if (nth > 3 * b->g) nth = 3 * b->g;
    if (nth > 64) nth = 64;
    pthread_t th[64];
    int started = 0;
    for (int i = 1; i < nth; i++)
        if (pthread_create(&th[started], NULL, grp_worker, b) == 0) started++;
    grp_worker(b);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    b->read_s = now_s() - t0;
    return NULL;
}

static void grp_join(grp_buf *b) {
    if (!b->running) return;
    pthread_join(b->th, NULL);
    pthread_mutex_destroy(&b->mu);
    b->running = 0;
}

static void grp_free_scales(grp_buf *b) {
    for (auto &p : b->sc) { free(p); p = NULL; }
}

// Starts reading experts e0..e0+g-1 of layer l into b in the background: checks names and
// shapes, decides FP8 (raw bytes) or f32 for the group, sizes the host buffers, then hands the
// reads to a thread (grp_join waits for it).
static int grp_start(fb_cufwd *f, grp_buf *b, int l, int e0, int g, fb_err *err) {
    const fb_model_config *c = &f->cfg;
    size_t IH = (size_t)c->inter * c->hidden;
    b->f = f; b->l = l; b->e0 = e0; b->g = g;
    b->fp8 = 1;
    for (int t = 0; t < 3 * g; t++) {
        char n[256];
        int64_t rows, cols;
        size_t at;
        expert_tensor(c, l, e0 + t / 3, t % 3, n, sizeof n, &rows, &cols, &at);
        if (check_shape(f, n, 2, rows, cols, err)) return -1;
        if (!raw_fp8(f, n, cols)) b->fp8 = 0;
    }
    size_t need = (size_t)f->n_slots * 3 * IH;
    if (b->fp8) {
        if (grow_pinned(&b->bytes, &b->bytes_cap, need, err)) return -1;
    } else if (b->f32_cap < need) {
        free(b->f32);
        b->f32 = (float *)fb_malloc(need * sizeof(float) + 64);
        b->f32_cap = need;
    }
    grp_free_scales(b);
    b->sc.assign((size_t)3 * g, NULL);
    b->bm.assign((size_t)3 * g, 0);
    b->bn.assign((size_t)3 * g, 0);
    b->next = 0;
    b->failed = 0;
    b->read_s = 0;
    pthread_mutex_init(&b->mu, NULL);
    if (pthread_create(&b->th, NULL, grp_read, b) != 0) {
        grp_read(b);  // no thread: read now
        pthread_mutex_destroy(&b->mu);
        return 0;
    }
    b->running = 1;
    return 0;
}

// Waits for group b's read, then puts its experts into device slots 0..g-1: raw FP8 bytes in
// one pinned-memory copy, block scales, and one dequant kernel per tensor (or the f32 values
// converted on the device). Synchronises the device before returning.
static int grp_upload(fb_cufwd *f, grp_buf *b, fb_err *err) {
    const fb_model_config *c = &f->cfg;
    size_t IH = (size_t)c->inter * c->hidden;
    double tw = now_s();
    grp_join(b);
    f->tm.wait_s += now_s() - tw;
    f->tm.read_s += b->read_s;
    if (b->failed) {
        *err = b->err;
        return -1;
    }
    int g = b->g;
    for (int i = 0; i < g; i++) {
        if (!f->w13[i]) {
            CK(cudaMalloc(&f->w13[i], 2 * IH * f->wsz + 64));
            CK(cudaMalloc(&f->w2[i], IH * f->wsz + 64));
        }
    }
    if (!b->fp8) {
        double t0 = now_s();
        for (int i = 0; i < g; i++)
            if (upload_op(f, b->f32 + (size_t)i * 3 * IH, 2 * IH, f->w13[i], err) ||
                upload_op(f, b->f32 + (size_t)i * 3 * IH + 2 * IH, IH, f->w2[i], err))
                return -1;
        CK(cudaDeviceSynchronize());
        f->tm.upload_s += now_s() - t0;
        return 0;
    }
    // scales of every tensor, packed
    std::vector<size_t> so((size_t)3 * g + 1, 0);
    for (int t = 0; t < 3 * g; t++) {
        int64_t rows = t % 3 < 2 ? c->inter : c->hidden, cols = t % 3 < 2 ? c->hidden : c->inter;
        so[t + 1] = so[t] + (size_t)((rows + b->bm[t] - 1) / b->bm[t]) *
                                (size_t)((cols + b->bn[t] - 1) / b->bn[t]);
    }
    std::vector<float> sc(so[3 * g]);
    for (int t = 0; t < 3 * g; t++) memcpy(sc.data() + so[t], b->sc[t], (so[t + 1] - so[t]) * 4);
    grp_free_scales(b);
    size_t nb = (size_t)g * 3 * IH;
    if (grow(&f->s_fp8, nb, err) || grow(&f->s_scale, sc.size() * 4, err)) return -1;
    CK(cudaEventRecord(f->ev[0]));
    CK(cudaMemcpyAsync(f->s_fp8.p, b->bytes, nb, cudaMemcpyHostToDevice));
    CK(cudaMemcpyAsync(f->s_scale.p, sc.data(), sc.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaEventRecord(f->ev[1]));
    for (int t = 0; t < 3 * g; t++) {
        int i = t / 3, k = t % 3;
        int64_t rows = k < 2 ? c->inter : c->hidden, cols = k < 2 ? c->hidden : c->inter;
        void *dst = k < 2 ? (char *)f->w13[i] + (size_t)k * IH * f->wsz : f->w2[i];
        if (dequant_dev(f, (const uint8_t *)f->s_fp8.p + (size_t)i * 3 * IH + (size_t)k * IH,
                        (const float *)f->s_scale.p + so[t], rows, cols, b->bm[t], b->bn[t], dst,
                        err))
            return -1;
    }
    CK(cudaEventRecord(f->ev[2]));
    CK(cudaEventSynchronize(f->ev[2]));
    float up = 0, dq = 0;
    CK(cudaEventElapsedTime(&up, f->ev[0], f->ev[1]));
    CK(cudaEventElapsedTime(&dq, f->ev[1], f->ev[2]));
    f->tm.upload_s += 1e-3 * up;
    f->tm.dequant_s += 1e-3 * dq;
    f->tm.fp8_bytes += nb;
    return 0;
}

// Joins any background read on return (error paths included).
struct grp_guard {
    fb_cufwd *f;
    ~grp_guard() {
        for (auto &b : f->gb) {
            grp_join(&b);
            grp_free_scales(&b);
        }
    }
};

static int run_attention(fb_cufwd *f, int l, fb_err *err) {
    const fb_model_config *c = &f->cfg;
    int H = c->hidden, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    int Dq = nh * hd, Dk = nkv * hd, Dqkv = Dq + 2 * Dk, rep = nh / nkv;
    size_t M = f->max_seq;
    if (grow(&f->s_f32a, M * (size_t)(Dqkv > H ? Dqkv : H) * 4, err) ||  // xn, then qkv
        grow(&f->s_f32b, M * (size_t)(Dq > H ? Dq : H) * 4, err) ||      // normed x / ao / po
        grow(&f->s_S, (size_t)rep * M * M * 4, err) ||
        grow(&f->s_P, (size_t)rep * M * M * f->wsz, err) ||
        grow(&f->s_f32c, M * (size_t)H * 4, err))
        return -1;
    float scale = (float)pow((double)hd, -0.5);
    cudaDataType_t dt = f->f32 ? CUDA_R_32F : CUDA_R_16BF;
    const float one = 1.0f, zero = 0.0f;
    for (size_t s = 0; s < f->nseq; s++) {
        size_t t0 = f->starts[s];
        int L = (int)(f->starts[s + 1] - t0);
        float *hs = f->h + t0 * H;
        float *xn = (float *)f->s_f32c.p, *qkv = (float *)f->s_f32a.p, *ao = (float *)f->s_f32b.p;
        k_rmsnorm<<<L, 256>>>(hs, f->ln1, (float)c->eps, H, xn);
        KCHECK();
        if (absmax(xn, (size_t)L * H, &f->absmax_d[0], err)) return -1;
        if (fake_quant(f, xn, (size_t)L, (size_t)H, l, FB_ROLE_Q, -1, err)) return -1;
        const void *xw;
        if (to_op(f, xn, (size_t)L * H, &f->s_w1, &xw, err)) return -1;
        if (gemm(f, xw, H, f->wqkv, H, qkv, Dqkv, L, Dqkv, H, err)) return -1;
        k_qknorm_rope<<<L, 256>>>(qkv, Dqkv, f->qn, f->kn, (float)c->eps, f->inv_freq, nh, nkv, hd,
                                  c->rotary_dim, (int)c->qk_norm);
        KCHECK();
        const void *qw;
        if (to_op(f, qkv, (size_t)L * Dqkv, &f->s_w2, &qw, err)) return -1;
        for (int g = 0; g < nkv; g++) {
            const char *Q = (const char *)qw + (size_t)g * rep * hd * f->wsz;
            const char *K = (const char *)qw + (size_t)(Dq + g * hd) * f->wsz;
            const char *V = (const char *)qw + (size_t)(Dq + Dk + g * hd) * f->wsz;
            // S[b] (L x L) = Q_b @ K^T
            CB(cublasGemmStridedBatchedEx(f->cb, CUBLAS_OP_T, CUBLAS_OP_N, L, L, hd, &one, K, dt,
                                          Dqkv, 0, Q, dt, Dqkv, hd, &zero, f->s_S.p, CUDA_R_32F,
                                          L, (long long)L * L, rep, CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT));
            if (f->f32)
                k_softmax<float><<<rep * L, 256>>>((const float *)f->s_S.p, (float *)f->s_P.p, L, scale);
            else
                k_softmax<bf16><<<rep * L, 256>>>((const float *)f->s_S.p, (bf16 *)f->s_P.p, L, scale);
            KCHECK();
            // O_b (L x hd, ld Dq) = P_b @ V
            CB(cublasGemmStridedBatchedEx(f->cb, CUBLAS_OP_N, CUBLAS_OP_N, hd, L, L, &one, V, dt,
                                          Dqkv, 0, f->s_P.p, dt, L, (long long)L * L, &zero,
                                          ao + (size_t)g * rep * hd, CUDA_R_32F, Dq, hd, rep,
                                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            f->tm.gemm_flops += 4.0 * rep * (double)L * L * hd;
        }
        if (absmax(ao, (size_t)L * Dq, &f->absmax_d[1], err)) return -1;
        if (fake_quant(f, ao, (size_t)L, (size_t)Dq, l, FB_ROLE_O, -1, err)) return -1;
        const void *aw;
        if (to_op(f, ao, (size_t)L * Dq, &f->s_w1, &aw, err)) return -1;
        float *po = qkv;  // qkv is dead now
        if (gemm(f, aw, Dq, f->wo, Dq, po, H, L, H, Dq, err)) return -1;
        k_add<<<grid_for((size_t)L * H), 256>>>(hs, po, (size_t)L * H);
        KCHECK();
    }
    return 0;
}

static int run_moe(fb_cufwd *f, int l, fb_err *err) {
    const fb_model_config *c = &f->cfg;
    int H = c->hidden, I = c->inter, E = c->n_experts, k = c->top_k;
    size_t N = f->ntok;
    double t0 = now_s();
    // Router: rmsnorm of every token, f32 GEMM with the gate, top-k.
    k_rmsnorm<<<(unsigned)N, 256>>>(f->h, f->ln2, (float)c->eps, H, f->xn2);
    KCHECK();
    if (grow(&f->s_f32a, N * (size_t)E * 4, err)) return -1;
    {
        const float one = 1.0f, zero = 0.0f;
        CB(cublasSgemm(f->cb, CUBLAS_OP_T, CUBLAS_OP_N, E, (int)N, H, &one, f->gate, H, f->xn2, H,
                       &zero, (float *)f->s_f32a.p, E));
        f->tm.gemm_flops += 2.0 * (double)N * E * H;
    }
    if (c->router == FB_ROUTER_SOFTMAX)
        k_route_softmax<<<(unsigned)((N + 127) / 128), 128>>>((const float *)f->s_f32a.p, E, k,
                                                              c->norm_topk_prob, (int)N, f->ridx_d,
                                                              f->rw_d);
    else
        k_route<<<(unsigned)((N + 127) / 128), 128>>>((const float *)f->s_f32a.p, f->bias, E, k,
                                                        (int)N, f->ridx_d, f->rw_d);
    KCHECK();
    f->ridx.resize(N * k);
    f->rw.resize(N * k);
    CK(cudaMemcpy(f->ridx.data(), f->ridx_d, N * k * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(f->rw.data(), f->rw_d, N * k * 4, cudaMemcpyDeviceToHost));
    // Routed rows by expert, token-ascending within an expert (counting sort).
    std::vector<size_t> off((size_t)E + 1, 0);
    for (size_t i = 0; i < N * k; i++) off[(size_t)f->ridx[i] + 1]++;
    for (int e = 0; e < E; e++) off[e + 1] += off[e];
    std::vector<int32_t> rtok(N * k);
    std::vector<float> rwt(N * k);
    {
        std::vector<size_t> fill(off.begin(), off.end() - 1);
        for (size_t t = 0; t < N; t++)
            for (int s = 0; s < k; s++) {
                size_t r = fill[(size_t)f->ridx[t * k + s]]++;
                rtok[r] = (int32_t)t;
                rwt[r] = f->rw[t * k + s];
            }
    }
    if (grow(&f->s_idx, N * k * 4, err) || grow(&f->s_wt, N * k * 4, err)) return -1;
    int32_t *rtok_d = (int32_t *)f->s_idx.p;
    float *rwt_d = (float *)f->s_wt.p;
    CK(cudaMemcpy(rtok_d, rtok.data(), N * k * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(rwt_d, rwt.data(), N * k * 4, cudaMemcpyHostToDevice));
    CK(cudaMemset(f->acc, 0, N * H * 4));
    if (f->o.stats && grow(&f->s_rsal, N * k * sizeof(double), err)) return -1;
    double *rsal_d = f->o.stats ? (double *)f->s_rsal.p : NULL;  // rows off[e]..off[e+1]: expert e
    // w13 absmax slots: [2 .. 2+E), w2: [2+E .. 2+2E)
    unsigned *w13m = f->absmax_d + 2, *w2m = f->absmax_d + 2 + E;
    int all = f->o.all_experts;
    if (all && absmax(f->xn2, N * H, &w13m[0], err)) return -1;  // the same for every expert
    CK(cudaDeviceSynchronize());
    f->tm.attn_s += now_s() - t0;

    size_t C = all ? (size_t)f->o.token_chunk : 0;
    if (C > N) C = N;
    size_t max_cnt = 0;
    for (int e = 0; e < E; e++) max_cnt = off[e + 1] - off[e] > max_cnt ? off[e + 1] - off[e] : max_cnt;
    size_t rows_max = all ? (C > max_cnt ? C : max_cnt) : max_cnt;
    if (grow(&f->s_f32a, rows_max * 2 * I * 4, err) ||              // G
        grow(&f->s_f32b, rows_max * (size_t)(H > I ? H : I) * 4, err) ||  // gathered X / Y
        grow(&f->s_f32c, rows_max * (size_t)I * 4, err))            // P
        return -1;
    float *G = (float *)f->s_f32a.p, *XY = (float *)f->s_f32b.p, *P = (float *)f->s_f32c.p;
    int Gs = f->n_slots;
    // Expert weights come in groups of Gs through two host buffers: while group gi is uploaded
    // and computed, a background thread reads group gi+1 from the source (its buffer's upload,
    // group gi-1, has finished: grp_upload synchronises). The upload itself (pinned memory,
    // ~50 GB/s) is not overlapped with compute (the device slots are reused); neither is the
    // next layer's first read (attention weights are read synchronously by load_attn).
    grp_guard guard{f};
    if (!f->all_experts_w) {
        double tl = now_s();
        if (grp_start(f, &f->gb[0], l, 0, E < Gs ? E : Gs, err)) return -1;
        f->tm.load_s += now_s() - tl;
    }
    for (int e0 = 0, gi = 0; e0 < E; e0 += Gs, gi++) {
        if (f->o.cancelled && f->o.cancelled()) return fb_fail(err, "interrupted (forward)");
        int g = E - e0 < Gs ? E - e0 : Gs;
        double tl = now_s();
        if (f->all_experts_w) {  // synthetic: every expert resident
            size_t IH = (size_t)I * H;
            for (int i = 0; i < g; i++) {
                f->w13[i] = (char *)f->all_experts_w + (size_t)(e0 + i) * 3 * IH * f->wsz;
                f->w2[i] = (char *)f->w13[i] + 2 * IH * f->wsz;
            }
        } else {
            if (grp_upload(f, &f->gb[gi & 1], err)) return -1;
            if (e0 + Gs < E && grp_start(f, &f->gb[(gi + 1) & 1], l, e0 + Gs,
                                         E - e0 - Gs < Gs ? E - e0 - Gs : Gs, err))
                return -1;
        }
        CK(cudaDeviceSynchronize());
        double te = now_s();
        f->tm.load_s += te - tl;
        if (!all) {
            for (int i = 0; i < g; i++) {
                int e = e0 + i;
                size_t r0 = off[e], cnt = off[e + 1] - r0;
                if (!cnt) continue;
                k_gather<<<(unsigned)(cnt < 65535 ? cnt : 65535), 256>>>(f->xn2, H, rtok_d + r0, 0,
                                                                         (int)cnt, H, XY);
                KCHECK();
                if (absmax(XY, cnt * H, &w13m[e], err)) return -1;
                if (fake_quant(f, XY, cnt, (size_t)H, l, FB_ROLE_W_GATE, e, err)) return -1;
                const void *xw;
                if (to_op(f, XY, cnt * H, &f->s_w1, &xw, err)) return -1;
                if (gemm(f, xw, H, f->w13[i], H, G, 2 * I, (int)cnt, 2 * I, H, err)) return -1;
                k_swiglu<<<grid_for(cnt * I), 256>>>(G, I, cnt, P);
                KCHECK();
                if (absmax(P, cnt * I, &w2m[e], err)) return -1;
                if (fake_quant(f, P, cnt, (size_t)I, l, FB_ROLE_W_DOWN, e, err)) return -1;
                const void *pw;
                if (to_op(f, P, cnt * I, &f->s_w2, &pw, err)) return -1;
                if (gemm(f, pw, I, f->w2[i], I, XY, H, (int)cnt, H, I, err)) return -1;
                if (hook_expert_output(f, l, e, rtok.data() + r0, XY, cnt, (size_t)H, err)) return -1;
                k_combine<<<(unsigned)cnt, 256>>>(f->acc, XY, rtok_d + r0, rwt_d + r0, 0, H,
                                                  rsal_d ? rsal_d + r0 : NULL);
                KCHECK();
            }
        } else {
            for (size_t c0 = 0; c0 < N; c0 += C) {
                size_t n = N - c0 < C ? N - c0 : C;
                if (gi == 0 && hook_expert_input_all(f, FB_ROLE_W_GATE, l, -1, c0, f->xn2 + c0 * H, n,
                                                     (size_t)H, err))
                    return -1;
                const void *xw;
                // In f32 mode the chunk is used in place; otherwise converted once per group.
                if (to_op(f, f->xn2 + c0 * H, n * H, &f->s_w1, &xw, err)) return -1;
                for (int i = 0; i < g; i++) {
                    int e = e0 + i;
                    size_t gb = (n * I + 255) / 256;
                    unsigned gsz = (unsigned)(gb > 8192 ? 8192 : gb);
                    if (f->f32) {
                        if (gemm(f, xw, H, f->w13[i], H, G, 2 * I, (int)n, 2 * I, H, err)) return -1;
                        k_swiglu_absmax<float><<<gsz, 256>>>(G, I, n, &w2m[e]);
                    } else {
                        if (gemm_bf16out(f, xw, H, f->w13[i], H, (bf16 *)G, 2 * I, (int)n, 2 * I,
                                         H, err))
                            return -1;
                        k_swiglu_absmax<bf16><<<gsz, 256>>>((const bf16 *)G, I, n, &w2m[e]);
                    }
                    KCHECK();
                    if (f->o.hooks && f->o.hooks->expert_input_all) {  // every row's SwiGLU
                        if (f->f32) k_swiglu_any<float><<<grid_for(n * I), 256>>>(G, I, n, P);
                        else k_swiglu_any<bf16><<<grid_for(n * I), 256>>>((const bf16 *)G, I, n, P);
                        KCHECK();
                        if (hook_expert_input_all(f, FB_ROLE_W_DOWN, l, e, c0, P, n, (size_t)I, err))
                            return -1;
                    }
                    // routed rows of this chunk: token-ascending within the expert's list
                    const int32_t *lo = rtok.data() + off[e], *hi = rtok.data() + off[e + 1];
                    const int32_t *a = std::lower_bound(lo, hi, (int32_t)c0);
                    const int32_t *b = std::lower_bound(lo, hi, (int32_t)(c0 + n));
                    size_t r0 = (size_t)(a - rtok.data()), cnt = (size_t)(b - a);
                    if (!cnt) continue;
                    float *Pr = XY;  // routed SwiGLU rows [cnt, I], then Y [cnt, H]
                    unsigned gr = (unsigned)(cnt < 65535 ? cnt : 65535);
                    if (f->f32)
                        k_gather_swiglu<float><<<gr, 256>>>(G, I, rtok_d + r0, (int)c0, (int)cnt, Pr);
                    else
                        k_gather_swiglu<bf16><<<gr, 256>>>((const bf16 *)G, I, rtok_d + r0, (int)c0,
                                                           (int)cnt, Pr);
                    KCHECK();
                    const void *pw;
                    if (to_op(f, Pr, cnt * I, &f->s_w2, &pw, err)) return -1;
                    if (f->f32) {  // Pr is the operand: Y must not overwrite it
                        if (grow(&f->s_w2, cnt * H * 4, err)) return -1;
                        if (gemm(f, pw, I, f->w2[i], I, (float *)f->s_w2.p, H, (int)cnt, H, I, err))
                            return -1;
                        if (hook_expert_output(f, l, e, a, (const float *)f->s_w2.p, cnt, (size_t)H, err))
                            return -1;
                        k_combine<<<(unsigned)cnt, 256>>>(f->acc + c0 * H, (const float *)f->s_w2.p,
                                                          rtok_d + r0, rwt_d + r0, (int)c0, H,
                                                          rsal_d ? rsal_d + r0 : NULL);
                    } else {
                        if (gemm(f, pw, I, f->w2[i], I, XY, H, (int)cnt, H, I, err)) return -1;
                        if (hook_expert_output(f, l, e, a, XY, cnt, (size_t)H, err)) return -1;
                        k_combine<<<(unsigned)cnt, 256>>>(f->acc + c0 * H, XY, rtok_d + r0,
                                                          rwt_d + r0, (int)c0, H,
                                                          rsal_d ? rsal_d + r0 : NULL);
                    }
                    KCHECK();
                }
            }
        }
        CK(cudaDeviceSynchronize());
        f->tm.expert_s += now_s() - te;
    }
    // Residual, layer-output statistics.
    k_add<<<grid_for(N * H), 256>>>(f->h, f->acc, N * H);
    KCHECK();
    if (f->o.stats) {
        fb_calib_stats *st = f->o.stats;
        k_rownorm<<<(unsigned)N, 256>>>(f->h, H, f->norms_d);
        KCHECK();
        unsigned hm_bits = 0;
        unsigned *hm_d = f->absmax_d + 2 + 2 * E - 1;  // reused after reading below
        std::vector<unsigned> am((size_t)2 + 2 * E);
        std::vector<double> rsal(N * k), norms(N);
        CK(cudaMemcpy(am.data(), f->absmax_d, am.size() * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(rsal.data(), rsal_d, N * k * sizeof(double), cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(norms.data(), f->norms_d, N * 8, cudaMemcpyDeviceToHost));
        CK(cudaMemset(hm_d, 0, 4));
        if (absmax(f->h, N * H, hm_d, err)) return -1;
        CK(cudaMemcpy(&hm_bits, hm_d, 4, cudaMemcpyDeviceToHost));
        auto bits = [](unsigned u) { float x; memcpy(&x, &u, 4); return x; };
        st->qkv_absmax[l] = bits(am[0]);
        st->o_absmax[l] = bits(am[1]);
        for (int e = 0; e < E; e++) {
            size_t si = (size_t)l * E + e;
            st->w13_absmax[si] = bits(all ? am[2] : am[2 + e]);
            st->w2_absmax[si] = bits(am[2 + E + e]);
            st->counts[si] += (int64_t)(off[e + 1] - off[e]);
            double sal = 0;  // in row (token) order, as the CPU engine sums
            for (size_t r = off[e]; r < off[e + 1]; r++) sal += rsal[r];
            st->sal_sum[si] += sal;
        }
        double ns = 0, nm = 0;
        for (size_t t = 0; t < N; t++) {
            ns += norms[t];
            if (norms[t] > nm) nm = norms[t];
        }
        st->norm_sum[l] = ns;
        st->norm_max[l] = nm;
        st->h_absmax[l] = bits(hm_bits);
        st->done[l] = 1;
        st->all_experts = all;
    }
    return 0;
}

static int run_layer(fb_cufwd *f, int layer, fb_err *err) {
    if (!f->h) return fb_fail(err, "forward: no tokens set");
    if (layer != f->next_layer || layer >= f->cfg.n_layers)
        return fb_fail(err, "forward: layer %d requested, next is %d of %d", layer, f->next_layer,
                       f->cfg.n_layers);
    CK(cudaMemset(f->absmax_d, 0, (2 + 2 * (size_t)f->cfg.n_experts) * 4));
    double t0 = now_s();
    if (f->src) {
        if (load_attn(f, layer, err)) return -1;
        f->tm.load_s += now_s() - t0;
    }
    t0 = now_s();
    if (run_attention(f, layer, err)) return -1;
    CK(cudaDeviceSynchronize());
    f->tm.attn_s += now_s() - t0;
    if (run_moe(f, layer, err)) return -1;
    CK(cudaDeviceSynchronize());
    f->next_layer++;
    const fb_fwd_hooks *h = f->o.hooks;
    if (h && h->layer_output && f->ntok) {
        size_t H = (size_t)f->cfg.hidden;
        std::vector<float> hh(f->ntok * H);
        CK(cudaMemcpy(hh.data(), f->h, f->ntok * H * 4, cudaMemcpyDeviceToHost));
        if (h->layer_output(h->user, layer, hh.data(), f->ntok, H, err)) return -1;
    }
    return 0;
}

extern "C" int fb_cufwd_layer(fb_cufwd *f, int layer, fb_err *err) {
    if (f->o.cancelled && f->o.cancelled()) return fb_fail(err, "interrupted (forward)");
    return run_layer(f, layer, err);
}

extern "C" int fb_cufwd_set_hidden(fb_cufwd *f, int layer, const float *h, fb_err *err) {
    if (!f->h) return fb_fail(err, "forward: no tokens set");
    if (layer < 0 || layer > f->cfg.n_layers)
        return fb_fail(err, "forward: layer %d outside [0, %d]", layer, f->cfg.n_layers);
    CK(cudaMemcpy(f->h, h, f->ntok * (size_t)f->cfg.hidden * 4, cudaMemcpyHostToDevice));
    f->next_layer = layer;
    return 0;
}

extern "C" int fb_cufwd_hidden(fb_cufwd *f, float *out, fb_err *err) {
    if (!f->h) return fb_fail(err, "forward: no tokens set");
    CK(cudaMemcpy(out, f->h, f->ntok * f->cfg.hidden * 4, cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int fb_cufwd_logits(fb_cufwd *f, size_t t0, size_t n, float *out, fb_err *err) {
    const fb_model_config *c = &f->cfg;
    size_t H = (size_t)c->hidden, V = (size_t)c->vocab;
    if (!f->h || t0 + n > f->ntok) return fb_fail(err, "forward: logits for tokens [%zu, %zu)", t0, t0 + n);
    if (!f->head) {
        if (!f->src) return fb_fail(err, "forward: no lm_head (synthetic weights)");
        double tl = now_s();
        char nn[256], hn[256];
        if (fb_arch_tensor(c->arch, FB_ROLE_FINAL_NORM, 0, 0, nn, sizeof nn) ||
            fb_arch_tensor(c->arch, c->tie_embeddings ? FB_ROLE_EMBED : FB_ROLE_LM_HEAD, 0, 0, hn,
                           sizeof hn))
            return fb_fail(err, "forward: the architecture names no final norm or lm_head");
        if (load_dev(f, nn, 1, (int64_t)H, 0, 1, (void **)&f->fnorm, err)) return -1;
        if (load_dev(f, hn, 2, (int64_t)V, (int64_t)H, 0, &f->head, err)) return -1;
        f->tm.load_s += now_s() - tl;
    }
    size_t B = 256;
    if (grow(&f->s_f32c, B * H * 4, err) || grow(&f->s_f32a, B * V * 4, err)) return -1;
    for (size_t i = 0; i < n; i += B) {
        size_t m = n - i < B ? n - i : B;
        k_rmsnorm<<<(unsigned)m, 256>>>(f->h + (t0 + i) * H, f->fnorm, (float)c->eps, (int)H,
                                        (float *)f->s_f32c.p);
        KCHECK();
        const void *xw;
        if (to_op(f, (const float *)f->s_f32c.p, m * H, &f->s_w1, &xw, err)) return -1;
        if (gemm(f, xw, (int)H, f->head, (int)H, (float *)f->s_f32a.p, (int)V, (int)m, (int)V,
                 (int)H, err))
            return -1;
        CK(cudaMemcpy(out + i * V, f->s_f32a.p, m * V * 4, cudaMemcpyDeviceToHost));
    }
    return 0;
}

// ---- benchmark helpers ---------------------------------------------------------------------------

extern "C" double fb_cuda_gemm_tflops(int m, int n, int k, int iters, int out_f32, fb_err *err) {
    cublasHandle_t cb;
    if (cublasCreate(&cb) != CUBLAS_STATUS_SUCCESS) {
        fb_fail(err, "cuBLAS: cublasCreate failed");
        return -1;
    }
    void *a = NULL, *b = NULL, *c = NULL;
    double r = -1;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    if (cudaMalloc(&a, (size_t)m * k * 2) != cudaSuccess || cudaMalloc(&b, (size_t)n * k * 2) != cudaSuccess ||
        cudaMalloc(&c, (size_t)m * n * 4) != cudaSuccess) {
        fb_fail(err, "CUDA: allocation for the GEMM benchmark failed");
    } else {
        k_fill_bf16<<<grid_for((size_t)m * k), 256>>>((bf16 *)a, (size_t)m * k, 1.0f, 1);
        k_fill_bf16<<<grid_for((size_t)n * k), 256>>>((bf16 *)b, (size_t)n * k, 1.0f, 2);
        const float one = 1.0f, zero = 0.0f;
        cudaDataType_t ct = out_f32 ? CUDA_R_32F : CUDA_R_16BF;
        cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
        for (int it = 0; it < iters + 3 && s == CUBLAS_STATUS_SUCCESS; it++) {
            if (it == 3) cudaEventRecord(e0);
            s = cublasGemmEx(cb, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, b, CUDA_R_16BF, k, a,
                             CUDA_R_16BF, k, &zero, c, ct, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        }
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        if (s != CUBLAS_STATUS_SUCCESS) fb_fail(err, "cuBLAS: GEMM benchmark status %d", (int)s);
        else r = 2.0 * m * (double)n * k * iters / (ms * 1e-3) / 1e12;
    }
    cudaFree(a); cudaFree(b); cudaFree(c);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cublasDestroy(cb);
    return r;
}

extern "C" int fb_cuda_fp8_dequant_rate(int rows, int cols, int iters, double *dq_gbs,
                                        double *h2d_gbs, fb_err *err) {
    size_t n = (size_t)rows * cols;
    int bm = 128, bn = 128, sr = (rows + bm - 1) / bm, sc = (cols + bn - 1) / bn;
    unsigned char *in = NULL, *hin = NULL;
    float *scale = NULL;
    bf16 *out = NULL;
    CK(cudaMalloc(&in, n));
    CK(cudaMalloc(&out, n * 2));
    CK(cudaMalloc(&scale, (size_t)sr * sc * 4));
    CK(cudaMallocHost(&hin, n));
    memset(hin, 0x3C, n);
    k_fill_u8<<<grid_for(n), 256>>>(in, n, 3);
    k_fill_f32<<<grid_for((size_t)sr * sc), 256>>>(scale, (size_t)sr * sc, 0.001f, 0.002f, 4);
    KCHECK();
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    k_fp8_dequant<bf16><<<grid_for(n / 8), 256>>>(in, scale, rows, cols, 0, bm, bn, out);
    cudaEventRecord(e0);
    for (int i = 0; i < iters; i++) k_fp8_dequant<bf16><<<grid_for(n / 8), 256>>>(in, scale, rows, cols, 0, bm, bn, out);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    *dq_gbs = (double)n * iters / (ms * 1e-3) / 1e9;
    cudaEventRecord(e0);
    for (int i = 0; i < iters; i++) cudaMemcpyAsync(in, hin, n, cudaMemcpyHostToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1);
    *h2d_gbs = (double)n * iters / (ms * 1e-3) / 1e9;
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(in); cudaFree(out); cudaFree(scale); cudaFreeHost(hin);
    KCHECK();
    return 0;
}

extern "C" int fb_cuda_fp8_dequant_host(const uint8_t *in, const float *scale, int rows, int cols,
                                        int bm, int bn, uint16_t *out, fb_err *err) {
    size_t n = (size_t)rows * cols, ns = (size_t)((rows + bm - 1) / bm) * ((cols + bn - 1) / bn);
    if (n % 8 || cols % 8) return fb_fail(err, "fp8 dequant: columns must be a multiple of 8");
    unsigned char *din = NULL;
    float *ds = NULL;
    bf16 *dout = NULL;
    CK(cudaMalloc(&din, n));
    CK(cudaMalloc(&ds, ns * 4));
    CK(cudaMalloc(&dout, n * 2));
    CK(cudaMemcpy(din, in, n, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(ds, scale, ns * 4, cudaMemcpyHostToDevice));
    k_fp8_dequant<bf16><<<grid_for(n / 8), 256>>>(din, ds, rows, cols, 0, bm, bn, dout);
    KCHECK();
    CK(cudaMemcpy(out, dout, n * 2, cudaMemcpyDeviceToHost));
    cudaFree(din); cudaFree(ds); cudaFree(dout);
    return 0;
}

// One synthetic full-size layer: every weight resident on the device (bf16), random hidden
// states, n_seq sequences of seq_len tokens. Runs `layers` layers (the first one warms up) and
// reports the last one's time and GEMM work.
extern "C" int fb_cuda_bench_layer(const fb_model_config *cfg, size_t n_seq, size_t seq_len,
                                   int all_experts, int layers, double *secs, double *flops,
                                   double *attn_s, double *expert_s, fb_err *err) {
    fb_cufwd_opts o;
    memset(&o, 0, sizeof o);
    o.all_experts = all_experts;
    o.expert_group = cfg->n_experts;
    o.token_chunk = 32768;
    fb_model_config c = *cfg;
    c.n_layers = layers;
    err->msg[0] = 0;
    fb_cufwd *f = cufwd_new_common(&c, &o, err);
    if (!f) return -1;
    int rc = -1;
    size_t N = n_seq * seq_len, H = (size_t)c.hidden, I = (size_t)c.inter, E = (size_t)c.n_experts;
    size_t Dq = (size_t)c.n_heads * c.head_dim, Dk = (size_t)c.n_kv_heads * c.head_dim;
    std::vector<size_t> st(n_seq + 1);
    for (size_t s = 0; s <= n_seq; s++) st[s] = s * seq_len;
    do {
        if (fb_cufwd_set_tokens(f, NULL, N, st.data(), n_seq, err)) break;
        k_fill_f32<<<grid_for(N * H), 256>>>(f->h, N * H, 1.0f, 0.0f, 11);
        size_t nq = (Dq + 2 * Dk) * H;
        if (cudaMalloc(&f->wqkv, nq * 2) != cudaSuccess || cudaMalloc(&f->wo, H * Dq * 2) != cudaSuccess ||
            cudaMalloc(&f->all_experts_w, E * 3 * I * H * 2) != cudaSuccess ||
            alloc_f(&f->ln1, H, err) || alloc_f(&f->ln2, H, err) || alloc_f(&f->qn, Dq, err) ||
            alloc_f(&f->kn, Dk, err) || alloc_f(&f->gate, E * H, err) || alloc_f(&f->bias, E, err)) {
            if (!err->msg[0]) fb_fail(err, "CUDA: cannot allocate the synthetic layer's weights");
            break;
        }
        float ws = 0.02f;
        k_fill_bf16<<<grid_for(nq), 256>>>((bf16 *)f->wqkv, nq, ws, 21);
        k_fill_bf16<<<grid_for(H * Dq), 256>>>((bf16 *)f->wo, H * Dq, ws, 22);
        k_fill_bf16<<<grid_for(E * 3 * I * H), 256>>>((bf16 *)f->all_experts_w, E * 3 * I * H, ws, 23);
        k_fill_f32<<<grid_for(H), 256>>>(f->ln1, H, 0.0f, 1.0f, 0);
        k_fill_f32<<<grid_for(H), 256>>>(f->ln2, H, 0.0f, 1.0f, 0);
        k_fill_f32<<<grid_for(Dq), 256>>>(f->qn, Dq, 0.0f, 1.0f, 0);
        k_fill_f32<<<grid_for(Dk), 256>>>(f->kn, Dk, 0.0f, 1.0f, 0);
        k_fill_f32<<<grid_for(E * H), 256>>>(f->gate, E * H, 0.05f, 0.0f, 24);
        k_fill_f32<<<grid_for(E), 256>>>(f->bias, E, 0.01f, 0.0f, 25);
        if (cudaDeviceSynchronize() != cudaSuccess) { fb_fail(err, "CUDA: fill failed"); break; }
        int ok = 1;
        for (int l = 0; l < layers && ok; l++) {
            fb_cufwd_timing before = f->tm;
            double t0 = now_s();
            if (run_layer(f, l, err)) { ok = 0; break; }
            *secs = now_s() - t0;
            *flops = f->tm.gemm_flops - before.gemm_flops;
            *attn_s = f->tm.attn_s - before.attn_s;
            *expert_s = f->tm.expert_s - before.expert_s;
        }
        if (ok) rc = 0;
    } while (0);
    // The bench layer's weights were allocated here, not by load_attn: free_layer_w frees them.
    fb_cufwd_free(f);
    return rc;
}
