// match.c: target / ignore matching with compressed-tensors semantics (see match.h).
//
// compressed_tensors/utils/match.py (0.18.0):
//   match_name(name, target):  target.startswith("re:") ? re.match(target[3:], name)
//                                                       : target == name
//   _match_class(module, target): target equals the __name__ of any class in the module's
//                                 MRO ("Linear", "Module", ...)
//   is_match = match_name or _match_class.
//
// Python `re` is emulated with PCRE2 (UTF + UCP so \d \w \s \b are Unicode, as for Python str
// patterns; newline = LF only, as Python's `.` and `$`; no MULTILINE/DOTALL). re.match is
// anchored at the start only: PCRE2_ANCHORED at match time, nothing at the end. `$` in both
// matches at the end or before a final "\n". The few places where the two dialects read the
// same text differently are rewritten before compiling (py_to_pcre2 below); constructs Python
// would reject, or that PCRE2 would read differently and we do not translate, are errors.
#include "quant/match.h"
#include "common/sbuf.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <string.h>

struct fb_target {
    char *text;                // the entry as written
    pcre2_code *re;            // NULL for a plain (name or class) entry
    pcre2_match_context *mc;   // the match and depth limits below
    // The first failed match (PCRE2 gave up: match/depth/heap limit, bad UTF-8), kept so that a
    // caller learns of it after the fact (fb_target_check). Written once, by the first thread
    // to fail (`failed` goes 0 -> 1 by compare-and-swap, then `fail_rc`/`fail_name` are set
    // and `failed` becomes 2).
    int failed;
    int fail_rc;
    char *fail_name;
};

// Bounds on one match of a module name (at most a few hundred bytes). Real patterns need a few
// hundred steps; a catastrophically backtracking one (`(?:.|.){0,26}Z`) would otherwise spend
// seconds per name. Python's re has no such limit: it would finish, eventually; fourbit stops
// and names the pattern instead of guessing.
#define FB_REGEX_MATCH_LIMIT 1000000u
#define FB_REGEX_DEPTH_LIMIT 10000u

// ---- Python re -> PCRE2 translation ----------------------------------------------------


static int is_hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// Escapes of ASCII letters that Python's sre_parse accepts, outside and inside a character
// class ("bad escape" otherwise). x/u/U/N/v/Z/b need rewriting, handled in the caller.
static const char *const PY_ESC_OUTSIDE = "AbBdDsSwWZafnrtvxuUN";
static const char *const PY_ESC_INSIDE = "abdDsSwWfnrtvxuUN";

