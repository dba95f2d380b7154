// test_recipe.c: recipe YAML parsing. Every file in tests/golden/recipes/bad/ starts with
// "# expect: <line> <message fragment>" and must fail with "<file>:<line>:" and the fragment;
// the shipped recipes and tests/golden/recipes/good/ must parse to the expected configs.
#include <dirent.h>
#include <string.h>

#include "quant/recipe.h"
#include "test.h"

static int cmpstr(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_bad(void) {
    const char *dir = GOLDEN_DIR "/recipes/bad";
    DIR *d = opendir(dir);
    REQUIRE(d, "cannot open %s", dir);
    char *names[256];
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 256)
        if (strstr(de->d_name, ".yaml")) names[n++] = strdup(de->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, cmpstr);
    REQUIRE(n >= 25, "only %zu bad recipes", n);
    for (size_t i = 0; i < n; i++) {
        char path[512], line1[512];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "r");
        REQUIRE(f && fgets(line1, sizeof line1, f), "%s unreadable", path);
        fclose(f);
        line1[strcspn(line1, "\n")] = 0;
        int want_line = 0, off = 0;
        REQUIRE(sscanf(line1, "# expect: %d %n", &want_line, &off) == 1 && off > 0,
                "%s: no '# expect: <line> <fragment>' header", path);
        const char *frag = line1 + off;
        fb_recipe r;
        fb_err err = {{0}};
        int rc = fb_recipe_load(path, &r, &err);
        CHECK(rc == -1, "%s was accepted", names[i]);
        if (rc == 0) { fb_recipe_free(&r); continue; }
        char loc[600];
        snprintf(loc, sizeof loc, "%s:%d:", path, want_line);
        CHECK(strncmp(err.msg, loc, strlen(loc)) == 0, "%s: want location %s, message: %s", names[i], loc, err.msg);
        CHECK(strstr(err.msg, frag) != NULL, "%s: message lacks '%s': %s", names[i], frag, err.msg);
        free(names[i]);
    }
}

static void test_shipped(void) {
    static const struct {
        const char *path;
        const char *preset;
        size_t n_ignore;
        fb_qkind kind;
        double max_kld;
    } S[] = {
        {"recipes/minimax.yaml", "NVFP4", 3, FB_QK_NVFP4, 0.05},
        {"recipes/minimax-nvfp4a16.yaml", "NVFP4A16", 3, FB_QK_NVFP4A16, 0.05},
        {"recipes/minimax-w4a16.yaml", "W4A16", 3, FB_QK_W4A16, 0.08},
        {"recipes/minimax-experts-only.yaml", "NVFP4A16", 4, FB_QK_NVFP4A16, 0.04},
    };
    for (size_t i = 0; i < sizeof S / sizeof S[0]; i++) {
        fb_recipe r;
        fb_err err;
        REQUIRE(fb_recipe_load(S[i].path, &r, &err) == 0, "%s: %s", S[i].path, err.msg);
        CHECK(r.preset && strcmp(r.preset, S[i].preset) == 0, "%s preset", S[i].path);
        CHECK(r.cfg.n_groups == 1 && strcmp(r.cfg.groups[0].name, "group_0") == 0, "%s groups", S[i].path);
        CHECK(r.cfg.groups[0].n_targets == 1 && strcmp(r.cfg.groups[0].targets[0], "Linear") == 0, "%s targets", S[i].path);
        CHECK(fb_qscheme_kind(&r.cfg.groups[0], NULL) == S[i].kind, "%s kind", S[i].path);
        CHECK(r.cfg.n_ignore == S[i].n_ignore, "%s: %zu ignore entries", S[i].path, r.cfg.n_ignore);
        CHECK(r.n_warnings == 0, "%s: warnings: %s", S[i].path, r.n_warnings ? r.warnings[0] : "");
        CHECK(r.has_max_kld && r.max_kld == S[i].max_kld, "%s max_kld %g", S[i].path, r.max_kld);
        CHECK(strcmp(r.stage, "default") == 0 && strcmp(r.group, "default") == 0, "%s stage", S[i].path);
        // The published ignore list: lm_head, embed, router gates -- and no expert.
        const fb_target_list *ig = &r.cfg.ignore_tl;
        CHECK(fb_target_list_match(ig, "lm_head", "Linear") >= 0, "%s: lm_head", S[i].path);
        CHECK(fb_target_list_match(ig, "model.layers.61.block_sparse_moe.gate", "Linear") >= 0, "%s: gate", S[i].path);
        CHECK(fb_target_list_match(ig, "model.layers.0.block_sparse_moe.experts.0.w1", "Linear") < 0, "%s: expert", S[i].path);
        int attn = fb_target_list_match(ig, "model.layers.3.self_attn.k_proj", "Linear") >= 0;
        CHECK(attn == (S[i].n_ignore == 4), "%s: attention ignored %d", S[i].path, attn);
        CHECK(r.text && r.text_len > 100 && strstr(r.text, "QuantizationModifier"), "%s text kept", S[i].path);
        fb_recipe_free(&r);
    }
}

