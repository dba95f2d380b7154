// strmap.h: a string -> int64 hash map (open addressing, FNV-1a), for tensor-name lookups in
// checkpoints with ~100k tensors. Keys are borrowed: the caller keeps them alive.
#ifndef FB_COMMON_STRMAP_H
#define FB_COMMON_STRMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct fb_strmap {
    size_t cap, n;         // cap is a power of two
    const char **keys;     // NULL = empty slot
    int64_t *vals;
} fb_strmap;

void fb_strmap_init(fb_strmap *m, size_t expected);
void fb_strmap_free(fb_strmap *m);
// Inserts key -> val. Returns 0, or 1 if the key was already present (value left unchanged
// and *existing set to the stored value when existing is non-NULL).
int fb_strmap_put(fb_strmap *m, const char *key, int64_t val, int64_t *existing);
// Returns the value, or -1 if absent.
int64_t fb_strmap_get(const fb_strmap *m, const char *key);

#endif
