// quant_golden.h: comparing a quantized checkpoint with a golden made by the reference tools
// (scripts/gen-model-quant-golden.py, scripts/gen-qwen3-moe-quant-golden.py): every tensor's
// dtype, shape and xxh3-128, and the quantization_config. Include after test.h.
#ifndef FB_TEST_QUANT_GOLDEN_H
#define FB_TEST_QUANT_GOLDEN_H

#include <jansson.h>
#include <xxhash.h>

#include "io/checkpoint.h"

static __attribute__((unused)) void hex128(const void *data, size_t n, char hex[33]) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(data, n));
    for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", c.digest[i]);
}

// {name: [dtype, shape, xxh3-128 hex]} of every tensor of the checkpoint in path (NULL and a
// message on failure). Caller decrefs.
static __attribute__((unused)) json_t *digest_ckpt(const char *path) {
    fb_ckpt *c;
    fb_err err;
    if (fb_ckpt_open(path, &c, &err)) {
        fprintf(stderr, "    %s\n", err.msg);
        return NULL;
    }
    json_t *out = json_object();
    for (size_t i = 0; i < c->n_tensors; i++) {
        const fb_st_tensor *t = c->tensors[i].t;
        void *buf = NULL;
        if (fb_st_read_all(fb_ckpt_file(c, &c->tensors[i]), t, &buf, &err)) {
            fprintf(stderr, "    %s\n", err.msg);
            json_decref(out);
            out = NULL;
            break;
        }
        char hex[33];
        hex128(buf, t->nbytes, hex);
        free(buf);
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_object_set_new(out, t->name, json_pack("[s o s]", fb_dtypes[t->dtype].name, shape, hex));
    }
    fb_ckpt_close(c);
    return out;
}

// Compares a checkpoint's tensors with a golden {"tensors": {...}}: same names, and for each
// the same dtype, shape and digest. Prints the first mismatches; returns how many differ.
static __attribute__((unused)) int compare_tensors(const char *label, const char *out_dir, json_t *gold) {
    json_t *want = json_object_get(gold, "tensors");
    json_t *got = digest_ckpt(out_dir);
    if (!want || !got) {
        CHECK(0, "%s: cannot read the golden or the output %s", label, out_dir);
        json_decref(got);
        return 1;
    }
    int bad = 0, shown = 0;
    const char *name;
    json_t *w;
    json_object_foreach(want, name, w) {
        json_t *g = json_object_get(got, name);
        const char *why = NULL;
        if (!g) why = "missing from the output";
        else if (!json_equal(json_array_get(w, 0), json_array_get(g, 0))) why = "dtype differs";
        else if (!json_equal(json_array_get(w, 1), json_array_get(g, 1))) why = "shape differs";
        else if (!json_equal(json_array_get(w, 2), json_array_get(g, 2))) why = "bytes differ";
        if (!why) continue;
        if (shown++ < 5) {
            char *ws = json_dumps(w, JSON_COMPACT), *gs = g ? json_dumps(g, JSON_COMPACT) : NULL;
            fprintf(stderr, "    %s: tensor %s: %s: reference %s, fourbit %s\n", label, name, why, ws, gs ? gs : "-");
            free(ws);
            free(gs);
        }
        bad++;
    }
    json_object_foreach(got, name, w) {
        if (json_object_get(want, name)) continue;
        if (shown++ < 5) fprintf(stderr, "    %s: tensor %s: only in fourbit's output\n", label, name);
        bad++;
    }
    CHECK(bad == 0, "%s: %d of %zu tensors differ from the reference (%s)", label, bad, json_object_size(want),
          json_string_value(json_object_get(gold, "reference")));
    json_decref(got);
    return bad;
}

// Notes (does not fail) where two semantically equal objects list their keys in another
// order: compressed-tensors writes config.json with sort_keys=True, pydantic order otherwise.
static __attribute__((unused)) void note_key_order(const char *label, const char *path, json_t *ref, json_t *got, int *budget) {
    if (!json_is_object(ref) || !json_is_object(got)) return;
    const char *k;
    json_t *v;
    char ro[1024] = "", go[1024] = "";
    size_t rl = 0, gl = 0;
    json_object_foreach(ref, k, v)
        if (json_object_get(got, k) && rl < sizeof ro) rl += (size_t)snprintf(ro + rl, sizeof ro - rl, "%s ", k);
    json_object_foreach(got, k, v)
        if (json_object_get(ref, k) && gl < sizeof go) gl += (size_t)snprintf(go + gl, sizeof go - gl, "%s ", k);
    // the same difference is noted once per run, not once per golden
    static __attribute__((unused)) char seen[16][256];
    static __attribute__((unused)) int n_seen;
    char key[256];
    snprintf(key, sizeof key, "%s|%.100s|%.100s", strchr(path + (*path == '/'), '/') ? strchr(path + (*path == '/'), '/') : path, ro, go);
    int dup = 0;
    for (int i = 0; i < n_seen; i++) dup |= !strcmp(seen[i], key);
    if (strcmp(ro, go) && !dup && (*budget)-- > 0) {
        if (n_seen < 16) snprintf(seen[n_seen++], sizeof seen[0], "%s", key);
        printf("  note: %s: key order differs at %s: reference [%.200s] fourbit [%.200s]\n", label, *path ? path : "/", ro,
               go);
    }
    json_object_foreach(ref, k, v) {
        char sub[512];
        snprintf(sub, sizeof sub, "%s/%s", path, k);
        note_key_order(label, sub, v, json_object_get(got, k), budget);
    }
}