// Translates a Python `re` pattern into an equivalent PCRE2 pattern. Returns a malloc'ed
// string, or NULL with err set for a pattern Python rejects or we do not support.
static char *py_to_pcre2(const char *pat, fb_err *err) {
    fb_sbuf b = {0};
    fb_sb_puts(&b, "");
    size_t n = strlen(pat);
    int in_class = 0;    // inside [...]
    size_t class_start = 0;  // index just after '[' or '[^'
    for (size_t i = 0; i < n; i++) {
        char c = pat[i];
        if (c == '\\') {
            if (i + 1 >= n) {
                free(b.p);
                fb_fail(err, "bad escape (end of pattern) at position %zu", i);
                return NULL;
            }
            char e = pat[i + 1];
            int letter = (e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z');
            if (!letter) {  // \. \$ \\ \1 \0 ... mean the same in both dialects
                fb_sb_put(&b, pat + i, 2);
                i++;
                continue;
            }
            if (!strchr(in_class ? PY_ESC_INSIDE : PY_ESC_OUTSIDE, e)) {
                free(b.p);
                fb_fail(err, "bad escape \\%c at position %zu", e, i);
                return NULL;
            }
            int ndig = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
            if (ndig) {  // Python: exactly 2/4/8 hex digits; PCRE2 \x takes 0-2, no \u
                for (int k = 0; k < ndig; k++) {
                    if (i + 2 + (size_t)k >= n || !is_hex(pat[i + 2 + k])) {
                        free(b.p);
                        fb_fail(err, "incomplete escape \\%c at position %zu", e, i);
                        return NULL;
                    }
                }
                char hex[9] = {0};
                memcpy(hex, pat + i + 2, (size_t)ndig);
                if (strtoul(hex, NULL, 16) > 0x10FFFF) {
                    free(b.p);
                    fb_fail(err, "bad escape \\%c%s at position %zu", e, hex, i);
                    return NULL;
                }
                fb_sb_puts(&b, "\\x{");
                fb_sb_puts(&b, hex);
                fb_sb_puts(&b, "}");
                i += 1 + (size_t)ndig;
                continue;
            }
            switch (e) {
            case 'Z': fb_sb_puts(&b, "\\z"); break;    // Python \Z = PCRE2 \z (very end)
            case 'v': fb_sb_puts(&b, "\\x0b"); break;  // Python: VT; PCRE2: vertical space class
            case 'N':
                free(b.p);
                fb_fail(err, "unsupported escape \\N{...} at position %zu", i);
                return NULL;
            default: fb_sb_put(&b, pat + i, 2); break;
            }
            i++;
            continue;
        }
        if (in_class) {
            if (c == ']' && i > class_start) in_class = 0;
            fb_sb_put(&b, &c, 1);
            continue;
        }
        if (c == '[') {
            in_class = 1;
            class_start = i + 1;
            if (class_start < n && pat[class_start] == '^') class_start++;
            fb_sb_put(&b, &c, 1);
            if (class_start > i + 1) fb_sb_put(&b, "^", 1);
            i = class_start - 1;
            continue;
        }
        if (c == '{' && i + 1 < n && pat[i + 1] == ',') {  // Python {,n} = {0,n}
            size_t j = i + 2;
            while (j < n && pat[j] >= '0' && pat[j] <= '9') j++;
            if (j > i + 2 && j < n && pat[j] == '}') {
                fb_sb_puts(&b, "{0");
                continue;  // the ',' and digits are copied by the next iterations
            }
        }
        if (c == '(' && i + 2 < n && pat[i + 1] == '?') {
            char d = pat[i + 2];
            if (d == '<' && i + 3 < n && pat[i + 3] != '=' && pat[i + 3] != '!') {
                free(b.p);
                fb_fail(err, "unknown extension ?<%c at position %zu (Python needs ?P<name>)",
                        pat[i + 3], i + 1);
                return NULL;
            }
            // Inline flags: PCRE2 knows i m s x; Python's a (ASCII), L, u have no equivalent.
            size_t j = i + 2;
            while (j < n && strchr("aiLmsux-", pat[j]) && pat[j]) j++;
            if (j > i + 2 && j < n && pat[j] == ')' && i != 0) {
                free(b.p);  // Python 3.11+: "global flags not at the start of the expression"
                fb_fail(err, "global flags not at the start of the expression at position %zu",
                        i);
                return NULL;
            }
            if (j > i + 2 && j < n && (pat[j] == ')' || pat[j] == ':')) {
                for (size_t k = i + 2; k < j; k++) {
                    if (pat[k] == 'a' || pat[k] == 'L' || pat[k] == 'u') {
                        free(b.p);
                        fb_fail(err, "unsupported inline flag '%c' at position %zu", pat[k], k);
                        return NULL;
                    }
                }
            }
        }
        fb_sb_put(&b, &c, 1);
    }
    if (in_class) {
        free(b.p);
        fb_fail(err, "unterminated character set at position %zu", class_start - 1);
        return NULL;
    }
    return b.p;
}

// Compiles a Python pattern. NULL with err on failure.
static pcre2_code *compile_py(const char *pat, fb_err *err) {
    fb_err terr;
    char *pc = py_to_pcre2(pat, &terr);
    if (!pc) {
        fb_fail(err, "invalid regex '%s': %s", pat, terr.msg);
        return NULL;
    }
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    FB_ASSERT(cc);
    pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
    pcre2_set_bsr(cc, PCRE2_BSR_UNICODE);
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pc, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                   &ec, &eo, cc);
    pcre2_compile_context_free(cc);
    free(pc);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        fb_fail(err, "invalid regex '%s': %s at offset %zu", pat, (const char *)msg, (size_t)eo);
        return NULL;
    }
    return re;
}

// ---- entries -------------------------------------------------------------------------------

static int ends_with_anchor(const char *pat) {
    size_t n = strlen(pat);
    if (n >= 2 && pat[n - 2] == '\\' && pat[n - 1] == 'Z') {
        size_t k = 0;  // count the backslashes before 'Z'
        while (k < n - 1 && pat[n - 2 - k] == '\\') k++;
        return k % 2 == 1;
    }
    if (n == 0 || pat[n - 1] != '$') return 0;
    size_t k = 0;  // an escaped "\$" is a literal dollar
    while (k < n - 1 && pat[n - 2 - k] == '\\') k++;
    return k % 2 == 0;
}

