// fuzz_stats.c: a calibration statistics file (src/calib/stats.c reader: metadata counts,
// tensor names and shapes, values), as nvfp4-quantize --calib reads it.
#include "calib/stats.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char p[64];
    int fd;
    if (fuzz_memfile(data, size, p, sizeof p, &fd)) return 0;
    fb_calib_stats *s = NULL;
    fb_err err;
    if (fb_calib_stats_read(p, &s, &err) == 0) {
        float v;
        fb_calib_stats_absmax(s, "model.layers.0.self_attn.q_proj", &v);
        fb_calib_stats_free(s);
    }
    close(fd);
    return 0;
}
