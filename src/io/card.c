// card.c: see card.h.
#include "io/card.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "io/checkpoint.h"
#include "io/safetensors.h"

// Marks a card written by fourbit; fb_card_append edits nothing else.
#define CARD_MARK "<!-- written by fourbit: every value below comes from the run, nothing is typed by hand -->"

// Reads a whole small text file (NULL when absent or unreadable); *len its size.
static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *b = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 8192;
            b = fb_realloc(b, cap);
        }
        size_t r = fread(b + n, 1, 4096, f);
        n += r;
        if (r < 4096) break;
    }
    fclose(f);
    b[n] = 0;
    if (len) *len = n;
    return b;
}

// Copies the license lines (license, license_name, license_link) of the source card's YAML
// front matter into out; they are the source owner's terms and carry over to a quantization.
static void source_license(const char *src_dir, FILE *out) {
    if (!src_dir) return;
    char *p = fb_path_join(src_dir, "README.md");
    char *t = slurp(p, NULL);
    free(p);
    if (!t) return;
    if (strncmp(t, "---\n", 4) == 0) {
        char *line = t + 4;
        while (*line) {
            char *nl = strchr(line, '\n');
            size_t l = nl ? (size_t)(nl - line) : strlen(line);
            if (l >= 3 && strncmp(line, "---", 3) == 0) break;
            if (!strncmp(line, "license:", 8) || !strncmp(line, "license_name:", 13) || !strncmp(line, "license_link:", 13))
                fprintf(out, "%.*s\n", (int)l, line);
            if (!nl) break;
            line = nl + 1;
        }
    }
    free(t);
}

// The Hub id of the source: config `_name_or_path` when it looks like "org/name", else the
// last component of the source path.
static char *base_model(const fb_card_info *c) {
    const char *np = c->src_config ? json_string_value(json_object_get(c->src_config, "_name_or_path")) : NULL;
    if (np && np[0] && np[0] != '/' && np[0] != '.' && strchr(np, '/') && strchr(np, '/') == strrchr(np, '/'))
        return fb_strdup(np);
    size_t l = strlen(c->src);
    while (l > 1 && c->src[l - 1] == '/') l--;
    size_t b = l;
    while (b > 0 && c->src[b - 1] != '/') b--;
    return strndup(c->src + b, l - b);
}

static const char *meta(const fb_st_file *f, const char *k) {
    const char *v = f ? fb_st_meta(f, k) : NULL;
    return v ? v : "?";
}

// How each output is served, from what the loaders do with it (spec/loaders-vllm-transformers.md).
static void serving(FILE *o, const fb_card_info *c, const char *name) {
    const char *trc = c->has_auto_map ? " --trust-remote-code" : "";
    int mo = strstr(c->format, "ModelOpt") != NULL;  // nvfp4-quantize --format modelopt
    fprintf(o, "## Serving\n\n```\nvllm serve %s%s --tensor-parallel-size N%s\n```\n\n", name,
            mo ? " --quantization modelopt" : "", trc);
    if (mo && !strcmp(c->scheme, "NVFP4"))
        fprintf(o, "- vLLM on Blackwell (sm100+): native NVFP4 W4A4 (ModelOptNvFp4LinearMethod, ModelOptNvFp4FusedMoE):\n"
                   "  activations quantized with 1/input_scale.\n"
                   "- vLLM on Hopper (sm90): the Marlin backend, weight-only, activations BF16 (for ModelOpt MoE layers\n"
                   "  in older vLLM releases this is unverified). Quality on Hopper is that of\n"
                   "  `ref-runner --no-emulate-w4a4`, on Blackwell that of the default (W4A4 emulated).\n");
    else if (mo)
        fprintf(o, "- quant_algo W4A16_NVFP4 (weight-only): vLLM loads it only with PR #41769 (Linear) and PR #42566\n"
                   "  (fused MoE), May 2026, through Marlin; activations stay BF16.\n");
    else if (!strcmp(c->scheme, "NVFP4"))
        fprintf(o, "- vLLM on Blackwell (sm100+): native NVFP4 W4A4 (CompressedTensorsW4A4Fp4): weights and activations\n"
                   "  in FP4, activations scaled by the calibrated input_global_scale.\n"
                   "- vLLM on Hopper (sm90): weight-only FP4 through Marlin (CompressedTensorsW4A16Fp4); activations stay\n"
                   "  BF16 and the input scales are loaded and unused. Quality on Hopper is that of\n"
                   "  `ref-runner --no-emulate-w4a4`, on Blackwell that of the default (W4A4 emulated).\n");
    else if (!strcmp(c->scheme, "NVFP4A16"))
        fprintf(o, "- vLLM on Hopper and Blackwell: weight-only FP4 through Marlin (CompressedTensorsW4A16Fp4);\n"
                   "  activations stay BF16.\n");
    else if (!strcmp(c->scheme, "W4A16"))
        fprintf(o, "- vLLM on Ampere or newer (capability >= 8.0): int4 weight-only through Marlin (MoE:\n"
                   "  the WNA16 Marlin MoE method); activations stay BF16.\n");
    else
        fprintf(o, "- vLLM and transformers load it as an unquantized BF16 checkpoint.\n");
    fprintf(o, "- transformers: `AutoModelForCausalLM.from_pretrained(\"%s\"%s)`%s.\n", name,
            c->has_auto_map ? ", trust_remote_code=True" : "",
            !strcmp(c->scheme, "BF16") ? "" : mo ? " (loading ModelOpt NVFP4 in transformers is not checked by fourbit)"
                                                  : " (with compressed-tensors / auto-round installed)");
    fprintf(o, "\n`validate-ignore-list` checked this directory against what these loaders require before it was\n"
               "renamed into place (router gates unquantized, fused global scales equal, every scale tensor\n"
               "present, config consistent).\n\n");
}