static void test_good(void) {
    fb_recipe r;
    fb_err err;
    REQUIRE(fb_recipe_load(GOLDEN_DIR "/recipes/good/explicit_nvfp4.yaml", &r, &err) == 0, "%s", err.msg);
    CHECK(r.preset == NULL && r.cfg.n_groups == 1, "explicit: groups");
    CHECK(fb_qscheme_kind(&r.cfg.groups[0], NULL) == FB_QK_NVFP4, "explicit: kind");
    CHECK(strcmp(r.cfg.groups[0].input.observer, "minmax") == 0, "explicit: input observer %s", r.cfg.groups[0].input.observer);
    CHECK(strcmp(r.cfg.groups[0].weights.observer, "memoryless_minmax") == 0, "explicit: weight observer");
    CHECK(strcmp(r.stage, "quant") == 0 && strcmp(r.group, "quant") == 0, "explicit: stage %s", r.stage);
    fb_recipe_free(&r);

    REQUIRE(fb_recipe_load(GOLDEN_DIR "/recipes/good/lc_saved.yaml", &r, &err) == 0, "%s", err.msg);
    CHECK(r.preset && strcmp(r.preset, "NVFP4A16") == 0, "lc_saved preset");
    CHECK(!r.has_max_kld && !r.has_min_top1, "lc_saved: no fourbit section");
    fb_recipe_free(&r);

    REQUIRE(fb_recipe_load(GOLDEN_DIR "/recipes/good/scheme_map.yaml", &r, &err) == 0, "%s", err.msg);
    CHECK(r.preset == NULL && r.cfg.n_groups == 1, "scheme_map groups");
    CHECK(r.cfg.groups[0].n_targets == 2, "scheme_map: targets come from the mapping");
    CHECK(strcmp(r.cfg.groups[0].weights.observer, "minmax") == 0, "weight_observer override");
    CHECK(fb_qscheme_kind(&r.cfg.groups[0], NULL) == FB_QK_W4A16, "scheme_map kind");
    CHECK(r.cfg.n_ignore == 2 && strcmp(r.cfg.ignore[1], "re:.*block_sparse_moe\\.gate$") == 0,
          "double-quoted escape: %s", r.cfg.ignore[1]);
    // 're:.*experts\.\d+\.w[123]' (line 8) lacks '$'
    CHECK(r.n_warnings == 1 && strstr(r.warnings[0], "scheme_map.yaml:8:") && strstr(r.warnings[0], "w[123]"),
          "warning: %s", r.n_warnings ? r.warnings[0] : "none");
    fb_recipe_free(&r);
}

