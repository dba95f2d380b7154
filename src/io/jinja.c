// jinja.c: the Jinja2 subset interpreter of jinja.h: a lexer that applies jinja2's whitespace
// rules, a recursive-descent parser into a node tree, and a tree-walking renderer whose values
// are jansson values (plus undefined, namespaces and macros) with Python semantics.
#include "io/jinja.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "common/sbuf.h"
#include "io/pyjson.h"

// ---------------------------------------------------------------------------------------------
// Growable byte buffer

// (common/fb_sbuf.h)

// ---------------------------------------------------------------------------------------------
// UTF-8 and Python's notion of whitespace (str.isspace, \s in re)

// Decodes one code point of valid UTF-8 at s (n bytes left); returns its length.
static size_t u8_next(const char *s, size_t n, uint32_t *cp) {
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80 || n < 2) return *cp = u[0], 1;
    if (u[0] < 0xE0) return *cp = (uint32_t)(u[0] & 0x1F) << 6 | (u[1] & 0x3F), 2;
    if (u[0] < 0xF0 || n < 4) {
        if (n < 3) return *cp = u[0], 1;
        return *cp = (uint32_t)(u[0] & 0x0F) << 12 | (uint32_t)(u[1] & 0x3F) << 6 | (u[2] & 0x3F), 3;
    }
    return *cp = (uint32_t)(u[0] & 0x07) << 18 | (uint32_t)(u[1] & 0x3F) << 12 | (uint32_t)(u[2] & 0x3F) << 6 |
                 (u[3] & 0x3F),
           4;
}

static size_t u8_put(char *o, uint32_t c) {
    if (c < 0x80) return o[0] = (char)c, 1;
    if (c < 0x800) return o[0] = (char)(0xC0 | c >> 6), o[1] = (char)(0x80 | (c & 0x3F)), 2;
    if (c < 0x10000)
        return o[0] = (char)(0xE0 | c >> 12), o[1] = (char)(0x80 | (c >> 6 & 0x3F)), o[2] = (char)(0x80 | (c & 0x3F)),
               3;
    o[0] = (char)(0xF0 | c >> 18), o[1] = (char)(0x80 | (c >> 12 & 0x3F));
    o[2] = (char)(0x80 | (c >> 6 & 0x3F)), o[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

// 1 if s[0..n) is valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
static int u8_valid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t k = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!k || i + k > n) return 0;
        for (size_t j = 1; j < k; j++)
            if ((u[i + j] & 0xC0) != 0x80) return 0;
        uint32_t cp;
        u8_next(s + i, n - i, &cp);
        if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k;
    }
    return 1;
}

static int py_isspace(uint32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Length of the trailing run of whitespace of s[0..n).
static size_t ws_suffix(const char *s, size_t n) {
    size_t k = n;
    while (k > 0) {
        size_t st = k - 1;
        while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80) st--;
        uint32_t cp;
        u8_next(s + st, k - st, &cp);
        if (!py_isspace(cp)) break;
        k = st;
    }
    return n - k;
}

static size_t ws_prefix(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = u8_next(s + i, n - i, &cp);
        if (!py_isspace(cp)) break;
        i += l;
    }
    return i;
}

// Number of code points.
static size_t u8_len(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

// ---------------------------------------------------------------------------------------------
// Tokens

enum { TK_TEXT, TK_VBEGIN, TK_VEND, TK_BBEGIN, TK_BEND, TK_NAME, TK_STR, TK_INT, TK_FLOAT, TK_OP, TK_EOF };

typedef struct {
    int k, line;
    char *s;  // TEXT, NAME, STR (unescaped), OP
    size_t n;
    long long i;
    double f;
} token;

// ---------------------------------------------------------------------------------------------
// Nodes

enum {
    N_CONST, N_NAME, N_ATTR, N_ITEM, N_SLICE, N_CALL, N_FILTER, N_TEST, N_NEG, N_POS, N_BIN, N_AND, N_OR, N_NOT,
    N_COND, N_LIST, N_DICT,
    N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_SETATTR, N_SETBLOCK, N_MACRO, N_BREAK, N_CONTINUE, N_BODY,
};

typedef struct node node;
struct node {
    int k, line, flag;
    char *s, *s2;  // name / text / operator; s2: attribute of N_SETATTR
    size_t sn;
    node *a, *b, *c, *d;
    node **v;      // body, positional arguments, list items, dict keys
    size_t nv;
    node **w;      // else body
    size_t nw;
    char **kn;     // keyword names, macro parameters, for targets
    node **kv;     // keyword values, macro defaults, dict values
    size_t nk;
    json_t *cst;
};

struct fb_jinja {
    char *name;
    size_t max_output;             // FB_JINJA_MAX_OUTPUT unless fb_jinja_set_limits
    unsigned long long max_steps;  // FB_JINJA_MAX_STEPS unless fb_jinja_set_limits
    node **all;  // every node, for freeing
    size_t nall, capall;
    node **body;
    size_t nbody;
};

typedef struct {
    fb_jinja *t;
    token *tk;
    size_t ntk, captk, pos;
    int nest;
    fb_err *err;
} parser;

static int perr(parser *P, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int perr(parser *P, int line, const char *fmt, ...) {
    char m[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    return fb_fail(P->err, "%s:%d: %s", P->t->name, line, m);
}

static node *mk(parser *P, int k, int line) {
    node *n = fb_calloc(1, sizeof *n);
    n->k = k;
    n->line = line;
    if (P->t->nall == P->t->capall) {
        P->t->capall = P->t->capall ? P->t->capall * 2 : 256;
        P->t->all = fb_realloc(P->t->all, P->t->capall * sizeof *P->t->all);
    }
    P->t->all[P->t->nall++] = n;
    return n;
}

static void push_node(node ***v, size_t *n, node *x) {
    if ((*n & (*n - 1)) == 0) *v = fb_realloc(*v, (*n ? *n * 2 : 1) * sizeof **v);
    (*v)[(*n)++] = x;
}
static void push_str(char ***v, size_t *n, const char *s) {
    if ((*n & (*n - 1)) == 0) *v = fb_realloc(*v, (*n ? *n * 2 : 1) * sizeof **v);
    (*v)[(*n)++] = fb_strdup(s);
}

// ---------------------------------------------------------------------------------------------
// Lexer

static void add_tok(parser *P, token t) {
    if (P->ntk == P->captk) {
        P->captk = P->captk ? P->captk * 2 : 256;
        P->tk = fb_realloc(P->tk, P->captk * sizeof *P->tk);
    }
    P->tk[P->ntk++] = t;
}

static char *dupn(const char *s, size_t n) {
    char *r = fb_malloc(n + 1);
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

// A string literal's body with Python's unicode-escape rules (as jinja2's lexer decodes it).
static int unescape(parser *P, int line, const char *s, size_t n, fb_sbuf *o) {
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            fb_sb_put(o, s + i, 1);
            continue;
        }
        char c = s[++i];
        static const char simple[][2] = {{'n', '\n'}, {'t', '\t'}, {'r', '\r'}, {'\\', '\\'}, {'\'', '\''},
                                         {'"', '"'},  {'a', '\a'}, {'b', '\b'}, {'f', '\f'},  {'v', '\v'}};
        int done = 0;
        for (size_t k = 0; k < sizeof simple / sizeof simple[0] && !done; k++)
            if (simple[k][0] == c) fb_sb_put(o, &simple[k][1], 1), done = 1;
        if (done) continue;
        if (c == '\n') continue;  // line continuation
        int hex = c == 'x' ? 2 : c == 'u' ? 4 : c == 'U' ? 8 : 0;
        if (hex) {
            uint32_t cp = 0;
            if (i + (size_t)hex >= n) return perr(P, line, "truncated \\%c escape in a string literal", c);
            for (int h = 1; h <= hex; h++) {
                char d = s[i + (size_t)h];
                int v = d >= '0' && d <= '9' ? d - '0' : d >= 'a' && d <= 'f' ? d - 'a' + 10 : d >= 'A' && d <= 'F' ? d - 'A' + 10 : -1;
                if (v < 0) return perr(P, line, "bad \\%c escape in a string literal", c);
                cp = cp * 16 + (uint32_t)v;
            }
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                return perr(P, line, "escape \\%c of an invalid code point (U+%X)", c, cp);
            char u[4];
            fb_sb_put(o, u, u8_put(u, cp));
            i += (size_t)hex;
            continue;
        }
        if (c >= '0' && c <= '7') {
            uint32_t cp = 0;
            int k = 0;
            while (k < 3 && i < n && s[i] >= '0' && s[i] <= '7') cp = cp * 8 + (uint32_t)(s[i++] - '0'), k++;
            i--;
            char u[4];
            fb_sb_put(o, u, u8_put(u, cp));
            continue;
        }
        if (c == 'N') return perr(P, line, "\\N{...} escapes are not supported");
        fb_sb_put(o, s + i - 1, 2);  // unknown escapes stay as written
    }
    return 0;
}

static const char *const OPS[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "|",
                                  ".",  ",",  ":",  "(",  ")",  "[",  "]", "{", "}", "=", "<", ">"};

// Lexes the inside of a {% %} or {{ }} tag starting at *pi; stops after the end delimiter.
// Returns the strip sign of the end ('-', '+' or 0) in *sign.
static int lex_tag(parser *P, const char *s, size_t n, size_t *pi, int *line, int block, int *sign) {
    size_t i = *pi;
    int depth = 0;
    const char *end = block ? "%}" : "}}";
    while (1) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) *line += s[i++] == '\n';
        if (i >= n) return perr(P, *line, "unterminated %s tag", block ? "{%" : "{{");
        if (depth == 0) {
            if ((s[i] == '-' || s[i] == '+') && i + 2 < n + 0 && strncmp(s + i + 1, end, 2) == 0) {
                *sign = s[i];
                *pi = i + 3;
                return 0;
            }
            if (i + 1 < n && strncmp(s + i, end, 2) == 0) {
                *sign = 0;
                *pi = i + 2;
                return 0;
            }
        }
        char c = s[i];
        token t = {.line = *line};
        if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
            size_t j = i;
            while (j < n && (s[j] == '_' || (s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z') ||
                             (s[j] >= '0' && s[j] <= '9')))
                j++;
            t.k = TK_NAME, t.s = dupn(s + i, j - i), t.n = j - i;
            i = j;
        } else if (c >= '0' && c <= '9') {
            size_t j = i;
            int isf = 0;
            while (j < n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '_')) j++;
            if (j + 1 < n && s[j] == '.' && s[j + 1] >= '0' && s[j + 1] <= '9') {
                isf = 1;
                j++;
                while (j < n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '_')) j++;
            }
            if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                size_t k = j + 1;
                if (k < n && (s[k] == '+' || s[k] == '-')) k++;
                if (k < n && s[k] >= '0' && s[k] <= '9') {
                    isf = 1;
                    j = k;
                    while (j < n && s[j] >= '0' && s[j] <= '9') j++;
                }
            }
            char num[64];
            size_t m = 0;
            for (size_t k = i; k < j && m < sizeof num - 1; k++)
                if (s[k] != '_') num[m++] = s[k];
            num[m] = 0;
            errno = 0;
            if (isf) {
                t.k = TK_FLOAT, t.f = strtod(num, NULL);
            } else {
                t.k = TK_INT, t.i = strtoll(num, NULL, 10);
                if (errno == ERANGE) return perr(P, *line, "integer literal %s is too large", num);
            }
            i = j;
        } else if (c == '\'' || c == '"') {
            size_t j = i + 1;
            while (j < n && s[j] != c) {
                if (s[j] == '\\') j++;
                j++;
            }
            if (j >= n) return perr(P, *line, "unterminated string literal");
            fb_sbuf o = {0};
            if (unescape(P, *line, s + i + 1, j - i - 1, &o)) {
                free(o.p);
                return -1;
            }
            if (!o.p) fb_sb_put(&o, "", 0);
            if (!u8_valid(o.p, o.n)) {
                free(o.p);
                return perr(P, *line, "string literal is not valid UTF-8 after its escapes");
            }
            for (size_t k = i; k < j; k++) *line += s[k] == '\n';
            t.k = TK_STR, t.s = o.p, t.n = o.n;
            i = j + 1;
        } else {
            size_t k;
            for (k = 0; k < sizeof OPS / sizeof OPS[0]; k++)
                if (strncmp(s + i, OPS[k], strlen(OPS[k])) == 0) break;
            if (k == sizeof OPS / sizeof OPS[0]) return perr(P, *line, "unexpected character '%c'", c);
            if (c == '(' || c == '[' || c == '{') depth++;
            if (c == ')' || c == ']' || c == '}') {
                if (depth == 0) return perr(P, *line, "unexpected '%c'", c);
                depth--;
            }
            t.k = TK_OP, t.s = fb_strdup(OPS[k]), t.n = strlen(OPS[k]);
            i += t.n;
        }
        add_tok(P, t);
    }
}

