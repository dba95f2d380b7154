// fuzz_tokenizer.c: encoding arbitrary bytes with the embedded model's byte-level BPE
// tokenizer (src/io/tokenizer.c: UTF-8 checks, added tokens, the Split regex, BPE merges),
// with and without the post-processor, then decoding the ids.
#include <stdlib.h>

#include "io/tokenizer.h"

static fb_tok *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fb_err err;
    if (!tok && fb_tok_load("models/tiny-minimax-m2/tokenizer.json", &tok, &err)) {
        fprintf(stderr, "fuzz_tokenizer: %s (run from the repository root)\n", err.msg);
        abort();
    }
    fb_ids ids = {0};
    if (fb_tok_encode(tok, (const char *)data, size, size & 1, &ids, &err) == 0) {
        char *text = NULL;
        size_t len = 0;
        if (fb_tok_decode(tok, ids.v, ids.n, 0, &text, &len, &err) == 0) free(text);
    }
    fb_ids_free(&ids);
    return 0;
}