// GPTQModifier: alone (its scheme, actorder resolved into it) or chained after a
// QuantizationModifier (its targets / ignore select which quantized modules it tunes).
static void test_gptq(void) {
    fb_recipe r;
    fb_err err;
    REQUIRE(fb_recipe_load(GOLDEN_DIR "/recipes/good/gptq_alone.yaml", &r, &err) == 0, "%s", err.msg);
    CHECK(r.tune.present && r.tune.own_config && r.tune.block_size == 128 && r.tune.dampening_frac == 0.05,
          "gptq_alone: present %d own %d block %d damp %g", r.tune.present, r.tune.own_config, r.tune.block_size,
          r.tune.dampening_frac);
    CHECK(r.cfg.n_groups == 1 && r.cfg.groups[0].weights.actorder == FB_AO_STATIC,
          "gptq_alone: the Sentinel default writes actorder static into the scheme (%d)", r.cfg.groups[0].weights.actorder);
    CHECK(fb_qscheme_kind(&r.cfg.groups[0], NULL) == FB_QK_W4A16, "gptq_alone: W4A16 with actorder static is writable");
    CHECK(fb_recipe_needs_data(&r) && fb_recipe_tune_applies(&r, "model.layers.0.self_attn.q_proj", "Linear"),
          "gptq_alone: needs data, tunes what it quantizes");
    CHECK(r.n_warnings == 1 && strstr(r.warnings[0], "gptq_alone.yaml:9:") && strstr(r.warnings[0], "offload_hessians"),
          "gptq_alone: offload_hessians noted: %s", r.n_warnings ? r.warnings[0] : "none");
    CHECK(strcmp(r.stage, "quant") == 0, "gptq_alone: stage %s", r.stage);
    fb_recipe_free(&r);

    REQUIRE(fb_recipe_load(GOLDEN_DIR "/recipes/good/gptq_chained.yaml", &r, &err) == 0, "%s", err.msg);
    CHECK(r.tune.present && !r.tune.own_config && r.tune.block_size == 64 && r.tune.actorder == FB_AO_NONE,
          "gptq_chained: gptq args");
    CHECK(r.cfg.n_groups == 1 && r.cfg.groups[0].weights.actorder == FB_AO_NONE &&
          fb_qscheme_kind(&r.cfg.groups[0], NULL) == FB_QK_NVFP4A16, "gptq_chained: the QuantizationModifier's scheme");
    CHECK(fb_recipe_tune_applies(&r, "model.layers.1.block_sparse_moe.experts.3.w1", "Linear") &&
          !fb_recipe_tune_applies(&r, "model.layers.1.block_sparse_moe.experts.0.w1", "Linear") &&
          !fb_recipe_tune_applies(&r, "model.layers.1.self_attn.q_proj", "Linear"),
          "gptq_chained: its targets and ignore select the tuned modules");
    fb_recipe_free(&r);

    // AutoRoundModifier: its own config, or chained (defaults iters 200, batch_size 8, lr 1/iters)
    REQUIRE(fb_recipe_load(GOLDEN_DIR "/recipes/good/autoround_alone.yaml", &r, &err) == 0, "%s", err.msg);
    CHECK(r.tune.present && r.tune.algo == FB_RALGO_AUTOROUND && r.tune.own_config && r.tune.iters == 50 &&
          r.tune.batch_size == 4 && r.tune.lr == 0.01 && !r.tune.disable_opt_rtn,
          "autoround_alone: algo %d own %d iters %d batch %d lr %g", (int)r.tune.algo, r.tune.own_config, r.tune.iters,
          r.tune.batch_size, r.tune.lr);
    CHECK(fb_qscheme_kind(&r.cfg.groups[0], NULL) == FB_QK_W4A16 && fb_recipe_needs_data(&r) &&
          fb_recipe_tune_applies(&r, "model.layers.0.self_attn.q_proj", "Linear"), "autoround_alone: W4A16, tunes");
    CHECK(r.n_warnings == 1 && strstr(r.warnings[0], "autoround_alone.yaml:9:") &&
          strstr(r.warnings[0], "enable_torch_compile"), "autoround_alone: torch.compile noted: %s",
          r.n_warnings ? r.warnings[0] : "none");
    fb_recipe_free(&r);
    REQUIRE(fb_recipe_load(GOLDEN_DIR "/recipes/good/autoround_chained.yaml", &r, &err) == 0, "%s", err.msg);
    CHECK(r.tune.present && r.tune.algo == FB_RALGO_AUTOROUND && !r.tune.own_config && r.tune.iters == 200 &&
          r.tune.batch_size == 8 && r.tune.lr == 0, "autoround_chained: defaults (iters %d batch %d lr %g)",
          r.tune.iters, r.tune.batch_size, r.tune.lr);
    CHECK(fb_recipe_tune_applies(&r, "model.layers.1.block_sparse_moe.experts.3.w2", "Linear") &&
          !fb_recipe_tune_applies(&r, "model.layers.1.self_attn.q_proj", "Linear"),
          "autoround_chained: its targets select the tuned modules");
    fb_recipe_free(&r);

    REQUIRE(fb_recipe_load("recipes/minimax-w4a16.yaml", &r, &err) == 0, "%s", err.msg);
    CHECK(!r.tune.present && !fb_recipe_needs_data(&r) &&
          !fb_recipe_tune_applies(&r, "model.layers.0.self_attn.q_proj", "Linear"), "RTN recipe: no GPTQ");
    fb_recipe_free(&r);
}

