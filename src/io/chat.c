// chat.c: MiniMax-M2 and ChatML chat rendering (see chat.h; every branch below corresponds to a
// line of tests/golden/tokenizer/minimax-m2.jinja).
#include "io/chat.h"
#include "common/sbuf.h"
#include "io/pyjson.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>


// json.dumps(v, ensure_ascii=False) appended to b (io/pyjson.h).
static int py_json(fb_sbuf *b, json_t *v, fb_err *err) {
    char *s;
    size_t n;
    if (fb_pyjson(v, &s, &n, err)) return -1;
    fb_sb_put(b, s, n);
    free(s);
    return 0;
}

// str(v) for a scalar as Jinja prints it ({{ v }}): strings raw, None/True/False, numbers.
static int py_str(fb_sbuf *b, json_t *v, const char *what, fb_err *err) {
    switch (json_typeof(v)) {
    case JSON_STRING: fb_sb_put(b, json_string_value(v), json_string_length(v)); return 0;
    case JSON_NULL: fb_sb_puts(b, "None"); return 0;
    case JSON_TRUE: fb_sb_puts(b, "True"); return 0;
    case JSON_FALSE: fb_sb_puts(b, "False"); return 0;
    case JSON_INTEGER:
    case JSON_REAL: return py_json(b, v, err);
    default: return fb_fail(err, "%s: a list or object where text is expected", what);
    }
}

// Python truthiness.
static int truthy(json_t *v) {
    if (!v) return 0;
    switch (json_typeof(v)) {
    case JSON_NULL:
    case JSON_FALSE: return 0;
    case JSON_TRUE: return 1;
    case JSON_STRING: return json_string_length(v) > 0;
    case JSON_ARRAY: return json_array_size(v) > 0;
    case JSON_OBJECT: return json_object_size(v) > 0;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0.0;
    }
    return 0;
}

// A message field; null counts as absent (transformers drops None values).
static json_t *field(json_t *msg, const char *key) {
    json_t *v = json_is_object(msg) ? json_object_get(msg, key) : NULL;
    return json_is_null(v) ? NULL : v;
}

static const char *role_of(json_t *msg) {
    json_t *r = field(msg, "role");
    return json_is_string(r) ? json_string_value(r) : "";
}

// visible_text(content): strings as is, lists keep text parts and strings, absent -> "".
static int visible_text(fb_sbuf *b, json_t *c, const char *what, fb_err *err) {
    if (!c) return 0;
    if (json_is_string(c)) {
        fb_sb_put(b, json_string_value(c), json_string_length(c));
        return 0;
    }
    if (json_is_array(c)) {
        for (size_t i = 0; i < json_array_size(c); i++) {
            json_t *it = json_array_get(c, i);
            if (json_is_object(it)) {
                json_t *ty = json_object_get(it, "type");
                if (json_is_string(ty) && strcmp(json_string_value(ty), "text") == 0) {
                    json_t *tx = json_object_get(it, "text");
                    if (tx && py_str(b, tx, what, err)) return -1;  // missing text: Undefined -> ""
                }
            } else if (json_is_string(it)) {
                fb_sb_put(b, json_string_value(it), json_string_length(it));
            }
        }
        return 0;
    }
    if (json_is_object(c)) return fb_fail(err, "%s: content is an object", what);
    return py_str(b, c, what, err);
}

// Python str.strip('\n').
static void strip_nl(const char **s, size_t *n) {
    while (*n && (*s)[0] == '\n') (*s)++, (*n)--;
    while (*n && (*s)[*n - 1] == '\n') (*n)--;
}

static const char *find(const char *h, size_t hn, const char *nd) {
    size_t nn = strlen(nd);
    if (nn > hn) return NULL;
    for (size_t i = 0; i + nn <= hn; i++)
        if (memcmp(h + i, nd, nn) == 0) return h + i;
    return NULL;
}
static const char *rfind(const char *h, size_t hn, const char *nd) {
    size_t nn = strlen(nd);
    if (nn > hn) return NULL;
    for (size_t i = hn - nn + 1; i-- > 0;)
        if (memcmp(h + i, nd, nn) == 0) return h + i;
    return NULL;
}

