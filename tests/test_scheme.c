// test_scheme.c: plans and quantization_config JSON against what compressed-tensors 0.19 (through
// llm-compressor 0.14.0.1's resolve_quantization_config) and auto-round 0.16.1 write for the
// same toy MiniMax-M2 module tree and recipes
// (tests/golden/match/qconfig.json, from scripts/gen-match-golden.py), plus the predicate's
// rules, presets, strict parsing, fused sets and module order.
#include <jansson.h>
#include <string.h>

#include "io/safetensors.h"
#include "quant/scheme.h"
#include "test.h"

typedef struct toy {
    size_t n;
    fb_tensor_desc *t;
    int64_t (*shapes)[FB_MAX_DIMS];
} toy;

static void toy_load(json_t *arr, toy *ty) {
    ty->n = json_array_size(arr);
    ty->t = calloc(ty->n, sizeof *ty->t);
    ty->shapes = calloc(ty->n, sizeof *ty->shapes);
    for (size_t i = 0; i < ty->n; i++) {
        json_t *e = json_array_get(arr, i);
        json_t *sh = json_object_get(e, "shape");
        ty->t[i].name = json_string_value(json_object_get(e, "name"));
        ty->t[i].ndim = (int)json_array_size(sh);
        for (int d = 0; d < ty->t[i].ndim; d++) ty->shapes[i][d] = json_integer_value(json_array_get(sh, d));
        ty->t[i].shape = ty->shapes[i];
    }
}

// The fb_qconfig a recipe of the golden file resolves to (what recipe.c does for the YAML).
static int config_from_recipe(json_t *r, fb_qconfig *cfg, fb_err *err) {
    memset(cfg, 0, sizeof *cfg);
    json_t *ign = json_object_get(r, "ignore");
    cfg->n_ignore = json_array_size(ign);
    cfg->ignore = calloc(cfg->n_ignore + 1, sizeof(char *));
    for (size_t i = 0; i < cfg->n_ignore; i++) cfg->ignore[i] = strdup(json_string_value(json_array_get(ign, i)));
    if (fb_target_list_compile((const char *const *)cfg->ignore, cfg->n_ignore, &cfg->ignore_tl, NULL, NULL, err)) return -1;
    json_t *sc = json_object_get(r, "scheme");
    if (sc) {
        const char *lin[] = {"Linear"};
        cfg->groups = calloc(1, sizeof *cfg->groups);
        cfg->n_groups = 1;
        return fb_qscheme_preset(json_string_value(sc), lin, 1, "group_0", &cfg->groups[0], err);
    }
    json_t *cg = json_object_get(r, "config_groups");
    cfg->groups = calloc(json_object_size(cg), sizeof *cfg->groups);
    const char *k;
    json_t *v;
    json_object_foreach(cg, k, v) {
        if (fb_qscheme_from_json(v, k, k, &cfg->groups[cfg->n_groups], err)) return -1;
        cfg->n_groups++;
    }
    return 0;
}

static void show_diff(const char *want, const char *got) {
    size_t i = 0;
    while (want[i] && want[i] == got[i]) i++;
    size_t from = i > 80 ? i - 80 : 0;
    fprintf(stderr, "  first difference at byte %zu\n  want: ...%.160s\n  got:  ...%.160s\n", i,
            want + from, got + from);
}

