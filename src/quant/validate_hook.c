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

int fb_validate_output(const char *dir, fb_err *err) {
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
    if (fb_findings_ok(&f, 0)) {
        fb_findings_free(&f);
        return 0;
    }
    char buf[sizeof err->msg];
    size_t k = (size_t)snprintf(buf, sizeof buf, "the output would not load (%zu error(s), nothing written):", f.n_errors);
    int shown = 0;
    for (size_t i = 0; i < f.n && shown < 3 && k < sizeof buf; i++) {
        const fb_finding *x = &f.items[i];
        if (x->sev != FB_SEV_ERROR) continue;
        k += (size_t)snprintf(buf + k, sizeof buf - k, " [%s] %s%s%s%s%s", x->rule, x->message,
                              x->where && *x->where ? " (" : "", x->where ? x->where : "",
                              x->where && *x->where ? ")" : "", x->fix && *x->fix ? ";" : "");
        if (x->fix && *x->fix && k < sizeof buf) k += (size_t)snprintf(buf + k, sizeof buf - k, " fix: %s.", x->fix);
        shown++;
    }
    fb_findings_free(&f);
    return fb_fail(err, "%s", buf);
}
