// sha256.h: SHA-256 (FIPS 180-4), for the digest a model card gives of the calibration data
// (the Hub and `sha256sum` speak SHA-256; fourbit's own manifests use xxh3-128, which is
// faster but not what a reader can check with standard tools).
#ifndef FB_COMMON_SHA256_H
#define FB_COMMON_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "common/fb.h"

typedef struct fb_sha256 {
    uint32_t h[8];
    uint64_t len;          // bytes hashed so far
    unsigned char buf[64]; // pending partial block
    size_t nbuf;
} fb_sha256;

void fb_sha256_init(fb_sha256 *s);
void fb_sha256_update(fb_sha256 *s, const void *data, size_t n);
// Writes the 64 lowercase hex digits and a NUL to out_hex; s is spent.
void fb_sha256_hex(fb_sha256 *s, char out_hex[65]);

// SHA-256 of a whole file as hex; -1 with err naming the file on a read error.
int fb_file_sha256(const char *path, char out_hex[65], fb_err *err);

#endif
