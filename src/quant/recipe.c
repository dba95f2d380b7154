// recipe.c: llm-compressor recipe YAML (see recipe.h).
//
// The YAML document is first turned into a jansson tree from libyaml events, with bounded
// nesting and node count, and PyYAML safe_load typing (the YAML 1.1 resolver regexes,
// compiled with PCRE2), recording the line of every value by its
// dotted key path. The recipe structure is then walked with tables of accepted keys; config
// groups go through the strict compressed-tensors parsers of scheme.c, and any error path
// they report is turned back into a line.
#include "quant/recipe.h"
#include "common/cancel.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <pcre2.h>
#include <stdarg.h>
#include <string.h>
#include <yaml.h>

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

// ---- YAML -> JSON with lines ---------------------------------------------------------------

typedef struct loc {
    char *path;
    int line;
} loc;

typedef struct rctx {
    const char *file;
    loc *locs;
    size_t n_locs, cap_locs;
    fb_err *err;
    pcre2_code *re_null, *re_bool, *re_int, *re_float;
    char **warnings;
    size_t n_warnings;
} rctx;

static void add_loc(rctx *c, const char *path, int line) {
    if (c->n_locs == c->cap_locs) {
        c->cap_locs = c->cap_locs ? c->cap_locs * 2 : 64;
        c->locs = fb_realloc(c->locs, c->cap_locs * sizeof *c->locs);
    }
    c->locs[c->n_locs++] = (loc){fb_strdup(path), line};
}

// Line of the longest recorded prefix of path (0 when unknown).
static int line_of(const rctx *c, const char *path) {
    size_t best = 0;
    int line = 0;
    for (size_t i = 0; i < c->n_locs; i++) {
        size_t n = strlen(c->locs[i].path);
        if (strncmp(path, c->locs[i].path, n) == 0 && (path[n] == 0 || path[n] == '.') &&
            n >= best) {
            best = n;
            line = c->locs[i].line;
        }
    }
    return line;
}

static int rfail(rctx *c, int line, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int rfail(rctx *c, int line, const char *path, const char *fmt, ...) {
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!line && path) line = line_of(c, path);
    if (path && path[0]) return fb_fail(c->err, "%s:%d: %s: %s", c->file, line, path, msg);
    return fb_fail(c->err, "%s:%d: %s", c->file, line, msg);
}

static void warn(rctx *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void warn(rctx *c, const char *path, const char *fmt, ...) {
    char msg[1024], full[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "%s:%d: %s: %s", c->file, line_of(c, path), path, msg);
    c->warnings = fb_realloc(c->warnings, (c->n_warnings + 1) * sizeof *c->warnings);
    c->warnings[c->n_warnings++] = fb_strdup(full);
}

// PyYAML resolver.py (YAML 1.1) implicit tags for plain scalars.
static const char RE_NULL[] = "^(?:~|null|Null|NULL|)$";
static const char RE_BOOL[] = "^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON"
                              "|off|Off|OFF)$";
static const char RE_INT[] = "^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)"
                             "|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$";
static const char RE_FLOAT[] = "^(?:[-+]?(?:[0-9][0-9_]*)\\.[0-9_]*(?:[eE][-+][0-9]+)?"
                               "|\\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
                               "|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\\.[0-9_]*"
                               "|[-+]?\\.(?:inf|Inf|INF)|\\.(?:nan|NaN|NAN))$";

static pcre2_code *re_compile(const char *p) {
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)p, PCRE2_ZERO_TERMINATED, PCRE2_DOLLAR_ENDONLY, &ec,
                                   &eo, NULL);
    FB_ASSERT(re);
    return re;
}

static int re_full(pcre2_code *re, const char *s) {
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    int rc = pcre2_match(re, (PCRE2_SPTR)s, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL);
    pcre2_match_data_free(md);
    return rc >= 0;
}

// Removes '_' (YAML 1.1 digit separators) into buf.
static void strip_us(const char *s, char *buf, size_t n) {
    size_t j = 0;
    for (; *s && j + 1 < n; s++)
        if (*s != '_') buf[j++] = *s;
    buf[j] = 0;
}

static json_t *scalar_to_json(rctx *c, const char *s, const char *tag, int plain, int line,
                              const char *path) {
    if (tag && strcmp(tag, YAML_STR_TAG) == 0 && !plain) return json_string(s);
    if (tag && strcmp(tag, YAML_STR_TAG) != 0 && strcmp(tag, "!") != 0 &&
        strcmp(tag, YAML_NULL_TAG) != 0 && strcmp(tag, YAML_BOOL_TAG) != 0 &&
        strcmp(tag, YAML_INT_TAG) != 0 && strcmp(tag, YAML_FLOAT_TAG) != 0) {
        rfail(c, line, path, "YAML tag %s is not supported", tag);
        return NULL;
    }
    if (!plain) return json_string(s);
    if (re_full(c->re_null, s)) return json_null();
    if (re_full(c->re_bool, s))
        return json_boolean(s[0] == 'y' || s[0] == 'Y' || s[0] == 't' || s[0] == 'T' ||
                            ((s[0] == 'o' || s[0] == 'O') && (s[1] == 'n' || s[1] == 'N')));
    char buf[256];
    if (re_full(c->re_int, s) && !strchr(s, ':')) {
        strip_us(s, buf, sizeof buf);
        const char *b = buf;
        int neg = 0;
        if (*b == '+' || *b == '-') neg = *b++ == '-';
        int base = 10;
        if (b[0] == '0' && b[1] == 'b') base = 2, b += 2;
        else if (b[0] == '0' && b[1] == 'x') base = 16, b += 2;
        else if (b[0] == '0' && b[1]) base = 8, b += 1;
        errno = 0;
        char *end;
        long long v = strtoll(b, &end, base);
        if (errno || *end) {
            rfail(c, line, path, "integer '%s' out of range", s);
            return NULL;
        }
        return json_integer(neg ? -v : v);
    }
    if (re_full(c->re_float, s) && !strchr(s, ':')) {
        strip_us(s, buf, sizeof buf);
        const char *b = buf;
        double v;
        if (strstr(b, "inf") || strstr(b, "Inf") || strstr(b, "INF") || strstr(b, "nan") ||
            strstr(b, "NaN") || strstr(b, "NAN")) {
            rfail(c, line, path, "'%s': infinite or NaN numbers are not accepted", s);
            return NULL;
        }
        v = strtod(b, NULL);
        return json_real(v);
    }
    return json_string(s);
}