static void test_golden(json_t *doc, toy *ty) {
    const char *name;
    json_t *g;
    json_object_foreach(json_object_get(doc, "recipes"), name, g) {
        fb_qconfig cfg;
        fb_err err;
        REQUIRE(config_from_recipe(json_object_get(g, "recipe"), &cfg, &err) == 0, "%s: %s", name, err.msg);
        fb_plan p;
        int rc = fb_plan_build(&cfg, ty->t, ty->n, &p, &err);
        CHECK(rc == 0, "%s: plan: %s", name, err.msg);
        if (rc) { fb_qconfig_free(&cfg); continue; }
        json_t *qc = fb_qconfig_to_json(&p, NULL);
        json_t *want = json_object_get(g, "quantization_config");
        CHECK(json_equal(qc, want), "%s: quantization_config differs from compressed-tensors'", name);
        char *got = json_dumps(qc, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
        const char *wd = json_string_value(json_object_get(g, "dump"));
        CHECK(strcmp(got, wd) == 0, "%s: dump not byte-identical to json.dump(indent=2, sort_keys=True)", name);
        if (strcmp(got, wd) != 0) show_diff(wd, got);
        free(got);
        json_decref(qc);
        fb_plan_free(&p);
        fb_qconfig_free(&cfg);
    }
    json_object_foreach(json_object_get(doc, "autoround"), name, g) {
        fb_qconfig cfg;
        fb_err err;
        REQUIRE(config_from_recipe(json_object_get(json_object_get(json_object_get(doc, "recipes"), name), "recipe"), &cfg, &err) == 0, "%s", err.msg);
        fb_plan p;
        REQUIRE(fb_plan_build(&cfg, ty->t, ty->n, &p, &err) == 0, "%s: %s", name, err.msg);
        json_t *ar = fb_autoround_config_json(&p, json_string_value(json_object_get(g, "version")), &err);
        CHECK(ar, "%s: %s", name, err.msg);
        if (ar) {
            CHECK(json_equal(ar, json_object_get(g, "config")), "%s: AutoRound config differs", name);
            char *got = json_dumps(ar, JSON_INDENT(2) | JSON_ENSURE_ASCII);  // insertion order
            const char *wd = json_string_value(json_object_get(g, "dump"));
            CHECK(strcmp(got, wd) == 0, "%s: AutoRound dump not byte-identical", name);
            if (strcmp(got, wd) != 0) show_diff(wd, got);
            free(got);
            json_decref(ar);
        }
        fb_plan_free(&p);
        fb_qconfig_free(&cfg);
    }
}

static const fb_plan_entry *entry_of(const fb_plan *p, const toy *ty, const char *tensor) {
    for (size_t i = 0; i < ty->n; i++)
        if (strcmp(ty->t[i].name, tensor) == 0) return &p->e[i];
    return NULL;
}

// The predicate, rule by rule, on the standard NVFP4 recipe.
static void test_rules(toy *ty) {
    fb_qconfig cfg = {0};
    fb_err err;
    const char *ign[] = {"lm_head", "model.embed_tokens", "re:.*block_sparse_moe\\.gate$"};
    cfg.n_ignore = 3;
    cfg.ignore = calloc(3, sizeof(char *));
    for (int i = 0; i < 3; i++) cfg.ignore[i] = strdup(ign[i]);
    REQUIRE(fb_target_list_compile(ign, 3, &cfg.ignore_tl, NULL, NULL, &err) == 0, "%s", err.msg);
    const char *lin[] = {"Linear"};
    cfg.groups = calloc(1, sizeof *cfg.groups);
    cfg.n_groups = 1;
    REQUIRE(fb_qscheme_preset("nvfp4", lin, 1, "group_0", &cfg.groups[0], &err) == 0, "%s", err.msg);
    fb_plan p;
    REQUIRE(fb_plan_build(&cfg, ty->t, ty->n, &p, &err) == 0, "%s", err.msg);
    static const struct { const char *t; fb_plan_rule rule; int ign; fb_qkind kind; } R[] = {
        {"model.embed_tokens.weight", FB_RULE_IGNORED, 1, FB_QK_UNSUPPORTED},
        {"model.layers.0.block_sparse_moe.e_score_correction_bias", FB_RULE_NOT_WEIGHT, -1, FB_QK_UNSUPPORTED},
        {"model.layers.0.block_sparse_moe.gate.weight", FB_RULE_IGNORED, 2, FB_QK_UNSUPPORTED},
        {"model.layers.2.block_sparse_moe.gate.weight", FB_RULE_IGNORED, 2, FB_QK_UNSUPPORTED},
        {"lm_head.weight", FB_RULE_IGNORED, 0, FB_QK_UNSUPPORTED},
        {"model.norm.weight", FB_RULE_NOT_TARGETED, -1, FB_QK_UNSUPPORTED},
        {"model.layers.1.self_attn.q_norm.weight", FB_RULE_NOT_TARGETED, -1, FB_QK_UNSUPPORTED},
        {"model.layers.1.self_attn.q_proj.weight", FB_RULE_QUANTIZED, -1, FB_QK_NVFP4},
        {"model.layers.1.block_sparse_moe.experts.1.w2.weight", FB_RULE_QUANTIZED, -1, FB_QK_NVFP4},
    };
    for (size_t i = 0; i < sizeof R / sizeof R[0]; i++) {
        const fb_plan_entry *e = entry_of(&p, ty, R[i].t);
        REQUIRE(e, "tensor %s missing from the toy", R[i].t);
        CHECK(e->rule == R[i].rule, "%s: rule %s, want %s", R[i].t, fb_plan_rule_text(e->rule),
              fb_plan_rule_text(R[i].rule));
        CHECK(e->ignore_entry == R[i].ign, "%s: ignore entry %d, want %d", R[i].t, e->ignore_entry, R[i].ign);
        CHECK(e->kind == R[i].kind, "%s: kind %s", R[i].t, fb_qkind_name(e->kind));
        CHECK(e->quantize == (R[i].rule == FB_RULE_QUANTIZED), "%s quantize flag", R[i].t);
    }
    // The gate matches the target "Linear" too: the entry records it.
    const fb_plan_entry *gate = entry_of(&p, ty, "model.layers.0.block_sparse_moe.gate.weight");
    CHECK(gate->target_entry == 0, "gate target entry %d", gate->target_entry);
    CHECK(entry_of(&p, ty, "model.layers.0.self_attn.q_proj.weight")->format == FB_FMT_NVFP4, "format");
    // 3 layers x (4 attention + 2 experts x 3) = 30 quantized; gates + lm_head kept.
    CHECK(p.n_quantized == 30, "quantized %zu", p.n_quantized);
    CHECK(p.n_kept_modules == 4, "kept Linear modules %zu", p.n_kept_modules);
    // fused sets: per layer qkv + 2 experts' {w1,w3}
    CHECK(p.n_fused == 9, "fused sets %zu", p.n_fused);
    const fb_plan_entry *q = entry_of(&p, ty, "model.layers.1.self_attn.q_proj.weight");
    const fb_plan_entry *v = entry_of(&p, ty, "model.layers.1.self_attn.v_proj.weight");
    const fb_plan_entry *o = entry_of(&p, ty, "model.layers.1.self_attn.o_proj.weight");
    CHECK(q->fused >= 0 && q->fused == v->fused, "q/v share a set");
    CHECK(o->fused == -1, "o_proj is in no set");
    if (q->fused >= 0) {
        const fb_fused_set *fs = &p.fused[q->fused];
        CHECK(strcmp(fs->key, "model.layers.1.self_attn.{q,k,v}_proj") == 0, "key %s", fs->key);
        CHECK(fs->n == 3, "qkv set has %zu members", fs->n);
    }
    const fb_plan_entry *w1 = entry_of(&p, ty, "model.layers.2.block_sparse_moe.experts.1.w1.weight");
    const fb_plan_entry *w3 = entry_of(&p, ty, "model.layers.2.block_sparse_moe.experts.1.w3.weight");
    const fb_plan_entry *w2 = entry_of(&p, ty, "model.layers.2.block_sparse_moe.experts.1.w2.weight");
    CHECK(w1->fused >= 0 && w1->fused == w3->fused && w2->fused == -1, "w1/w3 fused, w2 alone");
    fb_plan_free(&p);

    // Rule: a split fused set is refused.
    const char *ign2[] = {"model.layers.1.self_attn.k_proj"};
    fb_qconfig c2 = cfg;
    fb_target_list tl2;
    REQUIRE(fb_target_list_compile(ign2, 1, &tl2, NULL, NULL, &err) == 0, "%s", err.msg);
    c2.ignore_tl = tl2;
    CHECK(fb_plan_build(&c2, ty->t, ty->n, &p, &err) == -1, "split q/k/v accepted");
    CHECK(strstr(err.msg, "model.layers.1.self_attn.{q,k,v}_proj") && strstr(err.msg, "split"),
          "message: %s", err.msg);
    fb_target_list_free(&tl2);
    const char *ign3[] = {"re:.*experts\\.0\\.w3$"};
    REQUIRE(fb_target_list_compile(ign3, 1, &tl2, NULL, NULL, &err) == 0, "%s", err.msg);
    c2.ignore_tl = tl2;
    CHECK(fb_plan_build(&c2, ty->t, ty->n, &p, &err) == -1, "split w1/w3 accepted");
    CHECK(strstr(err.msg, "experts.0.{w1,w3}"), "message: %s", err.msg);
    fb_target_list_free(&tl2);
    // Rule: targeting an Embedding is refused (no ignore list at all).
    const char *none[] = {"re:nothing$"};
    REQUIRE(fb_target_list_compile(none, 1, &tl2, NULL, NULL, &err) == 0, "%s", err.msg);
    c2.ignore_tl = tl2;
    fb_qscheme emb;
    const char *t_emb[] = {"Embedding", "Linear"};
    REQUIRE(fb_qscheme_preset("NVFP4A16", t_emb, 2, "group_0", &emb, &err) == 0, "%s", err.msg);
    c2.groups = &emb;
    CHECK(fb_plan_build(&c2, ty->t, ty->n, &p, &err) == -1, "Embedding target accepted");
    CHECK(strstr(err.msg, "model.embed_tokens") && strstr(err.msg, "ignore"), "message: %s", err.msg);
    fb_qscheme_free(&emb);
    // Rule: a scheme fourbit cannot write is refused, naming the tensor and why.
    REQUIRE(fb_qscheme_preset("FP8", lin, 1, "group_0", &emb, &err) == 0, "%s", err.msg);
    CHECK(fb_plan_build(&c2, ty->t, ty->n, &p, &err) == -1, "FP8 accepted");
    CHECK(strstr(err.msg, "cannot be written") && strstr(err.msg, ".weight"), "message: %s", err.msg);
    fb_qscheme_free(&emb);
    // Rule: nothing quantized is an error.
    const char *t_none[] = {"re:nothing$"};
    REQUIRE(fb_qscheme_preset("W4A16", t_none, 1, "group_0", &emb, &err) == 0, "%s", err.msg);
    CHECK(fb_plan_build(&c2, ty->t, ty->n, &p, &err) == -1, "empty plan accepted");
    CHECK(strstr(err.msg, "quantizes nothing"), "message: %s", err.msg);
    fb_qscheme_free(&emb);
    fb_target_list_free(&tl2);
    fb_qconfig_free(&cfg);

    // Rule: group-size divisibility (W4A16 group 128 on an input of 96).
    static const int64_t sh[2] = {64, 96};
    fb_tensor_desc odd = {"model.layers.0.self_attn.o_proj.weight", 2, sh};
    fb_qconfig c3 = {0};
    c3.groups = calloc(1, sizeof *c3.groups);
    c3.n_groups = 1;
    REQUIRE(fb_qscheme_preset("W4A16", lin, 1, "group_0", &c3.groups[0], &err) == 0, "%s", err.msg);
    CHECK(fb_plan_build(&c3, &odd, 1, &p, &err) == -1, "96 %% 128 accepted");
    CHECK(strstr(err.msg, "96") && strstr(err.msg, "128"), "message: %s", err.msg);
    fb_qconfig_free(&c3);
}

static void test_presets_and_parse(void) {
    fb_err err;
    fb_qscheme s;
    const char *lin[] = {"Linear"};
    CHECK(fb_qscheme_is_preset("nvfp4a16") && fb_qscheme_is_preset("W4A16") && !fb_qscheme_is_preset("NVFP5"), "is_preset");
    CHECK(fb_qscheme_preset("NVFP5", lin, 1, "g", &s, &err) == -1 && strstr(err.msg, "NVFP4A16"),
          "unknown preset message: %s", err.msg);
    static const struct { const char *name; fb_qkind kind; fb_qformat fmt; } K[] = {
        {"NVFP4", FB_QK_NVFP4, FB_FMT_NVFP4}, {"NVFP4A16", FB_QK_NVFP4A16, FB_FMT_NVFP4},
        {"W4A16", FB_QK_W4A16, FB_FMT_PACK}, {"W4A16_ASYM", FB_QK_UNSUPPORTED, FB_FMT_PACK},
        {"W8A16", FB_QK_UNSUPPORTED, FB_FMT_PACK}, {"W4A8", FB_QK_UNSUPPORTED, FB_FMT_INT_QUANTIZED},
        {"FP8", FB_QK_UNSUPPORTED, FB_FMT_FLOAT_QUANTIZED}, {"MXFP4", FB_QK_UNSUPPORTED, FB_FMT_MXFP4},
        {"MXFP8A16", FB_QK_UNSUPPORTED, FB_FMT_MXFP8}, {"FP8_BLOCK", FB_QK_UNSUPPORTED, FB_FMT_FLOAT_QUANTIZED},
        {"UNQUANTIZED", FB_QK_UNSUPPORTED, FB_FMT_DENSE},
    };
    for (size_t i = 0; i < sizeof K / sizeof K[0]; i++) {
        REQUIRE(fb_qscheme_preset(K[i].name, lin, 1, "g", &s, &err) == 0, "%s: %s", K[i].name, err.msg);
        const char *why = NULL;
        CHECK(fb_qscheme_kind(&s, &why) == K[i].kind, "%s kind", K[i].name);
        CHECK(K[i].kind != FB_QK_UNSUPPORTED || why, "%s: no reason given", K[i].name);
        CHECK(fb_qscheme_infer_format(&s) == K[i].fmt, "%s format %s", K[i].name,
              fb_qformat_name(fb_qscheme_infer_format(&s)));
        fb_qscheme_free(&s);
    }
    // Explicit args equal to the preset serialize identically (observer aside).
    json_t *w = json_loads("{\"num_bits\":4,\"type\":\"float\",\"strategy\":\"tensor_group\","
                           "\"group_size\":16,\"symmetric\":true,\"dynamic\":false,"
                           "\"scale_dtype\":\"float8_e4m3fn\"}", 0, NULL);
    fb_qargs a;
    REQUIRE(fb_qargs_from_json(w, "w", &a, &err) == 0, "%s", err.msg);
    REQUIRE(fb_qscheme_preset("NVFP4A16", lin, 1, "g", &s, &err) == 0, "%s", err.msg);
    CHECK(fb_qargs_equal(&a, &s.weights), "explicit NVFP4 weights differ from the preset");
    fb_qargs_free(&a);
    fb_qscheme_free(&s);
    json_decref(w);
    // Strictness: each bad args object with the fragment its message must contain.
    static const struct { const char *json, *frag; } BAD[] = {
        {"{\"num_bits\":4,\"foo\":1}", "unknown key 'foo'"},
        {"{\"num_bits\":\"4\"}", "expected an integer"},
        {"{\"type\":\"fp\"}", "type must be"},
        {"{\"strategy\":\"rows\"}", "unknown strategy"},
        {"{\"strategy\":\"group\"}", "requires group_size"},
        {"{\"group_size\":128,\"strategy\":\"tensor\"}", "group_size requires strategy"},
        {"{\"dynamic\":\"local\",\"strategy\":\"group\",\"group_size\":16}", "local"},
        {"{\"strategy\":\"token\"}", "static token"},
        {"{\"scale_dtype\":\"float7\"}", "no such torch dtype"},
        {"{\"block_structure\":[128]}", "block_structure"},
        {"{\"strategy\":\"block\"}", "block_structure"},
        {"{\"actorder\":\"group\"}", "group activation ordering"},
        {"{\"group_size\":-2}", "invalid group size"},
        {"[]", "expected a mapping"},
    };
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        json_t *j = json_loads(BAD[i].json, JSON_DECODE_ANY, NULL);
        REQUIRE(j, "bad test json %s", BAD[i].json);
        char where[256] = "";
        err.msg[0] = 0;
        int rc = fb_qargs_from_json_where(j, "cg.g.weights", &a, where, sizeof where, &err);
        CHECK(rc == -1, "%s accepted", BAD[i].json);
        CHECK(strstr(err.msg, BAD[i].frag), "%s: message '%s' lacks '%s'", BAD[i].json, err.msg, BAD[i].frag);
        CHECK(strncmp(where, "cg.g.weights", 12) == 0, "%s: where '%s'", BAD[i].json, where);
        json_decref(j);
    }
    // Scheme-level strictness and a whole config.
    json_t *qc = json_loads(
        "{\"config_groups\":{\"group_0\":{\"targets\":[\"Linear\"],\"weights\":{\"num_bits\":4,"
        "\"type\":\"int\",\"strategy\":\"group\",\"group_size\":128},\"bogus\":1}},"
        "\"ignore\":[\"lm_head\"]}", 0, NULL);
    fb_qconfig cfg;
    CHECK(fb_qconfig_from_json(qc, "config.json: quantization_config", &cfg, NULL, NULL, &err) == -1,
          "unknown scheme key accepted");
    CHECK(strstr(err.msg, "config_groups.group_0.bogus") && strstr(err.msg, "unknown key"), "message: %s", err.msg);
    json_object_del(json_object_get(json_object_get(qc, "config_groups"), "group_0"), "bogus");
    json_object_set_new(qc, "extra_top_level", json_true());  // QuantizationConfig ignores it
    CHECK(fb_qconfig_from_json(qc, "qc", &cfg, NULL, NULL, &err) == 0, "%s", err.msg);
    CHECK(cfg.n_groups == 1 && cfg.n_ignore == 1 && fb_qscheme_kind(&cfg.groups[0], NULL) == FB_QK_W4A16, "parsed config");
    fb_qconfig_free(&cfg);
    json_object_set_new(qc, "ignore", json_pack("[s]", "re:(bad"));
    CHECK(fb_qconfig_from_json(qc, "qc", &cfg, NULL, NULL, &err) == -1 && strstr(err.msg, "(bad"),
          "bad ignore regex: %s", err.msg);
    json_decref(qc);
}

