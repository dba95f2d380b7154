// blockreduce.h: the block-wide reduction both CUDA files use (cufwd.cu: the engine; cutune.cu:
// AutoRound's block tuning). Warp shuffles, then one warp over the per-warp partials; every
// thread of the block gets the result. blockDim.x <= 1024; all threads must call it. nvcc only.
#ifndef FB_CUDA_BLOCKREDUCE_H
#define FB_CUDA_BLOCKREDUCE_H

struct fb_op_add {
    template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct fb_op_max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Each instantiation (T, Op) has its own shared scratch, as separate functions did.
template <typename T, typename Op>
__device__ __forceinline__ T fb_block_reduce(T v, T identity, Op op) {
    __shared__ T sh[32];
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        v = lane < nw ? sh[lane] : identity;
        for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    T r = sh[0];
    __syncthreads();
    return r;
}

#endif
