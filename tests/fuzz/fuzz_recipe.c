// fuzz_recipe.c: llm-compressor recipe YAML (src/quant/recipe.c): YAML events, limits, typing,
// the recipe structure, config groups.
#include "quant/recipe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fb_recipe r;
    fb_err err;
    if (fb_recipe_parse("fuzz.yaml", (const char *)data, size, &r, &err) == 0) fb_recipe_free(&r);
    return 0;
}
