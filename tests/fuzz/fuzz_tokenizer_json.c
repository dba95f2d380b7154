// fuzz_tokenizer_json.c: loading a tokenizer.json (src/io/tokenizer.c: model, vocabulary,
// merges, added tokens, pre-tokenizer and post-processor sections), then encoding a probe.
#include "io/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fb_tok *t = NULL;
    fb_err err;
    if (fb_tok_load_string((const char *)data, size, "fuzz.json", &t, &err) == 0) {
        fb_ids ids = {0};
        static const char probe[] = "Hello, world! 12345 <think>\n  x";
        fb_tok_encode(t, probe, sizeof probe - 1, 1, &ids, &err);
        fb_ids_free(&ids);
        fb_tok_free(t);
    }
    return 0;
}
