// test_match.c: fourbit's target/ignore matching against compressed-tensors' own answers
// (tests/golden/match/cases.json, written by scripts/gen-match-golden.py from
// compressed_tensors.utils.match and Python re).
#include <jansson.h>
#include <string.h>

#include "quant/match.h"
#include "test.h"

static const char *jstr(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

static void test_cases(json_t *doc) {
    json_t *cases = json_object_get(doc, "cases");
    REQUIRE(json_array_size(cases) > 1000, "cases missing");
    size_t i;
    json_t *c;
    int shown = 0;
    json_array_foreach(cases, i, c) {
        fb_err err;
        fb_target *t = fb_target_compile(jstr(c, "entry"), NULL, &err);
        CHECK(t, "entry %s failed to compile: %s", jstr(c, "entry"), err.msg);
        if (!t) continue;
        int want_name = json_is_true(json_object_get(c, "match_name"));
        int want = json_is_true(json_object_get(c, "is_match"));
        int got_name = fb_target_matches_name(t, jstr(c, "name"));
        int got = fb_target_matches(t, jstr(c, "name"), jstr(c, "class"));
        if ((got != want || got_name != want_name) && shown++ < 20)
            fprintf(stderr, "  entry %s name %s class %s: want %d/%d got %d/%d\n", jstr(c, "entry"),
                    jstr(c, "name"), jstr(c, "class"), want_name, want, got_name, got);
        CHECK(got == want && got_name == want_name, "mismatch (case %zu)", i);
        fb_target_free(t);
    }
}

static void test_bad(json_t *doc) {
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(doc, "bad"), i, c) {
        fb_err err = {{0}};
        fb_target *t = fb_target_compile(jstr(c, "entry"), NULL, &err);
        CHECK(!t, "%s compiled, Python says: %s", jstr(c, "entry"), jstr(c, "python_error"));
        CHECK(t || strstr(err.msg, "invalid regex"), "message lacks 'invalid regex': %s", err.msg);
        CHECK(t || strstr(err.msg, jstr(c, "entry") + 3), "message lacks the pattern: %s", err.msg);
        fb_target_free(t);
    }
}

static void test_raw(json_t *doc) {
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(doc, "raw"), i, c) {
        char entry[512];
        snprintf(entry, sizeof entry, "re:%s", jstr(c, "pattern"));
        fb_err err;
        fb_target *t = fb_target_compile(entry, NULL, &err);
        CHECK(t, "%s: %s", entry, err.msg);
        if (!t) continue;
        int want = json_is_true(json_object_get(c, "match"));
        int got = fb_regex_match(t, jstr(c, "subject"));
        CHECK(got == want, "re.match(%s, subject %zu) want %d got %d", jstr(c, "pattern"), i,
              want, got);
        int wantf = json_is_true(json_object_get(c, "fullmatch"));
        int gotf = fb_regex_fullmatch(t, jstr(c, "subject"));
        CHECK(gotf == wantf, "re.fullmatch(%s, subject %zu) want %d got %d", jstr(c, "pattern"),
              i, wantf, gotf);
        fb_target_free(t);
    }
}

static void test_ranked(json_t *doc) {
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(doc, "ranked"), i, c) {
        json_t *tl = json_object_get(c, "targets");
        const char *ents[16];
        size_t n = json_array_size(tl);
        for (size_t k = 0; k < n; k++) ents[k] = json_string_value(json_array_get(tl, k));
        fb_target_list l;
        fb_err err;
        REQUIRE(fb_target_list_compile(ents, n, &l, NULL, NULL, &err) == 0, "%s", err.msg);
        int rank;
        int idx = fb_target_list_match_ranked(&l, jstr(c, "name"), jstr(c, "class"), &rank);
        const char *want = jstr(c, "first");
        const char *got = idx < 0 ? NULL : fb_target_text(l.items[idx]);
        CHECK((want == NULL && got == NULL) || (want && got && strcmp(want, got) == 0),
              "ranked %zu (%s): want %s got %s", i, jstr(c, "name"), want ? want : "none",
              got ? got : "none");
        CHECK((idx < 0) == (fb_target_list_match(&l, jstr(c, "name"), jstr(c, "class")) < 0),
              "first-match and ranked disagree on %s", jstr(c, "name"));
        fb_target_list_free(&l);
    }
}

// fb_module_class on the golden module table (the class each module has in the model).
static void test_classes(json_t *doc) {
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(doc, "modules"), i, m) {
        char tn[512];
        snprintf(tn, sizeof tn, "%s.weight", jstr(m, "name"));
        const char *cls = fb_module_class(tn, (int)json_integer_value(json_object_get(m, "ndim")));
        CHECK(cls && strcmp(cls, jstr(m, "class")) == 0, "%s: want %s got %s", tn,
              jstr(m, "class"), cls ? cls : "NULL");
        char *mn = fb_module_name(tn);
        CHECK(mn && strcmp(mn, jstr(m, "name")) == 0, "module name of %s", tn);
        free(mn);
    }
    // Not module weights: no class.
    static const char *const none[] = {
        "model.layers.0.block_sparse_moe.e_score_correction_bias",
        "model.layers.0.self_attn.q_proj.weight_scale_inv",
        "model.layers.0.self_attn.q_proj.weight_scale",
        "model.layers.0.self_attn.q_proj.weight_packed",
        "model.layers.0.self_attn.q_proj.bias",
        "weight",
        ".weight",
    };
    for (size_t k = 0; k < sizeof none / sizeof none[0]; k++) {
        CHECK(fb_module_class(none[k], 1) == NULL, "%s has a class", none[k]);
        CHECK(fb_module_class(none[k], 2) == NULL, "%s has a class", none[k]);
    }
    CHECK(fb_module_name("model.norm.bias") == NULL, "bias has a module name");
    // A 1-D weight that is not a norm is not a Linear; a 3-D one neither.
    CHECK(fb_module_class("model.layers.0.foo.weight", 1) == NULL, "1-D foo");
    CHECK(fb_module_class("model.layers.0.experts.gate_up_proj.weight", 3) == NULL, "3-D");
}