// Limits on what a recipe may ask of the YAML reader. The shipped recipes have fewer than 100
// nodes and 6 levels; these bounds are far above any real recipe and keep a hostile one (an
// alias "billion laughs", 200k nested '[') from running away in time or memory.
#define RECIPE_MAX_DEPTH 64        // nested mappings / sequences
#define RECIPE_MAX_NODES 100000    // nodes after alias expansion (an alias counts its whole subtree)

// The YAML text is read with libyaml's event API (not yaml_parser_load), so that nesting and
// the node budget are checked while parsing: the document tree is never built beyond them and
// libyaml's scanner, quadratic in the flow nesting level, never sees more than the limit.
typedef struct yanchor {
    char *name;
    json_t *v;
    size_t nodes;  // nodes of the anchored subtree
} yanchor;

typedef struct yframe {
    json_t *v;           // the container being filled
    char path[1024];     // its dotted path
    size_t idx;          // sequence: index of the next item
    char *key;           // mapping: the pending key, NULL while a key is expected
    char *anchor;        // the container's own anchor, registered when it ends
    size_t nodes_start;  // node count when it started
} yframe;

typedef struct ybuild {
    rctx *c;
    yframe st[RECIPE_MAX_DEPTH];
    int depth;
    json_t *root;
    yanchor *anchors;
    size_t n_anchors;
    size_t nodes;
} ybuild;

static void yb_free(ybuild *b) {
    for (int i = 0; i < b->depth; i++) {
        json_decref(b->st[i].v);
        free(b->st[i].key);
        free(b->st[i].anchor);
    }
    for (size_t i = 0; i < b->n_anchors; i++) {
        free(b->anchors[i].name);
        json_decref(b->anchors[i].v);
    }
    free(b->anchors);
    json_decref(b->root);
}

static void yb_anchor(ybuild *b, const char *name, json_t *v, size_t nodes) {
    for (size_t i = 0; i < b->n_anchors; i++)
        if (strcmp(b->anchors[i].name, name) == 0) {  // YAML: a redefined anchor replaces the old
            json_decref(b->anchors[i].v);
            b->anchors[i].v = json_incref(v);
            b->anchors[i].nodes = nodes;
            return;
        }
    b->anchors = fb_realloc(b->anchors, (b->n_anchors + 1) * sizeof *b->anchors);
    b->anchors[b->n_anchors++] = (yanchor){fb_strdup(name), json_incref(v), nodes};
}

static int yb_count(ybuild *b, size_t n, int line, const char *path) {
    b->nodes += n;
    if (b->nodes > RECIPE_MAX_NODES)
        return rfail(b->c, line, path, "more than %d YAML nodes (after expanding aliases): "
                                       "not a recipe", RECIPE_MAX_NODES);
    return 0;
}

// The path of a value starting now (recording its line), or -1 when a mapping key is
// expected and the event is not a plain scalar. *is_key is set when the event is a key.
static int yb_value_path(ybuild *b, int line, int scalar, char *p, size_t cap, int *is_key) {
    *is_key = 0;
    if (b->depth == 0) {
        p[0] = 0;
        return 0;
    }
    yframe *f = &b->st[b->depth - 1];
    if (json_is_array(f->v)) {
        snprintf(p, cap, "%s%s%zu", f->path, f->path[0] ? "." : "", f->idx);
        add_loc(b->c, p, line);
        return 0;
    }
    if (f->key) {
        snprintf(p, cap, "%s%s%s", f->path, f->path[0] ? "." : "", f->key);
        return 0;
    }
    if (!scalar) return rfail(b->c, line, f->path, "mapping keys must be plain strings");
    *is_key = 1;
    return 0;
}

// Puts a finished value into its parent (or makes it the root). Steals v.
static void yb_attach(ybuild *b, json_t *v) {
    if (b->depth == 0) {
        b->root = v;
        return;
    }
    yframe *f = &b->st[b->depth - 1];
    if (json_is_array(f->v)) {
        json_array_append_new(f->v, v);
        f->idx++;
    } else {
        json_object_set_new(f->v, f->key, v);
        free(f->key);
        f->key = NULL;
    }
}

// One event. Returns 0, or -1 with the error set.
static int yb_event(ybuild *b, const yaml_event_t *ev) {
    rctx *c = b->c;
    int line = (int)ev->start_mark.line + 1;
    char p[1024];
    int is_key;
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        if (yb_value_path(b, line, 1, p, sizeof p, &is_key)) return -1;
        const char *s = (const char *)ev->data.scalar.value;
        if (is_key) {
            yframe *f = &b->st[b->depth - 1];
            snprintf(p, sizeof p, "%s%s%s", f->path, f->path[0] ? "." : "", s);
            if (json_object_get(f->v, s)) return rfail(c, line, p, "duplicate key '%s'", s);
            add_loc(c, p, line);
            f->key = fb_strdup(s);
            return yb_count(b, 1, line, p);
        }
        if (yb_count(b, 1, line, p)) return -1;
        json_t *v = scalar_to_json(c, s, (const char *)ev->data.scalar.tag,
                                   ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE, line, p);
        if (!v) return -1;
        if (ev->data.scalar.anchor) yb_anchor(b, (const char *)ev->data.scalar.anchor, v, 1);
        yb_attach(b, v);
        return 0;
    }
    case YAML_ALIAS_EVENT: {
        if (yb_value_path(b, line, 0, p, sizeof p, &is_key)) return -1;
        const char *a = (const char *)ev->data.alias.anchor;
        const yanchor *an = NULL;
        for (size_t i = 0; i < b->n_anchors; i++)
            if (strcmp(b->anchors[i].name, a) == 0) an = &b->anchors[i];
        if (!an) return rfail(c, line, p, "found undefined alias '%s'", a);
        if (yb_count(b, an->nodes, line, p)) return -1;
        yb_attach(b, json_deep_copy(an->v));
        return 0;
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        if (yb_value_path(b, line, 0, p, sizeof p, &is_key)) return -1;
        if (b->depth >= RECIPE_MAX_DEPTH)
            return rfail(c, line, p, "nesting too deep (more than %d levels)", RECIPE_MAX_DEPTH);
        if (yb_count(b, 1, line, p)) return -1;
        int seq = ev->type == YAML_SEQUENCE_START_EVENT;
        const yaml_char_t *anchor = seq ? ev->data.sequence_start.anchor : ev->data.mapping_start.anchor;
        const yaml_char_t *tag = seq ? ev->data.sequence_start.tag : ev->data.mapping_start.tag;
        if (tag && strcmp((const char *)tag, seq ? YAML_SEQ_TAG : YAML_MAP_TAG) != 0)
            return rfail(c, line, p, "YAML tag %s is not supported", (const char *)tag);
        yframe *f = &b->st[b->depth++];
        memset(f, 0, sizeof *f);
        f->v = seq ? json_array() : json_object();
        snprintf(f->path, sizeof f->path, "%s", p);
        f->anchor = anchor ? fb_strdup((const char *)anchor) : NULL;
        f->nodes_start = b->nodes - 1;
        return 0;
    }
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT: {
        FB_ASSERT(b->depth > 0);
        yframe *f = &b->st[--b->depth];
        json_t *v = f->v;
        if (f->anchor) yb_anchor(b, f->anchor, v, b->nodes - f->nodes_start);
        free(f->anchor);
        free(f->key);
        yb_attach(b, v);
        return 0;
    }
    default: return 0;  // stream / document start and end are handled by the caller
    }
}

