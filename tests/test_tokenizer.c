// test_tokenizer.c: the C tokenizer against ids from the `tokenizers` library (0.23.3),
// committed by scripts/gen-tokenizer-golden.py under tests/golden/tokenizer/.
//
// For every golden file: encode each case (with or without the post-processor) and compare
// ids exactly, printing the first mismatch (position, expected id/token, got id/token); decode
// the expected ids and compare with the library's decode (with and without specials). The
// bytefb-mini file also carries pre_tokenizer variants (every Split behaviour, invert, String
// patterns, Digits), swapped into the tokenizer JSON here. When models/tiny-minimax-m2 exists,
// its tokenizer is covered too. FB_TOK_EXTRA_GOLDEN=a.json:b.json adds more golden files
// (e.g. the code-point sweep made by the script's --sweep).
#include "io/tokenizer.h"
#include "test.h"

#include <jansson.h>
#include <unistd.h>

#define TDIR GOLDEN_DIR "/tokenizer"

static size_t g_cases, g_cases_ok, g_tokens, g_tokens_ok;

static void show_tok(const fb_tok *t, int32_t id, char *buf, size_t n) {
    const char *s = id >= 0 ? fb_tok_token(t, id) : NULL;
    snprintf(buf, n, "%d %s%.40s%s", id, s ? "'" : "", s ? s : "(none)", s ? "'" : "");
}

