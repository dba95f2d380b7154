// fuzz_match.c: target / ignore entries (src/quant/match.c): the Python-re -> PCRE2
// translation, compilation, anchored matching under the match and depth limits. Input:
// "<entry>\n<module name>".
#include <stdlib.h>
#include <string.h>

#include "quant/match.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *nl = memchr(data, '\n', size);
    if (!nl) return 0;
    size_t el = (size_t)(nl - (const char *)data);
    char *entry = malloc(el + 1), *name = malloc(size - el);
    memcpy(entry, data, el);
    entry[el] = 0;
    memcpy(name, nl + 1, size - el - 1);
    name[size - el - 1] = 0;
    fb_err err;
    int nodollar;
    fb_target *t = fb_target_compile(entry, &nodollar, &err);
    if (t) {
        fb_target_matches(t, name, "Linear");
        if (fb_target_is_regex(t)) fb_regex_fullmatch(t, name);
        fb_target_check(t, &err);
        fb_target_free(t);
    }
    free(entry);
    free(name);
    return 0;
}
