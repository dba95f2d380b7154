// test_jinja.c: the Jinja interpreter (src/io/jinja.h) against transformers' apply_chat_template
// (tests/golden/templates/templates.golden.json, written by scripts/gen-template-golden.py with
// transformers 5.17.0): the real templates of tests/golden/templates/ (provenance in
// PROVENANCE.md) and feature snippets over a conversation set, rendered strings byte for byte,
// the conversations the reference rejects, and the token ids of each rendering through the
// embedded model's tokenizer. Then the limits and the errors for unsupported constructs, and
// the checkpoint side (chat.h): the template and special tokens transformers would load from a
// checkpoint directory, and `--template auto|NAME` / `--chat-template FILE` selection.
#include "io/chat.h"
#include "io/dataset.h"
#include "io/jinja.h"
#include "io/tokenizer.h"
#include "test.h"

#include <unistd.h>

#define TDIR GOLDEN_DIR "/templates"

// The variables apply_chat_template passes: messages, tools (None when absent), documents,
// add_generation_prompt, the tokenizer's special tokens, then the extra keyword arguments.
static json_t *vars_for(json_t *conv, json_t *special) {
    json_t *v = json_object();
    json_object_update(v, special);
    json_object_set(v, "messages", json_object_get(conv, "messages"));
    json_t *tools = json_object_get(conv, "tools");
    json_object_set_new(v, "tools", tools ? json_incref(tools) : json_null());
    json_object_set_new(v, "documents", json_null());
    json_object_set_new(v, "add_generation_prompt", json_boolean(json_is_true(json_object_get(conv, "add_generation_prompt"))));
    json_t *kw = json_object_get(conv, "kwargs");
    if (kw) json_object_update(v, kw);
    return v;
}

static void first_diff(const char *name, const char *exp, size_t ne, const char *got, size_t ng) {
    size_t p = 0;
    while (p < ne && p < ng && exp[p] == got[p]) p++;
    fprintf(stderr, "  %s: first difference at byte %zu of %zu/%zu:\n    expected: %.80s\n    got:      %.80s\n", name, p,
            ne, ng, exp + p, got + p);
}

static int render_src(const char *src, json_t *vars, char **out, size_t *n, fb_err *err) {
    fb_jinja *t = NULL;
    if (fb_jinja_parse(src, strlen(src), "t.jinja", &t, err)) return -1;
    int rc = fb_jinja_render(t, vars, out, n, err);
    fb_jinja_free(t);
    return rc;
}

// Renders `src` with no variables and expects `exp` (or an error containing `exp_err`).
static void expect(const char *src, const char *exp, const char *exp_err) {
    char *out = NULL;
    size_t n = 0;
    fb_err err = {{0}};
    json_t *v = json_object();
    int rc = render_src(src, v, &out, &n, &err);
    json_decref(v);
    if (exp_err)
        CHECK(rc == -1 && strstr(err.msg, exp_err), "%s: expected an error with '%s', got rc %d: %s / %s", src, exp_err,
              rc, err.msg, out ? out : "");
    else
        CHECK(rc == 0 && strcmp(out, exp) == 0, "%s: expected '%s', got rc %d '%s' (%s)", src, exp, rc, out ? out : "",
              err.msg);
    free(out);
}