static int render_tool_calls(fb_sbuf *b, json_t *calls, size_t mi, fb_err *err) {
    fb_sb_puts(b, "\n<minimax:tool_call>\n");
    for (size_t k = 0; k < json_array_size(calls); k++) {
        json_t *tc = json_array_get(calls, k);
        json_t *fn = json_object_get(tc, "function");
        if (truthy(fn)) tc = fn;
        json_t *name = json_object_get(tc, "name");
        if (!json_is_string(name))
            return fb_fail(err, "message %zu: tool_calls[%zu]: no function name", mi, k);
        fb_sb_puts(b, "<invoke name=\"");
        fb_sb_put(b, json_string_value(name), json_string_length(name));
        fb_sb_puts(b, "\">\n");
        json_t *args = json_object_get(tc, "arguments"), *parsed = NULL;
        if (json_is_string(args)) {  // OpenAI wire format: a JSON string (extension)
            json_error_t je;
            parsed = json_loadb(json_string_value(args), json_string_length(args), JSON_ALLOW_NUL, &je);
            if (!json_is_object(parsed)) {
                json_decref(parsed);
                return fb_fail(err, "message %zu: tool_calls[%zu]: arguments string is not a JSON object", mi, k);
            }
            args = parsed;
        }
        if (!json_is_object(args)) {
            json_decref(parsed);
            return fb_fail(err, "message %zu: tool_calls[%zu]: arguments must be an object", mi, k);
        }
        const char *key;
        json_t *v;
        json_object_foreach(args, key, v) {
            fb_sb_puts(b, "<parameter name=\"");
            fb_sb_puts(b, key);
            fb_sb_puts(b, "\">");
            if (json_is_string(v)) fb_sb_put(b, json_string_value(v), json_string_length(v));
            else if (py_json(b, v, err)) {
                json_decref(parsed);
                return -1;
            }
            fb_sb_puts(b, "</parameter>\n");
        }
        json_decref(parsed);
        fb_sb_puts(b, "</invoke>\n");
    }
    fb_sb_puts(b, "</minimax:tool_call>");
    // The template then reads tool_calls[-1].function.name (an error when it is missing).
    json_t *last = json_array_get(calls, json_array_size(calls) - 1);
    if (!json_is_object(json_object_get(last, "function")))
        return fb_fail(err, "message %zu: the last tool call has no 'function' object", mi);
    return 0;
}

