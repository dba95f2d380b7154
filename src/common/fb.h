// fb.h: what every module of libfourbit shares.
//
// Errors. Library functions never print and never exit. A function that can fail takes a
// `fb_err *err` as its last argument and returns 0 on success, -1 on failure after filling
// err->msg with what went wrong and where (file, tensor name, byte offset, line). Callers add
// context with fb_err_prefix(). Only tools/ print messages and choose exit codes.
//
// Invariants. FB_ASSERT(cond) is always on (release builds too): it is for postconditions at
// API boundaries, where a failure means a bug in fourbit, not bad input. It prints file:line
// and aborts. Plain assert() is for hot loops only.
#ifndef FB_COMMON_H
#define FB_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define FB_VERSION "0.1.0"

typedef struct fb_err {
    char msg[2048];  // human-readable, one line, names the file/tensor/offset concerned
} fb_err;

// Formats the message into err (if err is non-NULL) and returns -1, so that
// `return fb_fail(err, "%s: tensor %s: ...", path, name);` is the idiom.
int fb_fail(fb_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Prepends "<fmt>: " to the message already in err (context from an outer layer). Returns -1.
int fb_err_prefix(fb_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Always-on invariant check; aborts with file:line. For fourbit bugs, not for bad input.
#define FB_ASSERT(cond)                                                                   \
    do {                                                                                  \
        if (!(cond)) fb_assert_fail(__FILE__, __LINE__, #cond);                           \
    } while (0)
void fb_assert_fail(const char *file, int line, const char *cond) __attribute__((noreturn));

// Allocation that never returns NULL: out of memory aborts with the size and file:line
// (a fourbit run is sized to bounded buffers, so OOM is not a recoverable input error).
#define fb_malloc(n) fb_malloc_at((n), __FILE__, __LINE__)
#define fb_calloc(n, m) fb_calloc_at((n), (m), __FILE__, __LINE__)
#define fb_realloc(p, n) fb_realloc_at((p), (n), __FILE__, __LINE__)
#define fb_strdup(s) fb_strdup_at((s), __FILE__, __LINE__)
void *fb_malloc_at(size_t n, const char *file, int line);
void *fb_calloc_at(size_t n, size_t m, const char *file, int line);
void *fb_realloc_at(void *p, size_t n, const char *file, int line);
char *fb_strdup_at(const char *s, const char *file, int line);
// 64-byte aligned allocation (SIMD-friendly buffers); free with free().
void *fb_aligned_alloc(size_t n);

// Monotonic wall clock in seconds.
double fb_now(void);

// Peak resident set size of this process in bytes (from getrusage), 0 if unknown.
uint64_t fb_peak_rss(void);

// Number of online CPUs (at least 1).
int fb_ncpu(void);

// Parses a size such as "5GB", "500MB", "4GiB", "1234" (decimal units as huggingface_hub:
// KB=1e3, MB=1e6, GB=1e9; KiB/MiB/GiB binary). Returns 0 or -1 with err set.
int fb_parse_size(const char *s, uint64_t *out, fb_err *err);

// Hex of an xxh3-128 digest (32 chars + NUL) of a file's contents; -1 with err on I/O error.
int fb_file_xxh128(const char *path, char out_hex[33], fb_err *err);

#endif
