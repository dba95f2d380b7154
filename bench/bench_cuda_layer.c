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
//
// Checkpoint mode: bench_cuda_layer --ckpt DIR [n_seq [seq_len [expert_group]]] runs the real
// engine (calibration, all-experts, bf16 GEMMs) over layer 0 of the FP8 checkpoint DIR (e.g.
// from gen_minimax_layer) on random token ids, with the page cache of DIR's shards dropped
// first (cold reads), and reports the layer's wall time split into host reads (and the part
// of them not hidden behind compute), upload, device dequant, attention and experts, and the
// projected 62-layer time. BENCH_HOST_DEQUANT=1: the same with the source's raw FP8 access
// hidden (weights dequantized to f32 on the host and uploaded as f32: the path before).
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calib/mm.h"
#include "calib/stats.h"
#include "calib/wsrc.h"
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

#ifdef FB_HAVE_CUDA
// Drops the page cache of every .safetensors file of dir (written data flushed first).
static void drop_cache(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n < 12 || strcmp(de->d_name + n - 12, ".safetensors")) continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        int fd = open(p, O_RDONLY);
        if (fd < 0) continue;
        fdatasync(fd);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
    closedir(d);
}

static int bench_ckpt(const char *dir, size_t n_seq, size_t seq_len, int group) {
    fb_err err;
    double peak = fb_cuda_gemm_tflops(8192, 8192, 8192, 20, 0, &err);
    if (peak < 0) { fprintf(stderr, "bench_cuda_layer: %s\n", err.msg); return 1; }
    fb_wsrc *src = fb_wsrc_open_ckpt(dir, &err);
    fb_model_config c;
    if (!src || fb_model_config_parse(src->config, &c, &err)) {
        fprintf(stderr, "bench_cuda_layer: %s\n", err.msg);
        return 1;
    }
    size_t N = n_seq * seq_len;
    int32_t *ids = fb_malloc(N * sizeof *ids);
    size_t *st = fb_malloc((n_seq + 1) * sizeof *st);
    uint64_t r = 88172645463325252ull;
    for (size_t i = 0; i < N; i++) {
        r ^= r << 13; r ^= r >> 7; r ^= r << 17;
        ids[i] = (int32_t)(r % (uint64_t)c.vocab);
    }
    for (size_t i = 0; i <= n_seq; i++) st[i] = i * seq_len;
    printf("bench_cuda_layer --ckpt %s: %zu x %zu = %zu tokens, all experts, bf16 GEMMs, expert "
           "group %d; cuBLAS bf16 peak %.1f TFLOP/s\n", dir, n_seq, seq_len, N, group, peak);
    fb_wsrc plain = *src;  // BENCH_HOST_DEQUANT: no raw FP8 access
    plain.load_fp8 = NULL;
    int host_dq = getenv("BENCH_HOST_DEQUANT") && atoi(getenv("BENCH_HOST_DEQUANT"));
    if (host_dq) printf("  BENCH_HOST_DEQUANT: weights dequantized on the host, uploaded as f32\n");
    int rc = 1;
    for (int pass = 0; pass < 2; pass++) {  // pass 0 also warms up cuBLAS / allocations
        drop_cache(dir);
        fb_calib_stats *stt = fb_calib_stats_new(c.n_layers, c.n_experts);
        fb_cufwd_opts o = {.all_experts = 1, .expert_group = group, .token_chunk = 32768,
                           .stats = stt};
        fb_cufwd *f = fb_cufwd_new(host_dq ? &plain : src, &c, &o, &err);
        if (!f || fb_cufwd_set_tokens(f, ids, N, st, n_seq, &err)) {
            fprintf(stderr, "bench_cuda_layer: %s\n", err.msg);
            fb_cufwd_free(f);
            fb_calib_stats_free(stt);
            break;
        }
        fb_cufwd_timing t0 = *fb_cufwd_get_timing(f);
        double w0 = fb_now();
        int lrc = fb_cufwd_layer(f, 0, &err);
        double wall = fb_now() - w0;
        const fb_cufwd_timing *t = fb_cufwd_get_timing(f);
        if (lrc) fprintf(stderr, "bench_cuda_layer: %s\n", err.msg);
        else {
            double load = t->load_s - t0.load_s, rd = t->read_s - t0.read_s;
            double wait = t->wait_s - t0.wait_s, up = t->upload_s - t0.upload_s;
            double dq = t->dequant_s - t0.dequant_s, at = t->attn_s - t0.attn_s;
            double ex = t->expert_s - t0.expert_s, gb = (t->fp8_bytes - t0.fp8_bytes) / 1e9;
            double fl = t->gemm_flops - t0.gemm_flops;
            printf("  pass %d: layer wall %.3f s = weights %.3f s (of which waiting for host reads "
                   "%.3f s) + attention/router %.3f s + experts %.3f s\n", pass, wall, load, wait,
                   at, ex);
            if (host_dq) gb = 3.0 * c.n_experts * c.inter * c.hidden / 1e9;
            printf("    host reads %.3f s for %.2f GB FP8 raw (%.2f GB/s, overlapped with compute "
                   "except %.3f s); upload %.3f s (%.1f GB/s); device dequant %.3f s (%.0f GB/s)\n",
                   rd, gb, gb / rd, wait, up, gb / up, dq, gb / dq);
            printf("    compute %.3f s: %.1f TFLOP -> %.1f TFLOP/s = %.2f of the peak (%.2f over "
                   "the whole layer wall time)\n", at + ex, fl / 1e12, fl / (at + ex) / 1e12,
                   fl / (at + ex) / 1e12 / peak, fl / wall / 1e12 / peak);
            printf("    projected 62 layers: %.0f s = %.2f h (the Python tools: 4.7 h for the "
                   "139B REAP model: %.0fx)\n", 62 * wall, 62 * wall / 3600,
                   4.7 * 3600 / (62 * wall));
            rc = 0;
        }
        fb_cufwd_free(f);
        fb_calib_stats_free(stt);
        if (lrc) { rc = 1; break; }
    }
    free(ids);
    free(st);
    fb_wsrc_close(src);
    return rc;
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
    if (argc > 2 && !strcmp(argv[1], "--ckpt"))
        return bench_ckpt(argv[2], argc > 3 ? (size_t)atol(argv[3]) : 64,
                          argc > 4 ? (size_t)atol(argv[4]) : 2048, argc > 5 ? atoi(argv[5]) : 32);
    size_t n_seq = argc > 1 ? (size_t)atol(argv[1]) : 64, seq_len = argc > 2 ? (size_t)atol(argv[2]) : 2048;
    int routed = argc > 3 && atoi(argv[3]) != 0;
    fb_model_config c = {.hidden = 3072, .inter = 1536, .n_layers = 62, .n_heads = 48,
                      .n_kv_heads = 8, .head_dim = 128, .rotary_dim = 64, .rope_theta = 5e6,
                      .eps = 1e-6, .n_experts = 256, .top_k = 8, .vocab = 200064,
                      .qk_norm = FB_QKN_ALL_HEADS, .use_routing_bias = 1,
                          .arch = fb_arch_by_name("minimax_m2")};
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
