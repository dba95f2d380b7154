// test_scheme_forms.c: a `scheme:` preset and the same scheme spelled out in `config_groups`
// quantize the same tensors but llm-compressor writes different quantization args into
// config.json for them (scale_dtype, the input observer). For NVFP4, NVFP4A16 and W4A16, on
// models/tiny-minimax-m2, each form's quantization_config must be exactly what llm-compressor
// 0.14.0.1's oneshot wrote for it (tests/golden/scheme-forms/forms.json,
// scripts/gen-scheme-form-golden.py), with "version" masked: it is compressed-tensors' version
// (0.19.0 in the golden), which fourbit pins separately (another issue). The two forms' tensors
// are byte-identical, and the --dry-run plan says which form config.json follows.
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "test.h"

#define MM "models/tiny-minimax-m2"
#define MSTATS GOLDEN_DIR "/model-quant/calib-stats.safetensors"

static json_t *qconfig(const char *dir) {
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", dir);
    json_error_t je;
    json_t *c = json_load_file(p, 0, &je);
    REQUIRE(c, "%s: %s", p, je.text);
    json_t *q = json_deep_copy(json_object_get(c, "quantization_config"));
    json_decref(c);
    REQUIRE(q, "%s: no quantization_config", p);
    json_object_del(q, "version");
    return q;
}

int main(void) {
    const char *b = getenv("BUILD");
    snprintf(cli_bin, sizeof cli_bin, "%s/bin", b ? b : "build");
    snprintf(cli_dir, sizeof cli_dir, "/tmp/fb-test-forms-XXXXXX");
    REQUIRE(mkdtemp(cli_dir), "mkdtemp");
    json_error_t je;
    json_t *g = json_load_file(GOLDEN_DIR "/scheme-forms/forms.json", 0, &je);
    REQUIRE(g, "forms golden: %s (run scripts/gen-scheme-form-golden.py)", je.text);
    // The plan's line per form (the args it names are the golden's).
    static const struct { const char *scheme, *form, *plan; } PLAN[] = {
        {"NVFP4", "preset", "group_0 follows llm-compressor's `scheme: NVFP4` form (weights observer memoryless_minmax, "
                            "scale_dtype torch.float8_e4m3fn; input observer static_minmax, scale_dtype torch.float8_e4m3fn)"},
        {"NVFP4", "config_groups",
         "group_0 follows llm-compressor's config_groups form, as written (weights observer memoryless_minmax, scale_dtype "
         "null; input observer minmax, scale_dtype null); `scheme: NVFP4` would quantize the same tensors but write weights "
         "scale_dtype torch.float8_e4m3fn, input observer static_minmax, input scale_dtype torch.float8_e4m3fn"},
        {"NVFP4A16", "preset", "group_0 follows llm-compressor's `scheme: NVFP4A16` form (weights observer memoryless_minmax, "
                               "scale_dtype torch.float8_e4m3fn)"},
        {"NVFP4A16", "config_groups",
         "group_0 follows llm-compressor's config_groups form, as written (weights observer memoryless_minmax, scale_dtype "
         "null); `scheme: NVFP4A16` would quantize the same tensors but write weights scale_dtype torch.float8_e4m3fn"},
        {"W4A16", "preset", "group_0 follows llm-compressor's `scheme: W4A16` form (weights observer memoryless_minmax, "
                            "scale_dtype null)"},
        {"W4A16", "config_groups", "group_0 follows llm-compressor's config_groups form, as written (weights observer "
                                   "memoryless_minmax, scale_dtype null); the same as `scheme: W4A16` writes"},
    };
    int n = 0;
    for (size_t i = 0; i < sizeof PLAN / sizeof PLAN[0]; i++) {
        json_t *f = json_object_get(json_object_get(json_object_get(g, "forms"), PLAN[i].scheme), PLAN[i].form);
        REQUIRE(f, "golden has no %s %s", PLAN[i].scheme, PLAN[i].form);
        const char *recipe = json_string_value(json_object_get(f, "recipe"));
        const char *tool = strcmp(PLAN[i].scheme, "W4A16") ? "nvfp4-quantize" : "w4a16-quantize";
        const char *calib = strcmp(PLAN[i].scheme, "NVFP4") ? "" : " --calib " MSTATS;
        char out[400];
        snprintf(out, sizeof out, "%s/%s-%s", cli_dir, PLAN[i].scheme, PLAN[i].form);
        CHECK(cli_run("%s/%s --dry-run --recipe %s%s " MM " %s", cli_bin, tool, recipe, calib, out) == 0 &&
                  cli_log_has(PLAN[i].plan),
              "%s %s: the dry-run plan names the form and its args", PLAN[i].scheme, PLAN[i].form);
        REQUIRE(cli_run("%s/%s -q --recipe %s%s " MM " %s", cli_bin, tool, recipe, calib, out) == 0, "%s %s", tool, recipe);
        json_t *mine = qconfig(out), *want = json_deep_copy(json_object_get(f, "quantization_config"));
        json_object_del(want, "version");
        char *ms = json_dumps(mine, JSON_COMPACT | JSON_SORT_KEYS), *ws = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
        CHECK(json_equal(mine, want), "%s %s (%s): quantization_config (version masked)\n  fourbit:        %s\n  llm-compressor: %s",
              PLAN[i].scheme, PLAN[i].form, recipe, ms, ws);
        free(ms);
        free(ws);
        json_decref(mine);
        json_decref(want);
        n++;
    }
    CHECK(n == 6, "six forms");
    // Same tensors, whichever form; config.json differs where llm-compressor's does.
    const char *S[] = {"NVFP4", "NVFP4A16", "W4A16"};
    for (int i = 0; i < 3; i++) {
        CHECK(cli_run("%s/st-diff %s/%s-preset %s/%s-config_groups", cli_bin, cli_dir, S[i], cli_dir, S[i]) == 0,
              "%s: both forms write the same tensors", S[i]);
        json_t *fs = json_object_get(json_object_get(g, "forms"), S[i]);
        int ref_same = json_equal(json_object_get(json_object_get(fs, "preset"), "quantization_config"),
                                  json_object_get(json_object_get(fs, "config_groups"), "quantization_config"));
        CHECK(ref_same == (i == 2), "%s: llm-compressor's two configs %s", S[i], i == 2 ? "agree" : "differ");
    }
    json_decref(g);
    if (getenv("FB_KEEP")) printf("outputs kept in %s\n", cli_dir);
    else cli_run("rm -rf %s", cli_dir);
    TEST_MAIN_END();
}
