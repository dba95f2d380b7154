// fuzz_config.c: a checkpoint's config.json as the forward pass reads it
// (src/calib/mm.c fb_mm_config_parse: dimensions, ranges, rotary settings).
#include <jansson.h>

#include "calib/mm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    json_error_t je;
    json_t *j = json_loadb((const char *)data, size, 0, &je);
    if (!j) return 0;
    fb_mm_config c;
    fb_err err;
    fb_mm_config_parse(j, &c, &err);
    json_decref(j);
    return 0;
}
