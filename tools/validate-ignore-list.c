// validate-ignore-list: will this checkpoint load, and load right, in vLLM and transformers?
// A thin tool over src/quant/validate.h: parses arguments, runs one validation pass, prints
// the findings grouped by rule (or --json), and maps the verdict to the exit status.
#include <string.h>

#include "common/cli.h"
#include "common/fb.h"
#include "io/checkpoint.h"
#include "quant/recipe.h"
#include "quant/validate.h"

static const char *TOOL = "validate-ignore-list";

int main(int argc, char **argv) {
    int json = 0, strict = 0, deep = 0, meta = 0, quiet = 0;
    const char *recipe = NULL;
    const fb_opt opts[] = {
        {"json", 0, FB_OPT_FLAG, &json, NULL, "print the report as JSON on stdout", 0, 0},
        {"strict", 0, FB_OPT_FLAG, &strict, NULL, "warnings count as failures (exit 1)", 0, 0},
        {"deep", 0, FB_OPT_FLAG, &deep, NULL, "also read every block scale and scan BF16/F16/F32 tensors for NaN/Inf", 0, 0},
        {"metadata-only", 0, FB_OPT_FLAG, &meta, NULL, "do not read any tensor bytes (skips the global-scale value rules)", 0, 0},
        {"quiet", 'q', FB_OPT_FLAG, &quiet, NULL, "print nothing; the exit status is the verdict", 0, 0},
        {"recipe", 0, FB_OPT_STR, &recipe, "R",
         "preview: check what recipe R (llm-compressor YAML, or a quantization_config .json) would write from SRC", 0, 0},
        {0},
    };
    const char *pos[2];
    int npos = 0;
    int rc = fb_cli_parse(argc, argv, TOOL, "[--json] [--strict] [--deep] DIR | --recipe R SRC",
                          "Validates a Hugging Face MiniMax-M2 checkpoint directory (config.json, shards, index) against "
                          "what vLLM and transformers expect: the quantization config, the ignore list (Python re.match), "
                          "the exact tensor set of every module, dtypes and shapes, shared global scales, config.json keys. "
                          "Each finding names the tensors (summarised across layers/experts), the loader consequence "
                          "(the exact vLLM KeyError, or the silent misload) and the fix. Exit 0 when loadable, 1 when "
                          "anything would fail or misload, 2 on a usage error.",
                          opts, pos, 2, &npos);
    if (rc == 1) return 0;
    if (rc) return 2;
    if (npos != 1) {
        fprintf(stderr, "%s: expected one checkpoint directory, got %d arguments (see --help)\n", TOOL, npos);
        return 2;
    }
    fb_validate_opts vo = {0};
    vo.deep = deep;
    vo.no_values = meta;
    vo.strict = strict;
    if (deep && meta) {
        fprintf(stderr, "%s: --deep and --metadata-only exclude each other\n", TOOL);
        return 2;
    }
    fb_findings f;
    fb_findings_init(&f);
    fb_err err;
    double t0 = fb_now();
    char label[1024];
    if (recipe) {
        fb_ckpt *c = NULL;
        if (fb_ckpt_open(pos[0], &c, &err) != 0) {
            fprintf(stderr, "%s: %s\n", TOOL, err.msg);
            return 1;
        }
        size_t nq = 0, nk = 0;
        size_t rl = strlen(recipe);
        if (rl > 5 && !strcmp(recipe + rl - 5, ".json")) {
            // a quantization_config (or a config.json holding one)
            json_error_t je;
            json_t *r = json_load_file(recipe, 0, &je);
            if (!r) {
                fprintf(stderr, "%s: %s: line %d: %s\n", TOOL, recipe, je.line, je.text);
                fb_ckpt_close(c);
                return 2;
            }
            json_t *qc = json_object_get(r, "quantization_config");
            rc = fb_validate_preview(c, qc ? qc : r, &vo, &f, &nq, &nk, &err);
            json_decref(r);
        } else {
            fb_recipe rec;
            if (fb_recipe_load(recipe, &rec, &err) != 0) {
                fprintf(stderr, "%s: %s\n", TOOL, err.msg);
                fb_ckpt_close(c);
                return 1;
            }
            rc = fb_validate_recipe(c, &rec, &vo, &f, &nq, &nk, &err);
            fb_recipe_free(&rec);
        }
        fb_ckpt_close(c);
        if (rc != 0) {
            fprintf(stderr, "%s: %s\n", TOOL, err.msg);
            fb_findings_free(&f);
            return 1;
        }
        snprintf(label, sizeof label, "%s + %s (preview: %zu Linear modules quantized, %zu kept)", pos[0], recipe, nq, nk);
    } else {
        if (fb_validate_dir(pos[0], &vo, &f, &err) != 0) {
            fprintf(stderr, "%s: %s\n", TOOL, err.msg);
            fb_findings_free(&f);
            return 1;
        }
        snprintf(label, sizeof label, "%s", pos[0]);
    }
    int ok = fb_findings_ok(&f, strict);
    if (json) {
        json_t *j = fb_findings_json(&f, label, strict);
        json_object_set_new(j, "seconds", json_real(fb_now() - t0));
        json_dumpf(j, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(j);
    } else if (!quiet) {
        fb_findings_print(&f, label, strict, stdout);
    }
    fb_findings_free(&f);
    return ok ? 0 : 1;
}