// YAML 1.1 typing as PyYAML safe_load does it, through the fourbit section and arguments.
static void test_typing(void) {
    static const struct { const char *yaml; int ok; const char *frag; } T[] = {
        {"fourbit: {max_kld: 0.5}", 1, NULL},
        {"fourbit: {max_kld: 5}", 1, NULL},
        {"fourbit: {max_kld: 1_0.5}", 1, NULL},
        {"fourbit: {max_kld: .5}", 1, NULL},
        {"fourbit: {max_kld: '0.5'}", 0, "got the string"},
        {"fourbit: {max_kld: yes}", 0, "got a boolean"},
        {"fourbit: {max_kld: ~}", 0, "got null"},
        {"fourbit: {max_kld: .inf}", 0, "infinite"},
        {"fourbit: {min_top1: 1.5}", 0, "out of range"},
        {"fourbit: {min_top1: 0x1}", 1, NULL},
    };
    const char *base = "default_stage:\n  default_modifiers:\n    QuantizationModifier:\n"
                       "      scheme: W4A16\n";
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, "%s%s\n", base, T[i].yaml);
        fb_recipe r;
        fb_err err = {{0}};
        int rc = fb_recipe_parse("t.yaml", text, strlen(text), &r, &err);
        CHECK((rc == 0) == T[i].ok, "%s: rc %d (%s)", T[i].yaml, rc, err.msg);
        if (!T[i].ok) CHECK(strstr(err.msg, "t.yaml:5:") && strstr(err.msg, T[i].frag), "%s: %s", T[i].yaml, err.msg);
        if (rc == 0) fb_recipe_free(&r);
    }
    // symmetric: yes is a boolean (YAML 1.1), "on" too; num_bits 0o-style octal 04 is 4.
    const char *y = "s_stage:\n  m_modifiers:\n    QuantizationModifier:\n      config_groups:\n"
                    "        g:\n          targets: [Linear]\n          weights: {num_bits: 04, "
                    "type: INT, symmetric: yes, strategy: GROUP, group_size: 0x80, dynamic: off}\n";
    fb_recipe r;
    fb_err err;
    CHECK(fb_recipe_parse("y.yaml", y, strlen(y), &r, &err) == 0, "yaml 1.1 typing: %s", err.msg);
    if (r.cfg.n_groups) {
        CHECK(r.cfg.groups[0].weights.group_size == 128 && r.cfg.groups[0].weights.num_bits == 4, "hex/octal ints");
        CHECK(fb_qscheme_kind(&r.cfg.groups[0], NULL) == FB_QK_W4A16, "case-insensitive enums");
        CHECK(strcmp(r.cfg.groups[0].name, "g") == 0, "config group keeps its name");
        fb_recipe_free(&r);
    }
    const char *nul = "a\0b";
    CHECK(fb_recipe_parse("nul.yaml", nul, 3, &r, &err) == -1 && strstr(err.msg, "NUL"), "NUL byte: %s", err.msg);
    const char *two = "a_stage: {}\n---\nb_stage: {}\n";
    CHECK(fb_recipe_parse("two.yaml", two, strlen(two), &r, &err) == -1 && strstr(err.msg, "single YAML document"),
          "two documents: %s", err.msg);
    CHECK(fb_recipe_load("tests/golden/recipes/does-not-exist.yaml", &r, &err) == -1 &&
          strstr(err.msg, "does-not-exist.yaml"), "missing file: %s", err.msg);
}

int main(void) {
    test_bad();
    test_gptq();
    test_shipped();
    test_good();
    test_typing();
    TEST_MAIN_END();
}
