// cutune.cu: SignRound on a whole decoder block on the GPU (see cutune.h). The CPU code it
// follows step for step is calib/autoround.c from "---- a whole decoder block" on (blk_forward,
// blk_backward, moe_pass (here moe_fwd / moe_bwd), lin_qdq, lin_step, signround); the names below are the same.
//
// Layout: row-major everywhere, as the CPU. A row-major product C[m,n] = op(A) op(B) is one
// cublasSgemm on the column-major transposes (C^T = op(B)^T op(A)^T): see gemm() below.
// Elementwise steps whose CPU form rounds each operation are written with __fmul_rn /
// __fadd_rn so that nvcc does not contract them into FMAs (the CPU is built -ffp-contract=off).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <algorithm>
#include <memory>
#include <thread>
#include <vector>

#include "cuda/cutune.h"
#include "cuda/blockreduce.h"

extern "C" {
#include "calib/mm.h"
}

#define G FB_AR_GROUP

namespace {

thread_local fb_cutune_info g_info;

typedef __nv_bfloat16 bf16;  // the experts' GEMM operands in fb_ar_opts.gemm bf16

// a store of an f32 result into an f32 or a bf16 (round to nearest even) buffer
__device__ inline void st(float *p, float v) { *p = v; }
__device__ inline void st(bf16 *p, float v) { *p = __float2bfloat16_rn(v); }

// ---- device helpers (autoround.c's, on the device) -----------------------------------------

__device__ inline float h16(float x) { return __half2float(__float2half_rn(x)); }
__device__ inline float clampq(float v) { return v < -8.0f ? -8.0f : v > 7.0f ? 7.0f : v; }
__device__ inline float sgn(float g) { return g > 0 ? 1.0f : g < 0 ? -1.0f : 0.0f; }

// int_sym's scale of one group with the min/max factors (autoround.c sym_scale).
__device__ inline float sym_scale(float wmin, float wmax, float mn, float mx, float *sv) {
    float a = -(wmin * mn), b = wmax * mx;
    float m = a > b ? a : b;
    float mv = (b < a ? 1.0f : -1.0f) * m;
    float s = h16(mv / 8.0f);
    const float thr = h16(1e-5f);
    if (sv) *sv = s;
    return s < 0 ? fminf(s, -thr) : fmaxf(s, thr);
}

__device__ double bsum_d(double v) { return fb_block_reduce<double>(v, 0.0, fb_op_add()); }

__device__ float bsum_f(float v) { return fb_block_reduce<float>(v, 0.0f, fb_op_add()); }

__device__ float bmax_f(float v) { return fb_block_reduce<float>(v, -INFINITY, fb_op_max()); }

// ---- kernels: the quantizer and the SignSGD step --------------------------------------------

// min(0, group), max(0, group) of the FP weight, one thread per group (lin_init's loop).
__global__ void k_group_minmax(const float *w0, size_t NG, float *lo, float *hi) {
    size_t gi = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (gi >= NG) return;
    const float *w = w0 + gi * G;
    float l = 0, h = 0;
    for (int k = 0; k < G; k++) {
        l = fminf(l, w[k]);
        h = fmaxf(h, w[k]);
    }
    lo[gi] = l;
    hi[gi] = h;
}

__global__ void k_clamp(float *mn, float *mx, size_t NG) {
    size_t gi = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (gi >= NG) return;
    mn[gi] = fminf(fmaxf(mn[gi], 0.0f), 1.0f);
    mx[gi] = fminf(fmaxf(mx[gi], 0.0f), 1.0f);
}

__global__ void k_fill(float *p, size_t n, float v) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = v;
}

// lin_qdq without the clamp (k_clamp first): one block of G threads per group.
template <typename TW>
__global__ void k_qdq(const float *w0, const float *v, const float *lo, const float *hi, const float *mn,
                      const float *mx, TW *wq, float *scale, int8_t *q) {
    size_t gi = blockIdx.x, i = gi * G + threadIdx.x;
    float s = sym_scale(lo[gi], hi[gi], mn[gi], mx[gi], NULL);
    if (scale && threadIdx.x == 0) scale[gi] = s;
    float c = clampq(rintf(w0[i] / s + v[i]));
    if (wq) st(wq + i, s * c);
    if (q) q[i] = (int8_t)c;
}

// lin_step's min/max factor step of group gi (one thread) from the group's scale-gradient sums
// gq, gd (the CPU's: f32, k ascending), the factors clamped to [0, 1] (the next iteration's
// sr_qdq clamp, done here once) into *mn, *mx.
__device__ void step_minmax(size_t gi, float gq, float gd, float sv, const float *lo, const float *hi, float *mn,
                            float *mx, float mlr) {
    const float thr = h16(1e-5f);
    float gs = h16(h16(gq) + h16(gd));
    if (!(sv < 0 ? sv < -thr : sv > thr)) gs = 0;
    float gm = gs / 8.0f;
    float m0 = *mn, m1 = *mx;
    float A = -(lo[gi] * m0), B = hi[gi] * m1;
    gm *= B < A ? 1.0f : -1.0f;
    float gA = A > B ? gm : A == B ? gm / 2 : 0.0f, gB = B > A ? gm : A == B ? gm / 2 : 0.0f;
    m0 = __fsub_rn(m0, __fmul_rn(mlr, sgn(-lo[gi] * gA)));
    m1 = __fsub_rn(m1, __fmul_rn(mlr, sgn(hi[gi] * gB)));
    *mn = fminf(fmaxf(m0, 0.0f), 1.0f);
    *mx = fminf(fmaxf(m1, 0.0f), 1.0f);
}

// lin_step: STEP_GROUPS groups per block of STEP_THREADS threads. The elementwise part runs on
// every thread (consecutive threads on consecutive elements); each group's two scale-gradient
// sums are the CPU's, f32 in k ascending order, each added by one lane: warp 0 adds the sq sums
// of the block's groups (lane g: group g), warp 1 the sd sums, so one instruction stream adds
// 2 x 32 sums at once instead of one lane adding both sums of one group (2 x 128 dependent adds
// and their loads issued per group). sd[k] is +0 where the clamp passes no gradient, which
// adds nothing: the sum starts at +0 and can never be -0 (x + -x is +0), so gd + 0 is gd. Then
// the next iteration's start for each group (sr_qdq: the factors clamped, the weight
// fake-quantized into wq), so that wq always holds the current parameters' weight. With bv (the
// iteration's loss is the best so far), the parameters before the step go there too (bv, bmn,
// bmx: the best-iteration snapshot, written where they are read anyway).
constexpr int STEP_GROUPS = 32, STEP_THREADS = 256, STEP_PER = STEP_GROUPS * G / STEP_THREADS;
template <typename TW>
__global__ void __launch_bounds__(STEP_THREADS)
k_step(const float *w0, float *v, const float *lo, const float *hi, float *mn, float *mx, const float *gw,
       size_t NG, float lr, float mlr, int minmax, TW *wq, float *bv, float *bmn, float *bmx) {
    // G + 1 floats per group: lane g's k-th term is in bank (g + k) mod 32, no two lanes alike
    __shared__ float sq[STEP_GROUPS][G + 1], sd[STEP_GROUPS][G + 1];
    __shared__ float ss[STEP_GROUPS], ssv[STEP_GROUPS], ssum[2][STEP_GROUPS];
    const size_t g0 = (size_t)blockIdx.x * STEP_GROUPS;
    const int t = threadIdx.x, ng = NG - g0 < (size_t)STEP_GROUPS ? (int)(NG - g0) : STEP_GROUPS;
    if (t < ng) {
        size_t gi = g0 + t;
        float m0 = mn[gi], m1 = mx[gi], sv;
        if (bv) {
            bmn[gi] = m0;
            bmx[gi] = m1;
        }
        ss[t] = sym_scale(lo[gi], hi[gi], m0, m1, &sv);
        ssv[t] = sv;
    }
    __syncthreads();
    float w[STEP_PER], vn[STEP_PER];
#pragma unroll
    for (int r = 0; r < STEP_PER; r++) {
        int e = t + STEP_THREADS * r, g = e / G, k = e % G;
        if (g >= ng) break;
        size_t i = g0 * G + e;
        float s = ss[g], wk = w0[i], gr = gw[i], vk = v[i];
        float tq = rintf(wk / s + vk);
        int in = tq > -8.0f && tq < 7.0f;  // torch 2.15's clamp passes no gradient at the bounds
        float c = clampq(tq);
        float gvk = in ? __fmul_rn(gr, s) : 0.0f;
        sq[g][k] = __fmul_rn(gr, c);
        sd[g][k] = in ? __fmul_rn(gvk, (-(wk / s)) / s) : 0.0f;
        vn[r] = __fsub_rn(vk, __fmul_rn(lr, sgn(gvk)));
        v[i] = vn[r];
        if (bv) bv[i] = vk;
        w[r] = wk;
    }
    if (minmax) {
        __syncthreads();
        if (t < 2 * STEP_GROUPS) {  // warp 0: the sq sums, warp 1: the sd sums
            int g = t % STEP_GROUPS;
            const float *p = t < STEP_GROUPS ? sq[g] : sd[g];
            float acc = 0;
#pragma unroll 32
            for (int k = 0; k < G; k++) acc = __fadd_rn(acc, p[k]);
            ssum[t / STEP_GROUPS][g] = acc;
        }
        __syncthreads();
        if (t < ng) {
            size_t gi = g0 + t;
            float m0 = mn[gi], m1 = mx[gi];
            step_minmax(gi, ssum[0][t], ssum[1][t], ssv[t], lo, hi, &m0, &m1, mlr);
            mn[gi] = m0;
            mx[gi] = m1;
            ss[t] = sym_scale(lo[gi], hi[gi], m0, m1, NULL);
        }
    }  // (without the min/max step the factors and so ss stay as they were)
    __syncthreads();
#pragma unroll
    for (int r = 0; r < STEP_PER; r++) {
        int e = t + STEP_THREADS * r, g = e / G;
        if (g >= ng) break;
        float s2 = ss[g];
        st(wq + g0 * G + e, s2 * clampq(rintf(w[r] / s2 + vn[r])));
    }
}

// ---- kernels: the block's forward and backward -----------------------------------------------

// rms_fwd: one block per row.
__global__ void k_rms_fwd(const float *x, const float *w, float eps, int n, float *y, float *inv) {
    const float *xr = x + (size_t)blockIdx.x * n;
    float *yr = y + (size_t)blockIdx.x * n;
    double ss = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = bsum_d(ss);
    float iv = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    if (threadIdx.x == 0) inv[blockIdx.x] = iv;
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = __fmul_rn(w[i], __fmul_rn(xr[i], iv));
}

// rms_bwd: dx (= or +=) w dy r - x r^3 mean(w dy x); dx may alias dy when add is 0 (each thread
// writes only the entries it read, after the row's sum).
__global__ void k_rms_bwd(const float *x, const float *w, const float *inv, const float *dy, int n, float *dx, int add) {
    size_t r = blockIdx.x;
    const float *xr = x + r * n, *dr = dy + r * n;
    float *o = dx + r * n, iv = inv[r];
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += (double)__fmul_rn(dr[i], w[i]) * xr[i];
    s = bsum_d(s);
    float c = __fmul_rn(__fmul_rn(__fmul_rn((float)(s / (double)n), iv), iv), iv);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = __fsub_rn(__fmul_rn(__fmul_rn(dr[i], w[i]), iv), __fmul_rn(xr[i], c));
        o[i] = add ? __fadd_rn(o[i], v) : v;
    }
}

// fb_mm_rope (back = 0) or rope_back (back = 1) of every head of one token per block; the
// token's position is its row modulo the sample length.
__global__ void k_rope(float *x, int ld, int nheads, int hd, int half, const float *inv_freq, int L, int back) {
    float *xt = x + (size_t)blockIdx.x * ld;
    float p = (float)(blockIdx.x % L);
    for (int idx = threadIdx.x; idx < nheads * half; idx += blockDim.x) {
        int h = idx / half, i = idx % half;
        float a = __fmul_rn(p, inv_freq[i]), c = cosf(a), s = sinf(a);
        float *xh = xt + (size_t)h * hd, x1 = xh[i], x2 = xh[i + half];
        if (!back) {
            xh[i] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(-x2, s));
            xh[i + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
        } else {
            xh[i] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
            xh[i + half] = __fadd_rn(__fmul_rn(-x1, s), __fmul_rn(x2, c));
        }
    }
}

