// identity.c: see identity.h.
#include "calib/identity.h"

#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "io/safetensors.h"

static void hex128(XXH3_state_t *st, char out[33]) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
    for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", c.digest[i]);
}

// Keys that say how the weights are stored or who saved them, not which model it is.
static const char *const STORAGE_KEYS[] = {"quantization_config", "torch_dtype", "dtype", "transformers_version",
                                           "_name_or_path"};

static int cmp_idx(const void *a, const void *b, void *ctx) {
    const fb_source *s = ctx;
    return strcmp(s->ck->tensors[*(const size_t *)a].t->name, s->ck->tensors[*(const size_t *)b].t->name);
}

// Hashes rows r of tensor i as f32 into st.
static int hash_row(const fb_source *s, size_t i, const float *scale, uint64_t r, uint64_t cols, XXH3_state_t *st,
                    float *buf, void *scratch, fb_err *err) {
    if (fb_source_read_rows_f32(s, i, scale, r, 1, buf, scratch, 1, err)) return -1;
    XXH3_128bits_update(st, buf, cols * sizeof(float));
    return 0;
}

int fb_source_identity(const fb_source *s, int n_layers, char config_hex[33], char **layers, fb_err *err) {
    *layers = NULL;
    XXH3_state_t *st = XXH3_createState();
    json_t *cfg = s->ck->config ? json_deep_copy(s->ck->config) : json_object();
    for (size_t k = 0; k < sizeof STORAGE_KEYS / sizeof STORAGE_KEYS[0]; k++) json_object_del(cfg, STORAGE_KEYS[k]);
    char *js = json_dumps(cfg, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(cfg);
    XXH3_128bits_reset(st);
    XXH3_128bits_update(st, js, strlen(js));
    free(js);
    hex128(st, config_hex);

    // Tensor indices per layer, in name order.
    size_t n = s->ck->n_tensors, m = 0;
    size_t *idx = fb_malloc((n + 1) * sizeof *idx);
    for (size_t i = 0; i < n; i++)
        if (s->role[i] != FB_SRC_FP8_SCALE && !strncmp(s->ck->tensors[i].t->name, "model.layers.", 13)) idx[m++] = i;
    qsort_r(idx, m, sizeof *idx, cmp_idx, (void *)s);
    size_t cap = (size_t)(n_layers > 0 ? n_layers : 1) * 33 + 1;
    char *out = fb_calloc(1, cap);
    float *buf = NULL, *scale = NULL;
    void *scratch = NULL;
    size_t bcap = 0;
    int rc = 0;
    for (int L = 0; L < n_layers && !rc; L++) {
        char pre[64];
        int pl = snprintf(pre, sizeof pre, "model.layers.%d.", L);
        XXH3_128bits_reset(st);
        for (size_t k = 0; k < m && !rc; k++) {
            size_t i = idx[k];
            const fb_st_tensor *t = s->ck->tensors[i].t;
            if (strncmp(t->name, pre, (size_t)pl)) continue;
            uint64_t rows, cols;
            fb_tensor_2d(t, &rows, &cols);
            const char *dt = fb_dtypes[fb_source_logical_dtype(s, i)].name;
            XXH3_128bits_update(st, t->name, strlen(t->name) + 1);
            XXH3_128bits_update(st, dt, strlen(dt) + 1);
            XXH3_128bits_update(st, t->shape, (size_t)t->ndim * sizeof t->shape[0]);
            if (!rows || !cols) continue;
            if (cols * 4 > bcap) {
                bcap = cols * 4;
                free(buf);
                free(scratch);
                buf = fb_malloc(bcap);
                scratch = fb_malloc(bcap);
            }
            if (s->role[i] == FB_SRC_FP8_WEIGHT && fb_source_load_scale(s, i, &scale, err)) { rc = -1; break; }
            rc = hash_row(s, i, scale, 0, cols, st, buf, scratch, err);
            if (!rc && rows > 1) rc = hash_row(s, i, scale, rows - 1, cols, st, buf, scratch, err);
            free(scale);
            scale = NULL;
        }
        if (rc) break;
        char h[33];
        hex128(st, h);
        if (L) strcat(out, ",");
        strcat(out, h);
    }
    free(buf);
    free(scratch);
    free(idx);
    XXH3_freeState(st);
    if (rc) {
        free(out);
        return -1;
    }
    *layers = out;
    return 0;
}

int fb_identity_check(const fb_source *s, const char *stats_path, fb_err *err) {
    fb_st_file *f;
    if (fb_st_open(stats_path, &f, err)) return -1;
    const char *want_cfg = fb_st_meta(f, FB_ID_KEY_CONFIG), *want_layers = fb_st_meta(f, FB_ID_KEY_LAYERS);
    if (!want_cfg || !want_layers) {
        fb_st_close(f);
        return 1;
    }
    const char *model = fb_st_meta(f, "model");
    int n_layers = *want_layers ? 1 : 0;
    for (const char *p = want_layers; *p; p++) n_layers += *p == ',';
    char cfg[33], *layers = NULL;
    int rc = fb_source_identity(s, n_layers, cfg, &layers, err);
    if (!rc && strcmp(cfg, want_cfg) != 0) {
        rc = fb_fail(err, "%s: statistics made from another model (%s): its config.json differs from %s's", stats_path,
                     model ? model : "?", s->ck->path);
    } else if (!rc && strcmp(layers, want_layers) != 0) {
        int L = 0;
        for (size_t k = 0; want_layers[k] && layers[k] == want_layers[k]; k++) L += want_layers[k] == ',';
        rc = fb_fail(err, "%s: statistics made from another model (%s): the weights of layer %d differ from %s's",
                     stats_path, model ? model : "?", L, s->ck->path);
    }
    free(layers);
    fb_st_close(f);
    return rc;
}
