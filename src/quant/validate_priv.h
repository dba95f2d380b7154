// validate_priv.h: internals shared by src/quant/validate*.c (not a public header).
#ifndef FB_QUANT_VALIDATE_PRIV_H
#define FB_QUANT_VALIDATE_PRIV_H

#include "quant/validate.h"

// Adds one instance of a rule. `name` is the tensor or module concerned (NULL for a global
// finding); instances of one rule whose names differ only in the layer and expert numbers are
// grouped into one finding. `consequence` / `fix` override the rule table's text (NULL: use
// the table); only the first instance's message, consequence and fix are kept.
void fb_vf_add(fb_findings *f, const char *rule, const char *name, const char *consequence,
               const char *fix, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

// Same with an explicit severity (rules whose severity depends on the case).
void fb_vf_add_sev(fb_findings *f, const char *rule, fb_severity sev, const char *name,
                   const char *consequence, const char *fix, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

// Rule table lookups.
fb_severity fb_vrule_sev(const char *rule);

// Small growable string (for messages built in pieces).
typedef struct fb_vstr { char *s; size_t n, cap; } fb_vstr;
void fb_vstr_addf(fb_vstr *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
