// validate_dir.c: the validation pass over a checkpoint directory or an opened checkpoint
// (config.json, the other JSON files, every shard header), see validate.h.
#include <stdarg.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>
#include "quant/validate_priv.h"

// ---- checkpoint wrappers -------------------------------------------------------------------

static json_t *load_json_opt(const char *dir, const char *name, fb_findings *out) {
    char *p = fb_path_join(dir, name);
    json_t *j = NULL;
    if (access(p, F_OK) == 0) {
        json_error_t je;
        j = json_load_file(p, 0, &je);
        if (!j)
            fb_vf_add(out, "ckpt.unreadable", name, NULL, NULL, "%s: invalid JSON at line %d: %s",
                      p, je.line, je.text);
    }
    free(p);
    return j;
}

int fb_validate_ckpt(const fb_ckpt *c, const fb_validate_opts *o, fb_findings *out, fb_err *err) {
    fb_vtensor *vt = fb_calloc(c->n_tensors ? c->n_tensors : 1, sizeof *vt);
    for (size_t i = 0; i < c->n_tensors; i++) {
        const fb_st_tensor *t = c->tensors[i].t;
        vt[i].name = t->name;
        vt[i].dtype = t->dtype;
        vt[i].ndim = t->ndim;
        memcpy(vt[i].shape, t->shape, sizeof vt[i].shape);
        vt[i].file = c->files[c->tensors[i].file];
        vt[i].st = t;
    }
    fb_vinput in = {0};
    in.label = c->path;
    in.config = c->config;
    in.tensors = vt;
    in.n = c->n_tensors;
    json_t *hq = NULL, *qc = NULL;
    // Other files of the directory (remote code named by auto_map).
    char **extra = NULL;
    size_t n_extra = 0, cap = 0;
    if (c->dir) {
        hq = load_json_opt(c->dir, "hf_quant_config.json", out);
        qc = load_json_opt(c->dir, "quantization_config.json", out);
        DIR *d = opendir(c->dir);
        if (d) {
            struct dirent *de;
            while ((de = readdir(d))) {
                if (de->d_name[0] == '.') continue;
                if (n_extra == cap) {
                    cap = cap ? cap * 2 : 16;
                    extra = fb_realloc(extra, cap * sizeof *extra);
                }
                extra[n_extra++] = fb_strdup(de->d_name);
            }
            closedir(d);
        }
    }
    in.hf_quant_config = hq;
    in.qc_file = qc;
    in.extra_files = (const char *const *)extra;
    in.n_extra_files = n_extra;
    int rc = fb_validate(&in, o, out, err);
    for (size_t i = 0; i < n_extra; i++) free(extra[i]);
    free(extra);
    json_decref(hq);
    json_decref(qc);
    free(vt);
    return rc;
}

int fb_validate_dir(const char *path, const fb_validate_opts *o, fb_findings *out, fb_err *err) {
    fb_ckpt *c = NULL;
    fb_err e2;
    if (fb_ckpt_open(path, &c, &e2) != 0) {
        fb_vf_add(out, "ckpt.unreadable", NULL, NULL, NULL, "%s", e2.msg);
        return 0;
    }
    int rc = fb_validate_ckpt(c, o, out, err);
    fb_ckpt_close(c);
    return rc;
}