static int lex(parser *P, const char *src0, size_t len0) {
    // jinja2 normalises newlines and drops one trailing newline (keep_trailing_newline=False).
    char *s = fb_malloc(len0 + 1);
    size_t n = 0;
    for (size_t i = 0; i < len0; i++) {
        if (src0[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len0 && src0[i + 1] == '\n') i++;
        } else {
            s[n++] = src0[i];
        }
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = 0;
    size_t i = 0;
    int line = 1, line_starting = 1, rc = 0;
    while (i < n && !rc) {
        // the next tag
        size_t t = i;
        while (t + 1 < n && !(s[t] == '{' && (s[t + 1] == '{' || s[t + 1] == '%' || s[t + 1] == '#'))) t++;
        if (t + 1 >= n) t = n;
        size_t tn = t - i;
        int kind = t < n ? s[t + 1] : 0;
        int lsign = t + 2 < n && (s[t + 2] == '-' || s[t + 2] == '+') ? s[t + 2] : 0;
        if (kind && lsign == '-') {
            tn -= ws_suffix(s + i, tn);
        } else if (kind && lsign != '+' && kind != '{') {  // lstrip_blocks
            size_t l = tn;
            while (l > 0 && s[i + l - 1] != '\n') l--;
            if (l > 0 || line_starting) {
                size_t w = l;
                while (w < tn && (s[i + w] == ' ' || s[i + w] == '\t' || s[i + w] == '\v' || s[i + w] == '\f' ||
                                  s[i + w] == '\r'))
                    w++;
                if (w == tn) tn = l;
            }
        }
        if (tn) add_tok(P, (token){.k = TK_TEXT, .line = line, .s = dupn(s + i, tn), .n = tn});
        for (size_t k = i; k < t; k++) line += s[k] == '\n';
        if (!kind) break;
        size_t p = t + 2 + (lsign ? 1 : 0);
        int sign = 0;
        if (kind == '#') {
            size_t e = p;
            while (e + 1 < n && !(s[e] == '#' && s[e + 1] == '}')) e++;
            if (e + 1 >= n) {
                rc = perr(P, line, "unterminated comment");
                break;
            }
            for (size_t k = p; k < e; k++) line += s[k] == '\n';
            if (e > p && (s[e - 1] == '-' || s[e - 1] == '+')) sign = s[e - 1];
            p = e + 2;
        } else {
            add_tok(P, (token){.k = kind == '%' ? TK_BBEGIN : TK_VBEGIN, .line = line});
            if (lex_tag(P, s, n, &p, &line, kind == '%', &sign)) {
                rc = -1;
                break;
            }
            add_tok(P, (token){.k = kind == '%' ? TK_BEND : TK_VEND, .line = line});
        }
        size_t q = p;
        if (sign == '-') {
            q += ws_prefix(s + p, n - p);
        } else if (sign != '+' && kind != '{' && q < n && s[q] == '\n') {  // trim_blocks
            q++;
        }
        for (size_t k = p; k < q; k++) line += s[k] == '\n';
        line_starting = q > p && s[q - 1] == '\n';  // jinja2: the last match ended a line
        i = q;
    }
    add_tok(P, (token){.k = TK_EOF, .line = line});
    free(s);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Parser

static token *cur(parser *P) { return &P->tk[P->pos]; }
static int is_op(parser *P, const char *op) { return cur(P)->k == TK_OP && strcmp(cur(P)->s, op) == 0; }
static int is_name(parser *P, const char *nm) { return cur(P)->k == TK_NAME && strcmp(cur(P)->s, nm) == 0; }
static int expect_op(parser *P, const char *op) {
    if (!is_op(P, op)) return perr(P, cur(P)->line, "expected '%s'", op);
    P->pos++;
    return 0;
}

static node *p_expr(parser *P);
static node *p_or(parser *P);

static int enter(parser *P) {
    if (++P->nest > FB_JINJA_MAX_NEST) {
        perr(P, cur(P)->line, "nesting deeper than %d", FB_JINJA_MAX_NEST);
        return -1;
    }
    return 0;
}

// Call arguments after '(': positional, then name=value.
static int p_args(parser *P, node *n) {
    while (!is_op(P, ")")) {
        if (cur(P)->k == TK_EOF) return perr(P, cur(P)->line, "unterminated argument list");
        if (cur(P)->k == TK_NAME && P->tk[P->pos + 1].k == TK_OP && strcmp(P->tk[P->pos + 1].s, "=") == 0) {
            push_str(&n->kn, &n->nk, cur(P)->s);
            P->pos += 2;
            node *v = p_expr(P);
            if (!v) return -1;
            push_node(&n->kv, &(size_t){n->nk - 1}, v);
        } else {
            if (n->nk) return perr(P, cur(P)->line, "positional argument after a keyword argument");
            node *v = p_expr(P);
            if (!v) return -1;
            push_node(&n->v, &n->nv, v);
        }
        if (!is_op(P, ",")) break;
        P->pos++;
    }
    return expect_op(P, ")");
}

static node *p_primary(parser *P) {
    token *t = cur(P);
    node *n;
    if (t->k == TK_STR) {
        n = mk(P, N_CONST, t->line);
        // adjacent string literals concatenate, as in Python
        fb_sbuf b = {0};
        while (cur(P)->k == TK_STR) fb_sb_put(&b, cur(P)->s, cur(P)->n), P->pos++;
        n->cst = json_stringn_nocheck(b.p ? b.p : "", b.n);
        free(b.p);
        return n;
    }
    if (t->k == TK_INT || t->k == TK_FLOAT) {
        n = mk(P, N_CONST, t->line);
        if (t->k == TK_FLOAT && !isfinite(t->f)) {
            perr(P, t->line, "float literal out of range (inf is not supported)");
            return NULL;
        }
        n->cst = t->k == TK_INT ? json_integer(t->i) : json_real(t->f);
        P->pos++;
        return n;
    }
    if (t->k == TK_NAME) {
        static const struct {
            const char *nm;
            int v;
        } K[] = {{"true", 1}, {"True", 1}, {"false", 0}, {"False", 0}, {"none", 2}, {"None", 2}};
        for (size_t k = 0; k < sizeof K / sizeof K[0]; k++)
            if (strcmp(t->s, K[k].nm) == 0) {
                n = mk(P, N_CONST, t->line);
                n->cst = K[k].v == 2 ? json_null() : json_boolean(K[k].v);
                P->pos++;
                return n;
            }
        n = mk(P, N_NAME, t->line);
        n->s = fb_strdup(t->s);
        P->pos++;
        return n;
    }
    if (is_op(P, "(")) {
        P->pos++;
        if (is_op(P, ")")) {
            P->pos++;
            n = mk(P, N_LIST, t->line);  // () is an empty tuple
            n->flag = 1;
            return n;
        }
        node *e = p_expr(P);
        if (!e) return NULL;
        if (is_op(P, ",")) {  // a tuple
            n = mk(P, N_LIST, t->line);
            n->flag = 1;
            push_node(&n->v, &n->nv, e);
            while (is_op(P, ",")) {
                P->pos++;
                if (is_op(P, ")")) break;
                node *x = p_expr(P);
                if (!x) return NULL;
                push_node(&n->v, &n->nv, x);
            }
            e = n;
        }
        if (expect_op(P, ")")) return NULL;
        return e;
    }
    if (is_op(P, "[")) {
        P->pos++;
        n = mk(P, N_LIST, t->line);
        while (!is_op(P, "]")) {
            node *x = p_expr(P);
            if (!x) return NULL;
            push_node(&n->v, &n->nv, x);
            if (!is_op(P, ",")) break;
            P->pos++;
        }
        if (expect_op(P, "]")) return NULL;
        return n;
    }
    if (is_op(P, "{")) {
        P->pos++;
        n = mk(P, N_DICT, t->line);
        size_t nk = 0;
        while (!is_op(P, "}")) {
            node *k = p_expr(P);
            if (!k || expect_op(P, ":")) return NULL;
            node *v = p_expr(P);
            if (!v) return NULL;
            push_node(&n->v, &n->nv, k);
            push_node(&n->kv, &nk, v);
            if (!is_op(P, ",")) break;
            P->pos++;
        }
        if (expect_op(P, "}")) return NULL;
        return n;
    }
    perr(P, t->line, "unexpected %s", t->k == TK_EOF ? "end of template" : t->k == TK_OP ? t->s : "token");
    return NULL;
}

static node *p_filter_or_test(parser *P, node *n);

static node *p_postfix(parser *P, node *n) {
    while (n) {
        token *t = cur(P);
        if (is_op(P, ".")) {
            P->pos++;
            node *a = mk(P, N_ATTR, t->line);
            a->a = n;
            if (cur(P)->k == TK_NAME) {
                a->s = fb_strdup(cur(P)->s);
            } else if (cur(P)->k == TK_INT) {  // x.0 is x[0] in jinja2
                a->k = N_ITEM;
                node *c = mk(P, N_CONST, t->line);
                c->cst = json_integer(cur(P)->i);
                a->b = c;
            } else {
                perr(P, t->line, "expected an attribute name after '.'");
                return NULL;
            }
            P->pos++;
            n = a;
        } else if (is_op(P, "[")) {
            P->pos++;
            node *parts[3] = {NULL, NULL, NULL};
            int colons = 0;
            while (!is_op(P, "]")) {
                if (is_op(P, ":")) {
                    if (++colons > 2) {
                        perr(P, t->line, "bad slice");
                        return NULL;
                    }
                    P->pos++;
                    continue;
                }
                if (parts[colons]) {
                    perr(P, t->line, "expected ']'");
                    return NULL;
                }
                if (!(parts[colons] = p_expr(P))) return NULL;
            }
            P->pos++;
            node *x = mk(P, colons ? N_SLICE : N_ITEM, t->line);
            x->a = n;
            if (colons) {
                x->b = parts[0], x->c = parts[1], x->d = parts[2];
            } else {
                if (!parts[0]) {
                    perr(P, t->line, "empty subscript");
                    return NULL;
                }
                x->b = parts[0];
            }
            n = x;
        } else if (is_op(P, "(")) {
            P->pos++;
            node *c = mk(P, N_CALL, t->line);
            c->a = n;
            if (p_args(P, c)) return NULL;
            n = c;
        } else {
            break;
        }
    }
    return n;
}

static node *p_filter_or_test(parser *P, node *n) {
    while (n && (is_op(P, "|") || is_name(P, "is"))) {
        token *t = cur(P);
        int test = is_name(P, "is");
        P->pos++;
        node *f = mk(P, test ? N_TEST : N_FILTER, t->line);
        f->a = n;
        if (test && is_name(P, "not")) f->flag = 1, P->pos++;
        if (cur(P)->k != TK_NAME) {
            // `is none` / `is true` etc. arrive as names; == and friends as operators
            if (test && cur(P)->k == TK_OP && (is_op(P, "==") || is_op(P, "!=") || is_op(P, "<") || is_op(P, ">") ||
                                                is_op(P, "<=") || is_op(P, ">="))) {
                static const char *const M[][2] = {{"==", "eq"}, {"!=", "ne"}, {"<", "lt"},
                                                   {">", "gt"},  {"<=", "le"}, {">=", "ge"}};
                for (size_t k = 0; k < 6; k++)
                    if (strcmp(cur(P)->s, M[k][0]) == 0) f->s = fb_strdup(M[k][1]);
            } else {
                perr(P, t->line, "expected a %s name", test ? "test" : "filter");
                return NULL;
            }
        } else {
            f->s = fb_strdup(cur(P)->s);
        }
        P->pos++;
        if (test && f->s && !strcmp(f->s, "none")) { /* keyword-named test */
        }
        if (is_op(P, "(")) {
            P->pos++;
            if (p_args(P, f)) return NULL;
        } else if (test && (cur(P)->k == TK_STR || cur(P)->k == TK_INT || cur(P)->k == TK_FLOAT ||
                            (cur(P)->k == TK_NAME && !is_name(P, "and") && !is_name(P, "or") &&
                             !is_name(P, "else") && !is_name(P, "if") && !is_name(P, "is") && !is_name(P, "in") &&
                             !is_name(P, "not")))) {
            // `x is divisibleby 3`, `x is sameas none`: one argument without parentheses
            node *arg = p_primary(P);
            if (!arg) return NULL;
            arg = p_postfix(P, arg);
            if (!arg) return NULL;
            push_node(&f->v, &f->nv, arg);
        }
        n = p_postfix(P, f);
    }
    return n;
}

// jinja2's parse_unary: `-x|f` is f(-x), the operand of a sign takes no filter itself.
static node *p_unary(parser *P, int with_filter) {
    if (enter(P)) return NULL;
    token *t = cur(P);
    node *n;
    if (is_op(P, "-") || is_op(P, "+")) {
        P->pos++;
        n = mk(P, t->s[0] == '-' ? N_NEG : N_POS, t->line);
        if (!(n->a = p_unary(P, 0))) return NULL;
    } else {
        n = p_postfix(P, p_primary(P));
    }
    if (n && with_filter) n = p_filter_or_test(P, n);
    P->nest--;
    return n;
}

static node *bin(parser *P, const char *op, int line, node *a, node *b) {
    node *n = mk(P, N_BIN, line);
    n->s = fb_strdup(op);
    n->a = a, n->b = b;
    return n;
}

static node *p_pow(parser *P) {
    node *a = p_unary(P, 1);
    while (a && is_op(P, "**")) {
        int line = cur(P)->line;
        P->pos++;
        node *b = p_unary(P, 1);
        if (!b) return NULL;
        a = bin(P, "**", line, a, b);
    }
    return a;
}

static node *p_math2(parser *P) {
    node *a = p_pow(P);
    while (a && (is_op(P, "*") || is_op(P, "/") || is_op(P, "//") || is_op(P, "%"))) {
        token *t = cur(P);
        P->pos++;
        node *b = p_pow(P);
        if (!b) return NULL;
        a = bin(P, t->s, t->line, a, b);
    }
    return a;
}

static node *p_concat(parser *P) {
    node *a = p_math2(P);
    while (a && is_op(P, "~")) {
        int line = cur(P)->line;
        P->pos++;
        node *b = p_math2(P);
        if (!b) return NULL;
        a = bin(P, "~", line, a, b);
    }
    return a;
}

static node *p_math1(parser *P) {
    node *a = p_concat(P);
    while (a && (is_op(P, "+") || is_op(P, "-"))) {
        token *t = cur(P);
        P->pos++;
        node *b = p_concat(P);
        if (!b) return NULL;
        a = bin(P, t->s, t->line, a, b);
    }
    return a;
}

static node *p_compare(parser *P) {
    node *a = p_math1(P);
    while (a) {
        token *t = cur(P);
        const char *op = NULL;
        if (t->k == TK_OP && (!strcmp(t->s, "==") || !strcmp(t->s, "!=") || !strcmp(t->s, "<") || !strcmp(t->s, ">") ||
                              !strcmp(t->s, "<=") || !strcmp(t->s, ">="))) {
            op = t->s;
            P->pos++;
        } else if (is_name(P, "in")) {
            op = "in";
            P->pos++;
        } else if (is_name(P, "not") && P->tk[P->pos + 1].k == TK_NAME && !strcmp(P->tk[P->pos + 1].s, "in")) {
            op = "notin";
            P->pos += 2;
        } else {
            break;
        }
        node *b = p_math1(P);
        if (!b) return NULL;
        a = bin(P, op, t->line, a, b);
    }
    return a;
}

static node *p_not(parser *P) {
    if (is_name(P, "not")) {
        int line = cur(P)->line;
        P->pos++;
        if (enter(P)) return NULL;
        node *n = mk(P, N_NOT, line);
        n->a = p_not(P);
        P->nest--;
        return n->a ? n : NULL;
    }
    return p_compare(P);
}

static node *p_and(parser *P) {
    node *a = p_not(P);
    while (a && is_name(P, "and")) {
        int line = cur(P)->line;
        P->pos++;
        node *n = mk(P, N_AND, line);
        n->a = a;
        if (!(n->b = p_not(P))) return NULL;
        a = n;
    }
    return a;
}

static node *p_or(parser *P) {
    node *a = p_and(P);
    while (a && is_name(P, "or")) {
        int line = cur(P)->line;
        P->pos++;
        node *n = mk(P, N_OR, line);
        n->a = a;
        if (!(n->b = p_and(P))) return NULL;
        a = n;
    }
    return a;
}

static node *p_expr(parser *P) {
    if (enter(P)) return NULL;
    node *a = p_or(P);
    while (a && is_name(P, "if")) {
        int line = cur(P)->line;
        P->pos++;
        node *n = mk(P, N_COND, line);
        n->a = a;
        if (!(n->b = p_or(P))) return NULL;
        if (is_name(P, "else")) {
            P->pos++;
            if (!(n->c = p_expr(P))) return NULL;
        }
        a = n;
    }
    P->nest--;
    return a;
}

static int expect_bend(parser *P) {
    if (cur(P)->k != TK_BEND) return perr(P, cur(P)->line, "expected end of statement '%%}'");
    P->pos++;
    return 0;
}

// Parses statements until one of the block names in `ends` (NULL-terminated) opens a tag;
// leaves the parser on that name. *which = its index.
static int p_body(parser *P, node ***body, size_t *nbody, const char *const *ends, int *which);

static int p_stmt(parser *P, node ***body, size_t *nbody) {
    token *t = cur(P);
    if (t->k != TK_NAME) return perr(P, t->line, "expected a statement name");
    int line = t->line;
    const char *nm = t->s;
    if (!strcmp(nm, "if")) {
        P->pos++;
        node *n = mk(P, N_IF, line);
        if (!(n->a = p_expr(P)) || expect_bend(P)) return -1;
        push_node(body, nbody, n);
        while (1) {
            static const char *const E[] = {"elif", "else", "endif", NULL};
            int w;
            if (p_body(P, &n->v, &n->nv, E, &w)) return -1;
            P->pos++;
            if (w == 0) {  // elif: a nested if in the else branch
                node *e = mk(P, N_IF, cur(P)->line);
                if (!(e->a = p_expr(P)) || expect_bend(P)) return -1;
                push_node(&n->w, &n->nw, e);
                n = e;
                continue;
            }
            if (expect_bend(P)) return -1;
            if (w == 1) {
                static const char *const E2[] = {"endif", NULL};
                if (p_body(P, &n->w, &n->nw, E2, &w)) return -1;
                P->pos++;
                if (expect_bend(P)) return -1;
            }
            return 0;
        }
    }
    if (!strcmp(nm, "for")) {
        P->pos++;
        node *n = mk(P, N_FOR, line);
        while (1) {
            if (cur(P)->k != TK_NAME) return perr(P, line, "expected a loop variable name");
            push_str(&n->kn, &n->nk, cur(P)->s);
            P->pos++;
            if (!is_op(P, ",")) break;
            P->pos++;
        }
        if (n->nk > 2) return perr(P, line, "for loops with more than two targets are not supported");
        if (!is_name(P, "in")) return perr(P, line, "expected 'in' in the for statement");
        P->pos++;
        if (!(n->a = p_or(P))) return -1;  // no conditional expression here: `if` filters
        if (is_name(P, "if")) {
            P->pos++;
            if (!(n->b = p_expr(P))) return -1;
        }
        if (is_name(P, "recursive")) return perr(P, line, "recursive for loops are not supported");
        if (expect_bend(P)) return -1;
        static const char *const E[] = {"else", "endfor", NULL};
        int w;
        if (p_body(P, &n->v, &n->nv, E, &w)) return -1;
        P->pos++;
        if (expect_bend(P)) return -1;
        if (w == 0) {
            static const char *const E2[] = {"endfor", NULL};
            if (p_body(P, &n->w, &n->nw, E2, &w)) return -1;
            P->pos++;
            if (expect_bend(P)) return -1;
        }
        push_node(body, nbody, n);
        return 0;
    }
    if (!strcmp(nm, "set")) {
        P->pos++;
        if (cur(P)->k != TK_NAME) return perr(P, line, "expected a name after 'set'");
        char *name = cur(P)->s;
        P->pos++;
        node *n;
        if (is_op(P, ".")) {
            P->pos++;
            if (cur(P)->k != TK_NAME) return perr(P, line, "expected an attribute name");
            n = mk(P, N_SETATTR, line);
            n->s = fb_strdup(name);
            n->s2 = fb_strdup(cur(P)->s);
            P->pos++;
        } else if (is_op(P, ",")) {
            return perr(P, line, "tuple assignment in set is not supported");
        } else {
            n = mk(P, N_SET, line);
            n->s = fb_strdup(name);
        }
        if (cur(P)->k == TK_BEND && n->k == N_SET) {  // block set
            P->pos++;
            n->k = N_SETBLOCK;
            static const char *const E[] = {"endset", NULL};
            int w;
            if (p_body(P, &n->v, &n->nv, E, &w)) return -1;
            P->pos++;
            if (expect_bend(P)) return -1;
            push_node(body, nbody, n);
            return 0;
        }
        if (is_op(P, "|")) return perr(P, line, "filtered block set is not supported");
        if (expect_op(P, "=")) return -1;
        if (!(n->a = p_expr(P))) return -1;
        if (is_op(P, ",")) {  // set x = a, b  -> a tuple
            node *l = mk(P, N_LIST, line);
            l->flag = 1;
            push_node(&l->v, &l->nv, n->a);
            while (is_op(P, ",")) {
                P->pos++;
                node *x = p_expr(P);
                if (!x) return -1;
                push_node(&l->v, &l->nv, x);
            }
            n->a = l;
        }
        if (expect_bend(P)) return -1;
        push_node(body, nbody, n);
        return 0;
    }
    if (!strcmp(nm, "macro")) {
        P->pos++;
        if (cur(P)->k != TK_NAME) return perr(P, line, "expected a macro name");
        node *n = mk(P, N_MACRO, line);
        n->s = fb_strdup(cur(P)->s);
        P->pos++;
        if (expect_op(P, "(")) return -1;
        size_t nd = 0;
        while (!is_op(P, ")")) {
            if (cur(P)->k != TK_NAME) return perr(P, line, "expected a parameter name");
            push_str(&n->kn, &n->nk, cur(P)->s);
            P->pos++;
            node *def = NULL;
            if (is_op(P, "=")) {
                P->pos++;
                if (!(def = p_expr(P))) return -1;
            }
            push_node(&n->kv, &nd, def);
            if (!is_op(P, ",")) break;
            P->pos++;
        }
        if (expect_op(P, ")") || expect_bend(P)) return -1;
        static const char *const E[] = {"endmacro", NULL};
        int w;
        if (p_body(P, &n->v, &n->nv, E, &w)) return -1;
        P->pos++;
        if (cur(P)->k == TK_NAME) P->pos++;  // {% endmacro name %}
        if (expect_bend(P)) return -1;
        push_node(body, nbody, n);
        return 0;
    }
    if (!strcmp(nm, "break") || !strcmp(nm, "continue")) {
        P->pos++;
        if (expect_bend(P)) return -1;
        push_node(body, nbody, mk(P, nm[0] == 'b' ? N_BREAK : N_CONTINUE, line));
        return 0;
    }
    if (!strcmp(nm, "generation")) {
        P->pos++;
        if (expect_bend(P)) return -1;
        node *n = mk(P, N_BODY, line);
        static const char *const E[] = {"endgeneration", NULL};
        int w;
        if (p_body(P, &n->v, &n->nv, E, &w)) return -1;
        P->pos++;
        if (expect_bend(P)) return -1;
        push_node(body, nbody, n);
        return 0;
    }
    return perr(P, line, "unsupported statement '%s'", nm);
}

static int p_body(parser *P, node ***body, size_t *nbody, const char *const *ends, int *which) {
    if (enter(P)) return -1;
    int line0 = cur(P)->line;
    while (1) {
        token *t = cur(P);
        if (t->k == TK_EOF) {
            if (!ends) {
                P->nest--;
                return 0;
            }
        {
            int last = 0;
            while (ends[last + 1]) last++;
            return perr(P, line0, "missing {%% %s %%} for the block opened here", ends[last]);
        }
        }
        if (t->k == TK_TEXT) {
            node *n = mk(P, N_TEXT, t->line);
            n->s = dupn(t->s, t->n);
            n->sn = t->n;
            push_node(body, nbody, n);
            P->pos++;
        } else if (t->k == TK_VBEGIN) {
            P->pos++;
            node *n = mk(P, N_OUT, t->line);
            if (!(n->a = p_expr(P))) return -1;
            if (cur(P)->k != TK_VEND) return perr(P, cur(P)->line, "expected end of print statement '}}'");
            P->pos++;
            push_node(body, nbody, n);
        } else if (t->k == TK_BBEGIN) {
            P->pos++;
            if (cur(P)->k == TK_NAME && ends)
                for (int k = 0; ends[k]; k++)
                    if (!strcmp(cur(P)->s, ends[k])) {
                        *which = k;
                        P->nest--;
                        return 0;
                    }
            if (cur(P)->k == TK_NAME &&
                (!strncmp(cur(P)->s, "end", 3) || !strcmp(cur(P)->s, "elif") || !strcmp(cur(P)->s, "else")))
                return perr(P, cur(P)->line, "unexpected '%s'", cur(P)->s);
            if (p_stmt(P, body, nbody)) return -1;
        } else {
            return perr(P, t->line, "unexpected token");
        }
    }
}

int fb_jinja_parse(const char *src, size_t len, const char *name, fb_jinja **out, fb_err *err) {
    *out = NULL;
    fb_jinja *t = fb_calloc(1, sizeof *t);
    t->name = fb_strdup(name ? name : "template");
    t->max_output = FB_JINJA_MAX_OUTPUT;
    t->max_steps = FB_JINJA_MAX_STEPS;
    parser P = {.t = t, .err = err};
    int rc;
    if (!u8_valid(src, len)) {
        rc = fb_fail(err, "%s: not valid UTF-8", t->name);
    } else if (memchr(src, 0, len)) {
        rc = fb_fail(err, "%s: contains a NUL byte", t->name);
    } else {
        rc = lex(&P, src, len);
        if (!rc) rc = p_body(&P, &t->body, &t->nbody, NULL, NULL);
    }
    for (size_t i = 0; i < P.ntk; i++) free(P.tk[i].s);
    free(P.tk);
    if (rc) {
        fb_jinja_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

int fb_jinja_load(const char *path, fb_jinja **out, fb_err *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return fb_fail(err, "%s: cannot open: %s", path, strerror(errno));
    fb_sbuf b = {0};
    char chunk[65536];
    size_t k;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0) {
        fb_sb_put(&b, chunk, k);
        if (b.n > ((size_t)16 << 20)) {
            fclose(f);
            free(b.p);
            return fb_fail(err, "%s: larger than 16 MiB; not a chat template", path);
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b.p);
        return fb_fail(err, "%s: read error", path);
    }
    int rc = fb_jinja_parse(b.p ? b.p : "", b.n, path, out, err);
    free(b.p);
    return rc;
}

void fb_jinja_free(fb_jinja *t) {
    if (!t) return;
    for (size_t i = 0; i < t->nall; i++) {
        node *n = t->all[i];
        free(n->s);
        free(n->s2);
        free(n->v);
        free(n->w);
        for (size_t k = 0; k < n->nk; k++) free(n->kn[k]);
        free(n->kn);
        free(n->kv);
        if (n->cst) json_decref(n->cst);
        free(n);
    }
    free(t->all);
    free(t->body);
    free(t->name);
    free(t);
}

const char *fb_jinja_name(const fb_jinja *t) { return t->name; }

void fb_jinja_set_limits(fb_jinja *t, size_t max_output, unsigned long long max_steps) {
    if (max_output && max_output < FB_JINJA_MAX_OUTPUT) t->max_output = max_output;
    if (max_steps && max_steps < FB_JINJA_MAX_STEPS) t->max_steps = max_steps;
}

// ---------------------------------------------------------------------------------------------
// Values

enum { K_UNDEF, K_JSON, K_NS, K_MACRO };

typedef struct {
    int k;
    json_t *j;       // K_JSON, K_NS (an object): one reference owned by the value
    const node *m;   // K_MACRO
} val;

static val v_undef(void) { return (val){K_UNDEF, NULL, NULL}; }
static val v_own(json_t *j) { return (val){K_JSON, j, NULL}; }
static val v_ref(json_t *j) { return (val){K_JSON, json_incref(j), NULL}; }
static val v_copy(const val *v) {
    val r = *v;
    if (r.j) json_incref(r.j);
    return r;
}
static void v_free(val *v) {
    if (v->j) json_decref(v->j);
    *v = v_undef();
}
static val v_str(const char *s, size_t n) { return v_own(json_stringn_nocheck(s, n)); }
static val v_bool(int b) { return v_own(json_boolean(b)); }

static int is_str(const val *v) { return v->k == K_JSON && json_is_string(v->j); }
static int is_list(const val *v) { return v->k == K_JSON && json_is_array(v->j); }
static int is_dict(const val *v) { return v->k == K_JSON && json_is_object(v->j); }
static int is_none(const val *v) { return v->k == K_JSON && json_is_null(v->j); }
// ints include booleans, as in Python
static int is_intlike(const val *v) { return v->k == K_JSON && (json_is_integer(v->j) || json_is_boolean(v->j)); }
static int is_num(const val *v) { return is_intlike(v) || (v->k == K_JSON && json_is_real(v->j)); }
static long long iv(const val *v) { return json_is_boolean(v->j) ? json_is_true(v->j) : json_integer_value(v->j); }
static double fv(const val *v) { return json_is_real(v->j) ? json_real_value(v->j) : (double)iv(v); }

static int truthy(const val *v) {
    if (v->k == K_UNDEF) return 0;
    if (v->k != K_JSON) return 1;
    switch (json_typeof(v->j)) {
    case JSON_NULL: case JSON_FALSE: return 0;
    case JSON_TRUE: return 1;
    case JSON_INTEGER: return json_integer_value(v->j) != 0;
    case JSON_REAL: return json_real_value(v->j) != 0.0;
    case JSON_STRING: return json_string_length(v->j) != 0;
    case JSON_ARRAY: return json_array_size(v->j) != 0;
    case JSON_OBJECT: return json_object_size(v->j) != 0;
    }
    return 1;
}

static const char *type_name(const val *v) {
    if (v->k == K_UNDEF) return "undefined";
    if (v->k == K_NS) return "namespace";
    if (v->k == K_MACRO) return "macro";
    switch (json_typeof(v->j)) {
    case JSON_NULL: return "NoneType";
    case JSON_TRUE: case JSON_FALSE: return "bool";
    case JSON_INTEGER: return "int";
    case JSON_REAL: return "float";
    case JSON_STRING: return "str";
    case JSON_ARRAY: return "list";
    case JSON_OBJECT: return "dict";
    }
    return "?";
}

// ---------------------------------------------------------------------------------------------
// Render context

typedef struct scope {
    struct scope *parent;
    size_t n, cap;
    char **names;  // borrowed from nodes or from vars keys (both outlive the scope)
    val *vals;
} scope;

typedef struct {
    const fb_jinja *t;
    fb_sbuf *out;
    unsigned long long steps;
    int depth;
    int ctl;  // 1 break, 2 continue pending
    int rdepth;  // eval / statement recursion depth
    size_t max_output;
    unsigned long long max_steps;
    scope *sc;   // innermost scope (assignments go here)
    scope *top;  // the template's top level (a macro's scope sits on it)
    json_t **tup;  // arrays that are Python tuples (repr "(a, b)"); one reference each
    size_t ntup, captup;
    fb_err *err;
} ctx;

static int rerr(ctx *C, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int rerr(ctx *C, int line, const char *fmt, ...) {
    char m[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    return fb_fail(C->err, "%s:%d: %s", C->t->name, line, m);
}

static val *sc_find(scope *s, const char *name) {
    for (; s; s = s->parent)
        for (size_t i = s->n; i-- > 0;)
            if (!strcmp(s->names[i], name)) return &s->vals[i];
    return NULL;
}

// Binds name in s (replacing a binding of s itself); takes ownership of v.
static void sc_set(scope *s, const char *name, val v) {
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name)) {
            v_free(&s->vals[i]);
            s->vals[i] = v;
            return;
        }
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->names = fb_realloc(s->names, s->cap * sizeof *s->names);
        s->vals = fb_realloc(s->vals, s->cap * sizeof *s->vals);
    }
    s->names[s->n] = (char *)name;
    s->vals[s->n++] = v;
}

static void sc_free(scope *s) {
    for (size_t i = 0; i < s->n; i++) v_free(&s->vals[i]);
    free(s->names);
    free(s->vals);
}

static int step(ctx *C, int line) {
    if (++C->steps > C->max_steps) return rerr(C, line, "rendering took more than %llu steps (limit)", C->max_steps);
    return 0;
}

static int emit(ctx *C, int line, const char *s, size_t n) {
    if (C->out->n + n > C->max_output)
        return rerr(C, line, "rendered output larger than %zu bytes (limit)", C->max_output);
    fb_sb_put(C->out, s, n);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Python str() and repr()

static void py_float(fb_sbuf *b, double x, int repr) {
    if (isnan(x) || isinf(x)) {
        fb_sb_puts(b, isnan(x) ? "nan" : x > 0 ? "inf" : "-inf");
        return;
    }
    json_t *r = json_real(x);
    char *s = NULL;
    size_t n = 0;
    fb_err e;
    if (fb_pyjson(r, &s, &n, &e) == 0) fb_sb_put(b, s, n);
    free(s);
    json_decref(r);
    (void)repr;
}

static void py_repr_str(fb_sbuf *b, const char *s, size_t n) {
    int sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = sq && !dq ? '"' : '\'';
    fb_sb_put(b, &q, 1);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = u8_next(s + i, n - i, &cp);
        char e[16];
        if (cp == (uint32_t)q || cp == '\\') {
            e[0] = '\\', e[1] = (char)cp;
            fb_sb_put(b, e, 2);
        } else if (cp == '\n') {
            fb_sb_puts(b, "\\n");
        } else if (cp == '\r') {
            fb_sb_puts(b, "\\r");
        } else if (cp == '\t') {
            fb_sb_puts(b, "\\t");
        } else if (cp < 0x20 || (cp >= 0x7F && cp < 0xA0)) {
            snprintf(e, sizeof e, "\\x%02x", cp);
            fb_sb_puts(b, e);
        } else {
            fb_sb_put(b, s + i, l);
        }
        i += l;
    }
    fb_sb_put(b, &q, 1);
}

static int py_repr(ctx *C, int line, json_t *j, fb_sbuf *b, int depth);

// Marks a new JSON array as a tuple (items(), `(a, b)`, `set t = a, b`) and returns it: JSON has
// no tuples, but Python prints them differently.
static json_t *mk_tuple(ctx *C, json_t *arr) {
    if (C->ntup == C->captup) {
        C->captup = C->captup ? C->captup * 2 : 16;
        C->tup = fb_realloc(C->tup, C->captup * sizeof *C->tup);
    }
    C->tup[C->ntup++] = json_incref(arr);
    return arr;
}

static int is_tuple(const ctx *C, const json_t *j) {
    for (size_t i = C->ntup; i-- > 0;)
        if (C->tup[i] == j) return 1;
    return 0;
}

// str(v) appended to b. Undefined prints as "".
static int py_str(ctx *C, int line, const val *v, fb_sbuf *b) {
    if (v->k == K_UNDEF) return 0;
    if (v->k != K_JSON) return rerr(C, line, "cannot print a %s", type_name(v));
    if (json_is_string(v->j)) {
        fb_sb_put(b, json_string_value(v->j), json_string_length(v->j));
        return 0;
    }
    return py_repr(C, line, v->j, b, 0);
}

static int py_repr(ctx *C, int line, json_t *j, fb_sbuf *b, int depth) {
    if (depth > FB_JINJA_MAX_NEST) return rerr(C, line, "value nested too deeply to print");
    char s[32];
    switch (json_typeof(j)) {
    case JSON_NULL: fb_sb_puts(b, "None"); return 0;
    case JSON_TRUE: fb_sb_puts(b, "True"); return 0;
    case JSON_FALSE: fb_sb_puts(b, "False"); return 0;
    case JSON_INTEGER:
        snprintf(s, sizeof s, "%lld", (long long)json_integer_value(j));
        fb_sb_puts(b, s);
        return 0;
    case JSON_REAL: py_float(b, json_real_value(j), 1); return 0;
    case JSON_STRING: py_repr_str(b, json_string_value(j), json_string_length(j)); return 0;
    case JSON_ARRAY: {
        int tu = is_tuple(C, j);
        fb_sb_puts(b, tu ? "(" : "[");
        for (size_t i = 0; i < json_array_size(j); i++) {
            if (i) fb_sb_puts(b, ", ");
            if (py_repr(C, line, json_array_get(j, i), b, depth + 1)) return -1;
        }
        fb_sb_puts(b, tu ? (json_array_size(j) == 1 ? ",)" : ")") : "]");
        return 0;
    }
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        int first = 1;
        fb_sb_puts(b, "{");
        json_object_foreach(j, k, x) {
            if (!first) fb_sb_puts(b, ", ");
            first = 0;
            py_repr_str(b, k, strlen(k));
            fb_sb_puts(b, ": ");
            if (py_repr(C, line, x, b, depth + 1)) return -1;
        }
        fb_sb_puts(b, "}");
        return 0;
    }
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Equality, comparison

static int py_eq(const val *a, const val *b);

static int json_py_eq(json_t *a, json_t *b) {
    val x = {K_JSON, a, NULL}, y = {K_JSON, b, NULL};
    return py_eq(&x, &y);
}

static int py_eq(const val *a, const val *b) {
    if (a->k != K_JSON || b->k != K_JSON) {
        if (a->k == K_UNDEF && b->k == K_UNDEF) return 1;
        if (a->k == K_NS && b->k == K_NS) return a->j == b->j;
        if (a->k == K_MACRO && b->k == K_MACRO) return a->m == b->m;
        return 0;
    }
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b)) return iv(a) == iv(b);
        return fv(a) == fv(b);
    }
    if (json_typeof(a->j) != json_typeof(b->j)) return 0;
    switch (json_typeof(a->j)) {
    case JSON_NULL: return 1;
    case JSON_STRING:
        return json_string_length(a->j) == json_string_length(b->j) &&
               memcmp(json_string_value(a->j), json_string_value(b->j), json_string_length(a->j)) == 0;
    case JSON_ARRAY:
        if (json_array_size(a->j) != json_array_size(b->j)) return 0;
        for (size_t i = 0; i < json_array_size(a->j); i++)
            if (!json_py_eq(json_array_get(a->j, i), json_array_get(b->j, i))) return 0;
        return 1;
    case JSON_OBJECT: {
        if (json_object_size(a->j) != json_object_size(b->j)) return 0;
        const char *k;
        json_t *x;
        json_object_foreach(a->j, k, x) {
            json_t *y = json_object_get(b->j, k);
            if (!y || !json_py_eq(x, y)) return 0;
        }
        return 1;
    }
    default: return 0;
    }
}