static json_t *yaml_to_json(rctx *c, const char *text, size_t len) {
    yaml_parser_t ps;
    FB_ASSERT(yaml_parser_initialize(&ps));
    yaml_parser_set_input_string(&ps, (const unsigned char *)text, len);
    ybuild b = {.c = c};
    int docs = 0, rc = 0, done = 0;
    while (!done && rc == 0) {
        yaml_event_t ev;
        if (fb_cancel_check("reading the recipe", c->err)) {
            rc = -1;
            break;
        }
        if (!yaml_parser_parse(&ps, &ev)) {
            rc = rfail(c, (int)(ps.problem_mark.line + 1), NULL, "YAML syntax error: %s%s%s",
                       ps.problem ? ps.problem : "unknown", ps.context ? " " : "",
                       ps.context ? ps.context : "");
            break;
        }
        if (ev.type == YAML_DOCUMENT_START_EVENT && ++docs > 1)  // safe_load refuses a second one
            rc = rfail(c, (int)(ev.start_mark.line + 1), NULL,
                       "expected a single YAML document, found another one");
        else if (ev.type == YAML_STREAM_END_EVENT)
            done = 1;
        else
            rc = yb_event(&b, &ev);
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&ps);
    json_t *j = NULL;
    if (rc == 0 && !b.root) rfail(c, 1, NULL, "empty recipe");
    else if (rc == 0) j = json_incref(b.root);
    yb_free(&b);
    return j;
}

// ---- the recipe structure ------------------------------------------------------------------

