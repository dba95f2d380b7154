// validate_recipe.c: the recipe preview (validate-ignore-list --recipe R SRC). The output a
// writer would produce is predicted from the quantization plan (src/quant/scheme.h) and
// validated with the same pass as a finished checkpoint (see validate.h).
#include <string.h>

#include "quant/nvfp4.h"
#include "quant/qformat.h"
#include "quant/recipe.h"
#include "quant/scheme.h"
#include "quant/validate_priv.h"
#include "quant/w4a16.h"

typedef struct pv {
    fb_vtensor *t;
    char **names;
    size_t n, cap;
} pv;

static void pv_add(pv *a, const char *name, fb_dtype dt, int ndim, const int64_t *shape) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 256;
        a->t = fb_realloc(a->t, a->cap * sizeof *a->t);
        a->names = fb_realloc(a->names, a->cap * sizeof *a->names);
    }
    fb_vtensor *t = &a->t[a->n];
    memset(t, 0, sizeof *t);
    a->names[a->n] = fb_strdup(name);
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    a->n++;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int preview(const fb_ckpt *src, const fb_qconfig *cfg, const char *const *raw_ignore, size_t n_raw,
                   const fb_validate_opts *o, fb_findings *out, size_t *quantized, size_t *kept, fb_err *err) {
    // The source as the quantizers read it: FP8 weights dequantized, scale_inv consumed.
    size_t n = 0;
    fb_tensor_desc *d = fb_calloc(src->n_tensors ? src->n_tensors : 1, sizeof *d);
    const fb_st_tensor **st = fb_calloc(src->n_tensors ? src->n_tensors : 1, sizeof *st);
    for (size_t i = 0; i < src->n_tensors; i++) {
        const fb_st_tensor *t = src->tensors[i].t;
        if (ends_with(t->name, ".weight_scale_inv")) continue;
        d[n].name = t->name;
        d[n].ndim = t->ndim;
        d[n].shape = t->shape;
        st[n++] = t;
    }
    fb_plan plan;
    fb_err perr;
    if (fb_plan_build(cfg, d, n, &plan, &perr) != 0) {
        fb_vf_add(out, "recipe.unwritable", NULL, NULL, NULL, "%s", perr.msg);
        free(d);
        free(st);
        if (quantized) *quantized = 0;
        if (kept) *kept = 0;
        return 0;
    }
    pv a = {0};
    char nm[1024];
    for (size_t i = 0; i < n; i++) {
        const fb_plan_entry *e = &plan.e[i];
        const fb_st_tensor *t = st[i];
        fb_dtype dt = t->dtype == FB_F8_E4M3 ? FB_BF16 : t->dtype;
        if (!e->quantize) {
            pv_add(&a, t->name, dt, t->ndim, t->shape);
            continue;
        }
        // The tensors the writer declares for it: the output-format table (compressed-tensors).
        int64_t O = t->shape[0], I = t->shape[1];
        int gs = cfg->groups[e->group].weights.group_size;
        int64_t G = e->kind == FB_QK_W4A16 ? (gs > 0 ? gs : FB_W4A16_GROUP) : FB_NVFP4_GROUP;
        const fb_qfmt *qf = fb_qfmt_get(e->kind == FB_QK_W4A16 ? FB_QF_PACK_INT4 : FB_QF_NVFP4);
        for (int k = 0; k < qf->n_out; k++) {
            if (qf->out[k].w4a4_only && e->kind != FB_QK_NVFP4) continue;
            int64_t sh[2];
            qf->shape(k, O, I, G, sh);
            snprintf(nm, sizeof nm, "%s%s", e->module, qf->out[k].suffix);
            pv_add(&a, nm, qf->out[k].dtype, qf->out[k].ndim, sh);
        }
    }
    json_t *cfgj = src->config ? json_deep_copy(src->config) : json_object();
    json_object_set_new(cfgj, "quantization_config", fb_qconfig_to_json(&plan, NULL));
    for (size_t i = 0; i < a.n; i++) a.t[i].name = a.names[i];
    fb_vinput in = {0};
    in.label = "recipe preview";
    in.config = cfgj;
    in.n = a.n;
    in.tensors = a.t;
    in.extra_ignore = raw_ignore;
    in.n_extra_ignore = n_raw;
    fb_validate_opts o2 = o ? *o : (fb_validate_opts){0};
    o2.deep = 0;
    o2.no_values = 1;
    int rc = fb_validate(&in, &o2, out, err);
    char buf[300];
    snprintf(buf, sizeof buf, "recipe preview: %s", out->kind ? out->kind : "?");
    free(out->kind);
    out->kind = fb_strdup(buf);
    if (quantized) *quantized = plan.n_quantized;
    if (kept) *kept = plan.n_kept_modules;
    for (size_t i = 0; i < a.n; i++) free(a.names[i]);
    free(a.names);
    free(a.t);
    json_decref(cfgj);
    fb_plan_free(&plan);
    free(d);
    free(st);
    return rc;
}

int fb_validate_recipe(const fb_ckpt *src, const fb_recipe *r, const fb_validate_opts *o, fb_findings *out,
                       size_t *quantized, size_t *kept, fb_err *err) {
    return preview(src, &r->cfg, (const char *const *)r->cfg.ignore, r->cfg.n_ignore, o, out, quantized, kept, err);
}

int fb_validate_preview(const fb_ckpt *src, const json_t *qc, const fb_validate_opts *o, fb_findings *out,
                        size_t *quantized, size_t *kept, fb_err *err) {
    fb_qconfig cfg;
    fb_err perr;
    if (fb_qconfig_from_json(qc, "recipe quantization_config", &cfg, NULL, NULL, &perr) != 0) {
        fb_vf_add(out, "ct.schema", NULL, NULL, NULL, "%s", perr.msg);
        if (quantized) *quantized = 0;
        if (kept) *kept = 0;
        return 0;
    }
    int rc = preview(src, &cfg, (const char *const *)cfg.ignore, cfg.n_ignore, o, out, quantized, kept, err);
    fb_qconfig_free(&cfg);
    return rc;
}