// -1/0/1 into *r; -1 return on types Python cannot order.
static int py_cmp(ctx *C, int line, const val *a, const val *b, int *r) {
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b)) {
            *r = iv(a) < iv(b) ? -1 : iv(a) > iv(b);
        } else {
            double x = fv(a), y = fv(b);
            *r = x < y ? -1 : x > y ? 1 : 0;
            if (isnan(x) || isnan(y)) *r = 2;  // every ordering is false
        }
        return 0;
    }
    if (is_str(a) && is_str(b)) {
        size_t na = json_string_length(a->j), nb = json_string_length(b->j);
        int c = memcmp(json_string_value(a->j), json_string_value(b->j), na < nb ? na : nb);
        *r = c ? (c < 0 ? -1 : 1) : na < nb ? -1 : na > nb;  // UTF-8 byte order is code point order
        return 0;
    }
    return rerr(C, line, "cannot compare %s with %s", type_name(a), type_name(b));
}

// ---------------------------------------------------------------------------------------------
// Strings by code point

// Byte offsets of each code point of s (n+1 entries, last = len). Caller frees.
static size_t *cp_offsets(const char *s, size_t len, size_t *ncp) {
    size_t n = u8_len(s, len), k = 0;
    size_t *o = fb_malloc((n + 1) * sizeof *o);
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) o[k++] = i;
    o[n] = len;
    *ncp = n;
    return o;
}

