// cli_util.h: helpers for the tests that run the tools as a user does (test_*_cli.c).
// A test sets cli_dir (a scratch directory) and cli_bin (the tools' directory), then:
//   cli_run("fmt", ...)   runs a shell command, its output in <cli_dir>/log; returns the exit
//                         status (128 + signal when killed)
//   cli_log_has("text")   1 when the last command's output contains text (prints it if not)
//   cli_exists("fmt",...) 1 when the formatted path exists
#ifndef FB_TEST_CLI_UTIL_H
#define FB_TEST_CLI_UTIL_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char cli_dir[256], cli_bin[256];

static int cli_run(const char *fmt, ...) __attribute__((format(printf, 1, 2), unused));
static int cli_run(const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[4500];
    snprintf(full, sizeof full, "%s >%s/log 2>&1", cmd, cli_dir);
    int st = system(full);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int cli_log_has_(const char *s, int loud) {
    char p[300];
    snprintf(p, sizeof p, "%s/log", cli_dir);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    int ok = strstr(buf, s) != NULL;
    if (!ok && loud) fprintf(stderr, "    log: %s", buf);
    return ok;
}

static int __attribute__((unused)) cli_log_has(const char *s) { return cli_log_has_(s, 1); }

static int cli_exists(const char *fmt, ...) __attribute__((format(printf, 1, 2), unused));
static int cli_exists(const char *fmt, ...) {
    char p[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p, sizeof p, fmt, ap);
    va_end(ap);
    return access(p, F_OK) == 0;
}

#endif