static int render_minimax(const fb_chat_opts *o, json_t *msgs, json_t *tools, fb_sbuf *b, fb_err *err) {
    size_t n = json_array_size(msgs), first = 0;
    json_t *sys = NULL;
    if (n && strcmp(role_of(json_array_get(msgs, 0)), "system") == 0) sys = json_array_get(msgs, 0), first = 1;
    long last_user = -1;
    for (size_t i = first; i < n; i++)
        if (strcmp(role_of(json_array_get(msgs, i)), "user") == 0) last_user = (long)(i - first);

    fb_sb_puts(b, "]~!b[]~b]system\n");
    if (sys && truthy(field(sys, "content"))) {
        if (visible_text(b, field(sys, "content"), "message 0 (system)", err)) return -1;
    } else {
        fb_sb_puts(b, o->default_system ? o->default_system : FB_CHAT_MINIMAX_DEFAULT_SYSTEM);
    }
    static const struct {
        const char *key, *label;
    } sys_extra[] = {{"current_date", "\nCurrent date: "}, {"current_location", "\nCurrent location: "}};
    for (size_t k = 0; sys && k < sizeof sys_extra / sizeof sys_extra[0]; k++) {
        json_t *v = field(sys, sys_extra[k].key);
        if (!truthy(v)) continue;
        if (!json_is_string(v)) return fb_fail(err, "message 0 (system): %s must be a string", sys_extra[k].key);
        fb_sb_puts(b, sys_extra[k].label);
        fb_sb_put(b, json_string_value(v), json_string_length(v));
    }
    if (tools && truthy(tools)) {
        if (!json_is_array(tools)) return fb_fail(err, "tools must be a list");
        fb_sb_puts(b, "\n\n# Tools\nYou may call one or more tools to assist with the user query.\n"
                 "Here are the tools available in JSONSchema format:\n\n<tools>\n");
        for (size_t k = 0; k < json_array_size(tools); k++) {
            json_t *fn = json_object_get(json_array_get(tools, k), "function");
            if (!fn) return fb_fail(err, "tools[%zu]: no 'function' object", k);
            fb_sb_puts(b, "<tool>");
            if (py_json(b, fn, err)) return -1;
            fb_sb_puts(b, "</tool>\n");
        }
        fb_sb_puts(b, "</tools>\n\nWhen making tool calls, use XML format to invoke tools and pass parameters:\n"
                 "\n<minimax:tool_call>\n<invoke name=\"tool-name-1\">\n"
                 "<parameter name=\"param-key-1\">param-value-1</parameter>\n"
                 "<parameter name=\"param-key-2\">param-value-2</parameter>\n...\n</invoke>\n</minimax:tool_call>");
    }
    fb_sb_puts(b, "[e~[\n");

    int have_tool_call = 0;
    size_t nc = n - first;
    for (size_t ci = 0; ci < nc; ci++) {
        size_t mi = ci + first;
        json_t *m = json_array_get(msgs, mi);
        const char *role = role_of(m);
        char what[64];
        snprintf(what, sizeof what, "message %zu (%s)", mi, role);
        if (strcmp(role, "assistant") == 0) {
            fb_sb_puts(b, "]~b]ai\n");
            fb_sbuf content = {0};
            if (visible_text(&content, field(m, "content"), what, err)) {
                free(content.p);
                return -1;
            }
            const char *cs = content.p ? content.p : "", *rs = "";
            size_t cn = content.n, rn = 0;
            json_t *rc = field(m, "reasoning_content");
            if (json_is_string(rc)) {
                rs = json_string_value(rc);
                rn = json_string_length(rc);
            } else if (find(cs, cn, "</think>")) {
                // reasoning = content.split('</think>')[0].strip('\n').split('<think>')[-1].strip('\n')
                const char *end = find(cs, cn, "</think>");
                const char *r0 = cs;
                size_t r0n = (size_t)(end - cs);
                strip_nl(&r0, &r0n);
                const char *op = rfind(r0, r0n, "<think>");
                if (op) {
                    r0n -= (size_t)(op + 7 - r0);
                    r0 = op + 7;
                }
                strip_nl(&r0, &r0n);
                rs = r0, rn = r0n;
                // content = content.split('</think>')[-1].strip('\n')
                const char *last = rfind(cs, cn, "</think>") + 8;
                cn -= (size_t)(last - cs);
                cs = last;
                strip_nl(&cs, &cn);
            }
            if (rn && (long)ci > last_user) {
                fb_sb_puts(b, "<think>\n");
                fb_sb_put(b, rs, rn);
                fb_sb_puts(b, "\n</think>\n\n");
            }
            fb_sb_put(b, cs, cn);
            free(content.p);
            json_t *calls = field(m, "tool_calls");
            if (truthy(calls)) {
                if (!json_is_array(calls)) return fb_fail(err, "%s: tool_calls must be a list", what);
                if (render_tool_calls(b, calls, mi, err)) return -1;
                have_tool_call = 1;
            } else {
                have_tool_call = 0;
            }
            fb_sb_puts(b, "[e~[\n");
        } else if (strcmp(role, "tool") == 0) {
            if (!have_tool_call)
                return fb_fail(err, "%s: Message has tool role, but there was no previous assistant message "
                                    "with a tool call!", what);
            if (ci == 0 || strcmp(role_of(json_array_get(msgs, mi - 1)), "tool") != 0) fb_sb_puts(b, "]~b]tool");
            json_t *c = field(m, "content");
            if (json_is_string(c)) {
                fb_sb_puts(b, "\n<response>");
                fb_sb_put(b, json_string_value(c), json_string_length(c));
                fb_sb_puts(b, "</response>");
            } else if (json_is_array(c)) {
                for (size_t k = 0; k < json_array_size(c); k++) {
                    json_t *tr = json_array_get(c, k), *out = NULL;
                    if (json_is_object(tr)) {
                        json_t *ty = json_object_get(tr, "type");
                        if (json_object_get(tr, "output")) out = json_object_get(tr, "output");
                        else if (json_is_string(ty) && strcmp(json_string_value(ty), "text") == 0 &&
                                 json_object_get(tr, "text"))
                            out = json_object_get(tr, "text");
                        else return fb_fail(err, "%s: content[%zu] has neither output nor text", what, k);
                    } else {
                        out = tr;
                    }
                    fb_sb_puts(b, "\n<response>");
                    if (py_str(b, out, what, err)) return -1;
                    fb_sb_puts(b, "\n</response>");
                }
            } else if (c) {
                return fb_fail(err, "%s: content must be a string or a list", what);
            }
            if (ci + 1 == nc || strcmp(role_of(json_array_get(msgs, mi + 1)), "tool") != 0) fb_sb_puts(b, "[e~[\n");
        } else if (strcmp(role, "user") == 0) {
            fb_sb_puts(b, "]~b]user\n");
            if (visible_text(b, field(m, "content"), what, err)) return -1;
            fb_sb_puts(b, "[e~[\n");
        }
    }
    if (o->add_generation_prompt) fb_sb_puts(b, "]~b]ai\n<think>\n");
    return 0;
}

