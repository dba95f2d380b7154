// validate_hook.c: see validate_hook.h.
#include "quant/validate_hook.h"

#include <string.h>

#include "arch/arch.h"
#include "io/checkpoint.h"
#include "quant/validate.h"

// The loader rules exist for the families of the architecture table (src/arch/); any other
// architecture gets the structural re-read only.
static int is_known_arch(const char *dir) {
    char *p = fb_path_join(dir, "config.json");
    json_t *c = json_load_file(p, 0, NULL);
    free(p);
    int yes = c && fb_arch_from_config(c, NULL) != NULL;
    json_decref(c);
    return yes;
}

// Fails with the first error findings, one per line (rule, message, where; then the fix on
// its own line): a finding is read, not scrolled through. Frees f.
static int fail_findings(fb_findings *f, const char *what, int (*keep)(const char *rule), fb_err *err) {
    char buf[sizeof err->msg];
    size_t n = 0;
    for (size_t i = 0; i < f->n; i++) n += f->items[i].sev == FB_SEV_ERROR && (!keep || keep(f->items[i].rule));
    size_t k = (size_t)snprintf(buf, sizeof buf, "%s (%zu error(s), nothing written):", what, n);
    int shown = 0;
    for (size_t i = 0; i < f->n && shown < 3 && k < sizeof buf; i++) {
        const fb_finding *x = &f->items[i];
        if (x->sev != FB_SEV_ERROR || (keep && !keep(x->rule))) continue;
        k += (size_t)snprintf(buf + k, sizeof buf - k, "\n  [%s] %s%s%s%s", x->rule, x->message,
                              x->where && *x->where ? " (" : "", x->where ? x->where : "",
                              x->where && *x->where ? ")" : "");
        if (x->fix && *x->fix && k < sizeof buf) k += (size_t)snprintf(buf + k, sizeof buf - k, "\n    fix: %s", x->fix);
        shown++;
    }
    fb_findings_free(f);
    return fb_fail(err, "%s", buf);
}

// The rule fb_validate_output_allowing lets pass, for fail_findings' filter (a plain function
// pointer: no context argument).
static _Thread_local const char *allowed_rule;
static int not_allowed(const char *rule) { return !allowed_rule || strcmp(rule, allowed_rule) != 0; }

int fb_validate_output(const char *dir, fb_err *err) { return fb_validate_output_allowing(dir, NULL, err); }

int fb_validate_output_allowing(const char *dir, const char *allow, fb_err *err) {
    if (!is_known_arch(dir)) {
        fb_ckpt *c;
        if (fb_ckpt_open(dir, &c, err) != 0) return fb_err_prefix(err, "output failed re-reading");
        fb_ckpt_close(c);
        return 0;
    }
    fb_findings f;
    fb_findings_init(&f);
    fb_validate_opts o = {0};
    if (fb_validate_dir(dir, &o, &f, err) != 0) {
        fb_findings_free(&f);
        return fb_err_prefix(err, "validating the output %s", dir);
    }
    size_t n_err = 0;
    for (size_t i = 0; i < f.n; i++)
        n_err += f.items[i].sev == FB_SEV_ERROR && !(allow && !strcmp(f.items[i].rule, allow));
    if (n_err == 0) {
        fb_findings_free(&f);
        return 0;
    }
    allowed_rule = allow;
    return fail_findings(&f, "the output would not load", allow ? not_allowed : NULL, err);
}

// Rules a recipe decides (targets, ignore, scheme, router): the up-front check refuses on
// these; what the source itself lacks is found by fb_validate_output on the real output.
static int recipe_rule(const char *rule) {
    static const char *const pre[] = {"ignore.", "router.", "ct.", "recipe.", "quant.", "tensor.keyerror"};
    for (size_t i = 0; i < sizeof pre / sizeof pre[0]; i++)
        if (!strncmp(rule, pre[i], strlen(pre[i]))) return 1;
    return 0;
}

int fb_validate_recipe_before_write(const fb_ckpt *src, const struct fb_recipe *r, fb_err *err) {
    if (!src->config || !fb_arch_from_config(src->config, NULL)) return 0;  // rules exist for known families only
    fb_findings f;
    fb_findings_init(&f);
    fb_validate_opts o = {0};
    if (fb_validate_recipe(src, r, &o, &f, NULL, NULL, err) != 0) {
        fb_findings_free(&f);
        return -1;
    }
    int bad = 0;
    for (size_t i = 0; i < f.n; i++) bad |= f.items[i].sev == FB_SEV_ERROR && recipe_rule(f.items[i].rule);
    if (!bad) {
        fb_findings_free(&f);
        return 0;
    }
    return fail_findings(&f, "the recipe would write a checkpoint that does not load", recipe_rule, err);
}