static const char *jtype(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "a mapping";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static char *dupn(const char *s, size_t n) {
    char *d = fb_malloc(n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n > m && strcmp(s + n - m, suf) == 0;
}

// Modifiers llm-compressor has that fourbit refuses, with the reason.
static const struct { const char *name, *why; } OTHER_MODIFIERS[] = {
    {"AWQModifier", "AWQ rescales weights from calibration data; fourbit does RTN only"},
    {"SmoothQuantModifier", "SmoothQuant rescales weights; fourbit does RTN only"},
    {"SparseGPTModifier", "sparsity is not supported"},
    {"WandaPruningModifier", "sparsity is not supported"},
    {"MagnitudePruningModifier", "sparsity is not supported"},
    {"ConstantPruningModifier", "sparsity is not supported"},
    {"SpinQuantModifier", "transforms (SpinQuant) are not supported"},
    {"QuIPModifier", "transforms (QuIP) are not supported"},
    {"IMatrixGatherer", "importance matrices are not supported"},
    {"OutputDistillationModifier", "distillation is not supported"},
    {"LogarithmicEqualizationModifier", "equalization is not supported"},
};

// Accepted QuantizationModifier / GPTQModifier / AutoRoundModifier keys, with the JSON types they
// take; only: 0 every modifier's, else the modifiers (bits: 1 << K_GPTQ, 1 << K_AR) that take it.
enum { T_STR = 1, T_LIST = 2, T_MAP = 4, T_NULL = 8, T_BOOL = 16, T_NUM = 32 };
enum { K_QM = 0, K_GPTQ = 1, K_AR = 2 };
static const char *const MODIFIER_NAME[] = {"QuantizationModifier", "GPTQModifier", "AutoRoundModifier"};
static const struct { const char *key; int types; int only; } QM_KEYS[] = {
    {"targets", T_STR | T_LIST, 0},
    {"ignore", T_LIST | T_NULL, 0},
    {"scheme", T_STR | T_MAP | T_NULL, 0},
    {"config_groups", T_MAP | T_NULL, 0},
    {"kv_cache_scheme", T_MAP | T_NULL, 0},
    {"weight_observer", T_STR | T_NULL, 0},
    {"input_observer", T_STR | T_NULL, 0},
    {"output_observer", T_STR | T_NULL, 0},
    {"observer", T_MAP | T_NULL, 0},
    {"bypass_divisibility_checks", T_BOOL, 0},
    {"requires_calibration_data", T_BOOL, 0},
    {"index", T_NUM | T_NULL, 0},
    {"group", T_STR | T_NULL, 0},
    {"start", T_NUM | T_NULL, 0},
    {"end", T_NUM | T_NULL, 0},
    {"update", T_NUM | T_NULL, 0},
    {"block_size", T_NUM, 1 << K_GPTQ},
    {"dampening_frac", T_NUM | T_NULL | T_STR, 1 << K_GPTQ},  // a string only to say why (1e-3)
    {"actorder", T_STR | T_NULL, 1 << K_GPTQ},
    {"offload_hessians", T_BOOL | T_NULL, 1 << K_GPTQ},
    {"batched_quantization", T_STR | T_NUM | T_NULL, 1 << K_GPTQ},
    {"iters", T_NUM, 1 << K_AR},
    {"batch_size", T_NUM, 1 << K_AR},
    {"lr", T_NUM | T_NULL | T_STR, 1 << K_AR},  // a string only to say why (1e-3)
    {"disable_opt_rtn", T_BOOL, 1 << K_AR},
    {"enable_torch_compile", T_BOOL, 1 << K_AR},
    {"device_ids", T_STR | T_NULL, 1 << K_AR},
};

static int type_bit(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return T_MAP;
    case JSON_ARRAY: return T_LIST;
    case JSON_STRING: return T_STR;
    case JSON_INTEGER: case JSON_REAL: return T_NUM;
    case JSON_TRUE: case JSON_FALSE: return T_BOOL;
    default: return T_NULL;
    }
}

static void types_text(int t, char *buf, size_t n) {
    static const char *const N[] = {"a string", "a list", "a mapping", "null", "a boolean",
                                    "a number"};
    buf[0] = 0;
    for (int i = 0; i < 6; i++)
        if (t & (1 << i)) {
            if (buf[0]) strncat(buf, " or ", n - strlen(buf) - 1);
            strncat(buf, N[i], n - strlen(buf) - 1);
        }
}

// A list of strings (or one string when allow_str). Returns a malloc'ed array, *n set.
static char **str_list(rctx *c, const json_t *v, const char *path, int allow_str, size_t *n) {
    if (allow_str && json_is_string(v)) {
        char **out = fb_calloc(1, sizeof *out);
        out[0] = fb_strdup(json_string_value(v));
        *n = 1;
        return out;
    }
    if (!json_is_array(v)) {
        rfail(c, 0, path, "expected a list of strings%s, got %s", allow_str ? " or a string" : "",
              jtype(v));
        return NULL;
    }
    *n = json_array_size(v);
    char **out = fb_calloc(*n + 1, sizeof *out);
    for (size_t i = 0; i < *n; i++) {
        json_t *it = json_array_get(v, i);
        if (!json_is_string(it)) {
            char p[1100];
            snprintf(p, sizeof p, "%s.%zu", path, i);
            rfail(c, 0, p, "expected a string, got %s%s", jtype(it),
                  json_is_null(it) ? " (an empty list item?)" : "");
            for (size_t k = 0; k < i; k++) free(out[k]);
            free(out);
            return NULL;
        }
        out[i] = fb_strdup(json_string_value(it));
    }
    return out;
}

static void free_strs(char **s, size_t n) {
    if (!s) return;
    for (size_t i = 0; i < n; i++) free(s[i]);
    free(s);
}

// Compiles entries one by one, so that a bad regex or a missing $ gets its own line.
static int check_entries(rctx *c, char **e, size_t n, const char *path) {
    for (size_t i = 0; i < n; i++) {
        char p[1100];
        snprintf(p, sizeof p, "%s.%zu", path, i);
        int w = 0;
        fb_err e2;
        fb_target *t = fb_target_compile(e[i], &w, &e2);
        if (!t) return rfail(c, 0, p, "%s", e2.msg);
        fb_target_free(t);
        if (w)
            warn(c, p, "regex '%s' has no trailing '$': re.match also matches every longer name "
                       "(e.g. 're:.*mlp.gate' hits gate_proj)", e[i]);
    }
    return 0;
}

// Observer overrides (mixin.py::_apply_observer_overrides), restricted to the observers whose
// numerics fourbit implements.
static const char *const WEIGHT_OBSERVERS[] = {"memoryless_minmax", "minmax", "static_minmax"};
static const char *const INPUT_OBSERVERS[] = {"static_minmax"};

static int check_observer(rctx *c, const char *path, const char *obs, const char *const *ok,
                          size_t nok, const char *what) {
    for (size_t i = 0; i < nok; i++)
        if (strcmp(obs, ok[i]) == 0) return 0;
    return rfail(c, 0, path, "%s observer '%s' is not supported (fourbit implements: %s%s%s)", what,
                 obs, ok[0], nok > 1 ? ", ..." : "", "");
}

static void set_observer(fb_qargs *a, const char *obs) {
    snprintf(a->observer, sizeof a->observer, "%s", obs);
}

// 1 when a modifier's arguments carry a quantization config (scheme or config_groups).
static int has_config(const json_t *m) {
    const json_t *sv = json_object_get(m, "scheme"), *cg = json_object_get(m, "config_groups");
    return (sv && !json_is_null(sv)) || (cg && !json_is_null(cg));
}

static const char *const ACTORDER_TEXT[] = {"null", "group", "weight", "dynamic", "static"};

// GPTQModifier's own arguments (block_size, dampening_frac, actorder, offload_hessians,
// batched_quantization) into r->tune; every number range-checked before it is converted.
static int parse_gptq_args(rctx *c, const json_t *m, const char *path, fb_recipe *r) {
    char p[1100];
    fb_recipe_tune *g = &r->tune;
    g->block_size = 128;
    g->dampening_frac = 0.01;
    g->actorder = FB_AO_STATIC;  // the Sentinel("static") default, resolved below
    json_t *v = json_object_get(m, "block_size");
    if (v) {
        snprintf(p, sizeof p, "%s.block_size", path);
        double d = json_number_value(v);
        if (!json_is_integer(v) || !(d >= 1 && d <= 1048576))
            return rfail(c, 0, p, "expected a positive integer (at most 1048576), got %s", json_is_integer(v) ? "a value out of range" : jtype(v));
        g->block_size = (int)json_integer_value(v);
    }
    v = json_object_get(m, "dampening_frac");
    if (v) {
        snprintf(p, sizeof p, "%s.dampening_frac", path);
        if (json_is_string(v))
            return rfail(c, 0, p, "expected a number, got the string '%s' (YAML 1.1 reads 1e-3 as a "
                                  "string: write 1.0e-3)", json_string_value(v));
        if (json_is_null(v))
            return rfail(c, 0, p, "null: GPTQ needs a dampening fraction (llm-compressor fails on "
                                  "None too); the default is 0.01");
        double d = json_number_value(v);
        if (!(d >= 0 && d <= 1e6)) return rfail(c, 0, p, "%g is out of range [0, 1e6]", d);
        g->dampening_frac = d;
    }
    v = json_object_get(m, "actorder");
    if (v) {
        snprintf(p, sizeof p, "%s.actorder", path);
        if (json_is_null(v)) {
            g->actorder = FB_AO_NONE;
        } else {
            const char *a = json_string_value(v);
            int e = -1;
            for (int i = 0; i < (int)NELEM(ACTORDER_TEXT); i++)
                if (strcmp(a, ACTORDER_TEXT[i]) == 0 && i) e = i;
            if (e < 0) return rfail(c, 0, p, "unknown actorder '%s' (static, weight, group, null)", a);
            if (fb_actorder_is_group((fb_qactorder)e))
                return rfail(c, 0, p, "actorder '%s' is refused by GPTQModifier 0.14 (\"Only 'weight' and "
                                      "'static' are supported for GPTQ\")", a);
            g->actorder = (fb_qactorder)e;
        }
    }
    if (json_object_get(m, "offload_hessians")) {
        snprintf(p, sizeof p, "%s.offload_hessians", path);
        warn(c, p, "accepted and ignored: fourbit holds one layer's Hessians at a time");
    }
    v = json_object_get(m, "batched_quantization");
    if (v) {
        snprintf(p, sizeof p, "%s.batched_quantization", path);
        if (json_is_string(v) && strcmp(json_string_value(v), "auto") != 0)
            return rfail(c, 0, p, "expected \"auto\", a positive integer or null, got '%s'", json_string_value(v));
        if (json_is_number(v) && !(json_is_integer(v) && json_integer_value(v) > 0))
            return rfail(c, 0, p, "expected \"auto\", a positive integer or null");
        warn(c, p, "accepted and ignored: fourbit runs GPTQ one module at a time");
    }
    return 0;
}

// AutoRoundModifier's own arguments (iters, batch_size, lr, disable_opt_rtn, enable_torch_compile,
// device_ids) into r->tune; every number range-checked before it is converted.
static int parse_autoround_args(rctx *c, const json_t *m, const char *path, fb_recipe *r) {
    char p[1100];
    fb_recipe_tune *g = &r->tune;
    g->iters = 200;
    g->batch_size = 8;
    g->lr = 0;
    json_t *v = json_object_get(m, "iters");
    if (v) {
        snprintf(p, sizeof p, "%s.iters", path);
        double d = json_number_value(v);
        if (!json_is_integer(v) || !(d >= 0 && d <= 1000000))
            return rfail(c, 0, p, "expected an integer in [0, 1000000], got %s", json_is_integer(v) ? "a value out of range" : jtype(v));
        g->iters = (int)json_integer_value(v);
    }
    v = json_object_get(m, "batch_size");
    if (v) {
        snprintf(p, sizeof p, "%s.batch_size", path);
        double d = json_number_value(v);
        if (!json_is_integer(v) || !(d >= 1 && d <= 1000000))
            return rfail(c, 0, p, "expected a positive integer (at most 1000000), got %s", json_is_integer(v) ? "a value out of range" : jtype(v));
        g->batch_size = (int)json_integer_value(v);
    }
    v = json_object_get(m, "lr");
    if (v && !json_is_null(v)) {
        snprintf(p, sizeof p, "%s.lr", path);
        if (json_is_string(v))
            return rfail(c, 0, p, "expected a number, got the string '%s' (YAML 1.1 reads 5e-3 as a "
                                  "string: write 5.0e-3)", json_string_value(v));
        double d = json_number_value(v);
        if (!(d > 0 && d <= 1e6)) return rfail(c, 0, p, "%g is out of range (0, 1e6] (null: 1/iters)", d);
        g->lr = d;
    }
    v = json_object_get(m, "disable_opt_rtn");
    if (v) g->disable_opt_rtn = json_is_true(v);
    if (json_object_get(m, "enable_torch_compile")) {
        snprintf(p, sizeof p, "%s.enable_torch_compile", path);
        warn(c, p, "accepted and ignored: a speed option of the reference (torch.compile)");
    }
    v = json_object_get(m, "device_ids");
    if (v && !json_is_null(v)) {
        snprintf(p, sizeof p, "%s.device_ids", path);
        warn(c, p, "accepted and ignored: fourbit's engine and threads are chosen by --device / --threads");
    }
    return 0;
}

// GPTQModifier.resolve_quantization_config: its actorder goes into every weight scheme of its
// own config (absent: static unless the scheme has one; given: it must agree with the scheme's).
static int resolve_actorder(rctx *c, const json_t *m, const char *path, fb_recipe *r) {
    int given = json_object_get(m, "actorder") != NULL;
    for (size_t i = 0; i < r->cfg.n_groups; i++) {
        fb_qscheme *s = &r->cfg.groups[i];
        if (!s->has_weights) continue;
        fb_qstrategy st = s->weights.strategy;
        if (st != FB_QS_GROUP && st != FB_QS_TENSOR_GROUP && st != FB_QS_CHANNEL && st != FB_QS_TENSOR &&
            st != FB_QS_BLOCK)
            continue;
        fb_qactorder ex = s->weights.actorder;
        if (!given) {
            if (ex == FB_AO_NONE) s->weights.actorder = FB_AO_STATIC;
        } else if (ex == FB_AO_NONE || ex == r->tune.actorder ||
                   (!fb_actorder_is_group(ex) && r->tune.actorder != FB_AO_NONE)) {  // weight = static
            s->weights.actorder = r->tune.actorder;
        } else {
            char p[1100];
            snprintf(p, sizeof p, "%s.actorder", path);
            return rfail(c, 0, p, "Cannot resolve activation ordering when both GPTQModifier.actorder "
                                  "and the scheme's actorder are given and differ (%s, %s) in group %s",
                         ACTORDER_TEXT[r->tune.actorder], ACTORDER_TEXT[ex], s->name);
        }
        if (fb_actorder_is_group(s->weights.actorder)) {
            char p[1100];
            snprintf(p, sizeof p, "%s", path);
            return rfail(c, 0, p, "group %s: actorder '%s' is refused by GPTQModifier 0.14 (\"Only "
                                  "'weight' and 'static' are supported for GPTQ\")",
                         s->name, ACTORDER_TEXT[s->weights.actorder]);
        }
    }
    return 0;
}

// A GPTQModifier without a scheme: its targets (default Linear) and ignore select which of
// the modules another modifier quantizes it tunes.
static int parse_gptq_selection(rctx *c, const json_t *m, const char *path, fb_recipe *r) {
    char p[1100];
    size_t nt = 1, ni = 0;
    char **targets = NULL, **ignore = NULL;
    json_t *tv = json_object_get(m, "targets");
    snprintf(p, sizeof p, "%s.targets", path);
    if (tv) {
        if (!(targets = str_list(c, tv, p, 1, &nt))) return -1;
        if (!json_is_string(tv) && check_entries(c, targets, nt, p)) {
            free_strs(targets, nt);
            return -1;
        }
    } else {
        targets = fb_calloc(1, sizeof *targets);
        targets[0] = fb_strdup("Linear");
    }
    json_t *iv = json_object_get(m, "ignore");
    if (iv && !json_is_null(iv)) {
        snprintf(p, sizeof p, "%s.ignore", path);
        if (!(ignore = str_list(c, iv, p, 0, &ni)) || check_entries(c, ignore, ni, p)) {
            free_strs(targets, nt);
            free_strs(ignore, ni);
            return -1;
        }
    }
    fb_err e2;
    int rc = 0;
    if (fb_target_list_compile((const char *const *)targets, nt, &r->tune.targets, NULL, NULL, &e2)) {
        snprintf(p, sizeof p, "%s.targets", path);
        rc = rfail(c, 0, p, "%s", e2.msg);
    } else if (fb_target_list_compile((const char *const *)ignore, ni, &r->tune.ignore, NULL, NULL, &e2)) {
        snprintf(p, sizeof p, "%s.ignore", path);
        rc = rfail(c, 0, p, "%s", e2.msg);
    }
    free_strs(targets, nt);
    free_strs(ignore, ni);
    return rc;
}

static int parse_qmodifier(rctx *c, const json_t *m, const char *path, fb_recipe *r, int kind) {
    char p[1100];
    const char *mname = MODIFIER_NAME[kind];
    int gptq = kind == K_GPTQ;
    if (!json_is_object(m)) return rfail(c, 0, path, "expected a mapping of arguments, got %s", jtype(m));
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)m, k, v) {
        snprintf(p, sizeof p, "%s.%s", path, k);
        int ki = -1;
        for (size_t i = 0; i < NELEM(QM_KEYS); i++)
            if (strcmp(k, QM_KEYS[i].key) == 0 && (!QM_KEYS[i].only || (QM_KEYS[i].only & (1 << kind)))) ki = (int)i;
        if (ki < 0)
            return rfail(c, 0, p, "unknown key '%s' for %s (accepted: targets, "
                                  "scheme, config_groups, ignore, kv_cache_scheme, weight_observer, "
                                  "input_observer, output_observer, observer, "
                                  "bypass_divisibility_checks, requires_calibration_data, index, "
                                  "group, start, end, update%s)", k, mname,
                         gptq ? ", block_size, dampening_frac, actorder, offload_hessians, "
                                "batched_quantization" : kind == K_AR ? ", iters, batch_size, lr, disable_opt_rtn, "
                                "enable_torch_compile, device_ids" : "");
        if (!(type_bit(v) & QM_KEYS[ki].types)) {
            char tt[128];
            types_text(QM_KEYS[ki].types, tt, sizeof tt);
            return rfail(c, 0, p, "expected %s, got %s", tt, jtype(v));
        }
    }
    if (kind != K_QM) {
        r->tune.present = 1;
        r->tune.algo = gptq ? FB_RALGO_GPTQ : FB_RALGO_AUTOROUND;
        r->tune.name = mname;
        if (gptq ? parse_gptq_args(c, m, path, r) : parse_autoround_args(c, m, path, r)) return -1;
        if (!has_config(m)) return parse_gptq_selection(c, m, path, r);
        r->tune.own_config = 1;
    }
    json_t *kv = json_object_get(m, "kv_cache_scheme");
    if (kv && !json_is_null(kv)) {
        snprintf(p, sizeof p, "%s.kv_cache_scheme", path);
        return rfail(c, 0, p, "kv-cache quantization is not supported by fourbit (it writes no "
                              "k_scale/v_scale; vLLM needs PR #37214 for them): remove "
                              "kv_cache_scheme or set it to null");
    }
    // targets (default [Linear]) and ignore
    size_t nt = 1, ni = 0;
    char **targets = NULL, **ignore = NULL;
    json_t *tv = json_object_get(m, "targets");
    snprintf(p, sizeof p, "%s.targets", path);
    if (tv) {
        if (!(targets = str_list(c, tv, p, 1, &nt))) return -1;
    } else {
        targets = fb_calloc(1, sizeof *targets);
        targets[0] = fb_strdup("Linear");
    }
    if (json_is_string(tv)) {  // a single string: one entry at the key's line
        int w = 0;
        fb_err e2;
        fb_target *t = fb_target_compile(targets[0], &w, &e2);
        if (!t) {
            free_strs(targets, nt);
            return rfail(c, 0, p, "%s", e2.msg);
        }
        fb_target_free(t);
        if (w) warn(c, p, "regex '%s' has no trailing '$'", targets[0]);
    } else if (tv && check_entries(c, targets, nt, p)) {
        free_strs(targets, nt);
        return -1;
    }
    json_t *iv = json_object_get(m, "ignore");
    snprintf(p, sizeof p, "%s.ignore", path);
    if (iv && !json_is_null(iv)) {
        if (!(ignore = str_list(c, iv, p, 0, &ni)) || check_entries(c, ignore, ni, p)) {
            free_strs(targets, nt);
            free_strs(ignore, ni);
            return -1;
        }
    }
    r->cfg.ignore = ignore ? ignore : fb_calloc(1, sizeof(char *));
    r->cfg.n_ignore = ni;
    fb_err e2;
    if (fb_target_list_compile((const char *const *)r->cfg.ignore, ni, &r->cfg.ignore_tl, NULL,
                               NULL, &e2)) {
        free_strs(targets, nt);
        return rfail(c, 0, p, "%s", e2.msg);
    }

    json_t *sv = json_object_get(m, "scheme");
    json_t *cg = json_object_get(m, "config_groups");
    if (sv && json_is_null(sv)) sv = NULL;
    if (cg && json_is_null(cg)) cg = NULL;
    if (sv && cg) {
        free_strs(targets, nt);
        snprintf(p, sizeof p, "%s.scheme", path);
        return rfail(c, 0, p, "specify either `scheme` or `config_groups`, not both");
    }
    if (!sv && !cg) {
        free_strs(targets, nt);
        return rfail(c, 0, path, "QuantizationModifier needs `scheme` (e.g. NVFP4, NVFP4A16, "
                                 "W4A16) or `config_groups`");
    }
    if (sv && json_is_string(sv)) {
        snprintf(p, sizeof p, "%s.scheme", path);
        r->cfg.groups = fb_calloc(1, sizeof *r->cfg.groups);
        if (fb_qscheme_preset(json_string_value(sv), (const char *const *)targets, nt, "group_0",
                              &r->cfg.groups[0], &e2)) {
            free_strs(targets, nt);
            return rfail(c, 0, p, "`scheme` must be a preset scheme name or a mapping of preset "
                                  "names to targets: %s", e2.msg);
        }
        r->cfg.n_groups = 1;
        r->preset = r->cfg.groups[0].preset;
    } else if (sv) {  // {PRESET: targets}
        r->cfg.groups = fb_calloc(json_object_size(sv) + 1, sizeof *r->cfg.groups);
        json_object_foreach(sv, k, v) {
            snprintf(p, sizeof p, "%s.scheme.%s", path, k);
            size_t n = 0;
            char **t = str_list(c, v, p, 1, &n);
            if (!t) {
                free_strs(targets, nt);
                return -1;
            }
            if (!json_is_string(v) && check_entries(c, t, n, p)) {
                free_strs(t, n);
                free_strs(targets, nt);
                return -1;
            }
            char gname[32];
            snprintf(gname, sizeof gname, "group_%zu", r->cfg.n_groups);
            if (fb_qscheme_preset(k, (const char *const *)t, n, gname,
                                  &r->cfg.groups[r->cfg.n_groups], &e2)) {
                free_strs(t, n);
                free_strs(targets, nt);
                return rfail(c, 0, p, "`scheme` must be a preset scheme name or a mapping of "
                                      "preset names to targets: %s", e2.msg);
            }
            free_strs(t, n);
            r->cfg.n_groups++;
        }
    } else {
        snprintf(p, sizeof p, "%s.config_groups", path);
        if (json_object_size(cg) == 0) {
            free_strs(targets, nt);
            return rfail(c, 0, p, "config_groups is empty");
        }
        r->cfg.groups = fb_calloc(json_object_size(cg) + 1, sizeof *r->cfg.groups);
        json_object_foreach(cg, k, v) {
            char gp[1200], where[1200];
            snprintf(gp, sizeof gp, "%s.%s", p, k);
            where[0] = 0;
            if (fb_qscheme_from_json_where(v, k, gp, &r->cfg.groups[r->cfg.n_groups], where,
                                           sizeof where, &e2)) {
                free_strs(targets, nt);
                // e2 already says "<path>: what"; add the file and line
                return fb_fail(c->err, "%s:%d: %s", c->file, line_of(c, where[0] ? where : gp),
                               e2.msg);
            }
            r->cfg.n_groups++;
            json_t *gt = json_object_get(v, "targets");
            char tp[1300];
            snprintf(tp, sizeof tp, "%s.targets", gp);
            for (size_t i = 0; gt && i < json_array_size(gt); i++) {
                int w = 0;
                fb_target *t = fb_target_compile(json_string_value(json_array_get(gt, i)), &w, &e2);
                fb_target_free(t);
                char ip[1400];
                snprintf(ip, sizeof ip, "%s.%zu", tp, i);
                if (w) warn(c, ip, "regex '%s' has no trailing '$'", json_string_value(json_array_get(gt, i)));
            }
        }
    }
    free_strs(targets, nt);

    // observer overrides
    const char *wo = NULL, *io = NULL, *oo = NULL;
    json_t *ov = json_object_get(m, "observer");
    if (ov && !json_is_null(ov)) {
        if (json_object_get(m, "weight_observer") || json_object_get(m, "input_observer") ||
            json_object_get(m, "output_observer")) {
            snprintf(p, sizeof p, "%s.observer", path);
            return rfail(c, 0, p, "cannot specify both individual observer parameters and the "
                                  "observer dict");
        }
        json_object_foreach(ov, k, v) {
            snprintf(p, sizeof p, "%s.observer.%s", path, k);
            if (!json_is_string(v)) return rfail(c, 0, p, "observer value must be a string, got %s", jtype(v));
            if (strcmp(k, "weights") == 0) wo = json_string_value(v);
            else if (strcmp(k, "input") == 0) io = json_string_value(v);
            else if (strcmp(k, "output") == 0) oo = json_string_value(v);
            else return rfail(c, 0, p, "invalid observer key '%s' (weights, input, output)", k);
        }
    } else {
        json_t *x;
        if ((x = json_object_get(m, "weight_observer")) && json_is_string(x)) wo = json_string_value(x);
        if ((x = json_object_get(m, "input_observer")) && json_is_string(x)) io = json_string_value(x);
        if ((x = json_object_get(m, "output_observer")) && json_is_string(x)) oo = json_string_value(x);
    }
    if (wo) {
        snprintf(p, sizeof p, "%s.%s", path, ov ? "observer.weights" : "weight_observer");
        if (check_observer(c, p, wo, WEIGHT_OBSERVERS, NELEM(WEIGHT_OBSERVERS), "weight")) return -1;
        for (size_t g = 0; g < r->cfg.n_groups; g++)
            if (r->cfg.groups[g].has_weights) set_observer(&r->cfg.groups[g].weights, wo);
    }
    if (io) {
        snprintf(p, sizeof p, "%s.%s", path, ov ? "observer.input" : "input_observer");
        if (check_observer(c, p, io, INPUT_OBSERVERS, NELEM(INPUT_OBSERVERS), "input")) return -1;
        for (size_t g = 0; g < r->cfg.n_groups; g++)
            if (r->cfg.groups[g].has_input) set_observer(&r->cfg.groups[g].input, io);
    }
    if (oo) {
        snprintf(p, sizeof p, "%s.%s", path, ov ? "observer.output" : "output_observer");
        return rfail(c, 0, p, "output activation quantization is not supported");
    }
    if (gptq) return resolve_actorder(c, m, path, r);
    return 0;
}