static __attribute__((unused)) json_t *load_qconfig(const char *out_dir, const char *file, const char *key) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", out_dir, file);
    json_t *cfg = json_load_file(p, 0, NULL);
    json_t *qc = key ? json_incref(json_object_get(cfg, key)) : json_incref(cfg);
    json_decref(cfg);
    return qc;
}

static __attribute__((unused)) void print_diff(const char *label, const char *what, json_t *a, json_t *b) {
    char *as = json_dumps(a, JSON_COMPACT | JSON_SORT_KEYS), *bs = json_dumps(b, JSON_COMPACT | JSON_SORT_KEYS);
    fprintf(stderr, "    %s: %s\n      reference %.1500s\n      fourbit   %.1500s\n", label, what, as ? as : "null", bs ? bs : "null");
    free(as);
    free(bs);
}

// quantization_config of the output against the golden: equal to the oneshot path's
// (compressed-tensors' apply + update_config, what the issue asks for) and, where the golden
// has one, to model_free_ptq's except for the differences of that entrypoint (noted).
static __attribute__((unused)) void compare_qconfig(const char *label, const char *out_dir, json_t *gold) {
    json_t *qc = load_qconfig(out_dir, "config.json", "quantization_config");
    REQUIRE(qc, "%s: config.json has no quantization_config", label);
    int budget = 6;
    json_t *oneshot = json_object_get(gold, "quantization_config_oneshot");
    json_t *ref = json_object_get(gold, "quantization_config");
    if (oneshot) {
        CHECK(json_equal(qc, oneshot), "%s: quantization_config differs from compressed-tensors' oneshot config", label);
        if (!json_equal(qc, oneshot)) print_diff(label, "quantization_config", oneshot, qc);
        note_key_order(label, "", oneshot, qc, &budget);
    }
    if (json_is_object(ref) && oneshot) {
        // model_free_ptq: its config group is named after the preset, its ignore list is the
        // recipe's (not expanded to module names) and it has no sparsity_config. Compare
        // the rest.
        json_t *r = json_deep_copy(ref), *g = json_deep_copy(qc);
        json_t *rg = json_object_get(r, "config_groups"), *gg = json_object_get(g, "config_groups");
        CHECK(json_object_size(rg) == 1 && json_object_size(gg) == 1, "%s: one config group each", label);
        void *ri = json_object_iter(rg), *gi = json_object_iter(gg);
        // model_free_ptq of llm-compressor 0.14 (compressed-tensors 0.19) leaves weights.observer
        // null, the preset's unset value; oneshot (and 0.13's model_free_ptq) write llm-compressor's
        // default "memoryless_minmax", as fourbit does. Noted, not failed.
        json_t *rw = ri ? json_object_get(json_object_iter_value(ri), "weights") : NULL;
        json_t *gw = gi ? json_object_get(json_object_iter_value(gi), "weights") : NULL;
        if (json_is_null(json_object_get(rw, "observer")) && json_is_string(json_object_get(gw, "observer"))) {
            printf("  note: %s: model_free_ptq writes weights.observer null, fourbit (like oneshot) \"%s\"\n", label,
                   json_string_value(json_object_get(gw, "observer")));
            json_object_set(rw, "observer", json_object_get(gw, "observer"));
        }
        if (ri && gi) {
            CHECK(json_equal(json_object_iter_value(ri), json_object_iter_value(gi)),
                  "%s: the config group (scheme) differs from model_free_ptq's", label);
            if (strcmp(json_object_iter_key(ri), json_object_iter_key(gi)))
                printf("  note: %s: model_free_ptq names the config group '%s', fourbit (like oneshot) '%s'\n", label,
                       json_object_iter_key(ri), json_object_iter_key(gi));
        }
        if (!json_equal(json_object_get(r, "ignore"), json_object_get(g, "ignore"))) {
            char *a = json_dumps(json_object_get(r, "ignore"), JSON_COMPACT), *b = json_dumps(json_object_get(g, "ignore"), JSON_COMPACT);
            printf("  note: %s: ignore: model_free_ptq writes the recipe's %s, fourbit (like oneshot) %s\n", label, a, b);
            free(a);
            free(b);
        }
        if (json_object_get(g, "sparsity_config") && !json_object_get(r, "sparsity_config"))
            printf("  note: %s: sparsity_config {} written by fourbit and oneshot, not by model_free_ptq\n", label);
        const char *keys[] = {"config_groups", "ignore", "sparsity_config"};
        for (int i = 0; i < 3; i++) {
            json_object_del(r, keys[i]);
            json_object_del(g, keys[i]);
        }
        CHECK(json_equal(r, g), "%s: the rest of quantization_config differs from model_free_ptq's", label);
        if (!json_equal(r, g)) print_diff(label, "quantization_config without config_groups/ignore/sparsity_config", r, g);
        json_decref(r);
        json_decref(g);
    } else if (json_is_object(ref)) {  // AutoRound: the reference's own config, in both files
        CHECK(json_equal(qc, ref), "%s: quantization_config differs from auto-round's", label);
        if (!json_equal(qc, ref)) print_diff(label, "quantization_config", ref, qc);
        note_key_order(label, "", ref, qc, &budget);
        json_t *qj = load_qconfig(out_dir, "quantization_config.json", NULL);
        json_t *rj = json_object_get(gold, "quantization_config_json");
        CHECK(qj && json_equal(qj, rj), "%s: quantization_config.json differs from auto-round's", label);
        if (qj && rj) note_key_order(label, "quantization_config.json", rj, qj, &budget);
        json_decref(qj);
    }
    json_decref(qc);
}

#endif
