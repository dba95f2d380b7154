// bench_tokenizer.c: encode throughput of the C tokenizer on the mixed-script golden text.
//
//   build/bench/bench_tokenizer [tokenizer.json] [MiB of text]
//
// Loads the tokenizer (timed), builds ~MiB of text by repeating the generated_mixed case of
// tests/golden/tokenizer/o200k-mini.golden.json in lines of varying offsets (so the merge cache
// sees both repeats and new pieces), then encodes it line by line twice: the first pass fills
// the BPE cache, the second measures the steady state. Prints MB/s and tokens/s of each pass.
#include "io/tokenizer.h"

#include <jansson.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *tpath = argc > 1 ? argv[1] : "models/tiny-minimax-m2/tokenizer.json";
    double mib = argc > 2 ? atof(argv[2]) : 8.0;
    fb_err err = {{0}};
    fb_tok *t = NULL;
    double t0 = fb_now();
    if (fb_tok_load(tpath, &t, &err)) {
        fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
        return 1;
    }
    double tload = fb_now() - t0;
    json_error_t je;
    json_t *g = json_load_file("tests/golden/tokenizer/o200k-mini.golden.json", JSON_ALLOW_NUL, &je);
    if (!g) {
        fprintf(stderr, "bench_tokenizer: golden text: %s\n", je.text);
        return 1;
    }
    const char *src = NULL;
    size_t srclen = 0;
    json_t *cases = json_object_get(g, "cases");
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        if (strcmp(json_string_value(json_object_get(c, "name")), "generated_mixed") == 0) {
            src = json_string_value(json_object_get(c, "text"));
            srclen = json_string_length(json_object_get(c, "text"));
        }
    }
    if (!src || srclen < 4096) {
        fprintf(stderr, "bench_tokenizer: no generated_mixed text\n");
        return 1;
    }
    // Lines of ~2 KB starting at UTF-8 boundaries of the source, until the size is reached.
    size_t want = (size_t)(mib * 1048576.0), nlines = 0, total = 0;
    const char **lp = NULL;
    size_t *ll = NULL, cap = 0, off = 0;
    while (total < want) {
        size_t len = 1500 + (nlines * 7919) % 1000;
        if (off + len > srclen) off = (off * 31 + 17) % (srclen - 3000);
        while (off < srclen && ((unsigned char)src[off] & 0xC0) == 0x80) off++;
        size_t end = off + len;
        while (end < srclen && ((unsigned char)src[end] & 0xC0) == 0x80) end++;
        if (nlines == cap) {
            cap = cap ? cap * 2 : 1024;
            lp = fb_realloc(lp, cap * sizeof *lp);
            ll = fb_realloc(ll, cap * sizeof *ll);
        }
        lp[nlines] = src + off;
        ll[nlines] = end - off;
        total += end - off;
        nlines++;
        off = end;
    }
    fb_ids ids = {0};
    printf("tokenizer %s: %d ids, loaded in %.3f s\n", tpath, fb_tok_n_ids(t), tload);
    for (int pass = 0; pass < 2; pass++) {
        size_t ntok = 0;
        double t1 = fb_now();
        for (size_t i = 0; i < nlines; i++) {
            ids.n = 0;
            if (fb_tok_encode(t, lp[i], ll[i], 0, &ids, &err)) {
                fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
                return 1;
            }
            ntok += ids.n;
        }
        double dt = fb_now() - t1;
        printf("pass %d (%s cache): %.2f MB in %.3f s: %.2f MB/s, %.0f tokens/s (%zu tokens)\n", pass + 1,
               pass ? "warm" : "cold", total / 1e6, dt, total / 1e6 / dt, ntok / dt, ntok);
    }
    fb_ids_free(&ids);
    free(lp);
    free(ll);
    json_decref(g);
    fb_tok_free(t);
    return 0;
}