static int parse_fourbit(rctx *c, const json_t *v, fb_recipe *r) {
    if (!json_is_object(v)) return rfail(c, 0, "fourbit", "expected a mapping, got %s", jtype(v));
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        char p[600];
        snprintf(p, sizeof p, "fourbit.%s", k);
        double *dst;
        int *has;
        double lo, hi;
        if (strcmp(k, "max_kld") == 0) dst = &r->max_kld, has = &r->has_max_kld, lo = 0, hi = 1e9;
        else if (strcmp(k, "min_top1") == 0) dst = &r->min_top1, has = &r->has_min_top1, lo = 0, hi = 1;
        else return rfail(c, 0, p, "unknown key '%s' in the fourbit section (max_kld, min_top1)", k);
        if (!json_is_number(x)) {
            if (json_is_string(x))
                return rfail(c, 0, p, "expected a number, got the string '%s' (YAML 1.1 reads "
                                      "1e-3 as a string: write 1.0e-3)", json_string_value(x));
            return rfail(c, 0, p, "expected a number, got %s", jtype(x));
        }
        *dst = json_number_value(x);
        if (!(*dst >= lo && *dst <= hi)) return rfail(c, 0, p, "%g is out of range [%g, %g]", *dst, lo, hi);
        *has = 1;
    }
    return 0;
}