int main(void) {
    json_error_t je;
    json_t *g = json_load_file(TDIR "/templates.golden.json", JSON_ALLOW_NUL, &je);
    REQUIRE(g, "templates.golden.json: %s", je.text);
    fb_tok *tok = NULL;
    fb_err err = {{0}};
    REQUIRE(fb_tok_load("models/tiny-minimax-m2/tokenizer.json", &tok, &err) == 0, "%s", err.msg);
    json_t *special = json_object_get(g, "special_tokens");
    json_t *cases = json_object_get(g, "cases");
    size_t n_ok = 0, n_render = 0, n_err = 0, n_ids = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *tname = json_string_value(json_object_get(c, "template"));
        char label[512];
        snprintf(label, sizeof label, "%s/%s", tname ? tname : "snippet", name);
        fb_jinja *t = NULL;
        int rc;
        if (tname) {
            char path[512];
            snprintf(path, sizeof path, TDIR "/%s", tname);
            rc = fb_jinja_load(path, &t, &err);
        } else {
            const char *src = json_string_value(json_object_get(c, "source"));
            rc = fb_jinja_parse(src, strlen(src), name, &t, &err);
        }
        char *out = NULL;
        size_t n = 0;
        json_t *vars = vars_for(json_object_get(c, "conversation"), special);
        if (rc == 0) rc = fb_jinja_render(t, vars, &out, &n, &err);
        json_decref(vars);
        fb_jinja_free(t);
        json_t *exp = json_object_get(c, "rendered");
        if (!exp) {
            n_err++;
            CHECK(rc == -1, "%s: the reference raised (%s) but we rendered '%.80s'", label,
                  json_string_value(json_object_get(c, "error")), out ? out : "");
            if (rc == -1) CHECK(strstr(err.msg, ".jinja:") || strstr(err.msg, ":"), "%s: error names the line: %s", label, err.msg);
            free(out);
            continue;
        }
        n_render++;
        size_t ne = json_string_length(exp);
        int same = rc == 0 && n == ne && memcmp(out, json_string_value(exp), n) == 0;
        if (rc == 0 && !same) first_diff(label, json_string_value(exp), ne, out, n);
        CHECK(same, "%s: rendering differs from transformers (rc %d: %s)", label, rc, rc ? err.msg : "");
        n_ok += (size_t)same;
        json_t *ids = json_object_get(c, "ids");
        if (same && ids) {
            fb_ids got = {0};
            CHECK(fb_tok_encode(tok, out, n, 0, &got, &err) == 0, "%s: encode: %s", label, err.msg);
            size_t k = 0;
            while (k < got.n && k < json_array_size(ids) && json_integer_value(json_array_get(ids, k)) == got.v[k]) k++;
            CHECK(k == got.n && k == json_array_size(ids), "%s: token ids differ at %zu (%zu vs %zu)", label, k, got.n,
                  json_array_size(ids));
            n_ids += k == got.n && k == json_array_size(ids);
            fb_ids_free(&got);
        }
        free(out);
    }
    printf("jinja: %zu/%zu renderings byte-identical to transformers, %zu token-id sequences equal, %zu rejected "
           "conversations checked\n", n_ok, n_render, n_ids, n_err);

    // Unsupported constructs: an error naming the template line, never a different rendering.
    expect("a\n{% include 'x' %}", NULL, "t.jinja:2: unsupported statement 'include'");
    expect("{{ x | wordwrap }}", NULL, "t.jinja:1: unsupported filter 'wordwrap'");
    expect("{{ 1 is prime }}", NULL, "unsupported test 'prime'");
    expect("{{ strftime_now('%Y') }}", NULL, "unsupported function 'strftime_now'");
    expect("{% for x in [1] recursive %}{% endfor %}", NULL, "recursive");
    expect("{% raw %}x{% endraw %}", NULL, "unsupported statement 'raw'");
    expect("{{ 'É' | lower }}", NULL, "non-ASCII");
    expect("{{ [1] | tojson(indent=2) }}", NULL, "indent");
    expect("{% if true %}x", NULL, "missing {% endif %}");
    expect("{{ 'abc }}", NULL, "unterminated string");
    expect("{% endfor %}", NULL, "unexpected 'endfor'");
    expect("x\n\n{{ 1 +* 2 }}", NULL, "t.jinja:3:");
    expect("{{ 1 // 0 }}", NULL, "by zero");
    // inf / nan (a fuzzer find: a NULL JSON value dereferenced): errors, not a different print
    expect("{{ 1e23456789/123 }}", NULL, "float literal out of range");
    expect("{{ 1e308 * 10 }}", NULL, "float result inf is not supported");
    expect("{{ 'nan' | float }}", NULL, "float result nan");
    expect("{{ 9223372036854775807 + 1 }}", NULL, "overflow");
    expect("{% break %}", NULL, "outside a loop");
    expect("{% set x.y = 1 %}", NULL, "non-namespace");
    expect("{% set ns = namespace() %}{% set ns.me = ns %}", NULL, "storing a value of type namespace");
    expect("{% set ns = namespace() %}{% set ns.u = nothing %}", NULL, "storing a value of type undefined");
    expect("{{ {'items': 1}.items }}", NULL, "without a call");  // jinja2: the bound method, not the key
    expect("{{ 'a'.upper }}", NULL, "without a call");
    expect("{{ 'a'.items() }}", NULL, "'str' object has no attribute 'items'");  // Python fails too
    expect("{{ 'a'.zfill(3) }}", NULL, "unsupported string method 'zfill'");    // Python has it; we do not
    expect("{{ [1].append(2) }}", NULL, "unsupported method 'append' of a list");
    expect("{{ {'k': 1}.k }}{{ {'k': 1}.nope }}.", "1.", NULL);
    // Bounds: recursion, steps, output size.
    expect("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, "nested deeper than 64");
    {
        // the step budget (lowered so that the test is quick; the default is FB_JINJA_MAX_STEPS)
        const char *src = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        fb_jinja *lt = NULL;
        char *out = NULL;
        size_t n = 0;
        json_t *v = json_object();
        REQUIRE(fb_jinja_parse(src, strlen(src), "loop.jinja", &lt, &err) == 0, "%s", err.msg);
        fb_jinja_set_limits(lt, 0, 1000000);
        CHECK(fb_jinja_render(lt, v, &out, &n, &err) == -1 && strstr(err.msg, "loop.jinja:1: rendering took more than 1000000 steps"),
              "step limit: %s", err.msg);
        fb_jinja_set_limits(lt, 1000, 0);
        fb_jinja_free(lt);
        json_decref(v);
        free(out);
    }
    {
        // evaluation depth: macros recursing through deep expressions stop before the C stack does
        char src[4096] = "{% macro f(n) %}{{ ";
        for (int k = 0; k < 100; k++) strcat(src, "-");
        strcat(src, "f(n + 1) }}{% endmacro %}{{ f(0) }}");
        expect(src, NULL, "evaluation nested deeper than 1024");
    }
    expect("{% set s = 'x' * 1000000 %}{% for i in range(100) %}{{ s }}{% endfor %}", NULL, "output larger than");
    expect("{{ 'x' * 100000000 }}", NULL, "repetition larger");
    expect("{{ range(100000000) | length }}", NULL, "range of more than");
    {
        // expression nesting beyond FB_JINJA_MAX_NEST is a parse error, not a stack overflow
        char deep[4096] = "{{ ";  // 2000 parentheses
        for (int k = 0; k < 1000; k++) strcat(deep, "(");
        strcat(deep, "1");
        for (int k = 0; k < 1000; k++) strcat(deep, ")");
        strcat(deep, " }}");
        expect(deep, NULL, "nesting deeper than");
    }
    // Invalid input.
    fb_jinja *t = NULL;
    CHECK(fb_jinja_parse("a\xff", 2, "bad.jinja", &t, &err) == -1 && strstr(err.msg, "bad.jinja: not valid UTF-8"),
          "invalid UTF-8: %s", err.msg);
    CHECK(fb_jinja_load("tests/golden/templates/nope.jinja", &t, &err) == -1 && strstr(err.msg, "nope.jinja: cannot open"),
          "missing file: %s", err.msg);
    // Plain text and the empty template.
    expect("", "", NULL);
    expect("plain", "plain", NULL);

    // The checkpoint's own template (models/tiny-minimax-m2/chat_template.jinja) through chat.h,
    // as apply_chat_template(tokenizer.chat_template) renders it.
    {
        fb_chat_opts o = {0};
        fb_chat_own own;
        const char *what;
        REQUIRE(fb_chat_select("auto", NULL, "models/tiny-minimax-m2", &o, &own, &what, &err) == 0, "%s", err.msg);
        CHECK(o.tmpl == FB_CHAT_JINJA && strstr(what, "chat_template.jinja"), "auto picks chat_template.jinja: %s", what);
        CHECK(json_equal(own.special, special), "special tokens as transformers' special_tokens_map");
        json_t *own_cases = json_object_get(g, "model_own_template");
        size_t n_own = 0;
        for (size_t i = 0; i < json_array_size(own_cases); i++) {
            json_t *c = json_array_get(own_cases, i), *conv = json_object_get(c, "conversation");
            o.add_generation_prompt = json_is_true(json_object_get(conv, "add_generation_prompt"));
            char *out = NULL;
            size_t n = 0;
            int rc = fb_chat_render_kw(&o, json_object_get(conv, "messages"), json_object_get(conv, "tools"),
                                       json_object_get(conv, "kwargs"), &out, &n, &err);
            json_t *exp = json_object_get(c, "rendered");
            int same = rc == 0 && n == json_string_length(exp) && memcmp(out, json_string_value(exp), n) == 0;
            CHECK(same, "own template: %s: rendering differs (%s)", json_string_value(json_object_get(c, "name")),
                  rc ? err.msg : "");
            n_own += (size_t)same;
            free(out);
        }
        printf("jinja: %zu/%zu renderings with the checkpoint's own template byte-identical\n", n_own,
               json_array_size(own_cases));
        fb_chat_own_free(&own);
    }
    // tokenizer_config.json forms: a template string, named templates, AddedToken specials.
    {
        char dir[] = "/tmp/fourbit-jinja-XXXXXX";
        REQUIRE(mkdtemp(dir), "mkdtemp");
        char cfgp[256];
        snprintf(cfgp, sizeof cfgp, "%s/tokenizer_config.json", dir);
        static const struct {
            const char *cfg, *exp, *err;
        } CFG[] = {
            {"{\"chat_template\": \"{{ bos_token }}{{ messages[0].content }}{{ eos_token }}\", "
             "\"bos_token\": {\"__type\": \"AddedToken\", \"content\": \"<s>\"}, \"eos_token\": \"</s>\", \"unk_token\": null}",
             "<s>hi</s>", NULL},
            {"{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, {\"name\": \"default\", "
             "\"template\": \"D{{ messages | length }}\"}]}", "D1", NULL},
            {"{\"chat_template\": [{\"name\": \"rag\", \"template\": \"R\"}]}", NULL, "none is \"default\""},
            {"{\"chat_template\": \"line one\\n{% bogus %}\"}", NULL, "tokenizer_config.json#chat_template:2: unsupported statement 'bogus'"},
            {"{\"bos_token\": \"<s>\"}", "]~!b[]~b]system", NULL},  // no template: the built-in minimax-m2
            {"{not json", NULL, "tokenizer_config.json: line 1"},
        };
        json_t *msgs = json_loads("[{\"role\": \"user\", \"content\": \"hi\"}]", 0, NULL);
        for (size_t k = 0; k < sizeof CFG / sizeof CFG[0]; k++) {
            FILE *f = fopen(cfgp, "w");
            fputs(CFG[k].cfg, f);
            fclose(f);
            fb_chat_opts o = {0};
            fb_chat_own own;
            const char *what;
            int rc = fb_chat_select("auto", NULL, dir, &o, &own, &what, &err);
            if (CFG[k].err) {
                CHECK(rc == -1 && strstr(err.msg, CFG[k].err) && strstr(err.msg, "--template minimax-m2|chatml"),
                      "config %zu: expected error '%s' and the way around it, got %d: %s", k, CFG[k].err, rc, err.msg);
                continue;
            }
            char *out = NULL;
            size_t n = 0;
            CHECK(rc == 0 && fb_chat_render(&o, msgs, NULL, &out, &n, &err) == 0 && !strncmp(out, CFG[k].exp, strlen(CFG[k].exp)),
                  "config %zu: expected '%s', got '%s' (%s)", k, CFG[k].exp, out ? out : "", err.msg);
            free(out);
            fb_chat_own_free(&own);
        }
        // usage errors (-2) and a template file with the directory's special tokens
        FILE *f = fopen(cfgp, "w");
        fputs("{\"bos_token\": \"<B>\"}", f);
        fclose(f);
        fb_chat_opts o = {0};
        fb_chat_own own;
        const char *what;
        CHECK(fb_chat_select("llama3", NULL, dir, &o, &own, &what, &err) == -2 && strstr(err.msg, "--template"),
              "unknown name: %s", err.msg);
        CHECK(fb_chat_select("chatml", "x.jinja", dir, &o, &own, &what, &err) == -2, "file and name: %s", err.msg);
        CHECK(fb_chat_select("auto", "tests/golden/templates/nope.jinja", dir, &o, &own, &what, &err) == -1 &&
                  strstr(err.msg, "nope.jinja: cannot open"), "missing file: %s", err.msg);
        char tp[256];
        snprintf(tp, sizeof tp, "%s/t.jinja", dir);
        f = fopen(tp, "w");
        fputs("{{ bos_token }}|{{ enable_thinking }}", f);
        fclose(f);
        CHECK(fb_chat_select("auto", tp, dir, &o, &own, &what, &err) == 0 && o.tmpl == FB_CHAT_JINJA, "file: %s", err.msg);
        json_t *kw = json_pack("{sb}", "enable_thinking", 0);
        char *out = NULL;
        size_t n = 0;
        CHECK(fb_chat_render_kw(&o, msgs, NULL, kw, &out, &n, &err) == 0 && !strcmp(out, "<B>|False"),
              "file template with kwargs: %s", out ? out : err.msg);
        free(out);
        CHECK(fb_chat_render_kw(&o, msgs, NULL, msgs, &out, &n, &err) == -1, "kwargs must be an object");
        json_decref(kw);
        fb_chat_own_free(&own);
        json_decref(msgs);
        unlink(tp);
        unlink(cfgp);
        rmdir(dir);
    }

    // Dataset records: chat_template_kwargs reach the template; its type is checked when the
    // file is opened; a record that needs a tokenizer without one is an error naming the line.
    {
        char dp[] = "/tmp/fourbit-jinja-ds-XXXXXX";
        int fd = mkstemp(dp);
        REQUIRE(fd >= 0, "mkstemp");
        const char *recs = "{\"input_ids\": [5, 6]}\n"
                           "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"chat_template_kwargs\": {\"enable_thinking\": false}}\n";
        REQUIRE(write(fd, recs, strlen(recs)) == (ssize_t)strlen(recs), "write");
        close(fd);
        const char *paths[] = {dp};
        fb_dataset *ds = NULL;
        REQUIRE(fb_ds_open(paths, 1, &ds, &err) == 0, "%s", err.msg);
        fb_ds_opts o;
        fb_ds_opts_default(&o);
        fb_jinja *kt = NULL;
        const char *src = "{{ messages[0].content }}{% if enable_thinking is false %}!{% endif %}";
        REQUIRE(fb_jinja_parse(src, strlen(src), "kw.jinja", &kt, &err) == 0, "%s", err.msg);
        o.chat.tmpl = FB_CHAT_JINJA;
        o.chat.jinja = kt;
        fb_ids ids = {0};
        CHECK(fb_ds_record_ids(ds, 0, &o, NULL, &ids, &err) == 0 && ids.n == 2, "input_ids need no tokenizer: %s", err.msg);
        ids.n = 0;
        CHECK(fb_ds_record_ids(ds, 1, &o, NULL, &ids, &err) == -1 && strstr(err.msg, ":2: this record needs a tokenizer"),
              "chat record without a tokenizer: %s", err.msg);
        ids.n = 0;
        o.tokenizer_path = "models/tiny-minimax-m2/tokenizer.json";  // loaded on first need
        fb_ids exp = {0};
        CHECK(fb_ds_record_ids(ds, 1, &o, NULL, &ids, &err) == 0 && fb_tok_encode(tok, "hi!", 3, 0, &exp, &err) == 0 &&
                  ids.n == exp.n && memcmp(ids.v, exp.v, exp.n * sizeof *exp.v) == 0,
              "kwargs rendered and encoded: %s", err.msg);
        fb_ids_free(&ids);
        fb_ids_free(&exp);
        fb_jinja_free(kt);
        fb_ds_close(ds);
        FILE *f = fopen(dp, "w");
        fputs("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"chat_template_kwargs\": [1]}\n", f);
        fclose(f);
        CHECK(fb_ds_open(paths, 1, &ds, &err) == -1 && strstr(err.msg, ":1: 'chat_template_kwargs' must be an object"),
              "kwargs type: %s", err.msg);
        unlink(dp);
    }

    fb_tok_free(tok);
    json_decref(g);
    TEST_MAIN_END();
}