static int render_chatml(const fb_chat_opts *o, json_t *msgs, fb_sbuf *b, fb_err *err) {
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        json_t *m = json_array_get(msgs, i);
        json_t *r = field(m, "role"), *c = field(m, "content");
        char what[64];
        snprintf(what, sizeof what, "message %zu", i);
        if (!json_is_string(r)) return fb_fail(err, "%s: no role", what);
        if (!json_is_string(c) && !json_is_array(c)) return fb_fail(err, "%s: content must be text", what);
        fb_sb_puts(b, "<|im_start|>");
        fb_sb_put(b, json_string_value(r), json_string_length(r));
        fb_sb_puts(b, "\n");
        if (visible_text(b, c, what, err)) return -1;
        fb_sb_puts(b, "<|im_end|>\n");
    }
    if (o->add_generation_prompt) fb_sb_puts(b, "<|im_start|>assistant\n");
    return 0;
}

// The variables transformers' apply_chat_template renders with (render_jinja_template):
// special tokens first, then messages / tools / documents / add_generation_prompt, then kwargs.
static int render_jinja(const fb_chat_opts *o, json_t *msgs, json_t *tools, json_t *kwargs, char **out,
                        size_t *out_len, fb_err *err) {
    if (!o->jinja) return fb_fail(err, "no Jinja template given");
    json_t *v = json_object();
    if (o->special) json_object_update(v, o->special);
    json_object_set(v, "messages", msgs);
    json_object_set_new(v, "tools", tools ? json_incref(tools) : json_null());
    json_object_set_new(v, "documents", json_null());
    json_object_set_new(v, "add_generation_prompt", json_boolean(o->add_generation_prompt));
    if (kwargs) json_object_update(v, kwargs);
    int rc = fb_jinja_render(o->jinja, v, out, out_len, err);
    json_decref(v);
    return rc;
}

