// test_chat.c: chat rendering against transformers' apply_chat_template (transformers 5.23.0,
// jinja2 3.1.6) of the MiniMax-M2 hub template and of ChatML, committed by
// scripts/gen-tokenizer-golden.py in tests/golden/tokenizer/chat.golden.json: rendered strings
// byte for byte, the conversations the template rejects, the token ids of each rendering
// (apply_chat_template(tokenize=True)) through the C tokenizer, and Python json.dumps values.
#include "io/chat.h"
#include "io/pyjson.h"
#include "io/tokenizer.h"
#include "test.h"

#include <unistd.h>

#define TDIR GOLDEN_DIR "/tokenizer"

static void check_ids(fb_tok *t, const char *name, const char *text, size_t len, json_t *exp) {
    if (!t || !json_is_array(exp)) return;
    fb_ids ids = {0};
    fb_err err = {{0}};
    int rc = fb_tok_encode(t, text, len, 0, &ids, &err);
    size_t ne = json_array_size(exp), i = 0;
    while (rc == 0 && i < ne && i < ids.n && json_integer_value(json_array_get(exp, i)) == ids.v[i]) i++;
    CHECK(rc == 0 && i == ne && ids.n == ne, "%s: %s: ids differ at %zu of %zu (got %zu): %s", fb_tok_name(t), name, i,
          ne, ids.n, err.msg);
    fb_ids_free(&ids);
}

int main(void) {
    json_error_t je;
    json_t *g = json_load_file(TDIR "/chat.golden.json", JSON_ALLOW_NUL, &je);
    REQUIRE(g, "chat.golden.json: %s", je.text);
    fb_tok *tok = NULL, *model = NULL;
    fb_err err = {{0}};
    REQUIRE(fb_tok_load(TDIR "/o200k-mini.json", &tok, &err) == 0, "%s", err.msg);
    if (access("models/tiny-minimax-m2/tokenizer.json", R_OK) == 0)
        REQUIRE(fb_tok_load("models/tiny-minimax-m2/tokenizer.json", &model, &err) == 0, "%s", err.msg);

    json_t *cases = json_object_get(g, "cases");
    size_t n_rendered = 0, n_ok = 0, n_err = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        json_t *conv = json_object_get(c, "conversation");
        fb_chat_opts o = {0};
        REQUIRE(fb_chat_template_parse(json_string_value(json_object_get(c, "template")), &o.tmpl, &err) == 0, "%s",
                err.msg);
        o.add_generation_prompt = json_is_true(json_object_get(conv, "add_generation_prompt"));
        char *out = NULL;
        size_t len = 0;
        int rc = fb_chat_render(&o, json_object_get(conv, "messages"), json_object_get(conv, "tools"), &out, &len,
                                &err);
        json_t *exp = json_object_get(c, "rendered");
        if (!exp) {  // the reference template raised
            n_err++;
            CHECK(rc == -1, "%s: expected an error like '%s'", name, json_string_value(json_object_get(c, "error")));
            if (rc == -1) CHECK(strstr(err.msg, "message "), "%s: error names the message: %s", name, err.msg);
            free(out);
            continue;
        }
        n_rendered++;
        int same = rc == 0 && len == json_string_length(exp) && memcmp(out, json_string_value(exp), len) == 0;
        if (!same && rc == 0) {
            size_t p = 0;
            while (p < len && p < json_string_length(exp) && out[p] == json_string_value(exp)[p]) p++;
            fprintf(stderr, "  %s/%s: first difference at byte %zu:\n    expected: %.60s\n    got:      %.60s\n",
                    name, fb_chat_template_name(o.tmpl), p, json_string_value(exp) + p, out + p);
        }
        CHECK(same, "%s (%s): rendering differs (rc %d: %s)", name, fb_chat_template_name(o.tmpl), rc,
              rc ? err.msg : "");
        n_ok += (size_t)same;
        if (rc == 0) {
            check_ids(tok, name, out, len, json_object_get(c, "ids_o200k_mini"));
            check_ids(model, name, out, len, json_object_get(c, "ids_tiny_minimax_m2"));
        }
        free(out);
    }
    printf("chat: %zu/%zu renderings byte-identical, %zu rejected conversations checked\n", n_ok, n_rendered, n_err);

    // Python json.dumps.
    json_t *pj = json_object_get(g, "pyjson");
    for (size_t i = 0; i < json_array_size(pj); i++) {
        json_t *c = json_array_get(pj, i);
        char *s = NULL;
        size_t len = 0;
        const char *exp = json_string_value(json_object_get(c, "dumps"));
        CHECK(fb_pyjson(json_object_get(c, "value"), &s, &len, &err) == 0 && strcmp(s, exp) == 0,
              "json.dumps: expected %s got %s", exp, s ? s : "(error)");
        free(s);
    }

    // Options and edge cases.
    fb_chat_template t;
    CHECK(fb_chat_template_parse("minimax", &t, &err) == 0 && t == FB_CHAT_MINIMAX_M2, "alias");
    CHECK(fb_chat_template_parse("llama3", &t, &err) == -1 && strstr(err.msg, "chatml"), "unknown: %s", err.msg);
    json_t *msgs = json_loads("[{\"role\": \"user\", \"content\": \"hi\"}]", 0, NULL);
    fb_chat_opts o = {.tmpl = FB_CHAT_MINIMAX_M2, .add_generation_prompt = 1, .default_system = "Custom identity."};
    char *s = NULL;
    size_t len;
    CHECK(fb_chat_render(&o, msgs, NULL, &s, &len, &err) == 0 &&
              strcmp(s, "]~!b[]~b]system\nCustom identity.[e~[\n]~b]user\nhi[e~[\n]~b]ai\n<think>\n") == 0,
          "default_system override: %s", s);
    free(s);
    json_decref(msgs);
    msgs = json_loads("[{\"role\": \"user\", \"content\": {\"a\": 1}}]", 0, NULL);
    CHECK(fb_chat_render(&o, msgs, NULL, &s, &len, &err) == -1 && strstr(err.msg, "message 0"), "object content: %s",
          err.msg);
    json_decref(msgs);
    msgs = json_loads("[{\"role\": \"user\", \"content\": \"u\"}, {\"role\": \"assistant\", \"content\": \"\", "
                      "\"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": "
                      "\"{\\\"a\\\": [1, 2.0]}\"}}]}]",
                      0, NULL);
    o.add_generation_prompt = 0;
    o.default_system = NULL;
    CHECK(fb_chat_render(&o, msgs, NULL, &s, &len, &err) == 0 &&
              strstr(s, "<invoke name=\"f\">\n<parameter name=\"a\">[1, 2.0]</parameter>\n</invoke>"),
          "string arguments parsed: %s", s ? s : err.msg);
    free(s);
    json_decref(msgs);
    CHECK(fb_chat_render(&o, json_object_get(g, "note"), NULL, &s, &len, &err) == -1, "messages not a list");

    fb_tok_free(tok);
    fb_tok_free(model);
    json_decref(g);
    TEST_MAIN_END();
}
