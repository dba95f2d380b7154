// cli.c: see cli.h.
#include <stdio.h>

#include "common/cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/fb.h"

void fb_cli_usage(FILE *f, const char *tool, const char *synopsis, const char *about, const fb_opt *o) {
    fprintf(f, "usage: %s %s\n\n%s\n\noptions:\n", tool, synopsis, about);
    for (; o->name; o++) {
        char left[64];
        if (o->kind == FB_OPT_FLAG)
            snprintf(left, sizeof left, "%s%c%s--%s", o->shortc ? "-" : "", o->shortc ? o->shortc : ' ',
                     o->shortc ? ", " : "  ", o->name);
        else
            snprintf(left, sizeof left, "%s%c%s--%s %s", o->shortc ? "-" : "", o->shortc ? o->shortc : ' ',
                     o->shortc ? ", " : "  ", o->name, o->metavar ? o->metavar : "X");
        char def[64] = "";
        switch (o->kind) {
        case FB_OPT_INT: snprintf(def, sizeof def, " (default %d)", *(int *)o->target); break;
        case FB_OPT_SIZE: snprintf(def, sizeof def, " (default %llu bytes)", (unsigned long long)*(uint64_t *)o->target); break;
        case FB_OPT_DOUBLE: snprintf(def, sizeof def, " (default %g)", *(double *)o->target); break;
        case FB_OPT_STR:
            if (*(const char **)o->target) snprintf(def, sizeof def, " (default %s)", *(const char **)o->target);
            break;
        default: break;
        }
        fprintf(f, "  %-28s %s%s\n", left, o->help, def);
    }
    fprintf(f, "  %-28s %s\n", "-h, --help", "print this help and exit");
    fprintf(f, "  %-28s %s\n", "    --version", "print the version and exit");
    fprintf(f, "\nexit status: 0 success, 1 bad input or result, 2 usage error\n");
}

static int set_value(const char *tool, const fb_opt *o, const char *v) {
    char *end = NULL;
    errno = 0;
    switch (o->kind) {
    case FB_OPT_INT: {
        long long x = strtoll(v, &end, 10);
        if (!*v || *end || errno || x < -2147483647LL || x > 2147483647LL ||
            ((o->min || o->max) && (x < o->min || x > o->max))) {
            if (o->min || o->max)
                fprintf(stderr, "%s: --%s wants an integer in [%lld, %lld], got '%s'\n", tool, o->name,
                        (long long)o->min, (long long)o->max, v);
            else
                fprintf(stderr, "%s: --%s wants an integer, got '%s'\n", tool, o->name, v);
            return 2;
        }
        *(int *)o->target = (int)x;
        return 0;
    }
    case FB_OPT_SIZE: {
        fb_err e;
        if (fb_parse_size(v, (uint64_t *)o->target, &e) != 0) {
            fprintf(stderr, "%s: --%s: %s\n", tool, o->name, e.msg);
            return 2;
        }
        return 0;
    }
    case FB_OPT_DOUBLE: {
        double x = strtod(v, &end);
        if (!*v || *end || errno) {
            fprintf(stderr, "%s: --%s wants a number, got '%s'\n", tool, o->name, v);
            return 2;
        }
        *(double *)o->target = x;
        return 0;
    }
    case FB_OPT_STR: *(const char **)o->target = v; return 0;
    default: return 2;
    }
}

int fb_cli_parse(int argc, char **argv, const char *tool, const char *synopsis, const char *about,
                 const fb_opt *opts, const char **pos, int maxpos, int *npos) {
    *npos = 0;
    int only_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || a[1] == 0) {
            if (*npos >= maxpos) {
                fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", tool, a);
                return 2;
            }
            pos[(*npos)++] = a;
            continue;
        }
        if (!strcmp(a, "--")) { only_pos = 1; continue; }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fb_cli_usage(stdout, tool, synopsis, about, opts);
            return 1;
        }
        if (!strcmp(a, "--version")) {
            printf("%s %s (fourbit)\n", tool, FB_VERSION);
            return 1;
        }
        const fb_opt *o = NULL;
        const char *val = NULL;
        if (a[1] == '-') {
            const char *nm = a + 2, *eq = strchr(nm, '=');
            size_t len = eq ? (size_t)(eq - nm) : strlen(nm);
            for (const fb_opt *p = opts; p->name; p++)
                if (strlen(p->name) == len && !strncmp(p->name, nm, len)) { o = p; break; }
            if (eq) val = eq + 1;
        } else if (a[2] == 0) {
            for (const fb_opt *p = opts; p->name; p++)
                if (p->shortc == a[1]) { o = p; break; }
        }
        if (!o) {
            fprintf(stderr, "%s: unknown option '%s' (see --help)\n", tool, a);
            return 2;
        }
        if (o->kind == FB_OPT_FLAG) {
            if (val) {
                fprintf(stderr, "%s: --%s takes no value\n", tool, o->name);
                return 2;
            }
            *(int *)o->target = 1;
            continue;
        }
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: --%s needs a value (%s)\n", tool, o->name, o->metavar ? o->metavar : "X");
                return 2;
            }
            val = argv[++i];
        }
        int rc = set_value(tool, o, val);
        if (rc) return rc;
    }
    return 0;
}
