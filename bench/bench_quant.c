// bench_quant.c: single-thread throughput of the quantization kernels on one [1536, 3072]
// tensor of bf16 values with a heavy-tailed distribution (Student-t like, plus outlier
// columns), the shape bench/quant_reference.py times compressed-tensors on.
//
//   build/bench/bench_quant [reps]     (default 5; the best run of each kernel is reported)
//
// Per kernel: M elements/s of one thread for the fast path (the dispatch the tools use) and
// for the scalar reference, and for the fast path starting from bf16 storage (widening blocks
// of 16 rows to f32 first, as the streaming tools do). NVFP4 includes the absmax pass and the global scale (the whole
// per-tensor job); W4A16 and AutoRound are one pass. Prints one line per kernel and a JSON
// line at the end for scripts.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fb.h"
#include "quant/formats.h"
#include "quant/nvfp4.h"
#include "quant/w4a16.h"

#define ROWS 1536
#define COLS 3072

static uint64_t st = 0x853C49E6748FEA9Bull;
static double unif(void) {
    st ^= st << 13; st ^= st >> 7; st ^= st << 17;
    return ((double)(st >> 11) + 0.5) / 9007199254740992.0;
}

static void fill(float *w) {
    for (size_t i = 0; i < (size_t)ROWS * COLS; i++) {
        // Student-t with 3 degrees of freedom via normal / sqrt(chi2/3)
        double z = sqrt(-2 * log(unif())) * cos(6.283185307179586 * unif());
        double c = 0;
        for (int k = 0; k < 3; k++) {
            double n = sqrt(-2 * log(unif())) * cos(6.283185307179586 * unif());
            c += n * n;
        }
        double v = 0.02 * z / sqrt(c / 3);
        if (i % COLS == 17 || i % COLS == 1000) v *= 40;  // outlier columns
        w[i] = fb_bf16_to_f32(fb_f32_to_bf16((float)v));
    }
}

typedef struct job {
    float *w;          // [ROWS, COLS] f32 (bf16-exact)
    uint16_t *wb;      // the same as bf16 bits
    float *tmp;        // BLK rows of f32, for the runs that start from bf16
    uint8_t *p8, *s8;
    int32_t *p32;
    uint16_t *s16;
} job;

#define BLK 16  // rows widened from bf16 at a time (what a streaming tool does)

// The whole NVFP4 job from bf16 storage: absmax over the bf16 bits, then per block of rows
// widen to f32 and quantize. Includes the widening cost the tools pay.
static void run_nvfp4_bf16(job *j, int fast) {
    (void)fast;
    size_t n = (size_t)ROWS * COLS;
    uint16_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t a = j->wb[i] & 0x7FFF;
        m = a > m ? a : m;
    }
    float g = fb_nvfp4_global_scale(fb_bf16_to_f32(m));
    for (size_t r = 0; r < ROWS; r += BLK) {
        fb_to_f32(FB_BF16, j->wb + r * COLS, j->tmp, (size_t)BLK * COLS);
        fb_nvfp4_quantize_rows(j->tmp, BLK, COLS, g, j->p8 + r * COLS / 2, j->s8 + r * COLS / 16);
    }
}
static void run_w4a16_bf16(job *j, int fast) {
    (void)fast;
    for (size_t r = 0; r < ROWS; r += BLK) {
        fb_to_f32(FB_BF16, j->wb + r * COLS, j->tmp, (size_t)BLK * COLS);
        fb_w4a16_quantize_rows(j->tmp, BLK, COLS, 128, j->p32 + r * COLS / 8,
                               j->s16 + r * COLS / 128);
    }
}
static void run_ar_bf16(job *j, int fast) {
    (void)fast;
    for (size_t r = 0; r < ROWS; r += BLK) {
        fb_to_f32(FB_BF16, j->wb + r * COLS, j->tmp, (size_t)BLK * COLS);
        fb_autoround_quantize_rows(j->tmp, BLK, COLS, 128, r, ROWS, j->p32, j->s16);
    }
}

static void run_nvfp4(job *j, int fast) {
    size_t n = (size_t)ROWS * COLS;
    float am = fast ? fb_nvfp4_absmax(j->w, n) : fb_nvfp4_absmax_ref(j->w, n);
    float g = fb_nvfp4_global_scale(am);
    if (fast) fb_nvfp4_quantize_rows(j->w, ROWS, COLS, g, j->p8, j->s8);
    else fb_nvfp4_quantize_rows_ref(j->w, ROWS, COLS, g, j->p8, j->s8);
}
static void run_w4a16(job *j, int fast) {
    if (fast) fb_w4a16_quantize_rows(j->w, ROWS, COLS, 128, j->p32, j->s16);
    else fb_w4a16_quantize_rows_ref(j->w, ROWS, COLS, 128, j->p32, j->s16);
}
static void run_ar(job *j, int fast) {
    if (fast) fb_autoround_quantize_rows(j->w, ROWS, COLS, 128, 0, ROWS, j->p32, j->s16);
    else fb_autoround_quantize_rows_ref(j->w, ROWS, COLS, 128, 0, ROWS, j->p32, j->s16);
}

static double best_rate(void (*fn)(job *, int), job *j, int fast, int reps) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = fb_now();
        fn(j, fast);
        double dt = fb_now() - t0;
        if (dt < best) best = dt;
    }
    return (double)ROWS * COLS / best / 1e6;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    if (reps < 1) reps = 1;
    size_t n = (size_t)ROWS * COLS;
    job j = {fb_aligned_alloc(n * 4), fb_aligned_alloc(n * 2), fb_aligned_alloc(BLK * COLS * 4),
             fb_aligned_alloc(n / 2), fb_aligned_alloc(n / 16), fb_aligned_alloc(n / 2),
             fb_aligned_alloc(n / 64)};
    fill(j.w);
    for (size_t i = 0; i < n; i++) j.wb[i] = fb_f32_to_bf16(j.w[i]);
    static const struct { const char *name; void (*fn)(job *, int), (*fnb)(job *, int); } k[] = {
        {"nvfp4", run_nvfp4, run_nvfp4_bf16},
        {"w4a16_ct", run_w4a16, run_w4a16_bf16},
        {"w4a16_autoround", run_ar, run_ar_bf16}};
    double rate[3][3];
    printf("bench_quant: [%d, %d] heavy-tailed bf16 values, 1 thread, best of %d; fast path %s\n",
           ROWS, COLS, reps, fb_nvfp4_impl());
    for (int i = 0; i < 3; i++) {
        rate[i][1] = best_rate(k[i].fn, &j, 1, reps);
        rate[i][2] = best_rate(k[i].fnb, &j, 1, reps);
        rate[i][0] = best_rate(k[i].fn, &j, 0, reps > 2 ? 2 : reps);
        printf("  %-16s fast %8.1f M el/s   from bf16 %8.1f M el/s   scalar reference %7.1f M el/s\n",
               k[i].name, rate[i][1], rate[i][2], rate[i][0]);
    }
    printf("{\"bench\":\"quant\",\"impl\":\"%s\",\"rows\":%d,\"cols\":%d", fb_nvfp4_impl(), ROWS,
           COLS);
    for (int i = 0; i < 3; i++)
        printf(",\"%s_fast_meps\":%.1f,\"%s_from_bf16_meps\":%.1f,\"%s_ref_meps\":%.1f",
               k[i].name, rate[i][1], k[i].name, rate[i][2], k[i].name, rate[i][0]);
    printf("}\n");
    free(j.w); free(j.wb); free(j.tmp); free(j.p8); free(j.s8); free(j.p32); free(j.s16);
    return 0;
}
