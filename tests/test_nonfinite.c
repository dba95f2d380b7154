// test_nonfinite.c: the writers' Inf/NaN scan (io/checkpoint.h fb_first_nonfinite_bytes), whose
// fast path tests eight bytes at a time: against an element-by-element scan on random data
// with non-finite elements injected at every position, every length and chunk offset.
#include <string.h>

#include "io/checkpoint.h"
#include "test.h"

static int64_t slow(fb_dtype dt, const unsigned char *p, uint64_t off, size_t n) {
    unsigned es = dt == FB_F32 ? 4 : dt == FB_F64 ? 8 : 2;
    uint64_t m = dt == FB_BF16 ? 0x7F80u : dt == FB_F16 ? 0x7C00u : dt == FB_F32 ? 0x7F800000u : 0x7FF0000000000000ull;
    size_t skip = (size_t)((es - off % es) % es);
    for (size_t i = skip; i + es <= n; i += es) {
        uint64_t v = 0;
        memcpy(&v, p + i, es);
        if ((v & m) == m) return (int64_t)((off + i) / es);
    }
    return -1;
}

int main(void) {
    static const fb_dtype dts[] = {FB_BF16, FB_F16, FB_F32, FB_F64};
    unsigned char buf[96];
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    size_t cases = 0, wrong = 0, positives = 0;
    for (int d = 0; d < 4; d++) {
        for (int t = 0; t < 20000; t++) {
            for (size_t k = 0; k < sizeof buf; k++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                buf[k] = (unsigned char)(rng >> 56);
            }
            // at most one exponent all ones per element type: clear, then inject 0..2
            unsigned es = dts[d] == FB_F32 ? 4 : dts[d] == FB_F64 ? 8 : 2;
            uint64_t off = rng % 7, n = (rng >> 8) % sizeof buf;
            for (int inj = 0; inj < (int)(rng >> 20) % 3; inj++) {
                size_t pos = (size_t)((rng >> (24 + 4 * inj)) % (sizeof buf / es)) * es;
                buf[pos + es - 1] |= 0x7F;  // the top byte: exponent high bits
                if (es == 2) buf[pos] |= dts[d] == FB_BF16 ? 0x80 : 0x00, buf[pos + 1] |= dts[d] == FB_F16 ? 0x7C : 0x7F;
                if (es == 4) buf[pos + 2] |= 0x80;
                if (es == 8) buf[pos + 6] |= 0xF0;
            }
            int64_t want = slow(dts[d], buf, off, n), got = fb_first_nonfinite_bytes(dts[d], buf, off, n);
            cases++;
            positives += want >= 0;
            if (want != got && wrong++ < 5)
                fprintf(stderr, "dtype %d off %llu n %llu: want %lld got %lld\n", d, (unsigned long long)off,
                        (unsigned long long)n, (long long)want, (long long)got);
        }
    }
    CHECK(positives > cases / 10 && positives < cases, "the cases mix finite and non-finite buffers (%zu of %zu)",
          positives, cases);
    CHECK(wrong == 0, "%zu of %zu random buffers answered differently from the element-by-element scan", wrong, cases);
    // I32 and other non-float dtypes: never non-finite.
    memset(buf, 0xFF, sizeof buf);
    CHECK(fb_first_nonfinite_bytes(FB_I32, buf, 0, sizeof buf) == -1, "I32 is never non-finite");
    CHECK(fb_first_nonfinite_bytes(FB_BF16, buf, 0, sizeof buf) == 0, "all-ones BF16 is NaN at 0");
    CHECK(fb_first_nonfinite_bytes(FB_BF16, buf, 1, 10) == 1, "a chunk at an odd offset starts at the next element");
    TEST_MAIN_END();
}