fb_target *fb_target_compile(const char *entry, int *warn_no_dollar, fb_err *err) {
    if (warn_no_dollar) *warn_no_dollar = 0;
    fb_target *t = fb_calloc(1, sizeof *t);
    t->text = fb_strdup(entry);
    if (strncmp(entry, "re:", 3) == 0) {
        t->re = compile_py(entry + 3, err);
        if (!t->re) {
            fb_target_free(t);
            return NULL;
        }
        if (warn_no_dollar && !ends_with_anchor(entry + 3)) *warn_no_dollar = 1;
        t->mc = pcre2_match_context_create(NULL);
        FB_ASSERT(t->mc);
        pcre2_set_match_limit(t->mc, FB_REGEX_MATCH_LIMIT);
        pcre2_set_depth_limit(t->mc, FB_REGEX_DEPTH_LIMIT);
    }
    return t;
}

void fb_target_free(fb_target *t) {
    if (!t) return;
    if (t->re) pcre2_code_free(t->re);
    if (t->mc) pcre2_match_context_free(t->mc);
    free(t->fail_name);
    free(t->text);
    free(t);
}

const char *fb_target_text(const fb_target *t) { return t->text; }

int fb_target_is_regex(const fb_target *t) { return t->re != NULL; }

// One anchored match. A PCRE2 error (limit reached, invalid UTF-8) is recorded in the target
// for fb_target_check and counts as no match; once an entry has failed, it is not run again
// (each further attempt would only burn the same limit).
static int regex_run(const fb_target *t, const char *s, uint32_t opts) {
    FB_ASSERT(t->re);
    fb_target *mt = (fb_target *)t;  // the failure record is the only mutable part
    if (__atomic_load_n(&mt->failed, __ATOMIC_ACQUIRE)) return 0;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    FB_ASSERT(md);
    int rc = pcre2_match(t->re, (PCRE2_SPTR)s, PCRE2_ZERO_TERMINATED, 0, opts, md, t->mc);
    pcre2_match_data_free(md);
    if (rc >= 0) return 1;
    if (rc != PCRE2_ERROR_NOMATCH) {
        int zero = 0;
        if (__atomic_compare_exchange_n(&mt->failed, &zero, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            mt->fail_rc = rc;
            mt->fail_name = fb_strdup(s);
            __atomic_store_n(&mt->failed, 2, __ATOMIC_RELEASE);
        }
    }
    return 0;
}

int fb_regex_match(const fb_target *t, const char *s) { return regex_run(t, s, PCRE2_ANCHORED); }

int fb_regex_fullmatch(const fb_target *t, const char *s) {
    return regex_run(t, s, PCRE2_ANCHORED | PCRE2_ENDANCHORED);
}

int fb_target_check(const fb_target *t, fb_err *err) {
    if (__atomic_load_n(&((fb_target *)t)->failed, __ATOMIC_ACQUIRE) != 2) return 0;
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(t->fail_rc, msg, sizeof msg);
    const char *hint = "";
    if (t->fail_rc == PCRE2_ERROR_MATCHLIMIT || t->fail_rc == PCRE2_ERROR_DEPTHLIMIT ||
        t->fail_rc == PCRE2_ERROR_HEAPLIMIT)
        hint = " (fourbit allows 1000000 backtracking steps and depth 10000 per name: the "
               "pattern backtracks catastrophically; rewrite it)";
    return fb_fail(err, "regex '%s' could not be matched against '%s': %s%s", t->text,
                   t->fail_name, (const char *)msg, hint);
}

int fb_target_list_check(const fb_target_list *l, fb_err *err) {
    for (size_t i = 0; i < l->n; i++)
        if (fb_target_check(l->items[i], err)) return -1;
    return 0;
}

int fb_target_matches_name(const fb_target *t, const char *module_name) {
    if (t->re) return fb_regex_match(t, module_name);
    return strcmp(t->text, module_name) == 0;
}

// The MRO of a module class: the class itself, then torch.nn.Module (every class fourbit
// names derives directly from nn.Module or one of its direct subclasses Linear/Embedding).
int fb_target_matches_class(const fb_target *t, const char *class_name) {
    if (t->re || !class_name) return 0;
    return strcmp(t->text, class_name) == 0 || strcmp(t->text, "Module") == 0;
}

int fb_target_matches(const fb_target *t, const char *module_name, const char *class_name) {
    return fb_target_matches_name(t, module_name) || fb_target_matches_class(t, class_name);
}

int fb_target_list_compile(const char *const *entries, size_t n, fb_target_list *out,
                           void (*warn_cb)(void *ctx, const char *entry), void *ctx, fb_err *err) {
    out->n = 0;
    out->items = fb_calloc(n ? n : 1, sizeof *out->items);
    for (size_t i = 0; i < n; i++) {
        int w = 0;
        fb_target *t = fb_target_compile(entries[i], &w, err);
        if (!t) {
            fb_target_list_free(out);
            return fb_err_prefix(err, "entry %zu", i);
        }
        out->items[out->n++] = t;
        if (w && warn_cb) warn_cb(ctx, entries[i]);
    }
    return 0;
}

void fb_target_list_free(fb_target_list *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) fb_target_free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

int fb_target_list_match(const fb_target_list *l, const char *module_name, const char *class_name) {
    for (size_t i = 0; i < l->n; i++)
        if (fb_target_matches(l->items[i], module_name, class_name)) return (int)i;
    return -1;
}

int fb_target_list_match_ranked(const fb_target_list *l, const char *module_name,
                                const char *class_name, int *rank) {
    int best = -1, best_rank = 3;
    for (size_t i = 0; i < l->n; i++) {
        const fb_target *t = l->items[i];
        int r = 3;
        if (fb_target_matches_name(t, module_name)) r = t->re ? 1 : 0;
        else if (fb_target_matches_class(t, class_name)) r = 2;
        if (r < best_rank || (r < 3 && r == best_rank && strcmp(t->text, l->items[best]->text) < 0)) {
            best_rank = r;
            best = (int)i;
        }
    }
    if (rank) *rank = best < 0 ? -1 : best_rank;
    return best;
}

// ---- module classes of checkpoint tensors ----------------------------------------------

// One rule per line: the last component of the module name (or NULL = any), the tensor rank
// required (0 = any), the class. First match wins. Only tensors named "<module>.weight" are
// module weights; everything else (biases, e_score_correction_bias, *_scale*, weight_packed)
// belongs to no class.
static const struct {
    const char *suffix_contains;  // substring of the last name component, NULL = any
    int ndim;                     // required rank, 0 = any
    const char *cls;
    const char *why;
} CLASS_RULES[] = {
    {"embed_tokens", 0, "Embedding", "token embedding table (nn.Embedding)"},
    {"norm", 0, "MiniMaxM2RMSNorm", "input/post_attention/q/k/final norms (RMSNorm)"},
    {NULL, 2, "Linear",
     "every other 2-D weight: q/k/v/o_proj, experts w1/w2/w3, MLP gate/up/down_proj, "
     "the MoE router gate (nn.Linear in MiniMax remote code) and lm_head"},
};

const char *fb_module_class(const char *tensor_name, int ndim) {
    size_t n = strlen(tensor_name);
    static const char W[] = ".weight";
    if (n <= sizeof W - 1 || strcmp(tensor_name + n - (sizeof W - 1), W) != 0) return NULL;
    // last component of the module name
    size_t mend = n - (sizeof W - 1), mstart = mend;
    while (mstart > 0 && tensor_name[mstart - 1] != '.') mstart--;
    char last[256];
    size_t ln = mend - mstart < sizeof last - 1 ? mend - mstart : sizeof last - 1;
    memcpy(last, tensor_name + mstart, ln);
    last[ln] = 0;
    for (size_t i = 0; i < sizeof CLASS_RULES / sizeof CLASS_RULES[0]; i++) {
        if (CLASS_RULES[i].suffix_contains && !strstr(last, CLASS_RULES[i].suffix_contains))
            continue;
        if (CLASS_RULES[i].ndim && CLASS_RULES[i].ndim != ndim) continue;
        return CLASS_RULES[i].cls;
    }
    return NULL;
}

char *fb_module_name(const char *tensor_name) {
    size_t n = strlen(tensor_name);
    static const char W[] = ".weight";
    if (n <= sizeof W - 1 || strcmp(tensor_name + n - (sizeof W - 1), W) != 0) return NULL;
    char *m = fb_malloc(n - (sizeof W - 1) + 1);
    memcpy(m, tensor_name, n - (sizeof W - 1));
    m[n - (sizeof W - 1)] = 0;
    return m;
}
