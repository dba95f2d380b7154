// fuzz_dataset.c: a JSONL calibration dataset (src/io/dataset.c, src/io/chat.c): indexing
// every line, record kinds, chat rendering, tokenization under a --seq-len budget,
// selection, the --dump-tokens writer.
#include <stdlib.h>

#include "fuzz_util.h"
#include "io/dataset.h"

static fb_tok *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fb_err err;
    if (!tok && fb_tok_load("models/tiny-minimax-m2/tokenizer.json", &tok, &err)) {
        fprintf(stderr, "fuzz_dataset: %s (run from the repository root)\n", err.msg);
        abort();
    }
    char p[64];
    int fd;
    if (fuzz_memfile(data, size, p, sizeof p, &fd)) return 0;
    const char *paths[1] = {p};
    fb_dataset *ds = NULL;
    if (fb_ds_open(paths, 1, &ds, &err) == 0) {
        fb_ds_opts o;
        fb_ds_opts_default(&o);
        o.samples = 4;
        o.seq_len = size % 3 ? 64 : 0;
        o.skip_long = (int)(size % 2);
        fb_ds_set set;
        if (fb_ds_build(ds, &o, tok, &set, &err) == 0) {
            FILE *devnull = fopen("/dev/null", "w");
            if (devnull) {
                fb_ds_write_jsonl(&set, devnull, "/dev/null", &err);
                fclose(devnull);
            }
            fb_ds_set_free(&set);
        }
        fb_ds_close(ds);
    }
    close(fd);
    return 0;
}
