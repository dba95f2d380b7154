// test_fp8.c: FP8 block dequant. The fast path equals the scalar reference on random bytes
// (including NaN codes), partial edge tiles, row windows that start inside a tile and
// non-square blocks; the library path reproduces PyTorch's dequant of the golden checkpoints
// (tests/golden/fp8, scripts/gen-fp8-golden.py) byte for byte.
#include <math.h>

#include "io/checkpoint.h"
#include "quant/formats.h"
#include "quant/fp8block.h"
#include "quant/source.h"
#include "test.h"

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static void fast_vs_ref(size_t rows, size_t cols, size_t bm, size_t bn, uint64_t r0, size_t nrows) {
    size_t sr = (rows + bm - 1) / bm, sc = (cols + bn - 1) / bn;
    uint8_t *w = fb_malloc(rows * cols);
    float *s = fb_malloc(sr * sc * sizeof(float));
    for (size_t i = 0; i < rows * cols; i++) w[i] = (uint8_t)next();
    for (size_t i = 0; i < sr * sc; i++) s[i] = ldexpf((float)(next() % 1000 + 1) / 1000.0f, -(int)(next() % 14));
    uint16_t *a = fb_malloc(nrows * cols * 2), *b = fb_malloc(nrows * cols * 2);
    float *f = fb_malloc(nrows * cols * 4);
    int64_t na = fb_fp8_dequant_bf16_ref(w + r0 * cols, s, r0, nrows, cols, bm, bn, a);
    int64_t nb = fb_fp8_dequant_bf16(w + r0 * cols, s, r0, nrows, cols, bm, bn, b);
    fb_fp8_dequant_f32(w + r0 * cols, s, r0, nrows, cols, bm, bn, f);
    size_t diff = 0, fdiff = 0;
    for (size_t i = 0; i < nrows * cols; i++) {
        diff += a[i] != b[i];
        uint16_t fb16 = fb_f32_to_bf16(f[i]);
        fdiff += isnan(f[i]) ? a[i] != 0x7FC0 : fb16 != a[i] || fb_bf16_to_f32(fb16) != f[i];
    }
    CHECK(diff == 0, "%zux%zu blocks %zux%zu rows [%llu,+%zu): %zu elements differ from the reference", rows, cols, bm,
          bn, (unsigned long long)r0, nrows, diff);
    CHECK(fdiff == 0, "f32 path: %zu elements are not the bf16 values", fdiff);
    CHECK(na == nb, "first NaN index: ref %lld, fast %lld", (long long)na, (long long)nb);
    free(w); free(s); free(a); free(b); free(f);
}

static void golden(const char *src, const char *expected) {
    fb_source *s;
    fb_err e;
    REQUIRE(fb_source_open(src, &s, &e) == 0, "%s", e.msg);
    fb_ckpt *x;
    REQUIRE(fb_ckpt_open(expected, &x, &e) == 0, "%s", e.msg);
    size_t checked = 0;
    for (size_t i = 0; i < x->n_tensors; i++) {
        const fb_st_tensor *t = x->tensors[i].t;
        int64_t si = fb_source_index(s, t->name);
        REQUIRE(si >= 0 && s->role[si] == FB_SRC_FP8_WEIGHT, "%s is an FP8 weight of the source", t->name);
        uint64_t rows = (uint64_t)t->shape[0], cols = (uint64_t)t->shape[1];
        float *scale;
        REQUIRE(fb_source_load_scale(s, (size_t)si, &scale, &e) == 0, "%s", e.msg);
        uint16_t *got = fb_malloc(rows * cols * 2), *want;
        void *scratch = fb_malloc(rows * cols * 4);
        // read in two windows that split a tile row, as the streaming tools do
        uint64_t split = rows > 100 ? 100 : rows / 2;
        CHECK(fb_source_read_rows_bf16(s, (size_t)si, scale, 0, split, got, scratch, 0, &e) == 0, "%s", e.msg);
        CHECK(fb_source_read_rows_bf16(s, (size_t)si, scale, split, rows - split, got + split * cols, scratch, 0, &e) == 0,
              "%s", e.msg);
        REQUIRE(fb_st_read_all(fb_ckpt_file(x, &x->tensors[i]), t, (void **)&want, &e) == 0, "%s", e.msg);
        size_t bad = 0;
        for (uint64_t k = 0; k < rows * cols; k++) {
            if (got[k] != want[k] && bad++ < 3)
                fprintf(stderr, "%s[%llu, %llu]: torch 0x%04x, fourbit 0x%04x\n", t->name, (unsigned long long)(k / cols),
                        (unsigned long long)(k % cols), want[k], got[k]);
        }
        CHECK(bad == 0, "%s: %zu elements differ from PyTorch", t->name, bad);
        checked += rows * cols;
        free(got); free(want); free(scratch); free(scale);
    }
    CHECK(checked > 0, "compared elements");
    fb_ckpt_close(x);
    fb_source_close(s);
}

int main(void) {
    fprintf(stderr, "fp8 dequant fast path: %s\n", fb_fp8_dequant_impl());
    fast_vs_ref(256, 256, 128, 128, 0, 256);
    fast_vs_ref(200, 328, 128, 128, 0, 200);     // partial edge tiles both ways
    fast_vs_ref(200, 328, 128, 128, 77, 100);    // window starting inside a tile row
    fast_vs_ref(130, 129, 64, 32, 5, 125);       // non-square blocks
    fast_vs_ref(1, 7, 128, 128, 0, 1);
    golden(GOLDEN_DIR "/fp8/minimax", GOLDEN_DIR "/fp8/minimax_expected.safetensors");
    golden(GOLDEN_DIR "/fp8/deepseek", GOLDEN_DIR "/fp8/deepseek_expected.safetensors");
    TEST_MAIN_END();
}
