// test_calib_stats: the calibration statistics table and file (src/calib/stats.h): merge rules
// (max of absmax, sums of counts and saliency), saliency of never-routed experts, the file
// read back (partial layers, metadata), readable by the generic safetensors reader, module-name
// lookups, and the reader's refusals (other kind, other version, missing tensor, wrong dtype,
// NaN or negative absmax), each with its own message.
#include <math.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "calib/stats.h"
#include "io/safetensors.h"
#include "test.h"

// Writes a safetensors file: metadata pairs, then tensors given as (name, dtype, n, data).
typedef struct ent { const char *name; const char *dt; int n; const void *data; int esz; } ent;

static void write_raw(const char *path, const char *const *meta, int nmeta, const ent *e, int ne) {
    json_t *h = json_object(), *m = json_object();
    for (int i = 0; i < nmeta; i++) json_object_set_new(m, meta[2 * i], json_string(meta[2 * i + 1]));
    json_object_set_new(h, "__metadata__", m);
    long off = 0;
    for (int i = 0; i < ne; i++) {
        json_object_set_new(h, e[i].name, json_pack("{s:s,s:[i],s:[I,I]}", "dtype", e[i].dt, "shape",
                                                    e[i].n, "data_offsets", (json_int_t)off,
                                                    (json_int_t)(off + e[i].n * e[i].esz)));
        off += e[i].n * e[i].esz;
    }
    char *js = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    FILE *f = fopen(path, "wb");
    uint64_t n = strlen(js);
    fwrite(&n, 8, 1, f);
    fwrite(js, 1, n, f);
    for (int i = 0; i < ne; i++) fwrite(e[i].data, (size_t)e[i].esz, (size_t)e[i].n, f);
    fclose(f);
    free(js);
}

static fb_calib_stats *filled(int L, int E, float base) {
    fb_calib_stats *s = fb_calib_stats_new(L, E);
    s->all_experts = 1;
    s->n_tokens = 10;
    for (int l = 0; l < L; l++) {
        s->done[l] = 1;
        s->qkv_absmax[l] = base + (float)l;
        s->o_absmax[l] = 2 * base + (float)l;
        s->norm_sum[l] = 10.0 * (l + 1);
        s->norm_max[l] = 3.0 + l;
        s->h_absmax[l] = 1.5f + (float)l;
        for (int e = 0; e < E; e++) {
            int i = l * E + e;
            s->w13_absmax[i] = base;
            s->w2_absmax[i] = base * 0.5f + (float)e;
            s->counts[i] = e == 1 ? 0 : e + 1;
            s->sal_sum[i] = e == 1 ? 0 : 0.25 * (e + 1);
        }
    }
    return s;
}

