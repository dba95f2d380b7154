// cli.h: command-line parsing from one table, which also prints the usage with defaults.
//
// Every tool declares a static array of fb_opt ending with {0}; fb_cli_parse fills the
// targets, collects positional arguments, and rejects unknown options, missing or malformed
// values (strtoll/strtod with end-pointer and range checks). Exit-code convention of all
// tools: 0 success, 1 the input or the result is wrong, 2 usage error.
#ifndef FB_COMMON_CLI_H
#define FB_COMMON_CLI_H

#include <stdint.h>
#include <stdio.h>

typedef enum { FB_OPT_FLAG, FB_OPT_INT, FB_OPT_SIZE, FB_OPT_DOUBLE, FB_OPT_STR } fb_opt_kind;

typedef struct fb_opt {
    const char *name;       // long name without "--"
    char shortc;            // 0 if none
    fb_opt_kind kind;
    void *target;           // int* (FLAG, INT), uint64_t* (SIZE), double*, const char**
    const char *metavar;    // "N", "SIZE", "FILE" ...
    const char *help;       // one line; the default is printed from the target's initial value
    int64_t min, max;       // INT range (both 0 = unchecked)
} fb_opt;

// Parses argv. Positional arguments are returned in pos[0..*npos) (at most maxpos).
// Returns 0; 1 when --help or --version was given (usage or "tool version" printed to stdout); 2 on a usage error (message
// printed to stderr). `synopsis` is the usage line after the tool name, `about` a paragraph.
int fb_cli_parse(int argc, char **argv, const char *tool, const char *synopsis, const char *about,
                 const fb_opt *opts, const char **pos, int maxpos, int *npos);

// Prints the usage (to f).
void fb_cli_usage(FILE *f, const char *tool, const char *synopsis, const char *about, const fb_opt *opts);

#endif
