// fp8block.c: block-scaled FP8 dequantization; see fp8block.h.
//
// Fast path: inside one tile every element shares the scale s, so the 256 possible results
// bf16(lut[b] * s) are computed once per (tile, call) and each element becomes one table
// lookup. The table entries are computed with exactly the reference expression, so the fast
// path is bit-identical by construction; tests compare it with the scalar loop anyway.
#include "quant/fp8block.h"

#include "quant/formats.h"

int64_t fb_fp8_dequant_bf16_ref(const uint8_t *w, const float *scale, uint64_t r0, size_t nrows,
                                size_t cols, size_t bm, size_t bn, uint16_t *out) {
    fb_formats_init();
    size_t sc = (cols + bn - 1) / bn;
    int64_t first_nan = -1;
    for (size_t r = 0; r < nrows; r++) {
        const float *srow = scale + ((r0 + r) / bm) * sc;
        for (size_t c = 0; c < cols; c++) {
            uint8_t b = w[r * cols + c];
            if (first_nan < 0 && fb_e4m3_is_nan(b)) first_nan = (int64_t)(r * cols + c);
            float prod = fb_e4m3_lut[b] * srow[c / bn];
            out[r * cols + c] = fb_f32_to_bf16(prod);
        }
    }
    return first_nan;
}

static int64_t find_nan(const uint8_t *w, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (fb_e4m3_is_nan(w[i])) return (int64_t)i;
    return -1;
}

int64_t fb_fp8_dequant_bf16(const uint8_t *w, const float *scale, uint64_t r0, size_t nrows,
                            size_t cols, size_t bm, size_t bn, uint16_t *out) {
    fb_formats_init();
    size_t sc = (cols + bn - 1) / bn;
    uint16_t table[256];
    unsigned nanflag = 0;
    size_t r = 0;
    while (r < nrows) {
        uint64_t rb = (r0 + r) / bm;
        size_t rend = (size_t)((rb + 1) * bm - r0);  // rows of this call in tile-row rb
        if (rend > nrows) rend = nrows;
        const float *srow = scale + rb * sc;
        for (size_t tj = 0; tj < sc; tj++) {
            float s = srow[tj];
            for (int b = 0; b < 256; b++) table[b] = fb_f32_to_bf16(fb_e4m3_lut[b] * s);
            size_t c0 = tj * bn, c1 = c0 + bn < cols ? c0 + bn : cols;
            for (size_t rr = r; rr < rend; rr++) {
                const uint8_t *wp = w + rr * cols;
                uint16_t *op = out + rr * cols;
                unsigned acc = 0;
                for (size_t c = c0; c < c1; c++) {
                    uint8_t b = wp[c];
                    op[c] = table[b];
                    acc |= ((b & 0x7Fu) == 0x7Fu);
                }
                nanflag |= acc;
            }
        }
        r = rend;
    }
    return nanflag ? find_nan(w, nrows * cols) : -1;
}

int64_t fb_fp8_dequant_f32(const uint8_t *w, const float *scale, uint64_t r0, size_t nrows,
                           size_t cols, size_t bm, size_t bn, float *out) {
    fb_formats_init();
    size_t sc = (cols + bn - 1) / bn;
    float table[256];
    unsigned nanflag = 0;
    size_t r = 0;
    while (r < nrows) {
        uint64_t rb = (r0 + r) / bm;
        size_t rend = (size_t)((rb + 1) * bm - r0);
        if (rend > nrows) rend = nrows;
        const float *srow = scale + rb * sc;
        for (size_t tj = 0; tj < sc; tj++) {
            float s = srow[tj];
            for (int b = 0; b < 256; b++) table[b] = fb_bf16_to_f32(fb_f32_to_bf16(fb_e4m3_lut[b] * s));
            size_t c0 = tj * bn, c1 = c0 + bn < cols ? c0 + bn : cols;
            for (size_t rr = r; rr < rend; rr++) {
                const uint8_t *wp = w + rr * cols;
                float *op = out + rr * cols;
                unsigned acc = 0;
                for (size_t c = c0; c < c1; c++) {
                    uint8_t b = wp[c];
                    op[c] = table[b];
                    acc |= ((b & 0x7Fu) == 0x7Fu);
                }
                nanflag |= acc;
            }
        }
        r = rend;
    }
    return nanflag ? find_nan(w, nrows * cols) : -1;
}