int main(void) {
    fb_err err;
    const int L = 3, E = 4;
    fb_calib_stats *a = filled(L, E, 1.0f), *b = filled(L, E, 3.0f);
    CHECK(fb_calib_stats_saliency(a, 0, 1) == 0.0, "never-routed expert: saliency 0");
    CHECK(fb_calib_stats_saliency(a, 2, 3) == 0.25, "saliency = sum / count: %g",
          fb_calib_stats_saliency(a, 2, 3));
    REQUIRE(fb_calib_stats_merge(a, b, &err) == 0, "%s", err.msg);
    CHECK(a->qkv_absmax[1] == 4.0f && a->w13_absmax[5] == 3.0f && a->w2_absmax[6] == 3.5f,
          "merge takes the max of absmax");
    CHECK(a->counts[7] == 8 && a->sal_sum[7] == 2.0 && a->n_tokens == 20 && a->norm_sum[2] == 60,
          "merge sums counts, saliency, tokens, norms");
    fb_calib_stats *c = fb_calib_stats_new(L, E + 1);
    CHECK(fb_calib_stats_merge(a, c, &err) != 0 && strstr(err.msg, "cannot merge"),
          "merge refuses other shapes: %s", err.msg);
    fb_calib_stats_free(c);

    // Write with layer 1 not run; read back.
    char dir[] = "/tmp/fourbit-stats-XXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    char p[256], q[256];
    snprintf(p, sizeof p, "%s/s.safetensors", dir);
    a->done[1] = 0;
    const char *mk[] = {"tool", "dataset_xxh128"}, *mv[] = {"test", "00ff"};
    REQUIRE(fb_calib_stats_write(a, p, 2, mk, mv, &err) == 0, "%s", err.msg);
    fb_st_file *f;
    REQUIRE(fb_st_open(p, &f, &err) == 0, "the generic reader accepts it: %s", err.msg);
    CHECK(fb_st_meta(f, "format") && !strcmp(fb_st_meta(f, "format"), "pt"), "format pt");
    CHECK(fb_st_meta(f, "dataset_xxh128") && !strcmp(fb_st_meta(f, "dataset_xxh128"), "00ff"),
          "provenance metadata");
    CHECK(fb_st_find(f, "model.layers.1.self_attn.q_proj.input_absmax") == NULL,
          "a layer not run is absent");
    const fb_st_tensor *t = fb_st_find(f, "model.layers.2.block_sparse_moe.expert_counts");
    CHECK(t && t->dtype == FB_I64 && t->shape[0] == E && t->offset % 8 == 0, "counts I64 [E], aligned");
    t = fb_st_find(f, "model.layers.0.hidden_norms");
    CHECK(t && t->dtype == FB_F64 && t->shape[0] == 3, "hidden norms F64 [3]");
    double hn[3];
    if (t) fb_st_read(f, t, 0, hn, sizeof hn, &err);
    CHECK(t && hn[0] == a->norm_sum[0] / 20.0 && hn[1] == a->norm_max[0], "hidden norms values");
    fb_st_close(f);
    fb_calib_stats *r = NULL;
    REQUIRE(fb_calib_stats_read(p, &r, &err) == 0, "%s", err.msg);
    CHECK(r->done[0] && !r->done[1] && r->done[2], "layers done");
    int same = 1;
    for (int l = 0; l < L; l++) {
        if (!a->done[l]) continue;
        same &= r->qkv_absmax[l] == a->qkv_absmax[l] && r->o_absmax[l] == a->o_absmax[l];
        for (int e = 0; e < E; e++) {
            int i = l * E + e;
            same &= r->counts[i] == a->counts[i] && r->sal_sum[i] == a->sal_sum[i] &&
                    r->w13_absmax[i] == a->w13_absmax[i] && r->w2_absmax[i] == a->w2_absmax[i];
        }
    }
    CHECK(same, "round trip");
    float v = -1;
    CHECK(fb_calib_stats_absmax(r, "model.layers.2.self_attn.v_proj", &v) == 0 && v == a->qkv_absmax[2],
          "lookup v_proj");
    CHECK(fb_calib_stats_absmax(r, "model.layers.2.self_attn.o_proj", &v) == 0 && v == a->o_absmax[2],
          "lookup o_proj");
    CHECK(fb_calib_stats_absmax(r, "model.layers.0.block_sparse_moe.experts.3.w3", &v) == 0 &&
          v == a->w13_absmax[3], "lookup w3");
    CHECK(fb_calib_stats_absmax(r, "model.layers.1.self_attn.q_proj", &v) != 0, "layer not run");
    CHECK(fb_calib_stats_absmax(r, "model.layers.0.block_sparse_moe.experts.4.w1", &v) != 0,
          "expert out of range");
    CHECK(fb_calib_stats_absmax(r, "model.layers.0.block_sparse_moe.experts.0.w4", &v) != 0, "w4");
    CHECK(fb_calib_stats_absmax(r, "model.layers.0.self_attn.q_proj.weight", &v) != 0, ".weight");
    CHECK(fb_calib_stats_absmax(r, "lm_head", &v) != 0, "lm_head is not calibrated");
    fb_calib_stats_free(r);

    // Refusals.
    float one = 1.0f, nan_ = NAN, neg = -1.0f;
    int64_t cnt[1] = {1};
    double sal[1] = {0.5}, hn3[3] = {1, 2, 3};
    const char *good[] = {"format", "pt", "fourbit.kind", "calibration-stats", "fourbit.stats_version",
                          "1", "num_layers", "1", "num_experts", "1", "tokens", "4"};
    ent base[] = {
        {"model.layers.0.block_sparse_moe.expert_counts", "I64", 1, cnt, 8},
        {"model.layers.0.block_sparse_moe.expert_saliency_sum", "F64", 1, sal, 8},
        {"model.layers.0.hidden_norms", "F64", 3, hn3, 8},
        {"model.layers.0.self_attn.q_proj.input_absmax", "F32", 1, &one, 4},
        {"model.layers.0.self_attn.k_proj.input_absmax", "F32", 1, &one, 4},
        {"model.layers.0.self_attn.v_proj.input_absmax", "F32", 1, &one, 4},
        {"model.layers.0.self_attn.o_proj.input_absmax", "F32", 1, &one, 4},
        {"model.layers.0.block_sparse_moe.experts.0.w1.input_absmax", "F32", 1, &one, 4},
        {"model.layers.0.block_sparse_moe.experts.0.w2.input_absmax", "F32", 1, &one, 4},
        {"model.layers.0.block_sparse_moe.experts.0.w3.input_absmax", "F32", 1, &one, 4},
    };
    snprintf(q, sizeof q, "%s/q.safetensors", dir);
    write_raw(q, good, 6, base, 10);
    CHECK(fb_calib_stats_read(q, &r, &err) == 0, "minimal valid file: %s", err.msg);
    fb_calib_stats_free(r);
    r = NULL;
    const char *other[] = {"format", "pt"};
    write_raw(q, other, 1, base, 10);
    CHECK(fb_calib_stats_read(q, &r, &err) != 0 && strstr(err.msg, "not a fourbit calibration"),
          "other kind: %s", err.msg);
    const char *v2[] = {"format", "pt", "fourbit.kind", "calibration-stats", "fourbit.stats_version",
                        "2", "num_layers", "1", "num_experts", "1", "tokens", "4"};
    write_raw(q, v2, 6, base, 10);
    CHECK(fb_calib_stats_read(q, &r, &err) != 0 && strstr(err.msg, "version 2"), "version: %s", err.msg);
    write_raw(q, good, 6, base, 9);
    CHECK(fb_calib_stats_read(q, &r, &err) != 0 && strstr(err.msg, "w3.input_absmax is missing"),
          "missing tensor: %s", err.msg);
    ent bad[10];
    memcpy(bad, base, sizeof bad);
    bad[8].data = &nan_;
    write_raw(q, good, 6, bad, 10);
    CHECK(fb_calib_stats_read(q, &r, &err) != 0 && strstr(err.msg, "not a finite absmax"),
          "NaN absmax: %s", err.msg);
    bad[8].data = &neg;
    write_raw(q, good, 6, bad, 10);
    CHECK(fb_calib_stats_read(q, &r, &err) != 0 && strstr(err.msg, "w2.input_absmax"),
          "negative absmax: %s", err.msg);
    memcpy(bad, base, sizeof bad);
    bad[0].dt = "I32";
    bad[0].esz = 4;
    int32_t c32[1] = {1};
    bad[0].data = c32;
    write_raw(q, good, 6, bad, 10);
    CHECK(fb_calib_stats_read(q, &r, &err) != 0 && strstr(err.msg, "expected I64"),
          "wrong dtype: %s", err.msg);
    const char *badn[] = {"format", "pt", "fourbit.kind", "calibration-stats", "fourbit.stats_version",
                          "1", "num_layers", "x", "num_experts", "1", "tokens", "4"};
    write_raw(q, badn, 6, base, 10);
    CHECK(fb_calib_stats_read(q, &r, &err) != 0 && strstr(err.msg, "num_layers"),
          "bad num_layers: %s", err.msg);
    CHECK(fb_calib_stats_write(a, "/nonexistent-dir/x.safetensors", 0, NULL, NULL, &err) != 0 &&
          strstr(err.msg, "/nonexistent-dir/x.safetensors.tmp"), "write error names the path: %s",
          err.msg);
    unlink(p);
    unlink(q);
    rmdir(dir);
    fb_calib_stats_free(a);
    fb_calib_stats_free(b);
    TEST_MAIN_END();
}