// Python's slice index normalisation for a sequence of n items.
static void slice_idx(long long n, int has_a, long long a, int has_b, long long b, long long st, long long *start,
                      long long *stop) {
    if (st > 0) {
        *start = !has_a ? 0 : a < 0 ? (a + n < 0 ? 0 : a + n) : (a > n ? n : a);
        *stop = !has_b ? n : b < 0 ? (b + n < 0 ? 0 : b + n) : (b > n ? n : b);
    } else {
        *start = !has_a ? n - 1 : a < 0 ? (a + n < 0 ? -1 : a + n) : (a >= n ? n - 1 : a);
        *stop = !has_b ? -1 : b < 0 ? (b + n < 0 ? -1 : b + n) : (b >= n ? n - 1 : b);
    }
}

// Characters (code points) that `chars` lists, for strip(chars).
static int in_chars(uint32_t cp, const char *chars, size_t nc) {
    for (size_t i = 0; i < nc;) {
        uint32_t c;
        i += u8_next(chars + i, nc - i, &c);
        if (c == cp) return 1;
    }
    return 0;
}

// str.strip / lstrip / rstrip (which: 1 left, 2 right, 3 both); chars NULL = whitespace.
static val py_strip(const char *s, size_t n, int which, const char *chars, size_t nc) {
    size_t a = 0, b = n;
    if (which & 1)
        while (a < b) {
            uint32_t c;
            size_t l = u8_next(s + a, b - a, &c);
            if (chars ? !in_chars(c, chars, nc) : !py_isspace(c)) break;
            a += l;
        }
    if (which & 2)
        while (b > a) {
            size_t st = b - 1;
            while (st > a && ((unsigned char)s[st] & 0xC0) == 0x80) st--;
            uint32_t c;
            u8_next(s + st, b - st, &c);
            if (chars ? !in_chars(c, chars, nc) : !py_isspace(c)) break;
            b = st;
        }
    return v_str(s + a, b - a);
}

static const char *memmem_(const char *h, size_t hn, const char *nd, size_t nn) {
    if (nn == 0) return h;
    if (nn > hn) return NULL;
    return memmem(h, hn, nd, nn);
}

// str.split(sep, maxsplit) / rsplit; sep NULL = runs of whitespace.
static json_t *py_split(const char *s, size_t n, const char *sep, size_t ns, long long maxsplit, int right) {
    json_t *out = json_array();
    if (!sep) {
        // whitespace split; rsplit with maxsplit works from the right
        size_t *st = NULL, *en = NULL, cnt = 0, cap = 0;
        size_t i = 0;
        while (i < n) {
            i += ws_prefix(s + i, n - i);
            if (i >= n) break;
            size_t j = i;
            while (j < n) {
                uint32_t c;
                size_t l = u8_next(s + j, n - j, &c);
                if (py_isspace(c)) break;
                j += l;
            }
            if (cnt == cap) {
                cap = cap ? cap * 2 : 16;
                st = fb_realloc(st, cap * sizeof *st);
                en = fb_realloc(en, cap * sizeof *en);
            }
            st[cnt] = i, en[cnt++] = j;
            i = j;
        }
        if (maxsplit >= 0 && cnt > (size_t)maxsplit + 1) {
            if (!right) {
                for (size_t k = 0; k < (size_t)maxsplit; k++)
                    json_array_append_new(out, json_stringn_nocheck(s + st[k], en[k] - st[k]));
                size_t a = st[maxsplit], b = n;
                b -= ws_suffix(s + a, b - a);
                json_array_append_new(out, json_stringn_nocheck(s + a, b - a));
            } else {
                size_t first = cnt - (size_t)maxsplit;
                size_t a = st[0], b = en[first - 1];
                json_array_append_new(out, json_stringn_nocheck(s + a, b - a));
                for (size_t k = first; k < cnt; k++)
                    json_array_append_new(out, json_stringn_nocheck(s + st[k], en[k] - st[k]));
            }
        } else {
            for (size_t k = 0; k < cnt; k++) json_array_append_new(out, json_stringn_nocheck(s + st[k], en[k] - st[k]));
        }
        free(st);
        free(en);
        return out;
    }
    if (!right) {
        size_t i = 0;
        long long k = 0;
        while (maxsplit < 0 || k < maxsplit) {
            const char *p = memmem_(s + i, n - i, sep, ns);
            if (!p) break;
            json_array_append_new(out, json_stringn_nocheck(s + i, (size_t)(p - (s + i))));
            i = (size_t)(p - s) + ns;
            k++;
        }
        json_array_append_new(out, json_stringn_nocheck(s + i, n - i));
        return out;
    }
    // rsplit with a separator: collect from the right
    json_t *rev = json_array();
    size_t e = n;
    long long k = 0;
    while (maxsplit < 0 || k < maxsplit) {
        const char *p = NULL;
        for (size_t q = e >= ns ? e - ns + 1 : 0; q-- > 0;)
            if (memcmp(s + q, sep, ns) == 0) {
                p = s + q;
                break;
            }
        if (!p) break;
        json_array_append_new(rev, json_stringn_nocheck(p + ns, e - (size_t)(p - s) - ns));
        e = (size_t)(p - s);
        k++;
    }
    json_array_append_new(out, json_stringn_nocheck(s, e));
    for (size_t q = json_array_size(rev); q-- > 0;) json_array_append(out, json_array_get(rev, q));
    json_decref(rev);
    return out;
}

static val py_replace(const char *s, size_t n, const char *a, size_t na, const char *b, size_t nb, long long count) {
    fb_sbuf o = {0};
    if (na == 0) {  // Python inserts the replacement around every code point
        long long k = 0;
        size_t i = 0;
        while (1) {
            if (count < 0 || k < count) fb_sb_put(&o, b, nb), k++;
            if (i >= n) break;
            uint32_t c;
            size_t l = u8_next(s + i, n - i, &c);
            fb_sb_put(&o, s + i, l);
            i += l;
        }
    } else {
        size_t i = 0;
        long long k = 0;
        while (count < 0 || k < count) {
            const char *p = memmem_(s + i, n - i, a, na);
            if (!p) break;
            fb_sb_put(&o, s + i, (size_t)(p - (s + i)));
            fb_sb_put(&o, b, nb);
            i = (size_t)(p - s) + na;
            k++;
        }
        fb_sb_put(&o, s + i, n - i);
    }
    val r = v_str(o.p ? o.p : "", o.n);
    free(o.p);
    return r;
}

