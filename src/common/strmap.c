// strmap.c: see strmap.h.
#include "common/strmap.h"

#include <string.h>

#include "common/fb.h"

static uint64_t hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

void fb_strmap_init(fb_strmap *m, size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2 + 1) cap <<= 1;
    m->cap = cap;
    m->n = 0;
    m->keys = fb_calloc(cap, sizeof *m->keys);
    m->vals = fb_calloc(cap, sizeof *m->vals);
}

void fb_strmap_free(fb_strmap *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static void grow(fb_strmap *m) {
    fb_strmap bigger;
    fb_strmap_init(&bigger, m->cap);
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) fb_strmap_put(&bigger, m->keys[i], m->vals[i], NULL);
    fb_strmap_free(m);
    *m = bigger;
}

int fb_strmap_put(fb_strmap *m, const char *key, int64_t val, int64_t *existing) {
    if ((m->n + 1) * 2 > m->cap) grow(m);
    size_t mask = m->cap - 1, i = (size_t)hash(key) & mask;
    while (m->keys[i]) {
        if (strcmp(m->keys[i], key) == 0) {
            if (existing) *existing = m->vals[i];
            return 1;
        }
        i = (i + 1) & mask;
    }
    m->keys[i] = key;
    m->vals[i] = val;
    m->n++;
    return 0;
}

int64_t fb_strmap_get(const fb_strmap *m, const char *key) {
    if (!m->cap) return -1;
    size_t mask = m->cap - 1, i = (size_t)hash(key) & mask;
    while (m->keys[i]) {
        if (strcmp(m->keys[i], key) == 0) return m->vals[i];
        i = (i + 1) & mask;
    }
    return -1;
}