// attn_probs' causal softmax: S [heads][L][L] of raw scores -> probabilities (block per row r of
// head blockIdx.y): scaled, softmax over keys 0..r, 0 on keys r+1 .. to the end of r's causal
// block (lb rows; the keys after it are never read).
__global__ void k_softmax_fwd(float *S, int L, int lb, float scale) {
    int r = blockIdx.x, kend = min(L, (r / lb + 1) * lb);
    float *s = S + ((size_t)blockIdx.y * L + r) * L;
    float m = -INFINITY;
    for (int k = threadIdx.x; k <= r; k += blockDim.x) {
        s[k] = __fmul_rn(s[k], scale);
        m = fmaxf(m, s[k]);
    }
    m = bmax_f(m);
    float sum = 0;
    for (int k = threadIdx.x; k <= r; k += blockDim.x) {
        s[k] = expf(s[k] - m);
        sum += s[k];
    }
    sum = bsum_f(sum);
    for (int k = threadIdx.x; k < kend; k += blockDim.x) s[k] = k <= r ? s[k] / sum : 0.0f;
}

// The softmax backward of blk_backward: dp = p (dp - sum p dp) * scale on keys 0..r, 0 after (to
// the end of r's causal block, as k_softmax_fwd).
__global__ void k_softmax_bwd(const float *S, float *dP, int L, int lb, float scale) {
    int r = blockIdx.x, kend = min(L, (r / lb + 1) * lb);
    size_t o = ((size_t)blockIdx.y * L + r) * L;
    const float *p = S + o;
    float *dp = dP + o;
    float dot = 0;
    for (int k = threadIdx.x; k <= r; k += blockDim.x) dot = __fadd_rn(dot, __fmul_rn(p[k], dp[k]));
    dot = bsum_f(dot);
    for (int k = threadIdx.x; k < kend; k += blockDim.x) dp[k] = k <= r ? __fmul_rn(__fmul_rn(p[k], dp[k] - dot), scale) : 0.0f;
}

__global__ void k_add(const float *a, const float *b, float *out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = __fadd_rn(a[i], b[i]);
}

// fb_mm_route (sigmoid, correction bias for the choice only) / fb_mm_route_softmax, one thread
// per token, the CPU's loops as they are; scr [n, E].
__global__ void k_route(const float *lg, const float *bias, int n, int E, int K, int softmax, int norm, int32_t *idx,
                        float *wt, float *scr) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    const float *l = lg + (size_t)t * E;
    float *s = scr + (size_t)t * E;
    int32_t *ix = idx + (size_t)t * K;
    float *w = wt + (size_t)t * K;
    unsigned long long ch[16] = {0};  // E <= 1024 (checked on the host)
    if (!softmax) {
        for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-l[e]));
        for (int j = 0; j < K; j++) {
            int best = -1;
            float bv = 0;
            for (int e = 0; e < E; e++) {
                if (ch[e >> 6] >> (e & 63) & 1) continue;
                float v = bias ? __fadd_rn(s[e], bias[e]) : s[e];
                if (best < 0 || v > bv) best = e, bv = v;
            }
            ch[best >> 6] |= 1ull << (best & 63);
        }
        int m = 0;
        for (int e = 0; e < E && m < K; e++)
            if (ch[e >> 6] >> (e & 63) & 1) ix[m++] = e;
        float sum = 0;
        for (int j = 0; j < K; j++) sum = __fadd_rn(sum, s[ix[j]]);
        for (int j = 0; j < K; j++) w[j] = s[ix[j]] / sum;
    } else {
        float mx = -INFINITY;
        for (int e = 0; e < E; e++)
            if (l[e] > mx) mx = l[e];
        float sum = 0;
        for (int e = 0; e < E; e++) {
            s[e] = expf(l[e] - mx);
            sum = __fadd_rn(sum, s[e]);
        }
        for (int e = 0; e < E; e++) s[e] = s[e] / sum;
        float tsum = 0;
        for (int j = 0; j < K; j++) {
            int best = -1;
            for (int e = 0; e < E; e++)
                if (!(ch[e >> 6] >> (e & 63) & 1) && (best < 0 || s[e] > s[best])) best = e;
            ch[best >> 6] |= 1ull << (best & 63);
            tsum = __fadd_rn(tsum, s[best]);
        }
        int m = 0;
        for (int e = 0; e < E && m < K; e++)
            if (ch[e >> 6] >> (e & 63) & 1) ix[m++] = e;
        for (int j = 0; j < K; j++) w[j] = norm ? s[ix[j]] / tsum : s[ix[j]];
    }
}

// blk_backward's router part: dLoss/droute (dr [n, E]) -> dLoss/dlogits (dlg [n, E]); one
// thread per token, scr [n, E].
__global__ void k_router_bwd(const float *lg, const int32_t *idx, const float *dr, int n, int E, int K, int softmax,
                             int norm, float *scr, float *dlg) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    const float *l = lg + (size_t)t * E, *d = dr + (size_t)t * E;
    const int32_t *ix = idx + (size_t)t * K;
    float *g = dlg + (size_t)t * E, dp[64];
    if (softmax) {
        float *p = scr + (size_t)t * E, mx = -INFINITY, sum = 0;
        for (int e = 0; e < E; e++)
            if (l[e] > mx) mx = l[e];
        for (int e = 0; e < E; e++) {
            p[e] = expf(l[e] - mx);
            sum = __fadd_rn(sum, p[e]);
        }
        for (int e = 0; e < E; e++) p[e] = p[e] / sum;
        float P = 0, dot = 0;
        for (int j = 0; j < K; j++) P = __fadd_rn(P, p[ix[j]]);
        for (int j = 0; j < K; j++) dot = __fadd_rn(dot, __fmul_rn(d[ix[j]], p[ix[j]] / P));
        for (int j = 0; j < K; j++) dp[j] = norm ? (d[ix[j]] - dot) / P : d[ix[j]];
        float pd = 0;
        for (int j = 0; j < K; j++) pd = __fadd_rn(pd, __fmul_rn(dp[j], p[ix[j]]));
        for (int e = 0; e < E; e++) g[e] = -p[e] * pd;
        for (int j = 0; j < K; j++) g[ix[j]] = __fadd_rn(g[ix[j]], __fmul_rn(p[ix[j]], dp[j]));
    } else {
        float S = 0, dot = 0;
        for (int j = 0; j < K; j++) {
            dp[j] = 1.0f / (1.0f + expf(-l[ix[j]]));
            S = __fadd_rn(S, dp[j]);
        }
        for (int j = 0; j < K; j++) dot = __fadd_rn(dot, __fmul_rn(d[ix[j]], dp[j] / S));
        for (int e = 0; e < E; e++) g[e] = 0.0f;
        for (int j = 0; j < K; j++) g[ix[j]] = __fmul_rn((d[ix[j]] - dot) / S, __fmul_rn(dp[j], 1.0f - dp[j]));
    }
}

// Rows pos[0..m) of src [*, H] into dst [m, H]; a padding row (pos -1) of zeros.
template <typename T> __global__ void k_gather(const float *src, const int *pos, int H, T *dst) {
    int p = pos[blockIdx.x];
    T *d = dst + (size_t)blockIdx.x * H;
    if (p < 0) {
        for (int k = threadIdx.x; k < H; k += blockDim.x) st(d + k, 0.0f);
        return;
    }
    const float *s = src + (size_t)p * H;
    for (int k = threadIdx.x; k < H; k += blockDim.x) st(d + k, s[k]);
}

__global__ void k_to_bf16(const float *src, size_t n, bf16 *dst) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

// Hh [m, FF] = silu(A) * B of the gate / up products AB [m, 2 FF] (A: the first FF columns of
// each row, B: the last FF), n = m * FF.
template <typename T> __global__ void k_swiglu(const float *AB, size_t FF, T *Hh, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / FF, c = i - r * FF;
        float a = AB[r * 2 * FF + c];
        st(Hh + i, __fmul_rn(a / (1.0f + expf(-a)), AB[r * 2 * FF + FF + c]));
    }
}

// out[t] = sum of re[j] Y[j] over the token's pairs j, experts ascending, from 0: the same
// additions in the same order as one expert after another adding into a zeroed out. Block per token.
__global__ void k_combine_tok(float *out, const int *tp, int K, const float *re, const float *Y, int H) {
    const int *p = tp + (size_t)blockIdx.x * K;
    float *o = out + (size_t)blockIdx.x * H;
    for (int k = threadIdx.x; k < H; k += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < K && p[j] >= 0; j++) acc = __fadd_rn(acc, __fmul_rn(re[p[j]], Y[(size_t)p[j] * H + k]));
        o[k] = acc;
    }
}

// dY[j] = re[j] * grad[pos[j]] and dr[pos[j], e] = grad[pos[j]] . Y[j] (Y the expert's output);
// a padding row (pos -1): dY 0.
template <typename T>
__global__ void k_dy_dr(const float *grad, const int *pos, const float *re, const float *Y, int H, int E, int e,
                        T *dY, float *dr) {
    int p = pos[blockIdx.x];
    T *d = dY + (size_t)blockIdx.x * H;
    if (p < 0) {
        for (int k = threadIdx.x; k < H; k += blockDim.x) st(d + k, 0.0f);
        return;
    }
    const float *gr = grad + (size_t)p * H, *y = Y + (size_t)blockIdx.x * H;
    float r = re[blockIdx.x], acc = 0;
    for (int k = threadIdx.x; k < H; k += blockDim.x) {
        st(d + k, __fmul_rn(r, gr[k]));
        if (dr) acc = __fadd_rn(acc, __fmul_rn(gr[k], y[k]));
    }
    if (!dr) return;
    acc = bsum_f(acc);
    if (threadIdx.x == 0) dr[(size_t)p * E + e] = acc;
}

// dHh [m, FF] -> [dA | dB] into D [m, 2 FF] (in place of AB when D is AB), as moe_pass's
// backward; n = m * FF.
template <typename T> __global__ void k_dswiglu(float *AB, size_t FF, const float *dHh, size_t n, T *D) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / FF, c = i - r * FF;
        const float *pa = AB + r * 2 * FF + c, *pb = pa + FF;
        float a = *pa, b = *pb, sg = 1.0f / (1.0f + expf(-a)), dh = dHh[i];
        T *da = D + r * 2 * FF + c;
        st(da, __fmul_rn(__fmul_rn(dh, b), __fmul_rn(sg, __fadd_rn(1.0f, __fmul_rn(a, 1.0f - sg)))));
        st(da + FF, __fmul_rn(dh, __fmul_rn(a, sg)));
    }
}

// dx[t] += D[j] over the token's pairs j, experts ascending (the scatter-adds' order).
__global__ void k_scatter_tok(float *dx, const int *tp, int K, const float *D, int H) {
    const int *p = tp + (size_t)blockIdx.x * K;
    float *d = dx + (size_t)blockIdx.x * H;
    for (int k = threadIdx.x; k < H; k += blockDim.x) {
        float acc = d[k];
        for (int j = 0; j < K && p[j] >= 0; j++) acc = __fadd_rn(acc, D[(size_t)p[j] * H + k]);
        d[k] = acc;
    }
}

// mse's partial sums (f32 squares, f64 sum) per block; k_sum_final adds them in block order.
__global__ void k_mse_part(const float *a, const float *b, size_t n, double *part) {
    double s = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float d = a[i] - b[i];
        s += (double)__fmul_rn(d, d);
    }
    s = bsum_d(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void k_sum_final(double *part, int nb) {
    double s = 0;
    for (int i = 0; i < nb; i++) s += part[i];
    part[nb] = s;
}

// grad = (out - tb) * k (MSELoss(mean) * 1000's derivative).
__global__ void k_lossgrad(const float *out, const float *tb, float k, size_t n, float *grad) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        grad[i] = __fmul_rn(out[i] - tb[i], k);
}

// ---- host side -------------------------------------------------------------------------------

const int NB_RED = 1024;  // blocks of the MSE reduction

int ew_grid(size_t n) {
    size_t b = (n + 255) / 256;
    return (int)(b > 65535 ? 65535 : b ? b : 1);
}

struct DLin {
    fb_ar_linear *L = nullptr;
    size_t R = 0, C = 0, NG = 0;
    int fixed = 1, expert = 0;
    float *w0 = nullptr, *wq = nullptr, *v = nullptr, *bv = nullptr, *mn = nullptr, *mx = nullptr;
    float *bmn = nullptr, *bmx = nullptr, *lo = nullptr, *hi = nullptr;
    bf16 *wq16 = nullptr;    // gemm bf16, experts: the fake-quantized weight, bf16 (no f32 wq)
    float *gsave = nullptr;  // host: gradient checks keep dLoss/dW here
};