// 1 if s has a byte outside ASCII (case mapping of such text is not implemented).
static int non_ascii(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return 1;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Evaluation

static int eval(ctx *C, const node *n, val *out);
static int render_body(ctx *C, node *const *body, size_t n);

// Evaluates call arguments: pos[npos] then keyword values kw[nk] (names in n->kn).
typedef struct {
    val pos[8];
    size_t npos;
    val kw[8];
    size_t nkw;
    char *const *kn;
} args_t;

static void args_free(args_t *a) {
    for (size_t i = 0; i < a->npos; i++) v_free(&a->pos[i]);
    for (size_t i = 0; i < a->nkw; i++) v_free(&a->kw[i]);
}

static int eval_args(ctx *C, const node *n, args_t *a) {
    memset(a, 0, sizeof *a);
    if (n->nv > 8 || n->nk > 8) return rerr(C, n->line, "more than 8 arguments are not supported");
    for (size_t i = 0; i < n->nv; i++, a->npos++)
        if (eval(C, n->v[i], &a->pos[i])) return args_free(a), -1;
    a->kn = n->kn;
    for (size_t i = 0; i < n->nk; i++, a->nkw++)
        if (eval(C, n->kv[i], &a->kw[i])) return args_free(a), -1;
    return 0;
}

#define NOPOS ((size_t)-1)  // arg(): keyword only

// The argument at position i or named `name`, or NULL.
static const val *arg(const args_t *a, size_t i, const char *name) {
    if (i < a->npos) return &a->pos[i];
    for (size_t k = 0; k < a->nkw; k++)
        if (name && !strcmp(a->kn[k], name)) return &a->kw[k];
    return NULL;
}

// Rejects arguments beyond `npos` positional ones and keywords not in `names` (comma list).
static int check_args(ctx *C, int line, const char *what, const args_t *a, size_t npos, const char *names) {
    if (a->npos > npos) return rerr(C, line, "%s takes at most %zu positional arguments", what, npos);
    for (size_t k = 0; k < a->nkw; k++) {
        const char *p = names ? strstr(names, a->kn[k]) : NULL;
        size_t l = strlen(a->kn[k]);
        int ok = p && (p == names || p[-1] == ',') && (p[l] == ',' || p[l] == 0);
        if (!ok) return rerr(C, line, "%s: unsupported keyword argument '%s'", what, a->kn[k]);
    }
    return 0;
}

// Items of an iterable as a new JSON array (dict -> keys, str -> characters).
static int iter_items(ctx *C, int line, const val *v, json_t **out) {
    if (v->k == K_UNDEF) return *out = json_array(), 0;
    if (is_list(v)) return *out = json_incref(v->j), 0;
    if (is_dict(v)) {
        *out = json_array();
        const char *k;
        json_t *x;
        json_object_foreach(v->j, k, x) json_array_append_new(*out, json_string_nocheck(k));
        return 0;
    }
    if (is_str(v)) {
        *out = json_array();
        const char *s = json_string_value(v->j);
        size_t n = json_string_length(v->j);
        for (size_t i = 0; i < n;) {
            uint32_t c;
            size_t l = u8_next(s + i, n - i, &c);
            json_array_append_new(*out, json_stringn_nocheck(s + i, l));
            i += l;
        }
        return 0;
    }
    return rerr(C, line, "'%s' object is not iterable", type_name(v));
}

static int v_len(ctx *C, int line, const val *v, long long *n) {
    if (v->k == K_UNDEF) return *n = 0, 0;
    if (is_str(v)) return *n = (long long)u8_len(json_string_value(v->j), json_string_length(v->j)), 0;
    if (is_list(v)) return *n = (long long)json_array_size(v->j), 0;
    if (is_dict(v) || v->k == K_NS) return *n = (long long)json_object_size(v->j), 0;
    return rerr(C, line, "object of type '%s' has no len()", type_name(v));
}

// Python attributes of dict, str and list: jinja2 finds these before a dict key of that name,
// so `d.items` (not called) is a bound method there. We only support calling them.
static const char *const DICT_ATTRS[] = {"items", "keys", "values", "get", "copy", "pop", "popitem", "update",
                                         "clear", "setdefault", "fromkeys", NULL};
static const char *const STR_ATTRS[] = {
    "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith", "endswith", "replace", "upper",
    "lower", "title", "capitalize", "find", "rfind", "index", "rindex", "count", "join", "format", "encode",
    "casefold", "center", "ljust", "rjust", "zfill", "partition", "rpartition", "swapcase", "expandtabs",
    "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper", "istitle", "isnumeric", "isdecimal", NULL};
static const char *const LIST_ATTRS[] = {"append", "extend", "insert", "remove", "reverse", "sort", "index",
                                         "count", "copy", "pop", "clear", NULL};

static int is_py_attr(const val *o, const char *name) {
    const char *const *l = is_dict(o) ? DICT_ATTRS : is_str(o) ? STR_ATTRS : is_list(o) ? LIST_ATTRS : NULL;
    for (; l && *l; l++)
        if (!strcmp(*l, name)) return 1;
    return 0;
}

// obj.name: a dict key (or namespace attribute), else undefined; undefined.name is an error,
// and so is a Python method named without a call (jinja2 would print the bound method).
static int get_attr(ctx *C, int line, const val *o, const char *name, val *out) {
    if (o->k == K_UNDEF) return rerr(C, line, "'%s' is undefined (attribute of an undefined value)", name);
    if (is_py_attr(o, name))
        return rerr(C, line, "'%s' of a %s is a method; using it without a call is not supported", name, type_name(o));
    if (o->k == K_NS || is_dict(o)) {
        json_t *x = json_object_get(o->j, name);
        *out = x ? v_ref(x) : v_undef();
        return 0;
    }
    *out = v_undef();
    return 0;
}

static int get_item(ctx *C, int line, const val *o, const val *key, val *out) {
    if (o->k == K_UNDEF) return rerr(C, line, "subscript of an undefined value");
    if (is_dict(o) || o->k == K_NS) {
        if (is_str(key)) {
            json_t *x = json_object_get(o->j, json_string_value(key->j));
            *out = x ? v_ref(x) : v_undef();
        } else {
            *out = v_undef();
        }
        return 0;
    }
    if ((is_list(o) || is_str(o)) && is_intlike(key)) {
        long long i = iv(key);
        if (is_list(o)) {
            long long n = (long long)json_array_size(o->j);
            if (i < 0) i += n;
            *out = i >= 0 && i < n ? v_ref(json_array_get(o->j, (size_t)i)) : v_undef();
            return 0;
        }
        size_t ncp;
        size_t *off = cp_offsets(json_string_value(o->j), json_string_length(o->j), &ncp);
        if (i < 0) i += (long long)ncp;
        *out = i >= 0 && i < (long long)ncp ? v_str(json_string_value(o->j) + off[i], off[i + 1] - off[i]) : v_undef();
        free(off);
        return 0;
    }
    if (is_str(key)) return get_attr(C, line, o, json_string_value(key->j), out);
    *out = v_undef();
    return 0;
}

static int do_slice(ctx *C, const node *n, const val *o, val *out) {
    val p[3] = {v_undef(), v_undef(), v_undef()};
    const node *pn[3] = {n->b, n->c, n->d};
    long long pv[3] = {0, 0, 1};
    int has[3] = {0, 0, 0}, rc = 0;
    for (int k = 0; k < 3 && !rc; k++) {
        if (!pn[k]) continue;
        if (eval(C, pn[k], &p[k])) {
            rc = -1;
            break;
        }
        if (is_none(&p[k])) continue;
        if (!is_intlike(&p[k])) rc = rerr(C, n->line, "slice indices must be integers");
        else has[k] = 1, pv[k] = iv(&p[k]);
    }
    for (int k = 0; k < 3; k++) v_free(&p[k]);
    if (rc) return -1;
    if (pv[2] == 0) return rerr(C, n->line, "slice step cannot be zero");
    long long a, b, st = pv[2];
    if (o->k == K_UNDEF) return rerr(C, n->line, "slice of an undefined value");
    if (is_list(o)) {
        long long len = (long long)json_array_size(o->j);
        slice_idx(len, has[0], pv[0], has[1], pv[1], st, &a, &b);
        json_t *r = json_array();
        for (long long i = a; st > 0 ? i < b : i > b; i += st) json_array_append(r, json_array_get(o->j, (size_t)i));
        *out = v_own(r);
        return 0;
    }
    if (is_str(o)) {
        const char *s = json_string_value(o->j);
        size_t ncp;
        size_t *off = cp_offsets(s, json_string_length(o->j), &ncp);
        slice_idx((long long)ncp, has[0], pv[0], has[1], pv[1], st, &a, &b);
        fb_sbuf r = {0};
        for (long long i = a; st > 0 ? i < b : i > b; i += st) fb_sb_put(&r, s + off[i], off[i + 1] - off[i]);
        *out = v_str(r.p ? r.p : "", r.n);
        free(r.p);
        free(off);
        return 0;
    }
    return rerr(C, n->line, "'%s' object is not subscriptable", type_name(o));
}

// A float result; inf and nan have no JSON value here and are an error (Python would print them).
static int ret_real(ctx *C, int line, double x, val *out) {
    if (!isfinite(x)) return rerr(C, line, "float result %s is not supported", isnan(x) ? "nan" : "inf");
    *out = v_own(json_real(x));
    return 0;
}

static int arith(ctx *C, int line, const char *op, const val *a, const val *b, val *out) {
    if (op[0] == '+' && is_str(a) && is_str(b)) {
        fb_sbuf r = {0};
        fb_sb_put(&r, json_string_value(a->j), json_string_length(a->j));
        fb_sb_put(&r, json_string_value(b->j), json_string_length(b->j));
        *out = v_str(r.p, r.n);
        free(r.p);
        return 0;
    }
    if (op[0] == '+' && is_list(a) && is_list(b)) {
        json_t *r = json_copy(a->j);
        json_array_extend(r, b->j);
        *out = v_own(r);
        return 0;
    }
    if (op[0] == '*' && !op[1] && ((is_str(a) && is_intlike(b)) || (is_intlike(a) && is_str(b)))) {
        const val *s = is_str(a) ? a : b;
        long long k = iv(is_str(a) ? b : a);
        size_t n = json_string_length(s->j);
        if (k > 0 && n && (unsigned long long)k * n > C->max_output)
            return rerr(C, line, "string repetition larger than %zu bytes (limit)", C->max_output);
        fb_sbuf r = {0};
        for (long long i = 0; i < k; i++) fb_sb_put(&r, json_string_value(s->j), n);
        *out = v_str(r.p ? r.p : "", r.n);
        free(r.p);
        return 0;
    }
    if (!is_num(a) || !is_num(b))
        return rerr(C, line, "unsupported operand types for %s: '%s' and '%s'", op, type_name(a), type_name(b));
    int ints = is_intlike(a) && is_intlike(b);
    if (!strcmp(op, "/")) {
        double y = fv(b);
        if (y == 0) return rerr(C, line, "division by zero");
        return ret_real(C, line, fv(a) / y, out);
    }
    if (ints) {
        long long x = iv(a), y = iv(b), r;
        int ovf = 0;
        switch (op[0]) {
        case '+': ovf = __builtin_add_overflow(x, y, &r); break;
        case '-': ovf = __builtin_sub_overflow(x, y, &r); break;
        case '*':
            if (op[1] == '*') {
                if (y < 0) {
                    if (x == 0) return rerr(C, line, "0 cannot be raised to a negative power");
                    return ret_real(C, line, pow((double)x, (double)y), out);
                }
                r = 1;
                for (long long i = 0; i < y && !ovf; i++) ovf = __builtin_mul_overflow(r, x, &r);
            } else {
                ovf = __builtin_mul_overflow(x, y, &r);
            }
            break;
        case '/':  // //
        case '%':
            if (y == 0) return rerr(C, line, "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1) {
                ovf = 1;
                break;
            }
            r = op[0] == '%' ? x % y : x / y;
            if (op[0] == '%' && r != 0 && ((r < 0) != (y < 0))) r += y;
            if (op[0] == '/' && (x % y != 0) && ((x < 0) != (y < 0))) r -= 1;
            break;
        default: return rerr(C, line, "unknown operator %s", op);
        }
        if (ovf) return rerr(C, line, "integer overflow in %s (64-bit integers)", op);
        *out = v_own(json_integer(r));
        return 0;
    }
    double x = fv(a), y = fv(b), r;
    switch (op[0]) {
    case '+': r = x + y; break;
    case '-': r = x - y; break;
    case '*': r = op[1] == '*' ? pow(x, y) : x * y; break;
    case '/':
    case '%':
        if (y == 0) return rerr(C, line, "float division or modulo by zero");
        if (op[0] == '/') {
            r = floor(x / y);
        } else {
            r = fmod(x, y);
            if (r != 0 && ((r < 0) != (y < 0))) r += y;
        }
        break;
    default: return rerr(C, line, "unknown operator %s", op);
    }
    return ret_real(C, line, r, out);
}

static int contains(ctx *C, int line, const val *needle, const val *hay, int *r) {
    if (hay->k == K_UNDEF) return *r = 0, 0;
    if (is_str(hay)) {
        if (!is_str(needle)) return rerr(C, line, "'in <string>' requires a string as left operand, not %s",
                                         type_name(needle));
        *r = memmem_(json_string_value(hay->j), json_string_length(hay->j), json_string_value(needle->j),
                     json_string_length(needle->j)) != NULL;
        return 0;
    }
    if (is_list(hay)) {
        *r = 0;
        for (size_t i = 0; i < json_array_size(hay->j) && !*r; i++) {
            val x = {K_JSON, json_array_get(hay->j, i), NULL};
            *r = py_eq(needle, &x);
        }
        return 0;
    }
    if (is_dict(hay) || hay->k == K_NS) {
        *r = is_str(needle) && json_object_get(hay->j, json_string_value(needle->j)) != NULL;
        return 0;
    }
    return rerr(C, line, "argument of type '%s' is not iterable", type_name(hay));
}

// ---- tests

typedef int (*test_fn)(ctx *C, int line, const val *v, const args_t *a, int *r);

static int need_arg(ctx *C, int line, const args_t *a, const char *what) {
    if (!arg(a, 0, NULL)) return rerr(C, line, "test '%s' needs an argument", what);
    return 0;
}
#define SIMPLE_TEST(fname, expr)                                                       \
    static int fname(ctx *C, int line, const val *v, const args_t *a, int *r) {        \
        (void)C, (void)line, (void)a;                                                  \
        *r = (expr);                                                                   \
        return 0;                                                                      \
    }
SIMPLE_TEST(t_defined, v->k != K_UNDEF)
SIMPLE_TEST(t_undefined, v->k == K_UNDEF)
SIMPLE_TEST(t_none, is_none(v))
SIMPLE_TEST(t_string, is_str(v))
SIMPLE_TEST(t_number, is_num(v))
SIMPLE_TEST(t_integer, v->k == K_JSON && json_is_integer(v->j))
SIMPLE_TEST(t_float, v->k == K_JSON && json_is_real(v->j))
SIMPLE_TEST(t_boolean, v->k == K_JSON && json_is_boolean(v->j))
SIMPLE_TEST(t_true, v->k == K_JSON && json_is_true(v->j))
SIMPLE_TEST(t_false, v->k == K_JSON && json_is_false(v->j))
SIMPLE_TEST(t_mapping, is_dict(v))
SIMPLE_TEST(t_iterable, v->k == K_UNDEF || is_str(v) || is_list(v) || is_dict(v))
SIMPLE_TEST(t_sequence, v->k == K_UNDEF || is_str(v) || is_list(v) || is_dict(v))
SIMPLE_TEST(t_callable, v->k == K_MACRO)

static int t_oddeven(ctx *C, int line, const val *v, int odd, int *r) {
    if (!is_intlike(v)) return rerr(C, line, "odd/even of a %s", type_name(v));
    long long x = iv(v);
    *r = ((x % 2 != 0) == odd);
    return 0;
}
static int t_odd(ctx *C, int line, const val *v, const args_t *a, int *r) { (void)a; return t_oddeven(C, line, v, 1, r); }
static int t_even(ctx *C, int line, const val *v, const args_t *a, int *r) { (void)a; return t_oddeven(C, line, v, 0, r); }
static int t_divisibleby(ctx *C, int line, const val *v, const args_t *a, int *r) {
    if (need_arg(C, line, a, "divisibleby")) return -1;
    const val *d = arg(a, 0, NULL);
    if (!is_intlike(v) || !is_intlike(d) || iv(d) == 0) return rerr(C, line, "divisibleby needs non-zero integers");
    *r = iv(v) % iv(d) == 0;
    return 0;
}
static int t_cmp(ctx *C, int line, const val *v, const args_t *a, int *r, const char *op) {
    if (need_arg(C, line, a, op)) return -1;
    const val *b = arg(a, 0, NULL);
    if (!strcmp(op, "eq") || !strcmp(op, "ne")) {
        *r = py_eq(v, b) == (op[0] == 'e');
        return 0;
    }
    int c;
    if (py_cmp(C, line, v, b, &c)) return -1;
    *r = c == 2 ? 0 : !strcmp(op, "lt") ? c < 0 : !strcmp(op, "le") ? c <= 0 : !strcmp(op, "gt") ? c > 0 : c >= 0;
    return 0;
}
static int t_eq(ctx *C, int line, const val *v, const args_t *a, int *r) { return t_cmp(C, line, v, a, r, "eq"); }
static int t_ne(ctx *C, int line, const val *v, const args_t *a, int *r) { return t_cmp(C, line, v, a, r, "ne"); }
static int t_lt(ctx *C, int line, const val *v, const args_t *a, int *r) { return t_cmp(C, line, v, a, r, "lt"); }
static int t_le(ctx *C, int line, const val *v, const args_t *a, int *r) { return t_cmp(C, line, v, a, r, "le"); }
static int t_gt(ctx *C, int line, const val *v, const args_t *a, int *r) { return t_cmp(C, line, v, a, r, "gt"); }
static int t_ge(ctx *C, int line, const val *v, const args_t *a, int *r) { return t_cmp(C, line, v, a, r, "ge"); }
static int t_in(ctx *C, int line, const val *v, const args_t *a, int *r) {
    if (need_arg(C, line, a, "in")) return -1;
    return contains(C, line, v, arg(a, 0, NULL), r);
}
static int t_sameas(ctx *C, int line, const val *v, const args_t *a, int *r) {
    if (need_arg(C, line, a, "sameas")) return -1;
    const val *b = arg(a, 0, NULL);
    // identity: singletons (None/True/False) compare by value; containers by pointer
    if (v->k == K_JSON && b->k == K_JSON && (json_is_null(v->j) || json_is_boolean(v->j)))
        *r = json_typeof(v->j) == json_typeof(b->j);
    else if (is_intlike(v) && is_intlike(b) && json_is_integer(v->j) && json_is_integer(b->j) && iv(v) >= -5 &&
             iv(v) <= 256)  // CPython's cached small ints
        *r = iv(v) == iv(b);
    else if (v->k == K_JSON && b->k == K_JSON && !json_is_array(v->j) && !json_is_object(v->j))
        return rerr(C, line, "sameas of a %s depends on CPython object identity; not supported", type_name(v));
    else
        *r = v->k == b->k && v->j == b->j && v->m == b->m;
    return 0;
}

static const struct {
    const char *name;
    test_fn fn;
} TESTS[] = {
    {"defined", t_defined}, {"undefined", t_undefined}, {"none", t_none}, {"string", t_string},
    {"number", t_number}, {"integer", t_integer}, {"float", t_float}, {"boolean", t_boolean},
    {"true", t_true}, {"false", t_false}, {"mapping", t_mapping}, {"iterable", t_iterable},
    {"sequence", t_sequence}, {"callable", t_callable}, {"odd", t_odd}, {"even", t_even},
    {"divisibleby", t_divisibleby}, {"eq", t_eq}, {"equalto", t_eq}, {"==", t_eq}, {"ne", t_ne},
    {"lt", t_lt}, {"lessthan", t_lt}, {"le", t_le}, {"gt", t_gt}, {"greaterthan", t_gt}, {"ge", t_ge},
    {"in", t_in}, {"sameas", t_sameas},
};

static test_fn find_test(const char *name) {
    for (size_t i = 0; i < sizeof TESTS / sizeof TESTS[0]; i++)
        if (!strcmp(TESTS[i].name, name)) return TESTS[i].fn;
    return NULL;
}

// ---- filters

typedef int (*filter_fn)(ctx *C, int line, const val *v, const args_t *a, val *out);

static int need_str(ctx *C, int line, const val *v, const char *what) {
    if (!is_str(v)) return rerr(C, line, "%s expects a string, got %s", what, type_name(v));
    return 0;
}

// str(v) as a new string value.
static int to_str_val(ctx *C, int line, const val *v, val *out) {
    if (is_str(v)) return *out = v_copy(v), 0;
    fb_sbuf b = {0};
    if (py_str(C, line, v, &b)) return free(b.p), -1;
    *out = v_str(b.p ? b.p : "", b.n);
    free(b.p);
    return 0;
}

static int f_trim(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "trim", a, 1, "chars")) return -1;
    val s;
    if (to_str_val(C, line, v, &s)) return -1;
    const val *ch = arg(a, 0, "chars");
    if (ch && !is_none(ch) && need_str(C, line, ch, "trim(chars)")) return v_free(&s), -1;
    int has = ch && !is_none(ch);
    *out = py_strip(json_string_value(s.j), json_string_length(s.j), 3, has ? json_string_value(ch->j) : NULL,
                    has ? json_string_length(ch->j) : 0);
    v_free(&s);
    return 0;
}

