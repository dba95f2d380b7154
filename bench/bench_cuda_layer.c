// bench_cuda_layer: one full-size synthetic MiniMax-M2 layer on the GPU (cuda/cufwd.h), in the
// calibration mode (all 256 experts' w1/w3 on every token), with as many tokens as fit (up to
// 64 x 2048). Reports, all measured in this run:
//   - cuBLAS bf16 GEMM peak (8192^3, bf16 out; and the expert GEMM shape with f32 out);
//   - the layer's time, its GEMM work (2*m*n*k) and achieved TFLOP/s, as a ratio to the peak;
//   - FP8 block-dequant kernel rate and pinned host-to-device rate (GB/s of fp8 bytes);
//   - disk read rate of a scratch file with O_DIRECT (BENCH_DIR, default /tmp; skipped with
//     BENCH_DISK_MB=0);
//   - the projected time of a whole 62-layer calibration pass: per layer, reading the FP8
//     weights from disk + uploading + dequantizing on the GPU + compute, summed (no overlap)
//     and overlapped (I/O and compute in parallel: the larger of the two).
// Usage: bench_cuda_layer [n_seq [seq_len [routed]]]   (defaults 64 2048; exit 0 without a GPU)
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calib/mm.h"
#include "common/fb.h"
#ifdef FB_HAVE_CUDA
#include "cuda/cufwd.h"
#endif

#ifdef FB_HAVE_CUDA
// O_DIRECT read rate of a fresh file of mb MiB (written first, then read back bypassing the
// page cache). Returns GB/s, or -1 when O_DIRECT is not available there.
static double disk_rate(const char *dir, size_t mb) {
    char path[512];
    snprintf(path, sizeof path, "%s/fourbit-bench-disk.%d", dir, (int)getpid());
    size_t blk = (size_t)64 << 20;
    void *buf;
    if (posix_memalign(&buf, 4096, blk)) return -1;
    memset(buf, 0x5A, blk);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) { free(buf); return -1; }
    size_t total = mb << 20, done = 0;
    while (done < total) {
        ssize_t w = write(fd, buf, blk);
        if (w <= 0) break;
        done += (size_t)w;
    }
    fdatasync(fd);
    close(fd);
    double r = -1;
    fd = open(path, O_RDONLY | O_DIRECT);
    if (fd >= 0) {
        double t0 = fb_now();
        size_t got = 0;
        for (;;) {
            ssize_t n = read(fd, buf, blk);
            if (n <= 0) break;
            got += (size_t)n;
        }
        double t = fb_now() - t0;
        close(fd);
        if (got == total && t > 0) r = (double)got / t / 1e9;
    }
    unlink(path);
    free(buf);
    return r;
}
#endif

int main(int argc, char **argv) {
#ifndef FB_HAVE_CUDA
    (void)argc; (void)argv;
    printf("bench_cuda_layer: built without CUDA; nothing to measure\n");
    return 0;
#else
    char name[96], why[256];
    if (!fb_cuda_probe(name, sizeof name, why, sizeof why)) {
        printf("bench_cuda_layer: %s; nothing to measure\n", why);
        return 0;
    }
    size_t n_seq = argc > 1 ? (size_t)atol(argv[1]) : 64, seq_len = argc > 2 ? (size_t)atol(argv[2]) : 2048;
    int routed = argc > 3 && atoi(argv[3]) != 0;
    fb_mm_config c = {.hidden = 3072, .inter = 1536, .n_layers = 62, .n_heads = 48,
                      .n_kv_heads = 8, .head_dim = 128, .rotary_dim = 64, .rope_theta = 5e6,
                      .eps = 1e-6, .n_experts = 256, .top_k = 8, .vocab = 200064,
                      .use_qk_norm = 1, .use_routing_bias = 1};
    fb_err err;
    printf("bench_cuda_layer: %s, MiniMax-M2 layer (H %d, I %d, %d experts, top-%d, %d heads / %d kv)\n",
           name, c.hidden, c.inter, c.n_experts, c.top_k, c.n_heads, c.n_kv_heads);
    double peak = fb_cuda_gemm_tflops(8192, 8192, 8192, 20, 0, &err);
    double peak_e = fb_cuda_gemm_tflops(16384, 2 * c.inter, c.hidden, 20, 1, &err);
    if (peak < 0 || peak_e < 0) { fprintf(stderr, "bench_cuda_layer: %s\n", err.msg); return 1; }
    printf("  cuBLAS bf16 GEMM peak: %.1f TFLOP/s (8192^3, bf16 out); expert shape 16384x3072x3072 f32 out: %.1f TFLOP/s\n",
           peak, peak_e);
    double secs = 0, flops = 0, attn = 0, expert = 0;
    for (;;) {
        if (fb_cuda_bench_layer(&c, n_seq, seq_len, !routed, 2, &secs, &flops, &attn, &expert,
                                &err) == 0)
            break;
        if (n_seq <= 1) { fprintf(stderr, "bench_cuda_layer: %s\n", err.msg); return 1; }
        printf("  %zu x %zu tokens did not fit (%s); halving\n", n_seq, seq_len, err.msg);
        n_seq /= 2;
    }
    size_t ntok = n_seq * seq_len;
    double tf = flops / secs / 1e12;
    printf("  layer (%s experts, %zu x %zu = %zu tokens): %.3f s (attention+router %.3f s, experts %.3f s), "
           "%.1f TFLOP of GEMMs -> %.1f TFLOP/s = %.2f of the bf16 peak\n",
           routed ? "routed" : "all", n_seq, seq_len, ntok, secs, attn, expert, flops / 1e12, tf,
           tf / peak);
    double dq = 0, h2d = 0;
    if (fb_cuda_fp8_dequant_rate(1536 * 16, 3072, 20, &dq, &h2d, &err)) {
        fprintf(stderr, "bench_cuda_layer: %s\n", err.msg);
        return 1;
    }
    const char *dir = getenv("BENCH_DIR") ? getenv("BENCH_DIR") : "/tmp";
    long dmb = getenv("BENCH_DISK_MB") ? atol(getenv("BENCH_DISK_MB")) : 2048;
    double disk = dmb > 0 ? disk_rate(dir, (size_t)dmb) : -1;
    double Dq = (double)c.n_heads * c.head_dim, Dk = (double)c.n_kv_heads * c.head_dim;
    double layer_bytes = (double)c.n_experts * 3 * c.inter * c.hidden + (Dq + 2 * Dk) * c.hidden +
                         (double)c.hidden * Dq;  // FP8: one byte a weight
    printf("  FP8 weights per layer: %.2f GB; GPU FP8 dequant %.0f GB/s; pinned H2D %.1f GB/s; disk (O_DIRECT, %s) %s\n",
           layer_bytes / 1e9, dq, h2d, dir, disk > 0 ? "" : "n/a");
    if (disk > 0) printf("  disk read: %.2f GB/s\n", disk);
    double io = layer_bytes / h2d / 1e9 + layer_bytes / dq / 1e9 + (disk > 0 ? layer_bytes / disk / 1e9 : 0);
    double serial = 62 * (secs + io), overl = 62 * (secs > io ? secs : io);
    printf("  projected 62-layer pass (%zu tokens): %.0f s serial, %.0f s with I/O overlapped "
           "(%.2f h / %.2f h); the Python tools took 4.7 h for the 139B REAP model: %.0fx / %.0fx\n",
           ntok, serial, overl, serial / 3600, overl / 3600, 4.7 * 3600 / serial, 4.7 * 3600 / overl);
    return 0;
#endif
}
