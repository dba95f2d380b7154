// validate_hook.c: see validate_hook.h.
#include "quant/validate_hook.h"

#include "io/checkpoint.h"

int fb_validate_output(const char *dir, fb_err *err) {
    fb_ckpt *c;
    if (fb_ckpt_open(dir, &c, err) != 0) return fb_err_prefix(err, "output failed re-reading");
    fb_ckpt_close(c);
    return 0;
}