static int f_tojson(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "tojson", a, 1, "ensure_ascii,indent,separators,sort_keys")) return -1;
    const val *ea = arg(a, 0, "ensure_ascii"), *ind = arg(a, NOPOS, "indent"), *sep = arg(a, NOPOS, "separators"),
              *sk = arg(a, NOPOS, "sort_keys");
    if ((ind && !is_none(ind)) || (sep && !is_none(sep)) || (sk && truthy(sk)))
        return rerr(C, line, "tojson: only ensure_ascii is supported (indent, separators, sort_keys are not)");
    if (v->k != K_JSON) return rerr(C, line, "tojson: Object of type %s is not JSON serializable", type_name(v));
    char *s = NULL;
    size_t n = 0;
    fb_err e;
    if (fb_pyjson(v->j, &s, &n, &e)) return rerr(C, line, "tojson: %s", e.msg);
    if (ea && truthy(ea)) {  // \uXXXX (surrogate pairs above the BMP) for every non-ASCII character
        fb_sbuf b = {0};
        for (size_t i = 0; i < n;) {
            uint32_t c;
            size_t l = u8_next(s + i, n - i, &c);
            char u[16];
            if (c < 0x80) {
                fb_sb_put(&b, s + i, 1);
            } else if (c < 0x10000) {
                snprintf(u, sizeof u, "\\u%04x", c);
                fb_sb_puts(&b, u);
            } else {
                uint32_t x = c - 0x10000;
                snprintf(u, sizeof u, "\\u%04x\\u%04x", 0xD800 + (x >> 10), 0xDC00 + (x & 0x3FF));
                fb_sb_puts(&b, u);
            }
            i += l;
        }
        free(s);
        s = b.p ? b.p : fb_strdup("");
        n = b.n;
    }
    *out = v_str(s, n);
    free(s);
    return 0;
}

static int f_length(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "length", a, 0, NULL)) return -1;
    long long n = 0;
    if (v_len(C, line, v, &n)) return -1;
    *out = v_own(json_integer(n));
    return 0;
}

static int f_string(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "string", a, 0, NULL)) return -1;
    return to_str_val(C, line, v, out);
}

static int f_case(ctx *C, int line, const val *v, const args_t *a, val *out, int mode) {
    static const char *const NM[] = {"lower", "upper", "capitalize", "title"};
    if (check_args(C, line, NM[mode], a, 0, NULL)) return -1;
    val s;
    if (to_str_val(C, line, v, &s)) return -1;
    const char *p = json_string_value(s.j);
    size_t n = json_string_length(s.j);
    if (non_ascii(p, n)) {
        v_free(&s);
        return rerr(C, line, "%s of non-ASCII text is not supported", NM[mode]);
    }
    char *r = dupn(p, n);
    int prev_alpha = 0;
    for (size_t i = 0; i < n; i++) {
        int c = r[i], al = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        int up = mode == 1 || (mode == 2 && i == 0) || (mode == 3 && !prev_alpha);
        if (mode == 0 || (!up && (mode == 2 || mode == 3))) r[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        if (up) r[i] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
        prev_alpha = al;
    }
    *out = v_str(r, n);
    free(r);
    v_free(&s);
    return 0;
}
static int f_lower(ctx *C, int l, const val *v, const args_t *a, val *o) { return f_case(C, l, v, a, o, 0); }
static int f_upper(ctx *C, int l, const val *v, const args_t *a, val *o) { return f_case(C, l, v, a, o, 1); }
static int f_capitalize(ctx *C, int l, const val *v, const args_t *a, val *o) { return f_case(C, l, v, a, o, 2); }
static int f_title(ctx *C, int l, const val *v, const args_t *a, val *o) { return f_case(C, l, v, a, o, 3); }

static int f_firstlast(ctx *C, int line, const val *v, const args_t *a, val *out, int last) {
    if (check_args(C, line, last ? "last" : "first", a, 0, NULL)) return -1;
    json_t *it;
    if (iter_items(C, line, v, &it)) return -1;
    size_t n = json_array_size(it);
    *out = n ? v_ref(json_array_get(it, last ? n - 1 : 0)) : v_undef();
    json_decref(it);
    return 0;
}
static int f_first(ctx *C, int l, const val *v, const args_t *a, val *o) { return f_firstlast(C, l, v, a, o, 0); }
static int f_last(ctx *C, int l, const val *v, const args_t *a, val *o) { return f_firstlast(C, l, v, a, o, 1); }

static int f_join(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "join", a, 1, "d,attribute")) return -1;
    if (arg(a, NOPOS, "attribute")) return rerr(C, line, "join(attribute=) is not supported");
    const val *d = arg(a, 0, "d");
    if (d && need_str(C, line, d, "join separator")) return -1;
    json_t *it;
    if (iter_items(C, line, v, &it)) return -1;
    fb_sbuf b = {0};
    for (size_t i = 0; i < json_array_size(it); i++) {
        if (i && d) fb_sb_put(&b, json_string_value(d->j), json_string_length(d->j));
        val x = {K_JSON, json_array_get(it, i), NULL};
        if (py_str(C, line, &x, &b)) return json_decref(it), free(b.p), -1;
    }
    json_decref(it);
    *out = v_str(b.p ? b.p : "", b.n);
    free(b.p);
    return 0;
}

static int f_default(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "default", a, 2, "default_value,boolean")) return -1;
    const val *d = arg(a, 0, "default_value"), *bo = arg(a, 1, "boolean");
    int use = v->k == K_UNDEF || (bo && truthy(bo) && !truthy(v));
    if (use) *out = d ? v_copy(d) : v_str("", 0);
    else *out = v_copy(v);
    return 0;
}

static int f_list(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "list", a, 0, NULL)) return -1;
    json_t *it;
    if (iter_items(C, line, v, &it)) return -1;
    *out = v_own(json_copy(it));
    json_decref(it);
    return 0;
}

static json_t *dict_items(ctx *C, json_t *d) {
    json_t *r = json_array();
    const char *k;
    json_t *x;
    json_object_foreach(d, k, x) json_array_append_new(r, mk_tuple(C, json_pack("[sO]", k, x)));
    return r;
}

static int f_items(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "items", a, 0, NULL)) return -1;
    if (v->k == K_UNDEF) return *out = v_own(json_array()), 0;
    if (!is_dict(v)) return rerr(C, line, "items expects a mapping, got %s", type_name(v));
    *out = v_own(dict_items(C, v->j));
    return 0;
}

static int f_replace(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "replace", a, 3, "old,new,count")) return -1;
    const val *o = arg(a, 0, "old"), *nw = arg(a, 1, "new"), *cnt = arg(a, 2, "count");
    if (!o || !nw) return rerr(C, line, "replace needs old and new");
    val s, os, ns;
    if (to_str_val(C, line, v, &s)) return -1;
    if (to_str_val(C, line, o, &os)) return v_free(&s), -1;
    if (to_str_val(C, line, nw, &ns)) return v_free(&s), v_free(&os), -1;
    if (cnt && !is_none(cnt) && !is_intlike(cnt)) return v_free(&s), v_free(&os), v_free(&ns), rerr(C, line, "replace count must be an integer");
    *out = py_replace(json_string_value(s.j), json_string_length(s.j), json_string_value(os.j),
                      json_string_length(os.j), json_string_value(ns.j), json_string_length(ns.j),
                      cnt && !is_none(cnt) ? iv(cnt) : -1);
    v_free(&s), v_free(&os), v_free(&ns);
    return 0;
}

static int f_safe(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "safe", a, 0, NULL)) return -1;
    *out = v_copy(v);
    return 0;
}

static int f_int(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "int", a, 2, "default,base")) return -1;
    const val *d = arg(a, 0, "default");
    if (arg(a, 1, "base")) return rerr(C, line, "int(base=) is not supported");
    if (is_intlike(v)) return *out = v_own(json_integer(iv(v))), 0;
    if (v->k == K_JSON && json_is_real(v->j)) {
        double x = json_real_value(v->j);
        if (!(fabs(x) < 9.2e18)) return rerr(C, line, "int of %g is out of range", x);
        return *out = v_own(json_integer((long long)x)), 0;
    }
    if (is_str(v)) {
        const char *s = json_string_value(v->j);
        char *e;
        errno = 0;
        long long x = strtoll(s, &e, 10);
        while (*e == ' ' || *e == '\t' || *e == '\n') e++;
        if (e != s && !*e && !errno) return *out = v_own(json_integer(x)), 0;
        double f = strtod(s, &e);
        while (*e == ' ' || *e == '\t' || *e == '\n') e++;
        if (e != s && !*e && fabs(f) < 9.2e18) return *out = v_own(json_integer((long long)f)), 0;
    }
    *out = d ? v_copy(d) : v_own(json_integer(0));
    return 0;
}

static int f_float(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "float", a, 1, "default")) return -1;
    const val *d = arg(a, 0, "default");
    if (is_num(v)) return ret_real(C, line, fv(v), out);
    if (is_str(v)) {
        const char *s = json_string_value(v->j);
        char *e;
        double f = strtod(s, &e);
        while (*e == ' ' || *e == '\t' || *e == '\n') e++;
        if (e != s && !*e) return ret_real(C, line, f, out);
    }
    *out = d ? v_copy(d) : v_own(json_real(0.0));
    return 0;
}

static int f_abs(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "abs", a, 0, NULL)) return -1;
    if (is_intlike(v)) {
        if (iv(v) == INT64_MIN) return rerr(C, line, "integer overflow in abs");
        return *out = v_own(json_integer(iv(v) < 0 ? -iv(v) : iv(v))), 0;
    }
    if (is_num(v)) return ret_real(C, line, fabs(fv(v)), out);
    return rerr(C, line, "bad operand type for abs(): '%s'", type_name(v));
}

static int f_reverse(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "reverse", a, 0, NULL)) return -1;
    json_t *it;
    if (iter_items(C, line, v, &it)) return -1;
    if (is_str(v)) {
        fb_sbuf b = {0};
        for (size_t i = json_array_size(it); i-- > 0;)
            fb_sb_put(&b, json_string_value(json_array_get(it, i)), json_string_length(json_array_get(it, i)));
        *out = v_str(b.p ? b.p : "", b.n);
        free(b.p);
    } else {
        json_t *r = json_array();
        for (size_t i = json_array_size(it); i-- > 0;) json_array_append(r, json_array_get(it, i));
        *out = v_own(r);
    }
    json_decref(it);
    return 0;
}

static int f_unique(ctx *C, int line, const val *v, const args_t *a, val *out) {
    if (check_args(C, line, "unique", a, 0, NULL)) return -1;
    json_t *it;
    if (iter_items(C, line, v, &it)) return -1;
    json_t *r = json_array();
    for (size_t i = 0; i < json_array_size(it); i++) {
        val x = {K_JSON, json_array_get(it, i), NULL};
        if (is_str(&x) && non_ascii(json_string_value(x.j), json_string_length(x.j)))
            return json_decref(it), json_decref(r), rerr(C, line, "unique of non-ASCII text is not supported");
        int seen = 0;
        for (size_t k = 0; k < json_array_size(r) && !seen; k++) {
            val y = {K_JSON, json_array_get(r, k), NULL};
            if (is_str(&x) && is_str(&y)) {  // case-insensitive by default
                size_t nx = json_string_length(x.j);
                seen = nx == json_string_length(y.j) && strncasecmp(json_string_value(x.j), json_string_value(y.j), nx) == 0;
            } else {
                seen = py_eq(&x, &y);
            }
        }
        if (!seen) json_array_append(r, x.j);
    }
    json_decref(it);
    *out = v_own(r);
    return 0;
}

