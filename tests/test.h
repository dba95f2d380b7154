// tests/test.h: the tiny test harness every tests/test_*.c uses.
//
// CHECK(cond, fmt, ...) counts a pass or prints the failure (file:line and the message) and
// counts a failure; TEST_MAIN_END() prints "<name>: N passed, N failed" and returns non-zero
// when anything failed, so a test binary can never print a verdict and exit 0 on failure.
#ifndef FB_TEST_H
#define FB_TEST_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_pass_, t_fail_;

#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        if (cond) { t_pass_++; }                                                  \
        else {                                                                    \
            t_fail_++;                                                            \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                  \
        }                                                                         \
    } while (0)

// Fails the test and stops it: for preconditions without which the rest is meaningless.
#define REQUIRE(cond, ...)                                                        \
    do {                                                                          \
        if (!(cond)) {                                                            \
            t_fail_++;                                                            \
            fprintf(stderr, "FATAL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                  \
            printf("%s: %d passed, %d failed\n", __FILE__, t_pass_, t_fail_);     \
            exit(1);                                                              \
        }                                                                         \
        t_pass_++;                                                                \
    } while (0)

#define TEST_MAIN_END()                                                           \
    do {                                                                          \
        printf("%s: %d passed, %d failed\n", __FILE__, t_pass_, t_fail_);         \
        return (t_fail_ || !t_pass_) ? 1 : 0;                                     \
    } while (0)

// Directory with the committed fixtures; tests run from the repository root.
#define GOLDEN_DIR "tests/golden"

#endif