// A lane: one stream with its own cuBLAS handle (own workspace) and its own expert scratch. The
// experts' passes are spread over the lanes (the k-th expert with rows on lane k mod lanes; results
// do not depend on the number); everything else runs on
// the main lane (the legacy default stream, u.h). Lanes are non-blocking streams ordered against
// the main one by events only.
struct Lane {
    cudaStream_t s = nullptr;
    cublasHandle_t h = nullptr;
    cudaEvent_t done = nullptr;
    float *Hh = nullptr, *dY = nullptr, *T = nullptr, *gw = nullptr;
    bf16 *Hh16 = nullptr, *dY16 = nullptr, *dAB16 = nullptr;  // gemm bf16: Hh, dY and [dA | dB] in bf16
};

constexpr int LANES_DEFAULT = 4, LANES_MAX = 32;

// The attention's GEMMs, each batched over the (sample, KV group) pairs of a chunk of samples for
// the i-th query head of each group and one causal block of rows (their operand lists: attn_ptrs).
enum { AK_S, AK_AO, AK_DP, AK_DV, AK_DQ, AK_DK, AK_N };

// Each expert's rows padded with zero rows to a multiple of EPAD: its GEMMs then come in a few
// dozen shapes instead of one per row count, which cuBLAS's per-shape algorithm choice (cached
// by shape) sees again from one iteration to the next. The zero rows add nothing to the weight
// gradients and are never combined into a token's output or input gradient.
constexpr size_t EPAD = 16;

// events per iteration (tune_block): start, experts' forward start / end, backward start, experts'
// backward end, end
constexpr int NEV = 6;

struct Blk {
    fb_err *err = nullptr;
    const fb_ar_block *b = nullptr;
    const fb_model_config *c = nullptr;
    size_t N = 0, seq = 0, cap = 0, H = 0, Dq = 0, Dk = 0, hd = 0, nh = 0, nkv = 0, E = 0, K = 0, FF = 0, grp = 0;
    float eps = 0, scale = 0;
    int softmax = 0;
    // causal row blocks of a sample: rows [r0, r0 + n) attend to keys [0, r0 + n), so each
    // attention GEMM skips the keys after its block (the upper triangle's zeros); cb = rows per
    // block, nb blocks. The attention runs per chunk of spc samples (S / dP: one query head per KV
    // group of each, spc x nkv L x L matrices); aptr: the operand pointers of its batched GEMMs
    size_t cb = 0, nb = 0, spc = 0, nchunk = 0;
    void **aptr = nullptr;
    cublasHandle_t h = nullptr;
    Lane main;  // {0, h}: the default stream
    std::vector<Lane> lanes;
    cudaEvent_t fork = nullptr;
    cublasComputeType_t ct = CUBLAS_COMPUTE_32F;  // CUBLAS_COMPUTE_32F: cublasSgemm (fb_ar_opts.gemm)
    // fb_ar_opts.gemm bf16: the routed experts' GEMMs take bf16 operands (Xe16, wq16, the lanes'
    // Hh16 / dY16 / dAB16), f32 accumulation and results; the rest as tf32 (ct)
    int b16 = 0;
    // where an iteration's time goes (fb_cutune_info.sect_s): NEV events per iteration, recorded
    // on the stream at the section boundaries and read after the last iteration's sync, so the
    // timing adds no synchronisation; ev points at the current iteration's (NULL: none)
    std::vector<cudaEvent_t> evs;
    cudaEvent_t *ev = nullptr;
    double moe_issue[2] = {0, 0};  // host seconds spent issuing the experts' forward / backward
    // this iteration's parameters are the ones to keep (its loss the best so far): each tuned
    // Linear's step snapshots them before stepping (lin_apply; lin_snap where no step runs)
    int snap = 0;
    // allocations: dry (sizing) or real
    int dry = 0;
    size_t bytes = 0, by_part[4] = {0, 0, 0, 0};
    std::vector<void *> mem;
    double flop = 0;
    // device
    float *x = nullptr, *target = nullptr, *ln1 = nullptr, *ln2 = nullptr, *qn = nullptr, *kn = nullptr;
    float *router = nullptr, *rbias = nullptr, *inv_freq = nullptr;
    const float *xcur = nullptr;
    float *xb, *tb, *xn1, *r1, *Q, *Kp, *V, *Qr, *Kr, *rq, *rk, *AO, *h1, *xn2, *r2, *lg, *out, *grad, *wt;
    int32_t *idx;
    float *dxn2, *dh1, *dAO, *dQ, *dK, *dV, *S, *dP, *dr, *dlg, *rscr;
    // the experts' rows of one batch, kept from the forward for the backward, at the (expert, token)
    // pair's index (experts ascending, u.off): gathered inputs Xe, gate / up products AB ([rows,
    // 2 FF]: one product with the expert's gate and up weights stacked, which are adjacent in
    // device memory), and outputs Y (the backward's input gradients replace them)
    float *gw, *Xe = nullptr, *re, *AB, *Y, *sbuf;
    bf16 *Xe16 = nullptr;
    int8_t *qbuf;
    int *pos, *tp;  // tp [cap, K]: each token's pair indices, experts ascending, -1 after its last
    double *part;
    std::vector<DLin> lin;
    // the routing of the last forward: experts' token lists (host), their device copy in pos/re
    std::vector<int32_t> hidx;
    std::vector<float> hwt, hre;
    std::vector<int> hpos, htp;
    std::vector<size_t> off;
    ~Blk() {
        for (cudaEvent_t e : evs) cudaEventDestroy(e);
        for (Lane &l : lanes) {
            if (l.done) cudaEventDestroy(l.done);
            if (l.h) cublasDestroy(l.h);
            if (l.s) cudaStreamDestroy(l.s);
        }
        if (fork) cudaEventDestroy(fork);
        for (void *p : mem) cudaFree(p);
        if (h) cublasDestroy(h);
    }
};

#define CK(call)                                                                                                    \
    do {                                                                                                            \
        cudaError_t e_ = (call);                                                                                    \
        if (e_ != cudaSuccess)                                                                                      \
            return fb_fail(u.err, "AutoRound on CUDA: %s (%s:%d): %s", #call, __FILE__, __LINE__,                   \
                           cudaGetErrorString(e_));                                                                 \
    } while (0)
#define CB(call)                                                                                                    \
    do {                                                                                                            \
        cublasStatus_t s_ = (call);                                                                                 \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                                            \
            return fb_fail(u.err, "AutoRound on CUDA: cuBLAS %s (%s:%d): status %d", #call, __FILE__, __LINE__,     \
                           (int)s_);                                                                                \
    } while (0)
#define KC() CK(cudaGetLastError())
#define TRY(call)                 \
    do {                          \
        if ((call)) return -1;    \
    } while (0)

enum { P_WEIGHTS, P_INPUTS, P_ACT, P_SCRATCH };
const char *const PART_NAME[4] = {"Linear weights and tuning state", "x and target", "one batch's activations",
                                  "expert and attention scratch"};

// One device allocation of n elements of sz bytes for `what` (counted by part; a dry run only
// counts). A failure names what did not fit.
template <typename T> int dalloc(Blk &u, T **p, size_t n, int part, const char *what) {
    size_t b = (n ? n : 1) * sizeof(T);
    b = (b + 255) & ~(size_t)255;
    u.bytes += b;
    u.by_part[part] += b;
    if (u.dry) {
        *p = nullptr;
        return 0;
    }
    void *q = nullptr;
    cudaError_t e = cudaMalloc(&q, b);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return fb_fail(u.err, "AutoRound on CUDA: the device has no room for %s (%zu bytes; %zu allocated before): %s",
                       what, b, u.bytes - b, cudaGetErrorString(e));
    }
    u.mem.push_back(q);
    *p = (T *)q;
    return 0;
}

// Row-major GEMMs: c[m, n] = op(a) op(b) (+ beta c), as autoround.c's nt / nn / tn, optionally
// batched (count > 1, element strides sa, sb, sc).
int gemm(Blk &u, const Lane &l, int ta, int tb_, const float *a, size_t lda, long long sa, const float *b, size_t ldb, long long sb,
         float *c, size_t ldc, long long sc, size_t m, size_t n, size_t k, float beta, int count) {
    if (!m || !n) return 0;
    const float one = 1.0f;
    u.flop += 2.0 * (double)m * (double)n * (double)k * count;
    // column-major: c^T [n, m] = op(b)^T [n, k] op(a)^T [k, m]
    cublasOperation_t ob = tb_ ? CUBLAS_OP_T : CUBLAS_OP_N, oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (u.ct != CUBLAS_COMPUTE_32F) {  // tensor cores (fb_ar_opts.gemm tf32), f32 in and out
        if (count == 1)
            CB(cublasGemmEx(l.h, ob, oa, (int)n, (int)m, (int)k, &one, b, CUDA_R_32F, (int)ldb, a, CUDA_R_32F, (int)lda,
                            &beta, c, CUDA_R_32F, (int)ldc, u.ct, CUBLAS_GEMM_DEFAULT));
        else
            CB(cublasGemmStridedBatchedEx(l.h, ob, oa, (int)n, (int)m, (int)k, &one, b, CUDA_R_32F, (int)ldb, sb, a,
                                          CUDA_R_32F, (int)lda, sa, &beta, c, CUDA_R_32F, (int)ldc, sc, count, u.ct,
                                          CUBLAS_GEMM_DEFAULT));
    } else if (count == 1)
        CB(cublasSgemm(l.h, ob, oa, (int)n, (int)m, (int)k, &one, b, (int)ldb, a, (int)lda, &beta, c, (int)ldc));
    else
        CB(cublasSgemmStridedBatched(l.h, ob, oa, (int)n, (int)m, (int)k, &one, b, (int)ldb, sb, a, (int)lda, sa, &beta,
                                     c, (int)ldc, sc, count));
    return 0;
}
// c[m, n] = a[m, k] b[n, k]^T
int nt(Blk &u, const Lane &l, const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc, size_t m, size_t n,
       size_t k, float beta) {
    return gemm(u, l, 0, 1, a, lda, 0, b, ldb, 0, c, ldc, 0, m, n, k, beta, 1);
}
// c[m, n] = a[m, k] b[k, n]
int nn(Blk &u, const Lane &l, const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc, size_t m, size_t n,
       size_t k, float beta) {
    return gemm(u, l, 0, 0, a, lda, 0, b, ldb, 0, c, ldc, 0, m, n, k, beta, 1);
}
// c[m, n] = a[k, m]^T b[k, n]
int tn(Blk &u, const Lane &l, const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc, size_t m, size_t n,
       size_t k, float beta) {
    return gemm(u, l, 1, 0, a, lda, 0, b, ldb, 0, c, ldc, 0, m, n, k, beta, 1);
}