static int call_test(ctx *C, int line, const char *name, const val *v, const args_t *ta, int *r) {
    test_fn fn = find_test(name);
    if (!fn) return rerr(C, line, "unsupported test '%s'", name);
    return fn(C, line, v, ta, r);
}

// select / reject / selectattr / rejectattr
static int f_sel(ctx *C, int line, const val *v, const args_t *a, val *out, int attr, int keep) {
    json_t *it;
    if (a->nkw) return rerr(C, line, "keyword arguments to select filters are not supported");
    size_t p = 0;
    const val *an = NULL;
    if (attr) {
        an = arg(a, p++, NULL);
        if (!an || !is_str(an)) return rerr(C, line, "selectattr/rejectattr need an attribute name");
    }
    const val *tn = arg(a, p++, NULL);
    if (tn && !is_str(tn)) return rerr(C, line, "the test name must be a string");
    args_t ta = {0};
    for (size_t i = p; i < a->npos; i++) ta.pos[ta.npos++] = a->pos[i];
    if (iter_items(C, line, v, &it)) return -1;
    json_t *r = json_array();
    for (size_t i = 0; i < json_array_size(it); i++) {
        val x = {K_JSON, json_array_get(it, i), NULL}, y = v_undef();
        if (attr && get_attr(C, line, &x, json_string_value(an->j), &y)) goto fail;
        const val *s = attr ? &y : &x;
        int ok;
        if (tn) {
            if (call_test(C, line, json_string_value(tn->j), s, &ta, &ok)) {
                v_free(&y);
                goto fail;
            }
        } else {
            ok = truthy(s);
        }
        v_free(&y);
        if (ok == keep) json_array_append(r, x.j);
    }
    json_decref(it);
    *out = v_own(r);
    return 0;
fail:
    json_decref(it);
    json_decref(r);
    return -1;
}
static int f_select(ctx *C, int l, const val *v, const args_t *a, val *o) { return f_sel(C, l, v, a, o, 0, 1); }
static int f_reject(ctx *C, int l, const val *v, const args_t *a, val *o) { return f_sel(C, l, v, a, o, 0, 0); }
static int f_selectattr(ctx *C, int l, const val *v, const args_t *a, val *o) { return f_sel(C, l, v, a, o, 1, 1); }
static int f_rejectattr(ctx *C, int l, const val *v, const args_t *a, val *o) { return f_sel(C, l, v, a, o, 1, 0); }

static int f_map(ctx *C, int line, const val *v, const args_t *a, val *out) {
    const val *at = arg(a, NOPOS, "attribute");
    if (!at || a->npos || a->nkw > 2 || (a->nkw == 2 && !arg(a, NOPOS, "default")))
        return rerr(C, line, "map: only map(attribute=NAME[, default=V]) is supported");
    if (!is_str(at)) return rerr(C, line, "map: attribute must be a string");
    const val *d = arg(a, NOPOS, "default");
    json_t *it;
    if (iter_items(C, line, v, &it)) return -1;
    json_t *r = json_array();
    for (size_t i = 0; i < json_array_size(it); i++) {
        val x = {K_JSON, json_array_get(it, i), NULL}, y;
        if (get_attr(C, line, &x, json_string_value(at->j), &y)) return json_decref(it), json_decref(r), -1;
        if (y.k == K_UNDEF && d) y = v_copy(d);
        if (y.k != K_JSON) {
            v_free(&y);
            json_decref(it), json_decref(r);
            return rerr(C, line, "map: an item has no attribute '%s' (undefined in a list is not supported)",
                        json_string_value(at->j));
        }
        json_array_append_new(r, y.j);
    }
    json_decref(it);
    *out = v_own(r);
    return 0;
}

static const struct {
    const char *name;
    filter_fn fn;
} FILTERS[] = {
    {"trim", f_trim}, {"tojson", f_tojson}, {"length", f_length}, {"count", f_length}, {"string", f_string},
    {"lower", f_lower}, {"upper", f_upper}, {"capitalize", f_capitalize}, {"title", f_title},
    {"first", f_first}, {"last", f_last}, {"join", f_join}, {"default", f_default}, {"d", f_default},
    {"list", f_list}, {"items", f_items}, {"replace", f_replace}, {"safe", f_safe}, {"int", f_int},
    {"float", f_float}, {"abs", f_abs}, {"reverse", f_reverse}, {"unique", f_unique}, {"select", f_select},
    {"reject", f_reject}, {"selectattr", f_selectattr}, {"rejectattr", f_rejectattr}, {"map", f_map},
};

// ---- methods of str and dict

static int call_method(ctx *C, int line, const val *o, const char *m, const args_t *a, val *out) {
    if (o->k == K_UNDEF) return rerr(C, line, "'%s' called on an undefined value", m);
    if (is_str(o)) {
        const char *s = json_string_value(o->j);
        size_t n = json_string_length(o->j);
        if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
            if (check_args(C, line, m, a, 1, NULL)) return -1;
            const val *ch = arg(a, 0, NULL);
            if (ch && !is_none(ch) && need_str(C, line, ch, m)) return -1;
            int has = ch && !is_none(ch);
            *out = py_strip(s, n, m[0] == 'l' ? 1 : m[0] == 'r' ? 2 : 3, has ? json_string_value(ch->j) : NULL,
                            has ? json_string_length(ch->j) : 0);
            return 0;
        }
        if (!strcmp(m, "split") || !strcmp(m, "rsplit")) {
            if (check_args(C, line, m, a, 2, "sep,maxsplit")) return -1;
            const val *sep = arg(a, 0, "sep"), *mx = arg(a, 1, "maxsplit");
            if (sep && !is_none(sep) && need_str(C, line, sep, m)) return -1;
            if (mx && !is_intlike(mx)) return rerr(C, line, "%s: maxsplit must be an integer", m);
            int has = sep && !is_none(sep);
            if (has && json_string_length(sep->j) == 0) return rerr(C, line, "%s: empty separator", m);
            *out = v_own(py_split(s, n, has ? json_string_value(sep->j) : NULL, has ? json_string_length(sep->j) : 0,
                                  mx ? iv(mx) : -1, m[0] == 'r'));
            return 0;
        }
        if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
            if (check_args(C, line, m, a, 1, NULL)) return -1;
            const val *p = arg(a, 0, NULL);
            if (!p) return rerr(C, line, "%s needs an argument", m);
            json_t *cands = is_list(p) ? json_incref(p->j) : json_pack("[O]", p->j);
            int r = 0;
            for (size_t i = 0; i < json_array_size(cands); i++) {
                json_t *c = json_array_get(cands, i);
                if (!json_is_string(c)) {
                    json_decref(cands);
                    return rerr(C, line, "%s arg must be str or a tuple of str", m);
                }
                size_t cn = json_string_length(c);
                if (cn <= n && memcmp(m[0] == 's' ? s : s + n - cn, json_string_value(c), cn) == 0) r = 1;
            }
            json_decref(cands);
            *out = v_bool(r);
            return 0;
        }
        if (!strcmp(m, "replace")) return f_replace(C, line, o, a, out);
        if (!strcmp(m, "upper")) return f_upper(C, line, o, a, out);
        if (!strcmp(m, "lower")) return f_lower(C, line, o, a, out);
        if (!strcmp(m, "title")) return f_title(C, line, o, a, out);
        if (!strcmp(m, "capitalize")) return f_capitalize(C, line, o, a, out);
        if (!strcmp(m, "find") || !strcmp(m, "count")) {
            if (check_args(C, line, m, a, 1, NULL)) return -1;
            const val *p = arg(a, 0, NULL);
            if (!p || need_str(C, line, p, m)) return p ? -1 : rerr(C, line, "%s needs an argument", m);
            size_t pn = json_string_length(p->j);
            if (m[0] == 'f') {
                const char *q = memmem_(s, n, json_string_value(p->j), pn);
                *out = v_own(json_integer(q ? (long long)u8_len(s, (size_t)(q - s)) : -1));
            } else {
                long long k = 0;
                if (pn == 0) {
                    k = (long long)u8_len(s, n) + 1;
                } else {
                    for (const char *q = s; (q = memmem_(q, n - (size_t)(q - s), json_string_value(p->j), pn));
                         q += pn)
                        k++;
                }
                *out = v_own(json_integer(k));
            }
            return 0;
        }
        if (!strcmp(m, "join")) {
            if (check_args(C, line, m, a, 1, NULL) || !arg(a, 0, NULL)) return rerr(C, line, "join needs one argument");
            json_t *it;
            if (iter_items(C, line, arg(a, 0, NULL), &it)) return -1;
            fb_sbuf b = {0};
            for (size_t i = 0; i < json_array_size(it); i++) {
                json_t *x = json_array_get(it, i);
                if (!json_is_string(x)) {
                    json_decref(it);
                    free(b.p);
                    return rerr(C, line, "join: sequence item %zu: expected str", i);
                }
                if (i) fb_sb_put(&b, s, n);
                fb_sb_put(&b, json_string_value(x), json_string_length(x));
            }
            json_decref(it);
            *out = v_str(b.p ? b.p : "", b.n);
            free(b.p);
            return 0;
        }
        // a real str method we lack is our limit; anything else fails in Python too (e.g. the
        // MiniMax template's arguments.items() on arguments given as a JSON string)
        return is_py_attr(o, m) ? rerr(C, line, "unsupported string method '%s'", m)
                                : rerr(C, line, "'str' object has no attribute '%s'", m);
    }
    if (is_dict(o) || o->k == K_NS) {
        if (!strcmp(m, "items") || !strcmp(m, "keys") || !strcmp(m, "values")) {
            if (check_args(C, line, m, a, 0, NULL)) return -1;
            if (m[0] == 'i') return *out = v_own(dict_items(C, o->j)), 0;
            json_t *r = json_array();
            const char *k;
            json_t *x;
            json_object_foreach(o->j, k, x) json_array_append_new(r, m[0] == 'k' ? json_string_nocheck(k) : json_incref(x));
            *out = v_own(r);
            return 0;
        }
        if (!strcmp(m, "get")) {
            if (check_args(C, line, m, a, 2, NULL) || !arg(a, 0, NULL)) return rerr(C, line, "get needs a key");
            const val *k = arg(a, 0, NULL), *d = arg(a, 1, NULL);
            json_t *x = is_str(k) ? json_object_get(o->j, json_string_value(k->j)) : NULL;
            *out = x ? v_ref(x) : d ? v_copy(d) : v_own(json_null());
            return 0;
        }
        return is_py_attr(o, m) || o->k == K_NS ? rerr(C, line, "unsupported dict method '%s'", m)
                                                : rerr(C, line, "'dict' object has no attribute '%s' to call", m);
    }
    return is_py_attr(o, m) ? rerr(C, line, "unsupported method '%s' of a %s", m, type_name(o))
                            : rerr(C, line, "'%s' object has no attribute '%s' to call", type_name(o), m);
}

// ---- calls

static int call_macro(ctx *C, int line, const node *m, const args_t *a, val *out) {
    if (C->depth >= FB_JINJA_MAX_DEPTH)
        return rerr(C, line, "macro calls nested deeper than %d (limit)", FB_JINJA_MAX_DEPTH);
    if (a->npos > m->nk) return rerr(C, line, "macro '%s' takes not more than %zu argument(s)", m->s, m->nk);
    for (size_t i = 0; i < a->nkw; i++) {
        size_t k;
        for (k = 0; k < m->nk; k++)
            if (!strcmp(m->kn[k], a->kn[i])) break;
        if (k == m->nk) return rerr(C, line, "macro '%s' has no parameter '%s'", m->s, a->kn[i]);
        if (k < a->npos) return rerr(C, line, "macro '%s' got multiple values for '%s'", m->s, a->kn[i]);
    }
    // The macro runs in a scope of its own whose parent is the template's top level (not the
    // caller's scope), and renders into its own buffer: its output is the call's value.
    scope frame = {.parent = C->top};
    scope *caller = C->sc;
    fb_sbuf body = {0}, *caller_out = C->out;
    C->sc = &frame;
    C->depth++;
    int rc = 0;
    for (size_t k = 0; k < m->nk && !rc; k++) {
        const val *x = arg(a, k, m->kn[k]);
        val d = v_undef();
        if (x) d = v_copy(x);
        else if (m->kv[k] && eval(C, m->kv[k], &d)) rc = -1;
        if (!rc) sc_set(&frame, m->kn[k], d);
    }
    if (!rc) {
        C->out = &body;
        rc = render_body(C, m->v, m->nv);
        C->out = caller_out;
        C->ctl = 0;
        if (!rc && caller_out->n + body.n > C->max_output)
            rc = rerr(C, line, "rendered output larger than %zu bytes (limit)", C->max_output);
    }
    C->depth--;
    C->sc = caller;
    sc_free(&frame);
    if (rc) {
        free(body.p);
        return -1;
    }
    *out = v_str(body.p ? body.p : "", body.n);
    free(body.p);
    return 0;
}

static int call_global(ctx *C, int line, const char *name, const args_t *a, val *out) {
    if (!strcmp(name, "raise_exception")) {
        const val *m = arg(a, 0, NULL);
        fb_sbuf b = {0};
        if (m && py_str(C, line, m, &b)) return free(b.p), -1;
        rerr(C, line, "raise_exception: %s", b.p ? b.p : "");
        free(b.p);
        return -1;
    }
    if (!strcmp(name, "namespace") || !strcmp(name, "dict")) {
        json_t *o = json_object();
        for (size_t i = 0; i < a->npos; i++) {
            if (!is_dict(&a->pos[i])) {
                json_decref(o);
                return rerr(C, line, "%s() positional arguments must be mappings", name);
            }
            json_object_update(o, a->pos[i].j);
        }
        for (size_t i = 0; i < a->nkw; i++) {
            if (a->kw[i].k != K_JSON) {
                json_decref(o);
                return rerr(C, line, "%s(): a %s cannot be stored", name, type_name(&a->kw[i]));
            }
            json_object_set(o, a->kn[i], a->kw[i].j);
        }
        *out = (val){name[0] == 'n' ? K_NS : K_JSON, o, NULL};
        return 0;
    }
    if (!strcmp(name, "range")) {
        if (a->nkw || a->npos < 1 || a->npos > 3) return rerr(C, line, "range takes 1 to 3 positional arguments");
        for (size_t i = 0; i < a->npos; i++)
            if (!is_intlike(&a->pos[i])) return rerr(C, line, "range arguments must be integers");
        long long st = a->npos == 1 ? 0 : iv(&a->pos[0]), en = a->npos == 1 ? iv(&a->pos[0]) : iv(&a->pos[1]),
                  sp = a->npos == 3 ? iv(&a->pos[2]) : 1;
        if (sp == 0) return rerr(C, line, "range step must not be zero");
        long double cnt = sp > 0 ? ((long double)en - st) / sp : ((long double)st - en) / -sp;
        if (cnt > 1e6) return rerr(C, line, "range of more than 1000000 items (limit)");
        json_t *r = json_array();
        for (long long i = st; sp > 0 ? i < en : i > en; i += sp) json_array_append_new(r, json_integer(i));
        *out = v_own(r);
        return 0;
    }
    return rerr(C, line, "unsupported function '%s'", name);
}

