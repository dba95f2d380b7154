// fuzz_config.c: a checkpoint's config.json as the forward pass reads it
// (src/arch/arch.c fb_model_config_parse: the architecture, dimensions, ranges, rotary
// settings).
#include <jansson.h>

#include "arch/arch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    json_error_t je;
    json_t *j = json_loadb((const char *)data, size, 0, &je);
    if (!j) return 0;
    fb_model_config c;
    fb_err err;
    fb_model_config_parse(j, &c, &err);
    json_decref(j);
    return 0;
}