static int parse_recipe(rctx *c, const json_t *root, fb_recipe *r) {
    if (!json_is_object(root)) return rfail(c, 1, NULL, "a recipe is a mapping of stages, got %s", jtype(root));
    const char *k;
    json_t *v;
    int found = 0, found_qm = 0;  // found: the modifier holding the config was seen
    json_object_foreach((json_t *)root, k, v) {
        if (strcmp(k, "args") == 0) {
            if (!json_is_object(v) && !json_is_null(v))
                return rfail(c, 0, k, "expected a mapping, got %s", jtype(v));
            continue;
        }
        if (strcmp(k, "fourbit") == 0) {
            if (parse_fourbit(c, v, r)) return -1;
            continue;
        }
        if (!ends_with(k, "_stage"))
            return rfail(c, 0, k, "unknown top-level key '%s' (expected '<name>_stage', 'args' or "
                                  "'fourbit')", k);
        if (!json_is_object(v)) return rfail(c, 0, k, "a stage is a mapping of modifier groups, got %s", jtype(v));
        const char *gk;
        json_t *gv;
        json_object_foreach(v, gk, gv) {
            char gp[600];
            snprintf(gp, sizeof gp, "%s.%s", k, gk);
            if (!ends_with(gk, "_modifiers"))
                return rfail(c, 0, gp, "unknown key '%s' in stage %s (expected '<name>_modifiers')",
                             gk, k);
            if (!json_is_object(gv))
                return rfail(c, 0, gp, "a modifier group maps modifier names to arguments, got %s",
                             jtype(gv));
            const char *mk;
            json_t *mv;
            json_object_foreach(gv, mk, mv) {
                char mp[800];
                snprintf(mp, sizeof mp, "%s.%s", gp, mk);
                int kind = strcmp(mk, "GPTQModifier") == 0 ? K_GPTQ : strcmp(mk, "AutoRoundModifier") == 0 ? K_AR : K_QM;
                int gptq = kind != K_QM;  // a tuning modifier
                if (strcmp(mk, "QuantizationModifier") != 0 && !gptq) {
                    for (size_t i = 0; i < NELEM(OTHER_MODIFIERS); i++)
                        if (strcmp(mk, OTHER_MODIFIERS[i].name) == 0)
                            return rfail(c, 0, mp, "%s is not supported: %s", mk, OTHER_MODIFIERS[i].why);
                    return rfail(c, 0, mp, "unknown modifier '%s' (fourbit supports "
                                           "QuantizationModifier, GPTQModifier and AutoRoundModifier)", mk);
                }
                if (gptq && r->tune.present)
                    return rfail(c, 0, mp, "%s after %s: fourbit applies at most one tuning modifier", mk,
                                 r->tune.name);
                if (!gptq && found_qm)
                    return rfail(c, 0, mp, "a second %s: fourbit applies exactly one (merge their "
                                           "config_groups)", mk);
                int cfg_here = !gptq || (json_is_object(mv) && has_config(mv));
                if (cfg_here && found)
                    return rfail(c, 0, mp, "%s brings a second quantization scheme: fourbit applies "
                                           "one config (give %s no scheme to tune what the "
                                           "QuantizationModifier quantizes, or merge the config_groups)", mk,
                                 gptq ? mk : r->tune.present ? r->tune.name : "GPTQModifier");
                if (!gptq) found_qm = 1;
                if (cfg_here) {
                    found = 1;
                    r->stage = dupn(k, strlen(k) - strlen("_stage"));
                    r->group = dupn(gk, strlen(gk) - strlen("_modifiers"));
                }
                if (parse_qmodifier(c, mv, mp, r, kind)) return -1;
            }
        }
    }
    if (!found && r->tune.present)
        return rfail(c, 1, NULL, "%s has no scheme or config_groups and no "
                                 "QuantizationModifier gives one: nothing to quantize", r->tune.name);
    if (!found) return rfail(c, 1, NULL, "no QuantizationModifier found (expected "
                                         "<name>_stage: <name>_modifiers: QuantizationModifier: ...)");
    return 0;
}