static void test_order_and_fused(void) {
    static const char *const ORDER[] = {  // torch named_modules() order of the toy / MiniMax
        "model", "model.embed_tokens", "model.layers.0", "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.0.self_attn.o_proj", "model.layers.0.self_attn.q_norm",
        "model.layers.0.self_attn.k_norm", "model.layers.0.block_sparse_moe.gate",
        "model.layers.0.block_sparse_moe.experts.2.w1", "model.layers.0.block_sparse_moe.experts.2.w2",
        "model.layers.0.block_sparse_moe.experts.2.w3", "model.layers.0.block_sparse_moe.experts.10.w1",
        "model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm",
        "model.layers.9.self_attn.q_proj", "model.layers.10.self_attn.q_proj", "model.norm", "lm_head",
    };
    size_t n = sizeof ORDER / sizeof ORDER[0];
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            int c = fb_module_order_cmp(ORDER[i], ORDER[j]);
            int want = i < j ? -1 : i > j ? 1 : 0;
            CHECK(c == want, "order(%s, %s) = %d, want %d", ORDER[i], ORDER[j], c, want);
        }
    static const struct { const char *m, *key; } F[] = {
        {"model.layers.3.self_attn.k_proj", "model.layers.3.self_attn.{q,k,v}_proj"},
        {"model.layers.3.self_attn.o_proj", NULL},
        {"model.layers.3.block_sparse_moe.experts.7.w3", "model.layers.3.block_sparse_moe.experts.7.{w1,w3}"},
        {"model.layers.3.block_sparse_moe.experts.7.w2", NULL},
        {"model.layers.3.mlp.up_proj", "model.layers.3.mlp.{gate,up}_proj"},
        {"model.layers.3.mlp.down_proj", NULL},
        {"model.layers.3.block_sparse_moe.gate", NULL},
        {"model.layers.3.self_attn.kv_a_proj_with_mqa", "model.layers.3.self_attn.{q_a_proj,kv_a_proj_with_mqa}"},
        {"q_proj", "{q,k,v}_proj"},
    };
    for (size_t i = 0; i < sizeof F / sizeof F[0]; i++) {
        char *k = fb_fused_key(F[i].m);
        CHECK((k == NULL && F[i].key == NULL) || (k && F[i].key && strcmp(k, F[i].key) == 0),
              "fused key of %s: %s", F[i].m, k ? k : "NULL");
        free(k);
    }
}

int main(void) {
    json_error_t je;
    json_t *doc = json_load_file(GOLDEN_DIR "/match/qconfig.json", 0, &je);
    REQUIRE(doc, "cannot read qconfig.json: %s", je.text);
    toy ty;
    toy_load(json_object_get(doc, "tensors"), &ty);
    REQUIRE(ty.n > 40, "toy tensors missing");
    test_golden(doc, &ty);
    test_rules(&ty);
    test_presets_and_parse();
    test_order_and_fused();
    free(ty.t);
    free(ty.shapes);
    json_decref(doc);
    TEST_MAIN_END();
}