int fb_chat_render(const fb_chat_opts *o, json_t *messages, json_t *tools, char **out, size_t *out_len,
                   fb_err *err) {
    return fb_chat_render_kw(o, messages, tools, NULL, out, out_len, err);
}

int fb_chat_render_kw(const fb_chat_opts *o, json_t *messages, json_t *tools, json_t *kwargs, char **out,
                      size_t *out_len, fb_err *err) {
    *out = NULL;
    *out_len = 0;
    if (!json_is_array(messages)) return fb_fail(err, "messages must be a list");
    for (size_t i = 0; i < json_array_size(messages); i++)
        if (!json_is_object(json_array_get(messages, i))) return fb_fail(err, "message %zu is not an object", i);
    if (json_is_null(tools)) tools = NULL;
    if (kwargs && !json_is_object(kwargs)) return fb_fail(err, "chat_template_kwargs must be an object");
    if (o->tmpl == FB_CHAT_JINJA) return render_jinja(o, messages, tools, kwargs, out, out_len, err);
    fb_sbuf b = {0};
    int rc = o->tmpl == FB_CHAT_CHATML ? render_chatml(o, messages, &b, err)
                                       : render_minimax(o, messages, tools, &b, err);
    if (rc) {
        free(b.p);
        return -1;
    }
    if (!b.p) fb_sb_put(&b, "", 0);
    *out = b.p;
    *out_len = b.n;
    return 0;
}

static const struct {
    const char *name;
    fb_chat_template t;
} TEMPLATES[] = {
    {"minimax-m2", FB_CHAT_MINIMAX_M2},
    {"minimax", FB_CHAT_MINIMAX_M2},
    {"chatml", FB_CHAT_CHATML},
};

int fb_chat_template_parse(const char *name, fb_chat_template *out, fb_err *err) {
    for (size_t i = 0; i < sizeof TEMPLATES / sizeof TEMPLATES[0]; i++)
        if (name && strcmp(name, TEMPLATES[i].name) == 0) {
            *out = TEMPLATES[i].t;
            return 0;
        }
    return fb_fail(err, "unknown chat template '%s' (known: minimax-m2, chatml)", name ? name : "");
}

const char *fb_chat_template_name(fb_chat_template t) {
    return t == FB_CHAT_CHATML ? "chatml" : t == FB_CHAT_JINJA ? "jinja" : "minimax-m2";
}

// ---------------------------------------------------------------------------------------------
// A checkpoint's own template

// The special tokens transformers' special_tokens_map holds (strings or AddedToken objects).
static const char *const SPECIAL_KEYS[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                           "pad_token", "cls_token", "mask_token"};

static json_t *special_tokens(json_t *cfg) {
    json_t *sp = json_object();
    for (size_t i = 0; i < sizeof SPECIAL_KEYS / sizeof SPECIAL_KEYS[0]; i++) {
        json_t *v = json_object_get(cfg, SPECIAL_KEYS[i]);
        if (json_is_object(v)) v = json_object_get(v, "content");
        if (json_is_string(v)) json_object_set(sp, SPECIAL_KEYS[i], v);
    }
    return sp;
}

// DIR/tokenizer_config.json parsed, or NULL (*out) when there is none.
static int load_tok_config(const char *dir, json_t **out, char **path, fb_err *err) {
    *out = NULL;
    *path = fb_malloc(strlen(dir) + 32);
    sprintf(*path, "%s/tokenizer_config.json", dir);
    if (access(*path, F_OK) != 0) return 0;
    json_error_t je;
    *out = json_load_file(*path, 0, &je);
    if (!*out) return fb_fail(err, "%s: line %d: %s", *path, je.line, je.text);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return fb_fail(err, "%s: not a JSON object", *path);
    }
    return 0;
}

void fb_chat_own_free(fb_chat_own *o) {
    if (!o) return;
    fb_jinja_free(o->tmpl);
    if (o->special) json_decref(o->special);
    free(o->source);
    memset(o, 0, sizeof *o);
}