// ---- entry points --------------------------------------------------------------------------

void fb_recipe_free(fb_recipe *r) {
    if (!r) return;
    free(r->path);
    free(r->text);
    free(r->stage);
    free(r->group);
    fb_qconfig_free(&r->cfg);
    fb_target_list_free(&r->tune.targets);
    fb_target_list_free(&r->tune.ignore);
    free_strs(r->warnings, r->n_warnings);
    memset(r, 0, sizeof *r);
}

int fb_recipe_tune_applies(const fb_recipe *r, const char *name, const char *cls) {
    if (!r->tune.present) return 0;
    if (r->tune.own_config) return 1;  // its own targets and ignore made the plan
    return fb_target_list_match(&r->tune.targets, name, cls) >= 0 &&
           fb_target_list_match(&r->tune.ignore, name, cls) < 0;
}

int fb_recipe_needs_data(const fb_recipe *r) { return r->tune.present; }

int fb_recipe_parse(const char *name, const char *text, size_t len, fb_recipe *out, fb_err *err) {
    memset(out, 0, sizeof *out);
    rctx c = {0};
    c.file = name;
    c.err = err;
    c.re_null = re_compile(RE_NULL);
    c.re_bool = re_compile(RE_BOOL);
    c.re_int = re_compile(RE_INT);
    c.re_float = re_compile(RE_FLOAT);
    int rc = -1;
    if (memchr(text, 0, len)) {
        fb_fail(err, "%s: contains a NUL byte: not a YAML text file", name);
    } else {
        json_t *root = yaml_to_json(&c, text, len);
        if (root) {
            out->path = fb_strdup(name);
            out->text = dupn(text, len);
            out->text_len = len;
            rc = parse_recipe(&c, root, out);
            json_decref(root);
        }
    }
    pcre2_code_free(c.re_null);
    pcre2_code_free(c.re_bool);
    pcre2_code_free(c.re_int);
    pcre2_code_free(c.re_float);
    for (size_t i = 0; i < c.n_locs; i++) free(c.locs[i].path);
    free(c.locs);
    out->warnings = c.warnings;
    out->n_warnings = c.n_warnings;
    if (rc) fb_recipe_free(out);
    return rc;
}

int fb_recipe_load(const char *path, fb_recipe *out, fb_err *err) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return fb_fail(err, "%s: cannot open recipe: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = fb_malloc(cap);
    for (;;) {
        if (n == cap) {
            if (cap >= (16u << 20)) {
                fclose(f);
                free(buf);
                return fb_fail(err, "%s: recipe larger than 16 MiB", path);
            }
            cap *= 2;
            buf = fb_realloc(buf, cap);
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return fb_fail(err, "%s: read error", path);
    }
    int rc = fb_recipe_parse(path, buf, n, out, err);
    free(buf);
    return rc;
}
