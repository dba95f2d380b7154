// pyjson.c: Python's json.dumps of a JSON value, byte for byte (see pyjson.h).
#include "io/pyjson.h"
#include "common/sbuf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


// repr(float): the shortest digits that round-trip, fixed notation for 1e-4 <= |x| < 1e16.
static void py_float(fb_sbuf *b, double x) {
    if (isnan(x)) {
        fb_sb_puts(b, "NaN");
        return;
    }
    if (isinf(x)) {
        fb_sb_puts(b, x > 0 ? "Infinity" : "-Infinity");
        return;
    }
    char s[64];
    int p;
    for (p = 0; p < 17; p++) {
        snprintf(s, sizeof s, "%.*e", p, x);
        if (strtod(s, NULL) == x) break;
    }
    // s = [-]d[.ddd]e(+|-)XX
    char digits[32];
    size_t nd = 0;
    const char *q = s;
    int neg = 0;
    if (*q == '-') neg = 1, q++;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') digits[nd++] = *q;
    int e = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;  // %.0e of 100 gives "1e+02"; keep shortest
    digits[nd] = 0;
    if (neg) fb_sb_put(b, "-", 1);
    int decpt = e + 1;
    if (e >= -4 && e < 16) {
        if (decpt <= 0) {
            fb_sb_puts(b, "0.");
            for (int i = 0; i < -decpt; i++) fb_sb_put(b, "0", 1);
            fb_sb_put(b, digits, nd);
        } else if ((size_t)decpt >= nd) {
            fb_sb_put(b, digits, nd);
            for (size_t i = nd; i < (size_t)decpt; i++) fb_sb_put(b, "0", 1);
            fb_sb_puts(b, ".0");
        } else {
            fb_sb_put(b, digits, (size_t)decpt);
            fb_sb_put(b, ".", 1);
            fb_sb_put(b, digits + decpt, nd - (size_t)decpt);
        }
    } else {
        fb_sb_put(b, digits, 1);
        if (nd > 1) {
            fb_sb_put(b, ".", 1);
            fb_sb_put(b, digits + 1, nd - 1);
        }
        char ex[16];
        snprintf(ex, sizeof ex, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
        fb_sb_puts(b, ex);
    }
}

static void py_json_str(fb_sbuf *b, const char *s, size_t n) {
    fb_sb_put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        static const char *esc[] = {['"'] = "\\\"", ['\\'] = "\\\\", ['\n'] = "\\n", ['\r'] = "\\r",
                                    ['\t'] = "\\t", ['\b'] = "\\b", ['\f'] = "\\f"};
        if (c < sizeof esc / sizeof esc[0] && esc[c]) {
            fb_sb_puts(b, esc[c]);
        } else if (c < 0x20) {
            char u[8];
            snprintf(u, sizeof u, "\\u%04x", c);
            fb_sb_puts(b, u);
        } else {
            fb_sb_put(b, (const char *)&c, 1);
        }
    }
    fb_sb_put(b, "\"", 1);
}

// json.dumps(v, ensure_ascii=False) with the default separators.
static int py_json(fb_sbuf *b, json_t *v, fb_err *err) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        int first = 1;
        fb_sb_put(b, "{", 1);
        json_object_foreach(v, k, x) {
            if (!first) fb_sb_puts(b, ", ");
            first = 0;
            py_json_str(b, k, strlen(k));
            fb_sb_puts(b, ": ");
            if (py_json(b, x, err)) return -1;
        }
        fb_sb_put(b, "}", 1);
        return 0;
    }
    case JSON_ARRAY:
        fb_sb_put(b, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) fb_sb_puts(b, ", ");
            if (py_json(b, json_array_get(v, i), err)) return -1;
        }
        fb_sb_put(b, "]", 1);
        return 0;
    case JSON_STRING: py_json_str(b, json_string_value(v), json_string_length(v)); return 0;
    case JSON_INTEGER: {
        char s[32];
        snprintf(s, sizeof s, "%lld", (long long)json_integer_value(v));
        fb_sb_puts(b, s);
        return 0;
    }
    case JSON_REAL: py_float(b, json_real_value(v)); return 0;
    case JSON_TRUE: fb_sb_puts(b, "true"); return 0;
    case JSON_FALSE: fb_sb_puts(b, "false"); return 0;
    case JSON_NULL: fb_sb_puts(b, "null"); return 0;
    }
    return fb_fail(err, "unknown JSON value type");
}

int fb_pyjson(json_t *v, char **out, size_t *out_len, fb_err *err) {
    fb_sbuf b = {0};
    if (py_json(&b, v, err)) {
        free(b.p);
        return -1;
    }
    if (!b.p) fb_sb_put(&b, "", 0);
    *out = b.p;
    *out_len = b.n;
    return 0;
}

