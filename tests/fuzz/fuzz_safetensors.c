// fuzz_safetensors.c: the safetensors reader (src/io/safetensors.c): header length, JSON,
// dtypes, shapes, offsets checked against the file size; then every tensor read back.
#include <stdlib.h>

#include "fuzz_util.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char p[64];
    int fd;
    if (fuzz_memfile(data, size, p, sizeof p, &fd)) return 0;
    fb_st_file *f = NULL;
    fb_err err;
    if (fb_st_open(p, &f, &err) == 0) {
        for (size_t i = 0; i < f->n_tensors; i++) {
            void *buf = NULL;
            if (fb_st_read_all(f, &f->tensors[i], &buf, &err) == 0) free(buf);
        }
        fb_st_close(f);
    }
    close(fd);
    return 0;
}