// Compares got with the expected JSON id list; returns 1 if equal, else prints the first
// mismatch with a little context.
static int compare_ids(const fb_tok *t, const char *what, json_t *exp, const fb_ids *got) {
    size_t ne = json_array_size(exp);
    g_tokens += ne;
    size_t i = 0;
    while (i < ne && i < got->n && json_integer_value(json_array_get(exp, i)) == got->v[i]) i++;
    g_tokens_ok += i;
    if (i == ne && i == got->n) return 1;
    char e[96], g[96];
    show_tok(t, i < ne ? (int32_t)json_integer_value(json_array_get(exp, i)) : -1, e, sizeof e);
    show_tok(t, i < got->n ? got->v[i] : -1, g, sizeof g);
    fprintf(stderr, "  %s: %s: first mismatch at token %zu of %zu (got %zu): expected %s, got %s\n",
            fb_tok_name(t), what, i, ne, got->n, e, g);
    return 0;
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        fclose(f);
        return NULL;
    }
    b[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void run_cases(fb_tok *t, json_t *cases, json_t *texts_by_name) {
    size_t n = json_array_size(cases);
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(cases, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        json_t *jt = json_object_get(c, "text");
        if (!jt && texts_by_name) jt = json_object_get(texts_by_name, name);
        if (!json_is_string(jt)) {
            CHECK(0, "case %s has no text", name);
            continue;
        }
        int add_special = json_is_true(json_object_get(c, "add_special_tokens"));
        fb_ids ids = {0};
        fb_err err = {{0}};
        int rc = fb_tok_encode(t, json_string_value(jt), json_string_length(jt), add_special, &ids, &err);
        CHECK(rc == 0, "%s: encode %s: %s", fb_tok_name(t), name, err.msg);
        g_cases++;
        int ok = rc == 0 && compare_ids(t, name, json_object_get(c, "ids"), &ids);
        g_cases_ok += (size_t)ok;
        CHECK(ok, "%s: case '%s': ids differ", fb_tok_name(t), name);
        // Decode the expected ids.
        json_t *je = json_object_get(c, "ids");
        size_t ne = json_array_size(je);
        int32_t *ev = malloc((ne ? ne : 1) * sizeof *ev);
        for (size_t k = 0; k < ne; k++) ev[k] = (int32_t)json_integer_value(json_array_get(je, k));
        for (int skip = 0; skip < 2; skip++) {
            json_t *jd = json_object_get(c, skip ? "decoded_skip" : "decoded");
            if (skip && !jd) jd = json_object_get(c, "decoded");
            if (!jd) continue;
            char *out = NULL;
            size_t olen = 0;
            rc = fb_tok_decode(t, ev, ne, skip, &out, &olen, &err);
            int same = rc == 0 && olen == json_string_length(jd) && memcmp(out, json_string_value(jd), olen) == 0;
            if (!same) {
                size_t p = 0;
                while (p < olen && p < json_string_length(jd) && out[p] == json_string_value(jd)[p]) p++;
                fprintf(stderr, "  decode differs at byte %zu: expected '%.30s' got '%.30s'\n", p,
                        json_string_value(jd) + p, out ? out + p : "");
            }
            CHECK(same, "%s: case '%s': decode(skip_special=%d) differs", fb_tok_name(t), name, skip);
            free(out);
        }
        free(ev);
        fb_ids_free(&ids);
    }
}

static void run_golden_file(const char *path, int required) {
    json_error_t je;
    json_t *g = json_load_file(path, JSON_ALLOW_NUL, &je);
    if (!g) {
        if (required) CHECK(0, "%s: %s", path, je.text);
        return;
    }
    const char *tpath = json_string_value(json_object_get(g, "tokenizer"));
    fb_tok *t = NULL;
    fb_err err = {{0}};
    REQUIRE(tpath && fb_tok_load(tpath, &t, &err) == 0, "%s: load %s: %s", path, tpath ? tpath : "?", err.msg);
    size_t c0 = g_cases, ok0 = g_cases_ok, t0 = g_tokens, tok0 = g_tokens_ok;
    json_t *cases = json_object_get(g, "cases");
    run_cases(t, cases, NULL);
    // Pre-tokenizer variants: same tokenizer with another pre_tokenizer, texts by case name.
    json_t *variants = json_object_get(g, "variants");
    if (json_is_array(variants)) {
        json_t *texts = json_object();
        for (size_t i = 0; i < json_array_size(cases); i++) {
            json_t *c = json_array_get(cases, i);
            json_object_set(texts, json_string_value(json_object_get(c, "name")), json_object_get(c, "text"));
        }
        size_t blen;
        char *base = slurp(tpath, &blen);
        REQUIRE(base, "read %s", tpath);
        json_t *root = json_loadb(base, blen, 0, &je);
        REQUIRE(root, "parse %s", tpath);
        for (size_t v = 0; v < json_array_size(variants); v++) {
            json_t *var = json_array_get(variants, v);
            json_object_set(root, "pre_tokenizer", json_object_get(var, "pre_tokenizer"));
            char *txt = json_dumps(root, 0);
            char name[256];
            snprintf(name, sizeof name, "%s[pre_tokenizer=%s]", tpath, json_string_value(json_object_get(var, "name")));
            fb_tok *vt = NULL;
            int rc = fb_tok_load_string(txt, strlen(txt), name, &vt, &err);
            CHECK(rc == 0, "load variant %s: %s", name, err.msg);
            if (rc == 0) run_cases(vt, json_object_get(var, "cases"), texts);
            fb_tok_free(vt);
            free(txt);
        }
        json_decref(root);
        json_decref(texts);
        free(base);
    }
    printf("%s: %zu/%zu strings, %zu/%zu tokens identical\n", path, g_cases_ok - ok0, g_cases - c0,
           g_tokens_ok - tok0, g_tokens - t0);
    fb_tok_free(t);
    json_decref(g);
}

static void test_errors(void) {
    fb_tok *t = NULL;
    fb_err err = {{0}};
    CHECK(fb_tok_load("tests/golden/tokenizer/does-not-exist.json", &t, &err) == -1 && !t &&
              strstr(err.msg, "does-not-exist.json"),
          "missing file: %s", err.msg);
    const char *bad_json = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [}";
    CHECK(fb_tok_load_string(bad_json, strlen(bad_json), "bad.json", &t, &err) == -1 && strstr(err.msg, "bad.json"),
          "bad json: %s", err.msg);
    const char *bad_merge = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a c\"]}}";
    CHECK(fb_tok_load_string(bad_merge, strlen(bad_merge), "m.json", &t, &err) == -1 &&
              strstr(err.msg, "model.merges[0]") && strstr(err.msg, "'c'"),
          "merge out of vocab: %s", err.msg);
    const char *bad_merge2 = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}";
    CHECK(fb_tok_load_string(bad_merge2, strlen(bad_merge2), "m2.json", &t, &err) == -1 && strstr(err.msg, "'ab'"),
          "merged token out of vocab: %s", err.msg);
    const char *bad_pt = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                         "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Metaspace\"}]}}";
    CHECK(fb_tok_load_string(bad_pt, strlen(bad_pt), "pt.json", &t, &err) == -1 &&
              strstr(err.msg, "pre_tokenizer.pretokenizers[0]") && strstr(err.msg, "Metaspace"),
          "unsupported pre-tokenizer: %s", err.msg);
    const char *bad_re = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                         "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": "
                         "\"Isolated\", \"invert\": false}}";
    CHECK(fb_tok_load_string(bad_re, strlen(bad_re), "re.json", &t, &err) == -1 && strstr(err.msg, "regex"),
          "bad regex: %s", err.msg);
    const char *dropout = "{\"model\": {\"type\": \"BPE\", \"dropout\": 0.1, \"vocab\": {\"a\": 0}, \"merges\": []}}";
    CHECK(fb_tok_load_string(dropout, strlen(dropout), "d.json", &t, &err) == -1 && strstr(err.msg, "dropout"),
          "dropout: %s", err.msg);
    const char *unigram = "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}";
    CHECK(fb_tok_load_string(unigram, strlen(unigram), "u.json", &t, &err) == -1 && strstr(err.msg, "Unigram"),
          "unigram: %s", err.msg);

    REQUIRE(fb_tok_load(TDIR "/o200k-mini.json", &t, &err) == 0, "%s", err.msg);
    fb_ids ids = {0};
    CHECK(fb_tok_encode(t, "ab\xC3(", 4, 0, &ids, &err) == -1 && strstr(err.msg, "byte 2"), "invalid utf8: %s", err.msg);
    CHECK(fb_tok_encode(t, "\xED\xA0\x80", 3, 0, &ids, &err) == -1, "surrogate accepted");
    CHECK(fb_tok_encode(t, "\xC0\xAF", 2, 0, &ids, &err) == -1, "overlong accepted");
    // Encode appends.
    ids.n = 0;
    REQUIRE(fb_tok_encode(t, "]~b]", 4, 0, &ids, &err) == 0, "%s", err.msg);
    REQUIRE(fb_tok_encode(t, "[e~[", 4, 0, &ids, &err) == 0, "%s", err.msg);
    CHECK(ids.n == 2 && ids.v[0] == fb_tok_id(t, "]~b]") && ids.v[1] == fb_tok_id(t, "[e~["), "append");
    CHECK(fb_tok_is_special(t, fb_tok_id(t, "]~!b[")) && !fb_tok_is_special(t, fb_tok_id(t, "<think>")), "special flags");
    CHECK(fb_tok_id(t, "no such token") == -1 && fb_tok_token(t, -5) == NULL && fb_tok_token(t, fb_tok_n_ids(t)) == NULL,
          "lookups out of range");
    // Decoding skips ids outside the vocabulary.
    int32_t odd[] = {-1, fb_tok_n_ids(t) + 10, fb_tok_id(t, "<think>")};
    char *s = NULL;
    size_t sl = 0;
    CHECK(fb_tok_decode(t, odd, 3, 0, &s, &sl, &err) == 0 && strcmp(s, "<think>") == 0, "decode odd ids: %s", s);
    free(s);
    fb_ids_free(&ids);
    fb_tok_free(t);
}