static int eval_call(ctx *C, const node *n, val *out) {
    const node *f = n->a;
    args_t a;
    if (f->k == N_ATTR) {  // a method call: str and dict methods (jinja2 looks up Python attributes first)
        val o;
        if (eval(C, f->a, &o)) return -1;
        if (eval_args(C, n, &a)) return v_free(&o), -1;
        int rc = call_method(C, n->line, &o, f->s, &a, out);
        args_free(&a);
        v_free(&o);
        return rc;
    }
    if (f->k == N_NAME) {
        val *b = sc_find(C->sc, f->s);
        if (eval_args(C, n, &a)) return -1;
        int rc;
        if (b && b->k == K_MACRO) rc = call_macro(C, n->line, b->m, &a, out);
        else if (!b || b->k == K_UNDEF) rc = call_global(C, n->line, f->s, &a, out);
        else rc = rerr(C, n->line, "'%s' is not callable", f->s);
        args_free(&a);
        return rc;
    }
    return rerr(C, n->line, "unsupported call");
}

static int eval_node(ctx *C, const node *n, val *out);

// Every evaluation and statement goes through here: the step budget and the C stack depth
// (macro calls inside deep expressions) are bounded.
static int eval(ctx *C, const node *n, val *out) {
    *out = v_undef();
    if (step(C, n->line)) return -1;
    if (C->rdepth >= FB_JINJA_MAX_RDEPTH) return rerr(C, n->line, "evaluation nested deeper than %d (limit)", FB_JINJA_MAX_RDEPTH);
    C->rdepth++;
    int rc = eval_node(C, n, out);
    C->rdepth--;
    return rc;
}

static int eval_node(ctx *C, const node *n, val *out) {
    switch (n->k) {
    case N_CONST: *out = v_ref(n->cst); return 0;
    case N_NAME: {
        val *b = sc_find(C->sc, n->s);
        *out = b ? v_copy(b) : v_undef();
        return 0;
    }
    case N_ATTR: {
        val o;
        if (eval(C, n->a, &o)) return -1;
        int rc = get_attr(C, n->line, &o, n->s, out);
        v_free(&o);
        return rc;
    }
    case N_ITEM: {
        val o, k;
        if (eval(C, n->a, &o)) return -1;
        if (eval(C, n->b, &k)) return v_free(&o), -1;
        int rc = get_item(C, n->line, &o, &k, out);
        v_free(&o), v_free(&k);
        return rc;
    }
    case N_SLICE: {
        val o;
        if (eval(C, n->a, &o)) return -1;
        int rc = do_slice(C, n, &o, out);
        v_free(&o);
        return rc;
    }
    case N_CALL: return eval_call(C, n, out);
    case N_FILTER: {
        filter_fn fn = NULL;
        for (size_t i = 0; i < sizeof FILTERS / sizeof FILTERS[0]; i++)
            if (!strcmp(FILTERS[i].name, n->s)) fn = FILTERS[i].fn;
        if (!fn) return rerr(C, n->line, "unsupported filter '%s'", n->s);
        val o;
        args_t a;
        if (eval(C, n->a, &o)) return -1;
        if (eval_args(C, n, &a)) return v_free(&o), -1;
        int rc = fn(C, n->line, &o, &a, out);
        args_free(&a);
        v_free(&o);
        return rc;
    }
    case N_TEST: {
        test_fn fn = find_test(n->s);
        if (!fn) return rerr(C, n->line, "unsupported test '%s'", n->s);
        val o;
        args_t a;
        if (eval(C, n->a, &o)) return -1;
        if (eval_args(C, n, &a)) return v_free(&o), -1;
        int r = 0, rc = fn(C, n->line, &o, &a, &r);
        args_free(&a);
        v_free(&o);
        if (!rc) *out = v_bool(n->flag ? !r : r);
        return rc;
    }
    case N_NEG:
    case N_POS: {
        val o;
        if (eval(C, n->a, &o)) return -1;
        int rc = 0;
        if (!is_num(&o)) rc = rerr(C, n->line, "bad operand type for unary %c: '%s'", n->k == N_NEG ? '-' : '+', type_name(&o));
        else if (is_intlike(&o)) {
            if (n->k == N_NEG && iv(&o) == INT64_MIN) rc = rerr(C, n->line, "integer overflow");
            else *out = v_own(json_integer(n->k == N_NEG ? -iv(&o) : iv(&o)));
        } else {
            rc = ret_real(C, n->line, n->k == N_NEG ? -fv(&o) : fv(&o), out);
        }
        v_free(&o);
        return rc;
    }
    case N_NOT: {
        val o;
        if (eval(C, n->a, &o)) return -1;
        *out = v_bool(!truthy(&o));
        v_free(&o);
        return 0;
    }
    case N_AND:
    case N_OR: {  // Python: returns the deciding operand
        val a;
        if (eval(C, n->a, &a)) return -1;
        int t = truthy(&a);
        if ((n->k == N_AND && !t) || (n->k == N_OR && t)) return *out = a, 0;
        v_free(&a);
        return eval(C, n->b, out);
    }
    case N_COND: {
        val c;
        if (eval(C, n->b, &c)) return -1;
        int t = truthy(&c);
        v_free(&c);
        if (t) return eval(C, n->a, out);
        if (n->c) return eval(C, n->c, out);
        return 0;
    }
    case N_LIST: {
        json_t *r = json_array();
        for (size_t i = 0; i < n->nv; i++) {
            val x;
            if (eval(C, n->v[i], &x)) return json_decref(r), -1;
            if (x.k != K_JSON) {
                v_free(&x);
                json_decref(r);
                return rerr(C, n->line, "a list of %s values is not supported", x.k == K_UNDEF ? "undefined" : "non-data");
            }
            json_array_append_new(r, x.j);
        }
        *out = v_own(n->flag ? mk_tuple(C, r) : r);
        return 0;
    }
    case N_DICT: {
        json_t *r = json_object();
        for (size_t i = 0; i < n->nv; i++) {
            val k, x;
            if (eval(C, n->v[i], &k)) return json_decref(r), -1;
            if (!is_str(&k)) {
                v_free(&k);
                json_decref(r);
                return rerr(C, n->line, "dict keys other than strings are not supported");
            }
            if (eval(C, n->kv[i], &x)) return v_free(&k), json_decref(r), -1;
            if (x.k != K_JSON) {
                v_free(&k), v_free(&x);
                json_decref(r);
                return rerr(C, n->line, "a dict of undefined or non-data values is not supported");
            }
            json_object_setn_new_nocheck(r, json_string_value(k.j), json_string_length(k.j), x.j);
            v_free(&k);
        }
        *out = v_own(r);
        return 0;
    }
    case N_BIN: {
        val a, b;
        if (eval(C, n->a, &a)) return -1;
        if (eval(C, n->b, &b)) return v_free(&a), -1;
        int rc = 0;
        const char *op = n->s;
        if (!strcmp(op, "~")) {
            fb_sbuf s = {0};
            rc = py_str(C, n->line, &a, &s) || py_str(C, n->line, &b, &s) ? -1 : 0;
            if (!rc) *out = v_str(s.p ? s.p : "", s.n);
            free(s.p);
        } else if (!strcmp(op, "==") || !strcmp(op, "!=")) {
            *out = v_bool(py_eq(&a, &b) == (op[0] == '='));
        } else if (!strcmp(op, "in") || !strcmp(op, "notin")) {
            int r;
            rc = contains(C, n->line, &a, &b, &r);
            if (!rc) *out = v_bool(op[0] == 'i' ? r : !r);
        } else if (op[0] == '<' || op[0] == '>') {
            int c;
            rc = py_cmp(C, n->line, &a, &b, &c);
            if (!rc)
                *out = v_bool(c == 2 ? 0 : !strcmp(op, "<") ? c < 0 : !strcmp(op, "<=") ? c <= 0 : !strcmp(op, ">") ? c > 0 : c >= 0);
        } else {
            if (a.k == K_UNDEF || b.k == K_UNDEF) rc = rerr(C, n->line, "operand of %s is undefined", op);
            else rc = arith(C, n->line, op, &a, &b, out);
        }
        v_free(&a), v_free(&b);
        return rc;
    }
    }
    return rerr(C, n->line, "internal: expression node %d", n->k);
}

// ---------------------------------------------------------------------------------------------
// Statements

// The innermost scope assignments go to: C->sc is the head of the scope chain.
static int render_for(ctx *C, const node *n) {
    val it;
    if (eval(C, n->a, &it)) return -1;
    json_t *items;
    int rc = iter_items(C, n->line, &it, &items);
    v_free(&it);
    if (rc) return -1;
    // the `if` filter decides which items take part before loop.* is computed
    json_t *sel = json_array();
    for (size_t i = 0; i < json_array_size(items) && !rc; i++) {
        json_t *x = json_array_get(items, i);
        if (!n->b) {
            json_array_append(sel, x);
            continue;
        }
        scope s = {.parent = C->sc};
        scope *prev = C->sc;
        C->sc = &s;
        if (n->nk == 1) sc_set(&s, n->kn[0], v_ref(x));
        else if (!json_is_array(x) || json_array_size(x) != 2) rc = rerr(C, n->line, "cannot unpack a loop item into 2 names");
        else sc_set(&s, n->kn[0], v_ref(json_array_get(x, 0))), sc_set(&s, n->kn[1], v_ref(json_array_get(x, 1)));
        val c;
        if (!rc && !(rc = eval(C, n->b, &c))) {
            if (truthy(&c)) json_array_append(sel, x);
            v_free(&c);
        }
        C->sc = prev;
        sc_free(&s);
    }
    json_decref(items);
    size_t len = json_array_size(sel);
    for (size_t i = 0; i < len && !rc; i++) {
        if ((rc = step(C, n->line))) break;
        json_t *x = json_array_get(sel, i);
        scope s = {.parent = C->sc};
        scope *prev = C->sc;
        C->sc = &s;
        if (n->nk == 1) {
            sc_set(&s, n->kn[0], v_ref(x));
        } else if (!json_is_array(x) || json_array_size(x) != 2) {
            rc = rerr(C, n->line, "cannot unpack a loop item into 2 names");
        } else {
            sc_set(&s, n->kn[0], v_ref(json_array_get(x, 0)));
            sc_set(&s, n->kn[1], v_ref(json_array_get(x, 1)));
        }
        json_t *loop = json_object();
        json_object_set_new(loop, "index", json_integer((json_int_t)i + 1));
        json_object_set_new(loop, "index0", json_integer((json_int_t)i));
        json_object_set_new(loop, "revindex", json_integer((json_int_t)(len - i)));
        json_object_set_new(loop, "revindex0", json_integer((json_int_t)(len - i - 1)));
        json_object_set_new(loop, "first", json_boolean(i == 0));
        json_object_set_new(loop, "last", json_boolean(i + 1 == len));
        json_object_set_new(loop, "length", json_integer((json_int_t)len));
        json_object_set_new(loop, "depth", json_integer(1));
        json_object_set_new(loop, "depth0", json_integer(0));
        if (i > 0) json_object_set(loop, "previtem", json_array_get(sel, i - 1));
        if (i + 1 < len) json_object_set(loop, "nextitem", json_array_get(sel, i + 1));
        sc_set(&s, "loop", v_own(loop));
        if (!rc) rc = render_body(C, n->v, n->nv);
        C->sc = prev;
        sc_free(&s);
        if (C->ctl == 1) {
            C->ctl = 0;
            break;
        }
        C->ctl = 0;
    }
    json_decref(sel);
    if (!rc && len == 0 && n->nw) rc = render_body(C, n->w, n->nw);
    return rc;
}

static int render_stmt(ctx *C, const node *n);

static int render_node(ctx *C, const node *n) {
    if (step(C, n->line)) return -1;
    if (C->rdepth >= FB_JINJA_MAX_RDEPTH) return rerr(C, n->line, "evaluation nested deeper than %d (limit)", FB_JINJA_MAX_RDEPTH);
    C->rdepth++;
    int rc = render_stmt(C, n);
    C->rdepth--;
    return rc;
}

static int render_stmt(ctx *C, const node *n) {
    switch (n->k) {
    case N_TEXT: return emit(C, n->line, n->s, n->sn);
    case N_OUT: {
        val v;
        if (eval(C, n->a, &v)) return -1;
        fb_sbuf b = {0};
        int rc = py_str(C, n->line, &v, &b);
        if (!rc) rc = emit(C, n->line, b.p ? b.p : "", b.n);
        free(b.p);
        v_free(&v);
        return rc;
    }
    case N_IF: {
        val c;
        if (eval(C, n->a, &c)) return -1;
        int t = truthy(&c);
        v_free(&c);
        return t ? render_body(C, n->v, n->nv) : render_body(C, n->w, n->nw);
    }
    case N_FOR: return render_for(C, n);
    case N_SET: {
        val v;
        if (eval(C, n->a, &v)) return -1;
        sc_set(C->sc, n->s, v);
        return 0;
    }
    case N_SETATTR: {
        val *ns = sc_find(C->sc, n->s);
        if (!ns || ns->k != K_NS) return rerr(C, n->line, "cannot assign attribute on non-namespace object '%s'", n->s);
        val v;
        if (eval(C, n->a, &v)) return -1;
        if (v.k != K_JSON) {
            const char *what = type_name(&v);
            v_free(&v);
            return rerr(C, n->line, "storing a value of type %s in a namespace is not supported", what);
        }
        json_object_set_new(ns->j, n->s2, v.j);
        return 0;
    }
    case N_SETBLOCK: {
        fb_sbuf b = {0}, *saved = C->out;
        C->out = &b;
        int rc = render_body(C, n->v, n->nv);
        C->out = saved;
        if (!rc) sc_set(C->sc, n->s, v_str(b.p ? b.p : "", b.n));
        free(b.p);
        return rc;
    }
    case N_MACRO: sc_set(C->sc, n->s, (val){K_MACRO, NULL, n}); return 0;
    case N_BREAK: C->ctl = 1; return 0;
    case N_CONTINUE: C->ctl = 2; return 0;
    case N_BODY: return render_body(C, n->v, n->nv);
    }
    return rerr(C, n->line, "internal: statement node %d", n->k);
}

static int render_body(ctx *C, node *const *body, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (render_node(C, body[i])) return -1;
        if (C->ctl) return 0;  // break / continue unwinds to the loop
    }
    return 0;
}

int fb_jinja_render(const fb_jinja *t, json_t *vars, char **out, size_t *out_len, fb_err *err) {
    *out = NULL;
    *out_len = 0;
    if (vars && !json_is_object(vars)) return fb_fail(err, "%s: template variables must be an object", t->name);
    fb_sbuf b = {0};
    scope g = {0};
    if (vars) {
        const char *k;
        json_t *x;
        json_object_foreach(vars, k, x) sc_set(&g, k, v_ref(x));
    }
    ctx C = {.t = t, .out = &b, .sc = &g, .top = &g, .err = err, .max_output = t->max_output,
             .max_steps = t->max_steps};
    int rc = render_body(&C, t->body, t->nbody);
    if (!rc && C.ctl) rc = fb_fail(err, "%s: break or continue outside a loop", t->name);
    sc_free(&g);
    for (size_t i = 0; i < C.ntup; i++) json_decref(C.tup[i]);
    free(C.tup);
    if (rc) {
        free(b.p);
        return -1;
    }
    if (!b.p) fb_sb_put(&b, "", 0);
    *out = b.p;
    *out_len = b.n;
    return 0;
}