int fb_card_write(const char *dir, const fb_card_info *c, fb_err *err) {
    char *path = fb_path_join(dir, "README.md");
    char *tmp = fb_path_join(dir, "README.md.tmp");
    fb_st_file *st = NULL;
    if (c->calib_path && fb_st_open(c->calib_path, &st, err) != 0) {
        free(path);
        free(tmp);
        return -1;
    }
    FILE *o = fopen(tmp, "w");
    if (!o) {
        int e = errno;
        fb_st_close(st);
        int rc = fb_fail(err, "%s: cannot create: %s", tmp, strerror(e));
        free(path);
        free(tmp);
        return rc;
    }
    int dequant = !strcmp(c->scheme, "BF16");
    char *bm = base_model(c);
    const char *mt = c->src_config ? json_string_value(json_object_get(c->src_config, "model_type")) : NULL;
    fprintf(o, "---\nbase_model: %s\n", bm);
    if (!dequant) fprintf(o, "base_model_relation: quantized\n");
    fprintf(o, "library_name: transformers\n");
    source_license(c->src_dir, o);
    fprintf(o, "tags:\n- fourbit\n");
    if (mt) fprintf(o, "- %s\n", mt);
    if (!dequant) {
        char lower[32];
        size_t k = 0;
        for (; c->scheme[k] && k + 1 < sizeof lower; k++)
            lower[k] = (char)(c->scheme[k] >= 'A' && c->scheme[k] <= 'Z' ? c->scheme[k] - 'A' + 'a' : c->scheme[k]);
        lower[k] = 0;
        fprintf(o, "- %s\n- %s\n", lower,
                strstr(c->format, "auto_round") ? "auto-round" : strstr(c->format, "ModelOpt") ? "modelopt" : "compressed-tensors");
    }
    fprintf(o, "---\n\n" CARD_MARK "\n\n");

    const char *slash = strrchr(dir, '/');
    char *name = fb_strdup(slash && slash[1] ? slash + 1 : dir);
    size_t nl = strlen(name);
    if (nl > 8 && !strcmp(name + nl - 8, ".partial")) name[nl - 8] = 0;  // written in staging
    fprintf(o, "# %s\n\n", name);
    // A Hub link only for an "org/name" id; a local directory name links nowhere.
    if (strchr(bm, '/'))
        fprintf(o, "%s of [%s](https://huggingface.co/%s), written by fourbit %s `%s`.\n\n",
                dequant ? "BF16 dequantization" : c->scheme, bm, bm, FB_VERSION, c->tool);
    else
        fprintf(o, "%s of `%s`, written by fourbit %s `%s`.\n\n", dequant ? "BF16 dequantization" : c->scheme, bm,
                FB_VERSION, c->tool);
    fprintf(o, "| | |\n|---|---|\n");
    fprintf(o, "| source | `%s` |\n| output format | %s |\n", c->src, c->format);
    time_t now = time(NULL);
    struct tm tmv;
    char date[64];
    gmtime_r(&now, &tmv);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", &tmv);
    fprintf(o, "| written | %s, %.1f s |\n", date, c->seconds);
    fprintf(o, "| tensors in (BF16 equivalent) | %.3f GB |\n| tensors out | %.3f GB in %zu shard(s) (%.2fx smaller) |\n",
            (double)c->bytes_in / 1e9, (double)c->bytes_out / 1e9, c->n_shards,
            (double)c->bytes_in / (double)(c->bytes_out ? c->bytes_out : 1));
    if (c->recipe_path) fprintf(o, "| recipe | `%s` (embedded below, also in recipe.yaml) |\n", c->recipe_path);
    fputc('\n', o);

    if (c->plan && c->plan[0]) {
        fprintf(o, "## Scheme per module group\n\n```\n%s```\n\n", c->plan);
    }
    if (c->recipe_path) {
        fprintf(o, "## Ignore list as applied\n\n");
        if (!c->n_ignore) fprintf(o, "(empty)\n");
        for (size_t i = 0; i < c->n_ignore; i++) fprintf(o, "- `%s`\n", c->ignore[i]);
        fprintf(o, "\n## Calibration\n\n");
        if (!st) {
            fprintf(o, "none (weight-only scheme: no activation statistics are used)\n\n");
        } else {
            fprintf(o, "| | |\n|---|---|\n| statistics file | `%s` |\n| dataset | `%s` |\n| dataset sha256 | `%s` |\n"
                       "| dataset xxh3-128 | `%s` |\n",
                    c->calib_path, meta(st, "dataset"), meta(st, "dataset_sha256"), meta(st, "dataset_xxh128"));
            fprintf(o, "| samples | %s |\n| sequence length (at most) | %s |\n| chat template | %s |\n| shuffle seed | %s |\n",
                    meta(st, "samples"), meta(st, "seq_len"), meta(st, "template"), meta(st, "seed"));
            fprintf(o, "| tokens | %s |\n| experts observed | %s |\n| made by | %s %s |\n\n", meta(st, "tokens"),
                    !strcmp(meta(st, "experts_mode"), "all") ? "on every token" : "on their routed tokens only",
                    meta(st, "tool"), meta(st, "version"));
        }
        fprintf(o, "## Recipe\n\n```yaml\n%.*s%s```\n\n", (int)c->recipe_len, c->recipe_text ? c->recipe_text : "",
                c->recipe_len && c->recipe_text[c->recipe_len - 1] != '\n' ? "\n" : "");
    }
    serving(o, c, name);
    fprintf(o, "## Files of the source not carried over\n\n");
    size_t nlo = c->left_out ? json_array_size(c->left_out) : 0;
    if (!nlo) fprintf(o, "none\n");
    for (size_t i = 0; i < nlo; i++) {
        json_t *e = json_array_get(c->left_out, i);
        fprintf(o, "- `%s`: %s\n", json_string_value(json_object_get(e, "name")), json_string_value(json_object_get(e, "why")));
    }
    fputc('\n', o);
    free(bm);
    free(name);
    fb_st_close(st);
    int rc = 0;
    if (ferror(o)) rc = fb_fail(err, "%s: write error", tmp);
    if (fclose(o) != 0 && !rc) rc = fb_fail(err, "%s: write error: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, path) != 0) rc = fb_fail(err, "%s: rename: %s", tmp, strerror(errno));
    if (rc) unlink(tmp);
    free(path);
    free(tmp);
    return rc;
}

int fb_card_append(const char *dir, const char *section, fb_err *err) {
    char *path = fb_path_join(dir, "README.md");
    size_t len = 0;
    char *t = slurp(path, &len);
    int rc = 0;
    if (!t) rc = fb_fail(err, "%s: cannot read: %s", path, strerror(errno));
    else if (!strstr(t, CARD_MARK))
        rc = fb_fail(err, "%s: not a model card written by fourbit; not edited", path);
    if (!rc) {
        // Drop an earlier section with the same heading (up to the next "## " heading).
        const char *nl = strchr(section, '\n');
        size_t hl = nl ? (size_t)(nl - section) + 1 : strlen(section);
        char *head = strndup(section, hl);
        char *at = strstr(t, head);
        size_t keep_to = len, resume_at = len;
        if (at) {
            keep_to = (size_t)(at - t);
            char *next = strstr(at + hl, "\n## ");
            resume_at = next ? (size_t)(next - t) + 1 : len;
        }
        free(head);
        char *tmp = fb_path_join(dir, "README.md.tmp");
        FILE *o = fopen(tmp, "w");
        if (!o) rc = fb_fail(err, "%s: cannot create: %s", tmp, strerror(errno));
        else {
            fwrite(t, 1, keep_to, o);
            fwrite(t + resume_at, 1, len - resume_at, o);
            if (keep_to + (len - resume_at) > 0 && (resume_at < len ? t[len - 1] : t[keep_to - 1]) != '\n') fputc('\n', o);
            fputs(section, o);
            if (ferror(o) | (fclose(o) != 0)) rc = fb_fail(err, "%s: write error", tmp);
            if (!rc && rename(tmp, path) != 0) rc = fb_fail(err, "%s: rename: %s", tmp, strerror(errno));
            if (rc) unlink(tmp);
        }
        free(tmp);
    }
    free(t);
    free(path);
    return rc;
}