// The embedded model: key ids and the MiniMax markup tokenizing to single special tokens.
static void test_model(void) {
    const char *path = "models/tiny-minimax-m2/tokenizer.json";
    if (access(path, R_OK) != 0) {
        printf("(no %s: model checks skipped)\n", path);
        return;
    }
    fb_tok *t = NULL;
    fb_err err = {{0}};
    REQUIRE(fb_tok_load(path, &t, &err) == 0, "%s", err.msg);
    static const char *marks[] = {"]~!b[", "]~b]", "[e~[", "<think>", "</think>", "<minimax:tool_call>",
                                  "</minimax:tool_call>"};
    for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++) {
        fb_ids ids = {0};
        int32_t id = fb_tok_id(t, marks[i]);
        CHECK(id >= 0 && fb_tok_encode(t, marks[i], strlen(marks[i]), 0, &ids, &err) == 0 && ids.n == 1 &&
                  ids.v[0] == id,
              "%s is one token", marks[i]);
        fb_ids_free(&ids);
    }
    CHECK(fb_tok_n_ids(t) == 4096, "tiny-minimax-m2 has %d ids", fb_tok_n_ids(t));
    fb_tok_free(t);
}

int main(void) {
    static const char *files[] = {TDIR "/o200k-mini.golden.json", TDIR "/gpt2-nfc.golden.json",
                                  TDIR "/bytefb-mini.golden.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) run_golden_file(files[i], 1);
    if (access("models/tiny-minimax-m2/tokenizer.json", R_OK) == 0)
        run_golden_file(TDIR "/tiny-minimax-m2.golden.json", 1);
    const char *extra = getenv("FB_TOK_EXTRA_GOLDEN");
    if (extra && *extra) {
        char *dup = strdup(extra), *save = NULL;
        for (char *p = strtok_r(dup, ":", &save); p; p = strtok_r(NULL, ":", &save)) run_golden_file(p, 1);
        free(dup);
    }
    printf("conformance: %zu/%zu strings, %zu/%zu tokens identical to tokenizers 0.23.3\n", g_cases_ok,
           g_cases, g_tokens_ok, g_tokens);
    test_errors();
    test_model();
    TEST_MAIN_END();
}
