// fuzz_util.h: helpers for the libFuzzer harnesses (tests/fuzz/fuzz_*.c, built and run by
// `make fuzz`). Harnesses run from the repository root.
#ifndef FB_FUZZ_UTIL_H
#define FB_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

// The input as an anonymous in-memory file: *fd (close it) and its /proc path in p. The
// readers under test take paths, as the tools give them.
static inline int fuzz_memfile(const uint8_t *data, size_t size, char *p, size_t cap, int *fd) {
    *fd = memfd_create("fuzz", MFD_CLOEXEC);
    if (*fd < 0) return -1;
    for (size_t off = 0; off < size;) {
        ssize_t w = write(*fd, data + off, size - off);
        if (w <= 0) {
            close(*fd);
            return -1;
        }
        off += (size_t)w;
    }
    snprintf(p, cap, "/proc/self/fd/%d", *fd);
    return 0;
}

#endif