int fb_chat_own_load(const char *dir, fb_chat_own *out, fb_err *err) {
    memset(out, 0, sizeof *out);
    json_t *cfg;
    char *cfgp;
    if (load_tok_config(dir, &cfg, &cfgp, err)) {
        free(cfgp);
        return -1;
    }
    out->special = cfg ? special_tokens(cfg) : json_object();
    char *jp = fb_malloc(strlen(dir) + 32);
    sprintf(jp, "%s/chat_template.jinja", dir);
    int rc = 0;
    if (access(jp, F_OK) == 0) {  // transformers 5: the separate file takes priority
        rc = fb_jinja_load(jp, &out->tmpl, err);
        out->source = jp;
        jp = NULL;
    } else if (cfg && json_object_get(cfg, "chat_template")) {
        json_t *ct = json_object_get(cfg, "chat_template");
        if (json_is_array(ct)) {  // named templates: the "default" one
            json_t *def = NULL;
            for (size_t i = 0; i < json_array_size(ct); i++) {
                json_t *e = json_array_get(ct, i);
                if (json_is_string(json_object_get(e, "name")) &&
                    !strcmp(json_string_value(json_object_get(e, "name")), "default"))
                    def = json_object_get(e, "template");
            }
            if (!def) rc = fb_fail(err, "%s: chat_template lists named templates but none is \"default\"", cfgp);
            ct = def;
        }
        if (!rc && !json_is_string(ct)) rc = fb_fail(err, "%s: chat_template is not a string", cfgp);
        if (!rc) {
            out->source = fb_malloc(strlen(cfgp) + 32);
            sprintf(out->source, "%s#chat_template", cfgp);
            rc = fb_jinja_parse(json_string_value(ct), json_string_length(ct), out->source, &out->tmpl, err);
        }
    }
    free(jp);
    free(cfgp);
    if (cfg) json_decref(cfg);
    if (rc) fb_chat_own_free(out);
    return rc;
}

int fb_chat_select(const char *name, const char *file, const char *model_dir, fb_chat_opts *o, fb_chat_own *own,
                   const char **what, fb_err *err) {
    memset(own, 0, sizeof *own);
    *what = NULL;
    if (!name) name = "auto";
    int is_auto = strcmp(name, "auto") == 0;
    if (file && !is_auto) return fb_fail(err, "--chat-template FILE and --template %s exclude each other", name), -2;
    if (!is_auto) {
        if (fb_chat_template_parse(name, &o->tmpl, err)) {
            fb_err_prefix(err, "--template");
            return -2;
        }
        *what = fb_chat_template_name(o->tmpl);
        return 0;
    }
    if (file) {  // the file's template with the checkpoint's special tokens
        json_t *cfg = NULL;
        char *cfgp = NULL;
        if (model_dir && load_tok_config(model_dir, &cfg, &cfgp, err)) {
            free(cfgp);
            return -1;
        }
        free(cfgp);
        own->special = cfg ? special_tokens(cfg) : json_object();
        if (cfg) json_decref(cfg);
        if (fb_jinja_load(file, &own->tmpl, err)) {
            fb_chat_own_free(own);
            return -1;
        }
        own->source = fb_strdup(file);
    } else if (model_dir && fb_chat_own_load(model_dir, own, err)) {
        size_t n = strlen(err->msg);
        snprintf(err->msg + n, sizeof err->msg - n, " (the checkpoint's chat template; --template minimax-m2|chatml "
                                                    "or --chat-template FILE renders without it)");
        return -1;
    }
    if (own->tmpl) {
        o->tmpl = FB_CHAT_JINJA;
        o->jinja = own->tmpl;
        o->special = own->special;
        *what = own->source;
    } else {
        o->tmpl = FB_CHAT_MINIMAX_M2;
        *what = "minimax-m2 (built-in; the checkpoint has no chat template)";
    }
    return 0;
}
