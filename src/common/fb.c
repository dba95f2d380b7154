// fb.c: errors, checked allocation, clocks, small parsing helpers.
#include "common/fb.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

int fb_fail(fb_err *err, const char *fmt, ...) {
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return -1;
}

int fb_err_prefix(fb_err *err, const char *fmt, ...) {
    if (!err) return -1;
    char pre[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s: %.1500s", pre, old);
    return -1;
}

void fb_assert_fail(const char *file, int line, const char *cond) {
    fprintf(stderr, "fourbit: internal invariant failed at %s:%d: %s\n", file, line, cond);
    abort();
}

static void oom(size_t n, const char *file, int line) {
    fprintf(stderr, "fourbit: out of memory allocating %zu bytes at %s:%d\n", n, file, line);
    abort();
}

void *fb_malloc_at(size_t n, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p) oom(n, file, line);
    return p;
}

void *fb_calloc_at(size_t n, size_t m, const char *file, int line) {
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (!p) oom(n * m, file, line);
    return p;
}

void *fb_realloc_at(void *p, size_t n, const char *file, int line) {
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n, file, line);
    return q;
}

char *fb_strdup_at(const char *s, const char *file, int line) {
    size_t n = strlen(s) + 1;
    char *p = fb_malloc_at(n, file, line);
    memcpy(p, s, n);
    return p;
}

void *fb_aligned_alloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) oom(n, __FILE__, __LINE__);
    return p;
}

double fb_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

uint64_t fb_peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
#if defined(__APPLE__)
    return (uint64_t)ru.ru_maxrss;  // macOS reports bytes
#else
    return (uint64_t)ru.ru_maxrss * 1024u;  // Linux and the BSDs report KiB
#endif
}

int fb_ncpu(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

int fb_parse_size(const char *s, uint64_t *out, fb_err *err) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0) return fb_fail(err, "invalid size '%s'", s);
    static const struct { const char *suf; double mul; } units[] = {
        {"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
        {"KIB", 1024.0}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}, {"TIB", 1099511627776.0},
        {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
    };
    char suf[8] = {0};
    size_t n = strlen(end);
    if (n >= sizeof suf) return fb_fail(err, "invalid size suffix in '%s'", s);
    for (size_t i = 0; i < n; i++) suf[i] = (char)((end[i] >= 'a' && end[i] <= 'z') ? end[i] - 32 : end[i]);
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(suf, units[i].suf) == 0) {
            double b = v * units[i].mul;
            if (b > 1.8e19) return fb_fail(err, "size '%s' too large", s);
            *out = (uint64_t)b;
            return 0;
        }
    }
    return fb_fail(err, "invalid size suffix in '%s' (use B, KB, MB, GB, KiB, MiB, GiB)", s);
}

int fb_file_xxh128(const char *path, char out_hex[33], fb_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);  // a FIFO must not hang us
    if (fd < 0) return fb_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return fb_fail(err, "%s: not a regular file", path);
    }
    XXH3_state_t *st = XXH3_createState();
    FB_ASSERT(st);
    XXH3_128bits_reset(st);
    size_t bufsz = 8u << 20;
    unsigned char *buf = fb_malloc(bufsz);
    int rc = 0;
    for (;;) {
        ssize_t r = read(fd, buf, bufsz);
        if (r < 0) {
            if (errno == EINTR) continue;
            rc = fb_fail(err, "%s: read error: %s", path, strerror(errno));
            break;
        }
        if (r == 0) break;
        XXH3_128bits_update(st, buf, (size_t)r);
    }
    if (rc == 0) {
        XXH128_hash_t h = XXH3_128bits_digest(st);
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, h);
        for (int i = 0; i < 16; i++) snprintf(out_hex + 2 * i, 3, "%02x", c.digest[i]);
    }
#ifdef POSIX_FADV_DONTNEED
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
#endif
    free(buf);
    XXH3_freeState(st);
    close(fd);
    return rc;
}