static int warned;
static void on_warn(void *ctx, const char *e) { (void)ctx; (void)e; warned++; }

static void test_warn_and_errors(void) {
    static const struct { const char *e; int warn; } W[] = {
        {"re:.*mlp.gate", 1},        {"re:.*block_sparse_moe\\.gate$", 0},
        {"re:.*\\$", 1},             {"re:.*\\\\$", 0},
        {"re:.*gate\\Z", 0},         {"re:.*gate\\\\Z", 1},
        {"lm_head", 0},              {"Linear", 0},
        {"re:", 1},
    };
    for (size_t i = 0; i < sizeof W / sizeof W[0]; i++) {
        int w = -1;
        fb_err err;
        fb_target *t = fb_target_compile(W[i].e, &w, &err);
        REQUIRE(t, "%s: %s", W[i].e, err.msg);
        CHECK(w == W[i].warn, "%s: warn_no_dollar %d, want %d", W[i].e, w, W[i].warn);
        CHECK(fb_target_is_regex(t) == (strncmp(W[i].e, "re:", 3) == 0), "%s is_regex", W[i].e);
        CHECK(strcmp(fb_target_text(t), W[i].e) == 0, "text");
        fb_target_free(t);
    }
    const char *ents[] = {"lm_head", "re:.*mlp.gate", "re:.*x$", "re:.*y"};
    fb_target_list l;
    fb_err err;
    warned = 0;
    REQUIRE(fb_target_list_compile(ents, 4, &l, on_warn, NULL, &err) == 0, "%s", err.msg);
    CHECK(warned == 2, "warned %d times, want 2", warned);
    CHECK(fb_target_list_match(&l, "lm_head", "Linear") == 0, "lm_head first");
    CHECK(fb_target_list_match(&l, "a.mlp.gate_proj", "Linear") == 1, "gate_proj by regex");
    CHECK(fb_target_list_match(&l, "q", "Linear") == -1, "no match");
    fb_target_list_free(&l);
    const char *bad[] = {"lm_head", "re:(unclosed"};
    CHECK(fb_target_list_compile(bad, 2, &l, NULL, NULL, &err) == -1, "bad list accepted");
    CHECK(strstr(err.msg, "entry 1") && strstr(err.msg, "(unclosed") && strstr(err.msg, "offset"),
          "message: %s", err.msg);
}

// Issue 12 item 1: a pattern that backtracks catastrophically used to count as "no match"
// when PCRE2 gave up, so an ignore entry silently stopped ignoring. Python's re.match would
// (eventually) find the second alternative; fourbit must say it gave up, naming both.
static void test_match_limit(void) {
    fb_err err;
    fb_target *t = fb_target_compile("re:(?:.|.){0,26}Z|.*o_proj$", NULL, &err);
    REQUIRE(t, "compile: %s", err.msg);
    CHECK(fb_target_check(t, &err) == 0, "fresh entry reports no failure");
    CHECK(fb_regex_match(t, "model.layers.0.self_attn.o_proj") == 0, "a failed match is no match");
    CHECK(fb_target_check(t, &err) == -1, "the limit is reported");
    CHECK(strstr(err.msg, "(?:.|.){0,26}Z") && strstr(err.msg, "model.layers.0.self_attn.o_proj") &&
              strstr(err.msg, "match limit"),
          "message names pattern, name and limit: %s", err.msg);
    fb_target_list l = {1, &t};
    CHECK(fb_target_list_check(&l, &err) == -1, "list check sees it");
    fb_target_free(t);
    // an ordinary pattern on the same name completes
    t = fb_target_compile("re:.*o_proj$", NULL, &err);
    REQUIRE(t, "compile: %s", err.msg);
    CHECK(fb_regex_match(t, "model.layers.0.self_attn.o_proj") == 1, "plain pattern matches");
    CHECK(fb_target_check(t, &err) == 0, "no failure recorded");
    fb_target_free(t);
}

int main(void) {
    test_match_limit();
    json_error_t je;
    json_t *doc = json_load_file(GOLDEN_DIR "/match/cases.json", 0, &je);
    REQUIRE(doc, "cannot read cases.json: %s", je.text);
    test_cases(doc);
    test_bad(doc);
    test_raw(doc);
    test_ranked(doc);
    test_classes(doc);
    test_warn_and_errors();
    json_decref(doc);
    TEST_MAIN_END();
}
