// bench_fp8: the FP8 block dequant kernel alone, one thread, on a [1536, 3072] weight (one
// MiniMax-M2 expert w1): elements/s of the fast path and of the scalar reference.
// Prints one JSON line. Used by bench/run-bench.sh, which sets it against PyTorch's reference
// (bench/fp8_reference.py) measured in the same run.
#include <string.h>

#include "common/fb.h"
#include "quant/fp8block.h"
#include "quant/formats.h"

int main(void) {
    enum { R = 1536, C = 3072 };
    uint8_t *w = fb_aligned_alloc((size_t)R * C);
    float *s = fb_aligned_alloc(sizeof(float) * (R / 128) * (C / 128));
    uint16_t *out = fb_aligned_alloc((size_t)R * C * 2);
    uint64_t x = 12345;
    for (size_t i = 0; i < (size_t)R * C; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        uint8_t b = (uint8_t)x;
        w[i] = (b & 0x7F) == 0x7F ? 0x7E : b;
    }
    for (int i = 0; i < (R / 128) * (C / 128); i++) s[i] = 1e-4f * (float)(i + 1);
    double best = 1e9, best_ref = 1e9;
    for (int rep = 0; rep < 20; rep++) {
        double t0 = fb_now();
        fb_fp8_dequant_bf16(w, s, 0, R, C, 128, 128, out);
        double dt = fb_now() - t0;
        if (dt < best) best = dt;
    }
    uint16_t *ref = fb_aligned_alloc((size_t)R * C * 2);
    for (int rep = 0; rep < 3; rep++) {
        double t0 = fb_now();
        fb_fp8_dequant_bf16_ref(w, s, 0, R, C, 128, 128, ref);
        double dt = fb_now() - t0;
        if (dt < best_ref) best_ref = dt;
    }
    int same = memcmp(out, ref, (size_t)R * C * 2) == 0;
    printf("{\"kernel\":\"fp8_dequant_bf16\",\"shape\":[%d,%d],\"threads\":1,\"elements_per_s\":%.0f,"
           "\"reference_elements_per_s\":%.0f,\"identical_to_reference\":%s}\n",
           R, C, (double)R * C / best, (double)R * C / best_ref, same ? "true" : "false");
    return same ? 0 : 1;
}
