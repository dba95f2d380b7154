// st_build.h: test helper that writes raw safetensors bytes (any header text, any payload
// size) so tests can build valid and deliberately broken files without the library's writer.
#ifndef FB_TEST_ST_BUILD_H
#define FB_TEST_ST_BUILD_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

// Writes [u64 len][header][payload of payload_len bytes]; `declared_len` overrides the length
// field when non-negative. Payload bytes are `fill` if data is NULL. Returns 0 on success.
static int stb_write_raw(const char *path, const char *header, long long declared_len, const void *data,
                         size_t payload_len, unsigned char fill) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    uint64_t n = declared_len >= 0 ? (uint64_t)declared_len : (uint64_t)strlen(header);
    unsigned char lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (unsigned char)(n >> (8 * i));
    fwrite(lb, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    if (data) fwrite(data, 1, payload_len, f);
    else
        for (size_t i = 0; i < payload_len; i++) fputc(fill, f);
    return fclose(f);
}

// Appends text to a file (for index.json / config.json); returns 0 on success.
static int stb_write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

#endif
