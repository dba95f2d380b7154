// sbuf.h: a growable NUL-terminated byte buffer for text being built (rendered chat templates,
// Python-style JSON, regex translations, decoded tokens). Zero-initialise (`fb_sbuf b = {0}`),
// append, take b.p (malloc'd; the caller frees it). Allocation failure aborts (fb_realloc).
#ifndef FB_COMMON_SBUF_H
#define FB_COMMON_SBUF_H

#include <string.h>

#include "common/fb.h"

typedef struct fb_sbuf {
    char *p;           // NUL-terminated once anything was appended
    size_t n, cap;     // bytes held (without the NUL), bytes allocated
} fb_sbuf;

// Room for `extra` more bytes and the NUL.
static inline void fb_sb_reserve(fb_sbuf *b, size_t extra) {
    if (b->n + extra + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 64;
        while (c < b->n + extra + 1) c *= 2;
        b->p = fb_realloc(b->p, c);
        b->cap = c;
    }
}
static inline void fb_sb_put(fb_sbuf *b, const void *s, size_t n) {
    fb_sb_reserve(b, n);
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static inline void fb_sb_puts(fb_sbuf *b, const char *s) { fb_sb_put(b, s, strlen(s)); }
static inline void fb_sb_putc(fb_sbuf *b, char c) { fb_sb_put(b, &c, 1); }

#endif