// The experts' GEMMs, c[m, n] (f32) = op(a) op(b) + beta c on f32 operands (gemm, the mode's
// arithmetic) or on bf16 ones (gemm bf16: cuBLAS on bf16 inputs, f32 accumulation and output).
int egemm(Blk &u, const Lane &l, int ta, int tb_, const float *a, size_t lda, const float *b, size_t ldb, float *c,
          size_t ldc, size_t m, size_t n, size_t k, float beta) {
    return gemm(u, l, ta, tb_, a, lda, 0, b, ldb, 0, c, ldc, 0, m, n, k, beta, 1);
}
int egemm(Blk &u, const Lane &l, int ta, int tb_, const bf16 *a, size_t lda, const bf16 *b, size_t ldb, float *c,
          size_t ldc, size_t m, size_t n, size_t k, float beta) {
    if (!m || !n) return 0;
    const float one = 1.0f;
    u.flop += 2.0 * (double)m * (double)n * (double)k;
    cublasOperation_t ob = tb_ ? CUBLAS_OP_T : CUBLAS_OP_N, oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    CB(cublasGemmEx(l.h, ob, oa, (int)n, (int)m, (int)k, &one, b, CUDA_R_16BF, (int)ldb, a, CUDA_R_16BF, (int)lda, &beta,
                    c, CUDA_R_32F, (int)ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

// The block's Linears in order: q, k, v, o, then each expert's gate, up, down.
fb_ar_linear *blk_linear(const fb_ar_block *b, size_t j) {
    if (j < 4) return b->attn[j];
    fb_ar_expert *p = &b->experts[(j - 4) / 3];
    return (j - 4) % 3 == 0 ? &p->gate : (j - 4) % 3 == 1 ? &p->up : &p->down;
}

// f(i) for i in [0, n) on up to 16 host threads (the full block's host work is billions of
// elements: its checks and the results' s * q); each i once, so the order of writes is irrelevant.
template <class F> void par_for(size_t n, F f) {
    size_t nt = std::min<size_t>(std::max(1u, std::thread::hardware_concurrency()), 16);
    if (nt > n) nt = n;
    if (nt <= 1) {
        for (size_t i = 0; i < n; i++) f(i);
        return;
    }
    std::vector<std::thread> th;
    for (size_t t = 0; t < nt; t++)
        th.emplace_back([&, t] {
            for (size_t i = t; i < n; i += nt) f(i);
        });
    for (auto &x : th) x.join();
}

int all_finite(const float *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(p[i])) return 0;
    return 1;
}

int finite_or_fail(Blk &u, const float *p, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(p[i])) return fb_fail(u.err, "AutoRound block: %s element %zu is %g", what, i, (double)p[i]);
    return 0;
}

int weight_finite(Blk &u, const fb_ar_linear *l, const char *what, size_t e) {
    for (size_t r = 0; r < l->rows; r++)
        for (size_t k = 0; k < l->cols; k++) {
            float v = l->w[r * l->cols + k];
            if (!isfinite(v)) {
                if (e == (size_t)-1)
                    return fb_fail(u.err, "%s: AutoRound: weight row %zu column %zu is %g", what, r, k, (double)v);
                return fb_fail(u.err, "expert %zu %s: AutoRound: weight row %zu column %zu is %g", e, what, r, k,
                               (double)v);
            }
        }
    return 0;
}

// Rows per causal block of a sample of L tokens: L / 8 rounded up, to a multiple of 32 from L 256
// on (aligned operands; 8 blocks do 9/16 of the full L x L products), of 4 below (so that short
// test sequences run several blocks too).
size_t causal_rows(size_t L) {
    size_t q = L >= 256 ? 32 : 4, b = (L + 7) / 8;
    b = (b + q - 1) / q * q;
    return b < L ? b : L;
}

// The configuration's sizes into u (blk_check's first half).
int blk_sizes(Blk &u, const fb_model_config *c, size_t nsamples, size_t seq, size_t bs) {
    u.c = c, u.seq = seq;
    if (!c || c->hidden <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads || c->head_dim <= 0 ||
        c->rotary_dim < 0 || c->rotary_dim > c->head_dim || c->rotary_dim % 2 || c->n_experts <= 0 || c->top_k <= 0 ||
        c->top_k > c->n_experts || c->top_k > 64 || c->inter <= 0)
        return fb_fail(u.err, "AutoRound block: the model configuration is not one this loop can run");
    if (c->n_experts > 1024)
        return fb_fail(u.err, "AutoRound on CUDA: %d routed experts (at most 1024 here)", c->n_experts);
    u.H = (size_t)c->hidden, u.nh = (size_t)c->n_heads, u.nkv = (size_t)c->n_kv_heads, u.hd = (size_t)c->head_dim;
    u.Dq = u.nh * u.hd, u.Dk = u.nkv * u.hd, u.E = (size_t)c->n_experts, u.K = (size_t)c->top_k;
    u.FF = (size_t)c->inter, u.grp = u.nh / u.nkv;
    u.N = nsamples * seq, u.cap = bs * seq, u.eps = (float)c->eps;
    u.scale = (float)pow((double)u.hd, -0.5);
    u.cb = causal_rows(seq);
    u.nb = (seq + u.cb - 1) / u.cb;
    size_t hb = u.nh > 64 ? u.nh : 64;  // the L x L matrices S and dP hold (at least nh, as one sample's heads)
    u.spc = bs < hb / u.nkv ? bs : hb / u.nkv;
    if (!u.spc) u.spc = 1;
    u.nchunk = (bs + u.spc - 1) / u.spc;
    u.softmax = c->router == FB_ROUTER_SOFTMAX;
    size_t H = u.H, FF = u.FF, big = u.Dq > H ? u.Dq : H;
    if (big < FF) big = FF;
    if (big < u.E) big = u.E;
    if (!u.N || big > INT_MAX / 2 || u.cap > INT_MAX / big || seq > 46340)
        return fb_fail(u.err, "AutoRound block: %zu samples x %zu tokens (batch %zu) with widths up to %zu are out of range",
                       nsamples, seq, bs, big);
    return 0;
}

// autoround.c's blk_check: the same refusals, the same messages.
int blk_check(Blk &u, const fb_ar_block *b, const float *x, const float *target, size_t nsamples, size_t seq,
              size_t bs) {
    const fb_model_config *c = b->cfg;
    u.b = b;
    TRY(blk_sizes(u, c, nsamples, seq, bs));
    size_t H = u.H, FF = u.FF;
    size_t rows[4] = {u.Dq, u.Dk, u.Dk, H}, cols[4] = {H, H, H, u.Dq};
    static const char *const nm[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    for (int j = 0; j < 4; j++) {
        const fb_ar_linear *l = b->attn[j];
        if (!l || l->rows != rows[j] || l->cols != cols[j] || (b->attn_tuned[j] && l->cols % G))
            return fb_fail(u.err, "AutoRound block: %s is [%zu, %zu], expected [%zu, %zu]", nm[j], l ? l->rows : 0,
                           l ? l->cols : 0, rows[j], cols[j]);
        TRY(weight_finite(u, l, nm[j], (size_t)-1));
    }
    // the experts' weights scanned in parallel; the first bad one (lowest expert, gate/up/down,
    // lowest element) reported below as the sequential scan would
    std::vector<unsigned char> ok(u.E, 1);
    par_for(u.E, [&](size_t e) {
        const fb_ar_expert *p = &b->experts[e];
        const fb_ar_linear *l3[3] = {&p->gate, &p->up, &p->down};
        for (const fb_ar_linear *l : l3)
            if (l->w && !all_finite(l->w, l->rows * l->cols)) ok[e] = 0;
    });
    for (size_t e = 0; e < u.E; e++) {
        const fb_ar_expert *p = &b->experts[e];
        if (p->gate.rows != FF || p->gate.cols != H || p->up.rows != FF || p->up.cols != H || p->down.rows != H ||
            p->down.cols != FF || (b->experts_tuned && FF % G))
            return fb_fail(u.err, "AutoRound block: expert %zu: gate [%zu, %zu], up [%zu, %zu], down [%zu, %zu] for "
                                  "hidden %zu, intermediate %zu", e, p->gate.rows, p->gate.cols, p->up.rows, p->up.cols,
                           p->down.rows, p->down.cols, H, FF);
        if (ok[e]) continue;
        TRY(weight_finite(u, &p->gate, "gate", e));
        TRY(weight_finite(u, &p->up, "up", e));
        TRY(weight_finite(u, &p->down, "down", e));
    }
    size_t qnn = c->qk_norm == FB_QKN_ALL_HEADS ? u.Dq : u.hd, knn = c->qk_norm == FB_QKN_ALL_HEADS ? u.Dk : u.hd;
    if (!b->ln1 || !b->ln2 || !b->router || (c->qk_norm != FB_QKN_NONE && (!b->q_norm || !b->k_norm)))
        return fb_fail(u.err, "AutoRound block: a norm or the router weight is missing");
    if (finite_or_fail(u, b->ln1, H, "input_layernorm") || finite_or_fail(u, b->ln2, H, "post_attention_layernorm") ||
        finite_or_fail(u, b->router, u.E * H, "router") ||
        (b->router_bias && finite_or_fail(u, b->router_bias, u.E, "router bias")) ||
        (c->qk_norm != FB_QKN_NONE &&
         (finite_or_fail(u, b->q_norm, qnn, "q_norm") || finite_or_fail(u, b->k_norm, knn, "k_norm"))) ||
        finite_or_fail(u, x, u.N * H, "input") || finite_or_fail(u, target, u.N * H, "target"))
        return -1;
    return 0;
}

// Every device buffer (u.dry: only their sizes). tuned[j]: Linear j gets V, snapshots, factors.
int blk_alloc(Blk &u, const std::vector<int> &tuned, int need_q) {
    size_t cap = u.cap, H = u.H, Dq = u.Dq, Dk = u.Dk, E = u.E, FF = u.FF, L = u.seq, K = u.K;
    size_t pr = cap * K + E * (EPAD - 1), er = cap + EPAD - 1;  // pair rows, one expert's rows (padded)
    size_t nr = u.c->qk_norm == FB_QKN_PER_HEAD ? cap * u.nh : cap;
    size_t qnn = u.c->qk_norm == FB_QKN_ALL_HEADS ? Dq : u.hd, knn = u.c->qk_norm == FB_QKN_ALL_HEADS ? Dk : u.hd;
    TRY(dalloc(u, &u.x, u.N * H, P_INPUTS, "the block input x"));
    TRY(dalloc(u, &u.target, u.N * H, P_INPUTS, "the target"));
    TRY(dalloc(u, &u.ln1, H, P_WEIGHTS, "input_layernorm"));
    TRY(dalloc(u, &u.ln2, H, P_WEIGHTS, "post_attention_layernorm"));
    TRY(dalloc(u, &u.qn, qnn, P_WEIGHTS, "q_norm"));
    TRY(dalloc(u, &u.kn, knn, P_WEIGHTS, "k_norm"));
    TRY(dalloc(u, &u.router, E * H, P_WEIGHTS, "the router"));
    TRY(dalloc(u, &u.rbias, E, P_WEIGHTS, "the router bias"));
    TRY(dalloc(u, &u.inv_freq, (size_t)u.c->rotary_dim / 2 + 1, P_WEIGHTS, "RoPE frequencies"));
    struct { float **p; size_t n; } act[] = {
        {&u.xb, cap * H}, {&u.tb, cap * H}, {&u.xn1, cap * H}, {&u.r1, cap}, {&u.Q, cap * Dq}, {&u.Kp, cap * Dk},
        {&u.V, cap * Dk}, {&u.Qr, cap * Dq}, {&u.Kr, cap * Dk}, {&u.rq, nr}, {&u.rk, nr}, {&u.AO, cap * Dq},
        {&u.h1, cap * H}, {&u.xn2, cap * H}, {&u.r2, cap}, {&u.lg, cap * E}, {&u.out, cap * H}, {&u.grad, cap * H},
        {&u.wt, cap * K}, {&u.dxn2, cap * H}, {&u.dh1, cap * H}, {&u.dAO, cap * Dq}, {&u.dQ, cap * Dq},
        {&u.dK, cap * Dk}, {&u.dV, cap * Dk}, {&u.S, u.spc * u.nkv * L * L}, {&u.dP, u.spc * u.nkv * L * L}, {&u.dr, cap * E},
        {&u.dlg, cap * E}, {&u.rscr, cap * E}, {&u.re, pr}};
    for (auto &a : act) TRY(dalloc(u, a.p, a.n, P_ACT, "one batch's activations"));
    TRY(dalloc(u, &u.idx, cap * K, P_ACT, "one batch's routing"));
    TRY(dalloc(u, &u.pos, pr, P_ACT, "one batch's routing"));
    TRY(dalloc(u, &u.part, NB_RED + 1, P_ACT, "the loss reduction"));
    TRY(dalloc(u, &u.aptr, AK_N * u.grp * u.nb * u.nchunk * 3 * u.spc * u.nkv, P_ACT, "the attention's GEMM operand lists"));
    // the experts' rows of the batch (every (token, expert) pair), kept from forward to backward
    struct { float **p; size_t n; } kept[] = {{&u.AB, pr * 2 * FF}, {&u.Y, pr * H}};
    for (auto &a : kept) TRY(dalloc(u, a.p, a.n, P_ACT, "the experts' rows of one batch"));
    if (u.b16) TRY(dalloc(u, &u.Xe16, pr * H, P_ACT, "the experts' rows of one batch"));
    else TRY(dalloc(u, &u.Xe, pr * H, P_ACT, "the experts' rows of one batch"));
    TRY(dalloc(u, &u.tp, cap * K, P_ACT, "one batch's routing"));
    // each lane's scratch: one expert's rows (at most every token of the batch), its weights
    size_t ew = u.lin.size() > 4 ? 2 * FF * H : 1;  // gw: the stacked gate / up gradient
    for (Lane &l : u.lanes) {
        TRY(dalloc(u, &l.T, er * FF, P_SCRATCH, "the experts' scratch"));
        TRY(dalloc(u, &l.gw, ew, P_SCRATCH, "the experts' scratch"));
        if (!u.b16) {
            TRY(dalloc(u, &l.Hh, er * FF, P_SCRATCH, "the experts' scratch"));
            TRY(dalloc(u, &l.dY, er * H, P_SCRATCH, "the experts' scratch"));
            continue;
        }
        TRY(dalloc(u, &l.Hh16, er * FF, P_SCRATCH, "the experts' scratch"));
        TRY(dalloc(u, &l.dY16, er * H, P_SCRATCH, "the experts' scratch"));
        TRY(dalloc(u, &l.dAB16, er * 2 * FF, P_SCRATCH, "the experts' scratch"));
    }
    size_t maxw = 0, maxg = 0;
    for (size_t j = 0; j < u.lin.size(); j++) {
        DLin &a = u.lin[j];
        size_t n = a.R * a.C;
        if (n > maxw) maxw = n;
        if (a.NG > maxg) maxg = a.NG;
        char what[96];
        snprintf(what, sizeof what, "Linear %zu (%zu x %zu)", j, a.R, a.C);
        // an expert's gate and up weights adjacent ([2 FF, H], gate first): the up Linear's
        // w0 / wq point into its gate's allocation
        int gate = a.expert && (j - 4) % 3 == 0, up = a.expert && (j - 4) % 3 == 1;
        if (up) a.w0 = u.dry ? nullptr : u.lin[j - 1].w0 + n;
        else TRY(dalloc(u, &a.w0, gate ? 2 * n : n, P_WEIGHTS, what));
        if (a.expert && u.b16) {  // bf16 only, tuned or fixed (blk_setup converts a fixed one)
            if (up) a.wq16 = u.dry ? nullptr : u.lin[j - 1].wq16 + n;
            else TRY(dalloc(u, &a.wq16, gate ? 2 * n : n, P_WEIGHTS, what));
        }
        if (!tuned[j]) {
            a.wq = a.w0;
            continue;
        }
        if (a.expert && u.b16) a.wq = nullptr;
        else if (up) a.wq = u.dry ? nullptr : u.lin[j - 1].wq + n;
        else TRY(dalloc(u, &a.wq, gate ? 2 * n : n, P_WEIGHTS, what));
        TRY(dalloc(u, &a.v, n, P_WEIGHTS, what));
        TRY(dalloc(u, &a.bv, n, P_WEIGHTS, what));
        float **f[6] = {&a.mn, &a.mx, &a.bmn, &a.bmx, &a.lo, &a.hi};
        for (int i = 0; i < 6; i++) TRY(dalloc(u, f[i], a.NG, P_WEIGHTS, what));
    }
    TRY(dalloc(u, &u.gw, maxw, P_SCRATCH, "the weight-gradient scratch"));
    u.main.gw = u.gw;
    TRY(dalloc(u, &u.sbuf, need_q ? maxg : 1, P_SCRATCH, "the scales' scratch"));
    TRY(dalloc(u, &u.qbuf, need_q ? maxw : 1, P_SCRATCH, "the codes' scratch"));
    return 0;
}

int attn_ptrs(Blk &u);

// Sizes every buffer, checks them against the device's free memory, allocates, uploads.
int blk_setup(Blk &u, const float *x, const float *target, const std::vector<int> &tuned, int need_q) {
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev < 1) {
        cudaGetLastError();
        return fb_fail(u.err, "AutoRound on CUDA: no usable GPU (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    }
    CK(cudaSetDevice(0));
    u.dry = 1;
    u.bytes = 0;
    memset(u.by_part, 0, sizeof u.by_part);
    TRY(blk_alloc(u, tuned, need_q));
    size_t fr = 0, tot = 0;
    CK(cudaMemGetInfo(&fr, &tot));
    const size_t margin = (size_t)512 << 20;  // cuBLAS workspace, the context's own
    if (u.bytes + margin > fr) {
        cudaDeviceProp pr;
        CK(cudaGetDeviceProperties(&pr, 0));
        const double gi = 1.0 / (1 << 30);
        return fb_fail(u.err, "AutoRound on CUDA: the block does not fit %s: it needs %.2f GiB (%s %.2f GiB, %s %.2f GiB, "
                              "%s %.2f GiB, %s %.2f GiB) + %.2f GiB reserve, %.2f GiB of %.2f GiB are free (fewer "
                              "samples or a smaller --batch-size shrink the last three)",
                       pr.name, u.bytes * gi, PART_NAME[0], u.by_part[0] * gi, PART_NAME[1], u.by_part[1] * gi,
                       PART_NAME[2], u.by_part[2] * gi, PART_NAME[3], u.by_part[3] * gi, margin * gi, fr * gi, tot * gi);
    }
    u.dry = 0;
    u.bytes = 0;
    memset(u.by_part, 0, sizeof u.by_part);
    TRY(blk_alloc(u, tuned, need_q));
    TRY(attn_ptrs(u));
    CB(cublasCreate(&u.h));
    CB(cublasSetMathMode(u.h, CUBLAS_DEFAULT_MATH));  // no TF32: the CPU path is the truth
    u.main.h = u.h;
    CK(cudaEventCreateWithFlags(&u.fork, cudaEventDisableTiming));
    for (Lane &l : u.lanes) {
        CK(cudaStreamCreateWithFlags(&l.s, cudaStreamNonBlocking));
        CB(cublasCreate(&l.h));
        CB(cublasSetMathMode(l.h, CUBLAS_DEFAULT_MATH));
        CB(cublasSetStream(l.h, l.s));
        CK(cudaEventCreateWithFlags(&l.done, cudaEventDisableTiming));
    }
    const fb_ar_block *b = u.b;
    const fb_model_config *c = u.c;
    size_t H = u.H, fl = sizeof(float);
    CK(cudaMemcpy(u.x, x, u.N * H * fl, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(u.target, target, u.N * H * fl, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(u.ln1, b->ln1, H * fl, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(u.ln2, b->ln2, H * fl, cudaMemcpyHostToDevice));
    if (c->qk_norm != FB_QKN_NONE) {
        size_t qnn = c->qk_norm == FB_QKN_ALL_HEADS ? u.Dq : u.hd, knn = c->qk_norm == FB_QKN_ALL_HEADS ? u.Dk : u.hd;
        CK(cudaMemcpy(u.qn, b->q_norm, qnn * fl, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(u.kn, b->k_norm, knn * fl, cudaMemcpyHostToDevice));
    }
    CK(cudaMemcpy(u.router, b->router, u.E * H * fl, cudaMemcpyHostToDevice));
    if (b->router_bias) CK(cudaMemcpy(u.rbias, b->router_bias, u.E * fl, cudaMemcpyHostToDevice));
    std::vector<float> inv((size_t)c->rotary_dim / 2 + 1, 0.0f);
    fb_mm_rope_inv_freq(c->rope_theta, c->rotary_dim, inv.data());
    CK(cudaMemcpy(u.inv_freq, inv.data(), inv.size() * fl, cudaMemcpyHostToDevice));
    for (size_t j = 0; j < u.lin.size(); j++) {
        DLin &a = u.lin[j];
        size_t n = a.R * a.C;
        CK(cudaMemcpy(a.w0, a.L->w, n * fl, cudaMemcpyHostToDevice));
        if (!tuned[j]) {
            if (a.wq16) {
                k_to_bf16<<<ew_grid(n), 256>>>(a.w0, n, a.wq16);
                KC();
            }
            continue;
        }
        CK(cudaMemset(a.v, 0, n * fl));
        CK(cudaMemset(a.bv, 0, n * fl));
        float *ones[4] = {a.mn, a.mx, a.bmn, a.bmx};
        for (int i = 0; i < 4; i++) {
            k_fill<<<ew_grid(a.NG), 256>>>(ones[i], a.NG, 1.0f);
            KC();
        }
        k_group_minmax<<<(unsigned)((a.NG + 127) / 128), 128>>>(a.w0, a.NG, a.lo, a.hi);
        KC();
    }
    CK(cudaDeviceSynchronize());
    return 0;
}

// f(the Linear's fake-quantized weight buffer): bf16 (an expert's in gemm bf16) or f32.
template <typename F> void on_wq(const DLin &a, F f) {
    if (a.wq16) f(a.wq16);
    else f(a.wq);
}

// lin_apply: keep the gradient gw (checks), the SignSGD step (tuned; it also refreshes a.wq,
// so every use of this iteration's weight must be issued before it, on the same stream), or
// nothing (fixed).
int lin_apply(Blk &u, const Lane &l, DLin &a, const float *gw, float lr, float mlr, int minmax) {
    if (a.gsave) {
        CK(cudaStreamSynchronize(l.s));
        CK(cudaMemcpy(a.gsave, gw, a.R * a.C * sizeof(float), cudaMemcpyDeviceToHost));
    } else if (!a.fixed) {
        unsigned nb = (unsigned)((a.NG + STEP_GROUPS - 1) / STEP_GROUPS);
        float *bv = u.snap ? a.bv : nullptr;
        on_wq(a, [&](auto *wq) {
            k_step<<<nb, STEP_THREADS, 0, l.s>>>(a.w0, a.v, a.lo, a.hi, a.mn, a.mx, gw, a.NG, lr, mlr, minmax, wq, bv,
                                                     a.bmn, a.bmx);
        });
        KC();
    }
    return 0;
}
inline int wants_grad(const DLin &a) { return a.gsave || !a.fixed; }

// The snapshot of a tuned Linear that takes no step this iteration (an expert no token of the
// batch was routed to): its parameters copied as they are.
int lin_snap(Blk &u, const Lane &l, DLin &a) {
    if (!u.snap || a.fixed || a.gsave) return 0;
    CK(cudaMemcpyAsync(a.bv, a.v, a.R * a.C * sizeof(float), cudaMemcpyDeviceToDevice, l.s));
    CK(cudaMemcpyAsync(a.bmn, a.mn, a.NG * sizeof(float), cudaMemcpyDeviceToDevice, l.s));
    CK(cudaMemcpyAsync(a.bmx, a.mx, a.NG * sizeof(float), cudaMemcpyDeviceToDevice, l.s));
    return 0;
}

// The lanes start after the main stream's work so far; lanes_join: the main stream waits for them.
int lanes_fork(Blk &u) {
    CK(cudaEventRecord(u.fork, 0));
    for (Lane &l : u.lanes) CK(cudaStreamWaitEvent(l.s, u.fork, 0));
    return 0;
}
int lanes_join(Blk &u) {
    for (Lane &l : u.lanes) {
        CK(cudaEventRecord(l.done, l.s));
        CK(cudaStreamWaitEvent(0, l.done, 0));
    }
    return 0;
}

// The experts' GEMM operands of one arithmetic: f32 (wq, Xe, the lanes' Hh / dY; [dA | dB] in
// place of AB) or bf16 (gemm bf16: wq16, Xe16, Hh16, dY16, dAB16).
template <typename T> struct Ops;
template <> struct Ops<float> {
    static const float *W(const DLin &a) { return a.wq; }
    static float *Xe(const Blk &u) { return u.Xe; }
    static float *Hh(const Lane &l) { return l.Hh; }
    static float *dY(const Lane &l) { return l.dY; }
    static float *dAB(const Lane &, float *AB) { return AB; }
};
template <> struct Ops<bf16> {
    static const bf16 *W(const DLin &a) { return a.wq16; }
    static bf16 *Xe(const Blk &u) { return u.Xe16; }
    static bf16 *Hh(const Lane &l) { return l.Hh16; }
    static bf16 *dY(const Lane &l) { return l.dY16; }
    static bf16 *dAB(const Lane &l, float *) { return l.dAB16; }
};

// moe_fwd over the batch's n rows (xn2) into out, with the experts' current weights (wq): each
// expert on its lane keeps its gathered rows, gate / up products and output at its pairs' rows
// of Xe / AB / Y; then one ordered combine.
template <typename T> int moe_fwd_t(Blk &u, size_t n, float *out) {
    size_t H = u.H, FF = u.FF, E = u.E, nl = u.lanes.size(), k = 0;
    TRY(lanes_fork(u));
    for (size_t e = 0; e < E; e++) {
        size_t m = u.off[e + 1] - u.off[e], o = u.off[e];
        if (!m) continue;
        const Lane &l = u.lanes[k++ % nl];
        const DLin &g = u.lin[4 + 3 * e], &d = u.lin[4 + 3 * e + 2];
        const T *Wgu = Ops<T>::W(g), *Wd = Ops<T>::W(d);  // [Wg; Wu]: the up Linear's weight follows the gate's
        T *xe = Ops<T>::Xe(u) + o * H, *Hh = Ops<T>::Hh(l);
        float *AB = u.AB + o * 2 * FF;
        k_gather<<<(unsigned)m, 256, 0, l.s>>>(u.xn2, u.pos + o, (int)H, xe);
        KC();
        TRY(egemm(u, l, 0, 1, xe, H, Wgu, H, AB, 2 * FF, m, 2 * FF, H, 0.0f));  // [A | B] = xe [Wg; Wu]^T
        k_swiglu<<<ew_grid(m * FF), 256, 0, l.s>>>(AB, FF, Hh, m * FF);
        KC();
        TRY(egemm(u, l, 0, 1, Hh, FF, Wd, FF, u.Y + o * H, H, m, H, FF, 0.0f));  // the expert's output
    }
    TRY(lanes_join(u));
    k_combine_tok<<<(unsigned)n, 256>>>(out, u.tp, (int)u.K, u.re, u.Y, (int)H);
    KC();
    return 0;
}

// moe_bwd: dLoss/dout = grad to each expert Linear (stepped), dLoss/droute into dr, and
// dLoss/dxn2 added into dxn2 (an ordered scatter after the lanes). Uses what moe_fwd kept.
template <typename T> int moe_bwd_t(Blk &u, size_t n, const float *grad, float lr, float mlr, int minmax) {
    size_t H = u.H, FF = u.FF, E = u.E, nl = u.lanes.size(), k = 0;
    TRY(lanes_fork(u));
    for (size_t e = 0; e < E; e++) {
        size_t m = u.off[e + 1] - u.off[e], o = u.off[e];
        if (!m) {
            for (int t = 0; t < 3; t++) TRY(lin_snap(u, u.main, u.lin[4 + 3 * e + t]));
            continue;
        }
        const Lane &l = u.lanes[k++ % nl];
        DLin &g = u.lin[4 + 3 * e], &up = u.lin[4 + 3 * e + 1], &d = u.lin[4 + 3 * e + 2];
        const T *Wgu = Ops<T>::W(g), *Wd = Ops<T>::W(d);  // this iteration's, until each one's step
        const int *pos = u.pos + o;
        const float *re = u.re + o;
        const T *xe = Ops<T>::Xe(u) + o * H;
        T *Hh = Ops<T>::Hh(l), *dY = Ops<T>::dY(l);
        float *AB = u.AB + o * 2 * FF, *Y = u.Y + o * H;
        T *dAB = Ops<T>::dAB(l, AB);
        k_dy_dr<<<(unsigned)m, 256, 0, l.s>>>(grad, pos, re, Y, (int)H, (int)E, (int)e, dY, u.dr);
        KC();
        k_swiglu<<<ew_grid(m * FF), 256, 0, l.s>>>(AB, FF, Hh, m * FF);
        KC();
        if (wants_grad(d)) TRY(egemm(u, l, 1, 0, dY, H, Hh, FF, l.gw, FF, H, FF, m, 0.0f));  // dWd = dY^T Hh
        TRY(egemm(u, l, 0, 0, dY, H, Wd, FF, l.T, FF, m, FF, H, 0.0f));                      // dHh = dY Wd
        if (wants_grad(d)) TRY(lin_apply(u, l, d, l.gw, lr, mlr, minmax));
        k_dswiglu<<<ew_grid(m * FF), 256, 0, l.s>>>(AB, FF, l.T, m * FF, dAB);  // [dA | dB] (f32: in AB)
        KC();
        // dx = [dA | dB] [Wg; Wu], into the expert's rows of Y (read above by k_dy_dr, on this lane)
        TRY(egemm(u, l, 0, 0, dAB, 2 * FF, Wgu, H, Y, H, m, H, 2 * FF, 0.0f));
        if (wants_grad(g) || wants_grad(up)) {  // [dWg; dWu] = [dA | dB]^T xe
            TRY(egemm(u, l, 1, 0, dAB, 2 * FF, xe, H, l.gw, H, 2 * FF, H, m, 0.0f));
            TRY(lin_apply(u, l, g, l.gw, lr, mlr, minmax));
            TRY(lin_apply(u, l, up, l.gw + FF * H, lr, mlr, minmax));
        }
    }
    TRY(lanes_join(u));
    k_scatter_tok<<<(unsigned)n, 256>>>(u.dxn2, u.tp, (int)u.K, u.Y, (int)H);
    KC();
    return 0;
}

int moe_fwd(Blk &u, size_t n, float *out) { return u.b16 ? moe_fwd_t<bf16>(u, n, out) : moe_fwd_t<float>(u, n, out); }
int moe_bwd(Blk &u, size_t n, const float *grad, float lr, float mlr, int minmax) {
    return u.b16 ? moe_bwd_t<bf16>(u, n, grad, lr, mlr, minmax) : moe_bwd_t<float>(u, n, grad, lr, mlr, minmax);
}

// The operand lists of the attention's GEMM (kind k, query head i of each KV group, causal block
// b, chunk c of samples): A, B and C pointers of each (sample, group) pair, sample-major.
size_t aidx(const Blk &u, int k, size_t i, size_t b, size_t c) {
    return ((((size_t)k * u.grp + i) * u.nb + b) * u.nchunk + c) * 3 * u.spc * u.nkv;
}

// Fills u.aptr once (the buffers do not move): for the pair (sample s, group g), head g grp + i
// reads Qr / dAO columns (g grp + i) hd and Kr / V columns g hd of the sample's rows; its L x L
// matrices are S / dP + (s - c spc) nkv + g (only the current i is held). Block b: rows [b0, b0 +
// m), b0 = b cb; S, AO, dP and dQ of those rows against the keys up to b0 + m; dV and dK of those
// keys from the rows from b0 on.
int attn_ptrs(Blk &u) {
    size_t L = u.seq, Dq = u.Dq, Dk = u.Dk, hd = u.hd, nkv = u.nkv, grp = u.grp, bs = u.spc * nkv, LL = L * L;
    std::vector<void *> h(aidx(u, AK_N, 0, 0, 0), nullptr);
    for (int k = 0; k < AK_N; k++)
        for (size_t i = 0; i < grp; i++)
            for (size_t b = 0; b < u.nb; b++)
                for (size_t c = 0; c < u.nchunk; c++) {
                    void **p = h.data() + aidx(u, k, i, b, c);
                    size_t b0 = b * u.cb;
                    for (size_t sl = 0; sl < u.spc && (c * u.spc + sl) * L < u.cap; sl++)
                        for (size_t g = 0; g < nkv; g++) {
                            size_t r0 = (c * u.spc + sl) * L, j = sl * nkv + g, qh = (g * grp + i) * hd;
                            float *S = u.S + j * LL + b0 * L, *dP = u.dP + j * LL + b0 * L;
                            float *q = u.Qr + (r0 + b0) * Dq + qh, *dO = u.dAO + (r0 + b0) * Dq + qh;
                            float *kk = u.Kr + r0 * Dk + g * hd, *v = u.V + r0 * Dk + g * hd;
                            float *ABC[AK_N][3] = {
                                {q, kk, S},                                          // S = Q K^T
                                {S, v, u.AO + (r0 + b0) * Dq + qh},                  // AO = P V
                                {dO, v, dP},                                         // dP = dO V^T
                                {S + b0, dO, u.dV + (r0 + b0) * Dk + g * hd},        // dV += P^T dO
                                {dP, kk, u.dQ + (r0 + b0) * Dq + qh},                // dQ = dS K
                                {dP + b0, q, u.dK + (r0 + b0) * Dk + g * hd}};       // dK += dS^T Q
                            for (int t = 0; t < 3; t++) p[t * bs + j] = ABC[k][t];
                        }
                }
    CK(cudaMemcpy(u.aptr, h.data(), h.size() * sizeof(void *), cudaMemcpyHostToDevice));
    return 0;
}

// c[m, n] = op(a) op(b) (+ beta c) over the count pairs of the operand list (kind k, head i,
// block b, chunk c), as gemm.
int gemm_list(Blk &u, int k, size_t i, size_t b, size_t c, int ta, int tb_, size_t lda, size_t ldb, size_t ldc,
              size_t m, size_t n, size_t kk, float beta, int count) {
    if (!m || !n || !count) return 0;
    const float one = 1.0f;
    u.flop += 2.0 * (double)m * (double)n * (double)kk * count;
    void **p = u.aptr + aidx(u, k, i, b, c);
    size_t bs = u.spc * u.nkv;
    cublasOperation_t ob = tb_ ? CUBLAS_OP_T : CUBLAS_OP_N, oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (u.ct != CUBLAS_COMPUTE_32F)
        CB(cublasGemmBatchedEx(u.h, ob, oa, (int)n, (int)m, (int)kk, &one, (const void *const *)(p + bs), CUDA_R_32F,
                               (int)ldb, (const void *const *)p, CUDA_R_32F, (int)lda, &beta, p + 2 * bs, CUDA_R_32F,
                               (int)ldc, count, u.ct, CUBLAS_GEMM_DEFAULT));
    else
        CB(cublasSgemmBatched(u.h, ob, oa, (int)n, (int)m, (int)kk, &one, (const float *const *)(p + bs), (int)ldb,
                              (const float *const *)p, (int)lda, &beta, (float *const *)(p + 2 * bs), (int)ldc, count));
    return 0;
}

// The probabilities of query head i of each KV group for the ns samples of chunk c into S:
// softmax(scale Q K^T, causal), per causal block of rows.
int attn_probs(Blk &u, size_t c, size_t ns, size_t i) {
    size_t L = u.seq, nbat = ns * u.nkv;
    for (size_t b = 0; b < u.nb; b++) {
        size_t b0 = b * u.cb, m = L - b0 < u.cb ? L - b0 : u.cb;
        TRY(gemm_list(u, AK_S, i, b, c, 0, 1, u.Dq, u.Dk, L, m, b0 + m, u.hd, 0.0f, (int)nbat));
    }
    k_softmax_fwd<<<dim3((unsigned)L, (unsigned)nbat), 128>>>(u.S, (int)L, (int)u.cb, u.scale);
    KC();
    return 0;
}

// blk_forward on the n rows at u.xcur (whole samples) into u.out.
int blk_forward(Blk &u, size_t n) {
    const fb_model_config *c = u.c;
    size_t H = u.H, Dq = u.Dq, Dk = u.Dk, hd = u.hd, E = u.E, K = u.K, L = u.seq;
    k_rms_fwd<<<(unsigned)n, 256>>>(u.xcur, u.ln1, u.eps, (int)H, u.xn1, u.r1);
    KC();
    TRY(nt(u, u.main, u.xn1, H, u.lin[0].wq, H, u.Q, Dq, n, Dq, H, 0.0f));
    TRY(nt(u, u.main, u.xn1, H, u.lin[1].wq, H, u.Kp, Dk, n, Dk, H, 0.0f));
    TRY(nt(u, u.main, u.xn1, H, u.lin[2].wq, H, u.V, Dk, n, Dk, H, 0.0f));
    if (c->qk_norm == FB_QKN_ALL_HEADS) {
        k_rms_fwd<<<(unsigned)n, 256>>>(u.Q, u.qn, u.eps, (int)Dq, u.Qr, u.rq);
        KC();
        k_rms_fwd<<<(unsigned)n, 256>>>(u.Kp, u.kn, u.eps, (int)Dk, u.Kr, u.rk);
        KC();
    } else if (c->qk_norm == FB_QKN_PER_HEAD) {
        k_rms_fwd<<<(unsigned)(n * u.nh), 128>>>(u.Q, u.qn, u.eps, (int)hd, u.Qr, u.rq);
        KC();
        k_rms_fwd<<<(unsigned)(n * u.nkv), 128>>>(u.Kp, u.kn, u.eps, (int)hd, u.Kr, u.rk);
        KC();
    } else {
        CK(cudaMemcpyAsync(u.Qr, u.Q, n * Dq * sizeof(float), cudaMemcpyDeviceToDevice));
        CK(cudaMemcpyAsync(u.Kr, u.Kp, n * Dk * sizeof(float), cudaMemcpyDeviceToDevice));
    }
    int half = c->rotary_dim / 2;
    if (half) {
        k_rope<<<(unsigned)n, 256>>>(u.Qr, (int)Dq, (int)u.nh, (int)hd, half, u.inv_freq, (int)L, 0);
        KC();
        k_rope<<<(unsigned)n, 256>>>(u.Kr, (int)Dk, (int)u.nkv, (int)hd, half, u.inv_freq, (int)L, 0);
        KC();
    }
    // attention per chunk of samples and query head i of each KV group: the probabilities, then
    // AO of head (g, i) = P V_g per causal block, batched over the chunk's (sample, group) pairs
    for (size_t c = 0; c * u.spc < n / L; c++) {
        size_t ns = n / L - c * u.spc < u.spc ? n / L - c * u.spc : u.spc;
        for (size_t i = 0; i < u.grp; i++) {
            TRY(attn_probs(u, c, ns, i));
            for (size_t b = 0; b < u.nb; b++) {
                size_t b0 = b * u.cb, m = L - b0 < u.cb ? L - b0 : u.cb;
                TRY(gemm_list(u, AK_AO, i, b, c, 0, 0, L, Dk, Dq, m, hd, b0 + m, 0.0f, (int)(ns * u.nkv)));
            }
        }
    }
    TRY(nt(u, u.main, u.AO, Dq, u.lin[3].wq, Dq, u.h1, H, n, H, Dq, 0.0f));
    k_add<<<ew_grid(n * H), 256>>>(u.xcur, u.h1, u.h1, n * H);
    KC();
    k_rms_fwd<<<(unsigned)n, 256>>>(u.h1, u.ln2, u.eps, (int)H, u.xn2, u.r2);
    KC();
    TRY(nt(u, u.main, u.xn2, H, u.router, H, u.lg, E, n, E, H, 0.0f));
    k_route<<<(unsigned)((n + 127) / 128), 128>>>(u.lg, u.b->router_bias ? u.rbias : nullptr, (int)n, (int)E, (int)K,
                                                  u.softmax, u.c->norm_topk_prob, u.idx, u.wt, u.rscr);
    KC();
    // each expert's tokens (ascending), as moe_fwd gathers them (a weight of exactly 0 skipped),
    // its rows padded with zero rows (pos -1) to a multiple of EPAD
    u.hidx.resize(n * K);
    u.hwt.resize(n * K);
    CK(cudaMemcpy(u.hidx.data(), u.idx, n * K * sizeof(int32_t), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(u.hwt.data(), u.wt, n * K * sizeof(float), cudaMemcpyDeviceToHost));
    u.off.assign(E + 1, 0);
    for (size_t i = 0; i < n * K; i++)
        if (u.hwt[i] != 0) u.off[(size_t)u.hidx[i] + 1]++;
    for (size_t e = 0; e < E; e++) u.off[e + 1] = u.off[e] + (u.off[e + 1] + EPAD - 1) / EPAD * EPAD;
    u.hpos.assign(u.off[E], -1);
    u.hre.assign(u.off[E], 0.0f);
    std::vector<size_t> fill(u.off.begin(), u.off.end() - 1);
    for (size_t t = 0; t < n; t++)
        for (size_t j = 0; j < K; j++) {
            size_t i = t * K + j;
            if (u.hwt[i] == 0) continue;
            size_t at = fill[(size_t)u.hidx[i]]++;
            u.hpos[at] = (int)t;
            u.hre[at] = u.hwt[i];
        }
    // each token's pairs, experts ascending (the order of the combine and of the scatter)
    u.htp.assign(n * K, -1);
    std::vector<unsigned char> cnt(n, 0);
    for (size_t j = 0; j < u.off[E]; j++) {
        if (u.hpos[j] < 0) continue;
        size_t t = (size_t)u.hpos[j];
        u.htp[t * K + cnt[t]++] = (int)j;
    }
    size_t tot = u.off[E];
    if (tot) {
        CK(cudaMemcpy(u.pos, u.hpos.data(), tot * sizeof(int), cudaMemcpyHostToDevice));
        CK(cudaMemcpy(u.re, u.hre.data(), tot * sizeof(float), cudaMemcpyHostToDevice));
    }
    CK(cudaMemcpy(u.tp, u.htp.data(), n * K * sizeof(int), cudaMemcpyHostToDevice));
    if (u.ev) CK(cudaEventRecord(u.ev[1]));
    double th = fb_now();
    TRY(moe_fwd(u, n, u.out));
    if (u.ev) {
        u.moe_issue[0] += fb_now() - th;
        CK(cudaEventRecord(u.ev[2]));
    }
    k_add<<<ew_grid(n * H), 256>>>(u.h1, u.out, u.out, n * H);
    KC();
    return 0;
}

// blk_backward: u.grad (dLoss/dout of the last forward's n rows) to every Linear.
int blk_backward(Blk &u, size_t n, float lr, float mlr, int minmax) {
    const fb_model_config *c = u.c;
    size_t H = u.H, Dq = u.Dq, Dk = u.Dk, hd = u.hd, E = u.E, K = u.K, L = u.seq;
    CK(cudaMemsetAsync(u.dxn2, 0, n * H * sizeof(float)));
    CK(cudaMemsetAsync(u.dr, 0, n * E * sizeof(float)));
    double th = fb_now();
    TRY(moe_bwd(u, n, u.grad, lr, mlr, minmax));
    if (u.ev) {
        u.moe_issue[1] += fb_now() - th;
        CK(cudaEventRecord(u.ev[4]));
    }
    k_router_bwd<<<(unsigned)((n + 127) / 128), 128>>>(u.lg, u.idx, u.dr, (int)n, (int)E, (int)K, u.softmax,
                                                       u.c->norm_topk_prob, u.rscr, u.dlg);
    KC();
    TRY(nn(u, u.main, u.dlg, E, u.router, H, u.dxn2, H, n, H, E, 1.0f));
    CK(cudaMemcpyAsync(u.dh1, u.grad, n * H * sizeof(float), cudaMemcpyDeviceToDevice));
    k_rms_bwd<<<(unsigned)n, 256>>>(u.h1, u.ln2, u.r2, u.dxn2, (int)H, u.dh1, 1);
    KC();
    DLin &lo = u.lin[3];
    if (wants_grad(lo)) TRY(tn(u, u.main, u.dh1, H, u.AO, Dq, u.gw, Dq, H, Dq, n, 0.0f));
    TRY(nn(u, u.main, u.dh1, H, lo.wq, Dq, u.dAO, Dq, n, Dq, H, 0.0f));
    if (wants_grad(lo)) TRY(lin_apply(u, u.main, lo, u.gw, lr, mlr, minmax));  // after the last use of lo.wq
    CK(cudaMemsetAsync(u.dK, 0, n * Dk * sizeof(float)));
    CK(cudaMemsetAsync(u.dV, 0, n * Dk * sizeof(float)));
    // per chunk of samples and query head i of each KV group (the heads of a group one after
    // another, so that dV_g and dK_g add their heads' products in head order, the CPU's per-head
    // loop), each GEMM batched over the chunk's (sample, group) pairs, per causal block: dP and dQ
    // of a block of rows against the keys up to its end, dV and dK of a block of keys from the
    // rows from its start on (the zeros of the upper triangle skipped)
    for (size_t c = 0; c * u.spc < n / L; c++) {
        size_t ns = n / L - c * u.spc < u.spc ? n / L - c * u.spc : u.spc;
        int nbat = (int)(ns * u.nkv);
        for (size_t i = 0; i < u.grp; i++) {
            TRY(attn_probs(u, c, ns, i));
            for (size_t b = 0; b < u.nb; b++) {
                size_t b0 = b * u.cb, m = L - b0 < u.cb ? L - b0 : u.cb;
                TRY(gemm_list(u, AK_DP, i, b, c, 0, 1, Dq, Dk, L, m, b0 + m, hd, 0.0f, nbat));  // dP = dO V^T
                TRY(gemm_list(u, AK_DV, i, b, c, 1, 0, L, Dq, Dk, m, hd, L - b0, 1.0f, nbat));  // dV += P^T dO
            }
            k_softmax_bwd<<<dim3((unsigned)L, (unsigned)nbat), 128>>>(u.S, u.dP, (int)L, (int)u.cb, u.scale);
            KC();
            for (size_t b = 0; b < u.nb; b++) {
                size_t b0 = b * u.cb, m = L - b0 < u.cb ? L - b0 : u.cb;
                TRY(gemm_list(u, AK_DQ, i, b, c, 0, 0, L, Dk, Dq, m, hd, b0 + m, 0.0f, nbat));  // dQ = dS K
                TRY(gemm_list(u, AK_DK, i, b, c, 1, 0, L, Dq, Dk, m, hd, L - b0, 1.0f, nbat));  // dK += dS^T Q
            }
        }
    }
    int half = c->rotary_dim / 2;
    if (half) {
        k_rope<<<(unsigned)n, 256>>>(u.dQ, (int)Dq, (int)u.nh, (int)hd, half, u.inv_freq, (int)L, 1);
        KC();
        k_rope<<<(unsigned)n, 256>>>(u.dK, (int)Dk, (int)u.nkv, (int)hd, half, u.inv_freq, (int)L, 1);
        KC();
    }
    if (c->qk_norm == FB_QKN_ALL_HEADS) {
        k_rms_bwd<<<(unsigned)n, 256>>>(u.Q, u.qn, u.rq, u.dQ, (int)Dq, u.dQ, 0);
        KC();
        k_rms_bwd<<<(unsigned)n, 256>>>(u.Kp, u.kn, u.rk, u.dK, (int)Dk, u.dK, 0);
        KC();
    } else if (c->qk_norm == FB_QKN_PER_HEAD) {
        k_rms_bwd<<<(unsigned)(n * u.nh), 128>>>(u.Q, u.qn, u.rq, u.dQ, (int)hd, u.dQ, 0);
        KC();
        k_rms_bwd<<<(unsigned)(n * u.nkv), 128>>>(u.Kp, u.kn, u.rk, u.dK, (int)hd, u.dK, 0);
        KC();
    }
    const float *dY[3] = {u.dQ, u.dK, u.dV};
    size_t R[3] = {Dq, Dk, Dk};
    for (int j = 0; j < 3; j++) {
        DLin &a = u.lin[j];
        if (!wants_grad(a)) continue;
        TRY(tn(u, u.main, dY[j], R[j], u.xn1, H, u.gw, H, R[j], H, n, 0.0f));
        TRY(lin_apply(u, u.main, a, u.gw, lr, mlr, minmax));
    }
    return 0;
}

// mse(a, b) over n elements (f32 squares, f64 sum), into *out.
int d_mse(Blk &u, const float *a, const float *b, size_t n, double *out) {
    k_mse_part<<<NB_RED, 256>>>(a, b, n, u.part);
    KC();
    k_sum_final<<<1, 1>>>(u.part, NB_RED);
    KC();
    double s = 0;
    CK(cudaMemcpy(&s, u.part + NB_RED, sizeof s, cudaMemcpyDeviceToHost));
    *out = s / (double)n;
    return 0;
}

// blk_full: the MSE over every sample with the current weights.
int blk_full(Blk &u, double *out) {
    double s = 0;
    for (size_t t0 = 0; t0 < u.N; t0 += u.cap) {
        size_t n = u.N - t0 < u.cap ? u.N - t0 : u.cap;
        u.xcur = u.x + t0 * u.H;
        TRY(blk_forward(u, n));
        double m;
        TRY(d_mse(u, u.out, u.target + t0 * u.H, n * u.H, &m));
        s += m * (double)(n * u.H);
    }
    *out = s / (double)(u.N * u.H);
    return 0;
}

// sr_qdq: every tuned Linear's factors clamped, its fake-quantized weight into wq. Run where
// the parameters are set (the start, the kept ones restored); in between, each SignSGD step
// (k_step) does the same for its group.
int sr_qdq(Blk &u) {
    for (DLin &a : u.lin) {
        if (a.fixed) continue;
        k_clamp<<<ew_grid(a.NG), 256>>>(a.mn, a.mx, a.NG);
        KC();
        on_wq(a, [&](auto *wq) { k_qdq<<<(unsigned)a.NG, G>>>(a.w0, a.v, a.lo, a.hi, a.mn, a.mx, wq, nullptr, nullptr); });
        KC();
    }
    return 0;
}

// Fills u.lin from the block (tuned[j] for Linear j).
void lin_setup(Blk &u, fb_ar_block *b, std::vector<int> &tuned, int all_fixed) {
    size_t nl = 4 + 3 * u.E;
    u.lin.assign(nl, DLin());
    tuned.assign(nl, 0);
    for (size_t j = 0; j < nl; j++) {
        DLin &a = u.lin[j];
        a.L = blk_linear(b, j);
        a.R = a.L->rows, a.C = a.L->cols, a.NG = a.R * a.C / G;
        a.expert = j >= 4;
        tuned[j] = all_fixed ? 0 : j < 4 ? b->attn_tuned[j] : b->experts_tuned;
        a.fixed = !tuned[j];
    }
}

int tune_block(Blk &u, const float *x, const float *target, size_t nsamples, size_t seq, fb_ar_block *b,
               const fb_ar_opts *o, fb_ar_result *res) {
    double t0 = fb_now();
    if (o->iters < 1) return fb_fail(u.err, "AutoRound block: %d iterations", o->iters);
    static const cublasComputeType_t CT[] = {CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32,
                                             CUBLAS_COMPUTE_32F_FAST_TF32};
    if (o->gemm < 0 || o->gemm > FB_AR_GEMM_BF16) return fb_fail(u.err, "AutoRound on CUDA: GEMM mode %d", o->gemm);
    u.ct = CT[o->gemm];
    u.b16 = o->gemm == FB_AR_GEMM_BF16;
    size_t bs = o->batch_size ? o->batch_size : 8;
    if (bs > nsamples) bs = nsamples;
    TRY(blk_check(u, b, x, target, nsamples, seq, bs));
    double tc = fb_now();
    if (o->cuda_lanes < 0 || o->cuda_lanes > LANES_MAX)
        return fb_fail(u.err, "AutoRound on CUDA: %d lanes (1..%d, 0: %d)", o->cuda_lanes, LANES_MAX, LANES_DEFAULT);
    std::vector<int> tuned;
    lin_setup(u, b, tuned, 0);
    u.lanes.resize(o->cuda_lanes ? (size_t)o->cuda_lanes : LANES_DEFAULT);
    TRY(blk_setup(u, x, target, tuned, 1));
    size_t H = u.H, n = bs * seq;
    float lr = o->lr > 0 ? o->lr : 1.0f / (float)o->iters, mlr = o->minmax_lr > 0 ? o->minmax_lr : lr;
    int minmax = !o->disable_minmax;
    std::vector<size_t> order((size_t)o->iters * bs);
    fb_autoround_sample_order(nsamples, o, order.data());
    double t1 = fb_now();
    TRY(sr_qdq(u));
    TRY(blk_full(u, &res->rtn_mse));
    CK(cudaDeviceSynchronize());
    double t2 = fb_now(), full_flop = u.flop;
    double best = 3.4028234663852886e38;  // torch.finfo(float).max
    float lr_i = lr, mlr_i = mlr;
    u.evs.assign((size_t)o->iters * NEV, nullptr);
    for (cudaEvent_t &e : u.evs) CK(cudaEventCreate(&e));
    for (int it = 0; it < o->iters; it++) {
        if (o->cancel && o->cancel->load()) {  // Ctrl-C: nothing replaced
            fb_fail(u.err, "AutoRound: interrupted");
            return -2;
        }
        u.ev = &u.evs[(size_t)it * NEV];
        CK(cudaEventRecord(u.ev[0]));
        for (size_t k = 0; k < bs; k++) {  // the batch's samples (whole sequences) in order
            size_t smp = order[(size_t)it * bs + k];
            CK(cudaMemcpyAsync(u.xb + k * seq * H, u.x + smp * seq * H, seq * H * sizeof(float), cudaMemcpyDeviceToDevice));
            CK(cudaMemcpyAsync(u.tb + k * seq * H, u.target + smp * seq * H, seq * H * sizeof(float),
                               cudaMemcpyDeviceToDevice));
        }
        u.xcur = u.xb;
        TRY(blk_forward(u, n));
        double m;
        TRY(d_mse(u, u.out, u.tb, n * H, &m));
        double loss = (double)(float)m;  // loss.item() of an f32 tensor
        k_lossgrad<<<ew_grid(n * H), 256>>>(u.out, u.tb, 2000.0f / (float)(n * H), n * H, u.grad);
        KC();
        if (it == 0) res->init_loss = loss;
        if (o->loss_trace) o->loss_trace[it] = loss;
        if (loss < best || (o->not_use_best_mse && it == o->iters - 1)) {
            if (loss < best) {
                best = loss;
                res->best_iter = it;
                res->best_loss = loss;
            }
            u.snap = 1;  // taken by each Linear's step in the backward below (or lin_snap)
        }
        CK(cudaEventRecord(u.ev[3]));
        TRY(blk_backward(u, n, lr_i, mlr_i, minmax));
        u.snap = 0;
        CK(cudaEventRecord(u.ev[5]));
        // LinearLR(1 -> 0): lr *= 1 - 1 / (iters - it), in f32 as torch scales a tensor lr
        float f = (float)(1.0 + -1.0 / ((double)o->iters + (double)it * -1.0));
        lr_i = lr_i * f;
        mlr_i = mlr_i * f;
    }
    CK(cudaDeviceSynchronize());
    double t3 = fb_now(), iter_flop = u.flop - full_flop;
    memset(g_info.sect_s, 0, sizeof g_info.sect_s);
    for (int it = 0; it < o->iters; it++)
        for (int k = 0; k < NEV - 1; k++) {
            float ms = 0;
            CK(cudaEventElapsedTime(&ms, u.evs[(size_t)it * NEV + k], u.evs[(size_t)it * NEV + k + 1]));
            g_info.sect_s[k] += 1e-3 * ms;
        }
    g_info.moe_issue_s[0] = u.moe_issue[0];
    g_info.moe_issue_s[1] = u.moe_issue[1];
    u.ev = nullptr;
    if (o->not_use_best_mse) res->best_loss = best;
    // the kept parameters become the current ones: the final pass and the results read them
    for (DLin &a : u.lin) {
        if (a.fixed) continue;
        CK(cudaMemcpyAsync(a.v, a.bv, a.R * a.C * sizeof(float), cudaMemcpyDeviceToDevice));
        CK(cudaMemcpyAsync(a.mn, a.bmn, a.NG * sizeof(float), cudaMemcpyDeviceToDevice));
        CK(cudaMemcpyAsync(a.mx, a.bmx, a.NG * sizeof(float), cudaMemcpyDeviceToDevice));
    }
    TRY(sr_qdq(u));
    double f0 = u.flop;
    TRY(blk_full(u, &res->final_mse));
    CK(cudaDeviceSynchronize());
    double t4 = fb_now();
    full_flop += u.flop - f0;
    // every tuned Linear's scales and codes into host staging first (the caller's weights change
    // only once everything is back); then w = s * q on the host: the device's k_qdq value is that
    // one f32 product, so the same bits, for a quarter of the transfer
    std::vector<std::vector<float>> ss(u.lin.size());
    std::vector<std::unique_ptr<int8_t[]>> qs(u.lin.size());
    for (size_t j = 0; j < u.lin.size(); j++) {
        DLin &a = u.lin[j];
        if (a.fixed) continue;
        float *wq = a.wq16 ? nullptr : a.wq;  // (its values are not used)
        k_qdq<<<(unsigned)a.NG, G>>>(a.w0, a.v, a.lo, a.hi, a.mn, a.mx, wq, u.sbuf, u.qbuf);
        KC();
        ss[j].resize(a.NG);
        qs[j].reset(new (std::nothrow) int8_t[a.R * a.C]);
        if (!qs[j]) return fb_fail(u.err, "AutoRound on CUDA: out of host memory for the results (%zu bytes)", a.R * a.C);
        CK(cudaMemcpy(ss[j].data(), u.sbuf, a.NG * sizeof(float), cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(qs[j].get(), u.qbuf, a.R * a.C, cudaMemcpyDeviceToHost));
    }
    par_for(u.lin.size(), [&](size_t j) {
        DLin &a = u.lin[j];
        if (a.fixed) return;
        const float *s = ss[j].data();
        const int8_t *q = qs[j].get();
        float *w = a.L->w;
        for (size_t i = 0, n = a.R * a.C; i < n; i++) w[i] = s[i / G] * (float)q[i];
        if (a.L->scale) memcpy(a.L->scale, s, a.NG * sizeof(float));
        if (a.L->q) memcpy(a.L->q, q, a.R * a.C);
    });
    g_info.device_bytes = u.bytes;
    g_info.check_s = tc - t0;
    g_info.setup_s = t1 - t0;
    g_info.download_s = fb_now() - t4;
    g_info.iters_s = t3 - t2;
    g_info.full_s = (t2 - t1) + (t4 - t3);
    g_info.iter_flop = iter_flop;
    g_info.full_flop = full_flop;
    return 0;
}

int block_grad(Blk &u, const float *x, const float *target, size_t nsamples, size_t seq, const fb_ar_block *b,
               double *loss, float **grads) {
    TRY(blk_check(u, b, x, target, nsamples, seq, nsamples));
    std::vector<int> tuned;
    lin_setup(u, (fb_ar_block *)b, tuned, 1);
    for (size_t j = 0; j < u.lin.size(); j++) u.lin[j].gsave = grads ? grads[j] : nullptr;
    u.lanes.resize(LANES_DEFAULT);
    TRY(blk_setup(u, x, target, tuned, 0));
    size_t n = u.N, H = u.H;
    u.xcur = u.x;
    TRY(blk_forward(u, n));
    double m;
    TRY(d_mse(u, u.out, u.target, n * H, &m));
    *loss = 1000.0 * m;
    k_lossgrad<<<ew_grid(n * H), 256>>>(u.out, u.target, 2000.0f / (float)(n * H), n * H, u.grad);
    KC();
    TRY(blk_backward(u, n, 0, 0, 0));
    CK(cudaDeviceSynchronize());
    return 0;
}

}  // namespace

extern "C" int fb_cuda_autoround_tune_block(const float *x, const float *target, size_t nsamples, size_t seq,
                                            fb_ar_block *b, const fb_ar_opts *o, fb_ar_result *res, fb_err *err) {
    memset(res, 0, sizeof *res);
    fb_ar_result r;
    memset(&r, 0, sizeof r);
    int rc;
    {
        Blk u;
        u.err = err;
        rc = tune_block(u, x, target, nsamples, seq, b, o, &r);
    }
    if (rc == 0) *res = r;
    return rc == -2 ? -2 : rc ? -1 : 0;  // -2: cancelled (fb_ar_opts.cancel)
}

extern "C" int fb_cuda_autoround_block_grad(const float *x, const float *target, size_t nsamples, size_t seq,
                                            const fb_ar_block *b, double *loss, float **grads, fb_err *err) {
    Blk u;
    u.err = err;
    return block_grad(u, x, target, nsamples, seq, b, loss, grads) ? -1 : 0;
}

extern "C" void fb_cuda_autoround_last_info(fb_cutune_info *info) { *info = g_info; }

extern "C" size_t fb_cuda_autoround_block_bytes(const fb_model_config *cfg, size_t nsamples, size_t seq,
                                                size_t batch_size, const int attn_tuned[4], int experts_tuned) {
    Blk u;
    fb_err err;
    u.err = &err;
    size_t bs = batch_size ? batch_size : 8;
    if (bs > nsamples) bs = nsamples;
    if (blk_sizes(u, cfg, nsamples, seq, bs)) return 0;
    size_t nl = 4 + 3 * u.E, R[4] = {u.Dq, u.Dk, u.Dk, u.H}, C[4] = {u.H, u.H, u.H, u.Dq};
    std::vector<int> tuned(nl, 0);
    u.lin.assign(nl, DLin());
    for (size_t j = 0; j < nl; j++) {
        DLin &a = u.lin[j];
        a.R = j < 4 ? R[j] : (j - 4) % 3 == 2 ? u.H : u.FF;
        a.C = j < 4 ? C[j] : (j - 4) % 3 == 2 ? u.FF : u.H;
        a.NG = a.R * a.C / G;
        a.expert = j >= 4;
        tuned[j] = j < 4 ? attn_tuned[j] : experts_tuned;
        a.fixed = !tuned[j];
    }
    u.dry = 1;
    u.lanes.resize(LANES_DEFAULT);
    if (blk_alloc(u, tuned, 1)) return 0;
    return u.bytes;
}
