// arch.c: the architecture registry, module names by role, and the config.json helpers the
// family files share (see arch.h).
#include "arch/arch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- the registry: one line per family -------------------------------------------------------

extern const fb_arch fb_arch_minimax_m2;
extern const fb_arch fb_arch_qwen3_moe;

static const fb_arch *const ARCHS[] = {
    &fb_arch_minimax_m2,
    &fb_arch_qwen3_moe,
    NULL,
};

const fb_arch *const *fb_arch_all(void) { return ARCHS; }

const fb_arch *fb_arch_by_name(const char *model_type) {
    if (!model_type) return NULL;
    for (size_t i = 0; ARCHS[i]; i++)
        if (strcmp(ARCHS[i]->name, model_type) == 0) return ARCHS[i];
    return NULL;
}

static const fb_arch *by_class(const char *cls) {
    for (size_t i = 0; ARCHS[i]; i++)
        for (size_t j = 0; ARCHS[i]->classes[j]; j++)
            if (strcmp(ARCHS[i]->classes[j], cls) == 0) return ARCHS[i];
    return NULL;
}

const fb_arch *fb_arch_from_config(const json_t *cfg, fb_err *err) {
    if (!json_is_object(cfg)) return fb_fail(err, "config.json: not a JSON object"), NULL;
    const json_t *ar = json_object_get(cfg, "architectures");
    const char *cls = json_is_array(ar) ? json_string_value(json_array_get(ar, 0)) : NULL;
    if (cls) {
        const fb_arch *a = by_class(cls);
        if (a) return a;
    }
    const char *mt = json_string_value(json_object_get(cfg, "model_type"));
    const json_t *tc = json_object_get(cfg, "text_config");
    if (!fb_arch_by_name(mt) && json_is_object(tc))
        mt = json_string_value(json_object_get(tc, "model_type"));
    const fb_arch *a = fb_arch_by_name(mt);
    if (a) return a;
    char known[512] = "";
    size_t k = 0;
    for (size_t i = 0; ARCHS[i]; i++)
        for (size_t j = 0; ARCHS[i]->classes[j]; j++)
            k += (size_t)snprintf(known + k, k < sizeof known ? sizeof known - k : 0, "%s%s",
                                  k ? ", " : "", ARCHS[i]->classes[j]);
    fb_fail(err, "config.json: architecture %s%s%s (model_type %s%s%s) is not supported; known: %s",
            cls ? "\"" : "", cls ? cls : "(none)", cls ? "\"" : "", mt ? "\"" : "",
            mt ? mt : "(none)", mt ? "\"" : "", known);
    return NULL;
}

int fb_model_config_parse(const json_t *cfg, fb_model_config *out, fb_err *err) {
    memset(out, 0, sizeof *out);
    const fb_arch *a = fb_arch_from_config(cfg, err);
    if (!a) return -1;
    if (a->parse_config(cfg, out, err)) return -1;
    if (fb_cfg_refuse_nonuniform(cfg, err)) return -1;
    if (out->top_k > 64)
        return fb_fail(err, "config.json: %d experts per token (at most 64 are supported)",
                       out->top_k);
    out->arch = a;
    return 0;
}

// ---- names -----------------------------------------------------------------------------------

static const struct { const char *name; fb_scope scope; int linear; } ROLES[FB_ROLE_COUNT] = {
    [FB_ROLE_EMBED] = {"embed", FB_SCOPE_MODEL, 0},
    [FB_ROLE_FINAL_NORM] = {"final_norm", FB_SCOPE_MODEL, 0},
    [FB_ROLE_LM_HEAD] = {"lm_head", FB_SCOPE_MODEL, 0},
    [FB_ROLE_LN_IN] = {"input_norm", FB_SCOPE_LAYER, 0},
    [FB_ROLE_LN_POST] = {"post_attention_norm", FB_SCOPE_LAYER, 0},
    [FB_ROLE_Q] = {"q_proj", FB_SCOPE_LAYER, 1},
    [FB_ROLE_K] = {"k_proj", FB_SCOPE_LAYER, 1},
    [FB_ROLE_V] = {"v_proj", FB_SCOPE_LAYER, 1},
    [FB_ROLE_O] = {"o_proj", FB_SCOPE_LAYER, 1},
    [FB_ROLE_Q_NORM] = {"q_norm", FB_SCOPE_LAYER, 0},
    [FB_ROLE_K_NORM] = {"k_norm", FB_SCOPE_LAYER, 0},
    [FB_ROLE_ROUTER] = {"router", FB_SCOPE_LAYER, 0},
    [FB_ROLE_ROUTER_BIAS] = {"router_bias", FB_SCOPE_LAYER, 0},
    [FB_ROLE_W_GATE] = {"w_gate", FB_SCOPE_EXPERT, 1},
    [FB_ROLE_W_UP] = {"w_up", FB_SCOPE_EXPERT, 1},
    [FB_ROLE_W_DOWN] = {"w_down", FB_SCOPE_EXPERT, 1},
};

fb_scope fb_role_scope(fb_role r) { return ROLES[r].scope; }
const char *fb_role_name(fb_role r) { return (unsigned)r < FB_ROLE_COUNT ? ROLES[r].name : "?"; }
int fb_role_is_linear(fb_role r) { return (unsigned)r < FB_ROLE_COUNT && ROLES[r].linear; }

static int put(char *buf, size_t n, int k) { return k < 0 || (size_t)k >= n ? -1 : 0; }

int fb_arch_block(const fb_arch *a, fb_block b, int layer, char *buf, size_t n) {
    const char *rel = a->block[b];
    return put(buf, n, snprintf(buf, n, "%s.%d%s%s", a->layers, layer, *rel ? "." : "", rel));
}

int fb_arch_module(const fb_arch *a, fb_role r, int layer, int expert, char *buf, size_t n) {
    if ((unsigned)r >= FB_ROLE_COUNT || !a->role[r].path) return -1;
    const char *p = a->role[r].path;
    switch (ROLES[r].scope) {
    case FB_SCOPE_MODEL: return put(buf, n, snprintf(buf, n, "%s", p));
    case FB_SCOPE_LAYER: return put(buf, n, snprintf(buf, n, "%s.%d.%s", a->layers, layer, p));
    case FB_SCOPE_EXPERT:
        return put(buf, n, snprintf(buf, n, "%s.%d.%s.%d.%s", a->layers, layer,
                                    a->block[FB_BLOCK_EXPERTS], expert, p));
    }
    return -1;
}

int fb_arch_tensor(const fb_arch *a, fb_role r, int layer, int expert, char *buf, size_t n) {
    if (fb_arch_module(a, r, layer, expert, buf, n)) return -1;
    if (a->role[r].is_param) return 0;
    size_t k = strlen(buf);
    return put(buf + k, n - k, snprintf(buf + k, n - k, ".weight"));
}

// Reads a decimal index without sign or leading zeros (as PyTorch names them); advances *s.
static int index_at(const char **s, int *out) {
    const char *p = *s;
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9')) return -1;
    long v = 0;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (*p++ - '0');
        if (v > 1 << 24) return -1;
    }
    *out = (int)v;
    *s = p;
    return 0;
}

// Consumes "<lit>" then "." (or the end when last). Returns 1 on a match.
static int eat(const char **s, const char *lit) {
    size_t n = strlen(lit);
    if (strncmp(*s, lit, n) != 0) return 0;
    *s += n;
    return 1;
}

int fb_arch_parse(const fb_arch *a, const char *m, fb_role *r, int *layer, int *expert) {
    *layer = *expert = -1;
    for (int i = 0; i < FB_ROLE_COUNT; i++)
        if (ROLES[i].scope == FB_SCOPE_MODEL && a->role[i].path && !strcmp(m, a->role[i].path)) {
            *r = (fb_role)i;
            return 0;
        }
    const char *s = m;
    int l, e;
    if (!eat(&s, a->layers) || !eat(&s, ".") || index_at(&s, &l) || !eat(&s, ".")) return -1;
    const char *ex = a->block[FB_BLOCK_EXPERTS];
    const char *t = s;
    if (eat(&t, ex) && eat(&t, ".") && index_at(&t, &e) == 0 && eat(&t, ".")) {
        for (int i = 0; i < FB_ROLE_COUNT; i++)
            if (ROLES[i].scope == FB_SCOPE_EXPERT && a->role[i].path && !strcmp(t, a->role[i].path)) {
                *r = (fb_role)i;
                *layer = l;
                *expert = e;
                return 0;
            }
        return -1;
    }
    for (int i = 0; i < FB_ROLE_COUNT; i++)
        if (ROLES[i].scope == FB_SCOPE_LAYER && a->role[i].path && !strcmp(s, a->role[i].path)) {
            *r = (fb_role)i;
            *layer = l;
            return 0;
        }
    return -1;
}

// ---- config.json helpers ---------------------------------------------------------------------

int fb_cfg_int(const json_t *cfg, const char *key, int required, int def, int lo, int *out,
               fb_err *err) {
    const json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) {
        if (required) return fb_fail(err, "config.json: missing required key \"%s\"", key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v)) return fb_fail(err, "config.json: \"%s\" is not an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > (json_int_t)1 << 30)
        return fb_fail(err, "config.json: \"%s\" = %lld is out of range", key, (long long)x);
    *out = (int)x;
    return 0;
}

int fb_cfg_num(const json_t *cfg, const char *key, double def, double *out, fb_err *err) {
    const json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v)) return fb_fail(err, "config.json: \"%s\" is not a number", key);
    *out = json_number_value(v);
    return 0;
}

int fb_cfg_bool(const json_t *cfg, const char *key, int def) {
    const json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) return def;
    if (json_is_boolean(v)) return json_is_true(v);
    if (json_is_integer(v)) return json_integer_value(v) != 0;
    return def;
}

const char *fb_cfg_str(const json_t *cfg, const char *key) {
    const json_t *v = json_object_get(cfg, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int fb_cfg_dims(const json_t *cfg, const char *key_inter, const char *key_experts, fb_model_config *o,
                fb_err *err) {
    struct { const char *key; int required, def, lo; int *dst; } ints[] = {
        {"hidden_size", 1, 0, 1, &o->hidden},
        {key_inter, 1, 0, 1, &o->inter},
        {"num_hidden_layers", 1, 0, 0, &o->n_layers},
        {"num_attention_heads", 1, 0, 1, &o->n_heads},
        {"num_key_value_heads", 0, -1, 1, &o->n_kv_heads},
        {"head_dim", 0, -1, 1, &o->head_dim},
        {key_experts, 1, 0, 1, &o->n_experts},
        {"num_experts_per_tok", 1, 0, 1, &o->top_k},
        {"vocab_size", 1, 0, 1, &o->vocab},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (fb_cfg_int(cfg, ints[i].key, ints[i].required, ints[i].def, ints[i].lo, ints[i].dst, err))
            return -1;
    if (o->n_kv_heads < 0) o->n_kv_heads = o->n_heads;
    if (o->head_dim < 0) {
        if (o->hidden % o->n_heads)
            return fb_fail(err, "config.json: no head_dim and hidden_size %d is not a multiple "
                                "of num_attention_heads %d", o->hidden, o->n_heads);
        o->head_dim = o->hidden / o->n_heads;
    }
    if (o->n_heads % o->n_kv_heads)
        return fb_fail(err, "config.json: num_attention_heads %d is not a multiple of "
                            "num_key_value_heads %d", o->n_heads, o->n_kv_heads);
    if (o->top_k > o->n_experts)
        return fb_fail(err, "config.json: num_experts_per_tok %d > %s %d", o->top_k, key_experts,
                       o->n_experts);
    return 0;
}

static const json_t *moe_sparsity(const json_t *cfg) {
    const json_t *qc = json_object_get(cfg, "quantization_config");
    const json_t *ms = json_is_object(qc) ? json_object_get(qc, "moe_sparsity_config") : NULL;
    if (!ms || json_is_null(ms)) ms = json_object_get(cfg, "moe_sparsity_config");
    return ms && !json_is_null(ms) ? ms : NULL;
}

int fb_cfg_expert_counts(const json_t *cfg, int n_layers, int *counts, fb_err *err) {
    const json_t *ms = cfg ? moe_sparsity(cfg) : NULL;
    if (!ms) return 0;
    if (!json_is_object(ms)) return fb_fail(err, "config.json: moe_sparsity_config is not an object");
    const char *m = fb_cfg_str(ms, "method");
    if (!m || (strcmp(m, "prune") && strcmp(m, "novice")))
        return fb_fail(err, "config.json: moe_sparsity_config.method is %s%s%s, not \"prune\" or \"novice\"", m ? "\"" : "",
                       m ? m : "absent", m ? "\"" : "");
    const json_t *ne = json_object_get(ms, "num_experts");
    if (!json_is_array(ne) || n_layers < 0 || json_array_size(ne) != (size_t)n_layers)
        return fb_fail(err, "config.json: moe_sparsity_config.num_experts must be a list of %d entries "
                            "(one per decoder layer), got %s%zu", n_layers, json_is_array(ne) ? "" : "no list, ",
                       json_is_array(ne) ? json_array_size(ne) : 0);
    for (int l = 0; l < n_layers; l++) {
        const json_t *x = json_array_get(ne, (size_t)l);
        int v = -1;
        if (json_is_integer(x) && json_integer_value(x) >= 1 && json_integer_value(x) <= (1 << 20))
            v = (int)json_integer_value(x);
        else if (!json_is_null(x))
            return fb_fail(err, "config.json: moe_sparsity_config.num_experts[%d] is not null or an integer in [1, 2^20]", l);
        if (counts) counts[l] = v;
    }
    return 1;
}

int fb_cfg_refuse_nonuniform(const json_t *cfg, fb_err *err) {
    const json_t *ms = cfg ? moe_sparsity(cfg) : NULL;
    if (!ms) return 0;
    int n = json_is_object(ms) && json_is_array(json_object_get(ms, "num_experts"))
                ? (int)json_array_size(json_object_get(ms, "num_experts")) : 0;
    int *c = fb_malloc(((size_t)n + 1) * sizeof *c);
    int rc = fb_cfg_expert_counts(cfg, n, c, err);
    if (rc == 1) {
        rc = 0;
        int first = -1;
        for (int l = 0; l < n && !rc; l++) {
            if (c[l] < 0) continue;
            if (first < 0) first = l;
            else if (c[l] != c[first])
                rc = fb_fail(err, "config.json: moe_sparsity_config gives per-layer expert counts (layer %d: %d, layer %d: "
                                  "%d, ...): the engines build every layer with one expert count, as vLLM does; "
                                  "not supported (prune with the same count in every layer: reap-prune without --per-layer)",
                             first, c[first], l, c[l]);
        }
    }
    free(c);
    return rc;
}

int fb_cfg_rope(const json_t *cfg, double default_theta, fb_model_config *o, fb_err *err) {
    const json_t *rp = json_object_get(cfg, "rope_parameters");
    if (!json_is_object(rp)) rp = NULL;
    double theta = 0, prf = -1;
    if (fb_cfg_num(cfg, "rope_theta", 0, &theta, err)) return -1;
    if (theta == 0 && rp && fb_cfg_num(rp, "rope_theta", 0, &theta, err)) return -1;
    if (theta == 0) theta = default_theta;
    if (!(theta > 0)) return fb_fail(err, "config.json: rope_theta %g is not positive", theta);
    o->rope_theta = theta;
    if (fb_cfg_num(cfg, "partial_rotary_factor", -1, &prf, err)) return -1;
    if (prf < 0 && rp && fb_cfg_num(rp, "partial_rotary_factor", -1, &prf, err)) return -1;
    if (prf != -1 && !(prf > 0 && prf <= 1))
        return fb_fail(err, "config.json: partial_rotary_factor %g is not in (0, 1]", prf);
    const json_t *rs = json_object_get(cfg, "rope_scaling");
    if (rp || json_is_object(rs)) {
        const char *rt = fb_cfg_str(rp ? rp : rs, "rope_type");
        if (!rt && !rp) rt = fb_cfg_str(rs, "type");
        if (rt && strcmp(rt, "default") != 0)
            return fb_fail(err, "config.json: rope_type \"%s\" is not supported (default only)", rt);
    }
    int rd = -1;
    if (fb_cfg_int(cfg, "rotary_dim", 0, -1, 0, &rd, err)) return -1;
    if (rd >= 0 && prf >= 0 && (int)(o->head_dim * prf) != rd)
        return fb_fail(err, "config.json: rotary_dim %d disagrees with partial_rotary_factor %g "
                            "x head_dim %d", rd, prf, o->head_dim);
    if (rd < 0) rd = prf >= 0 ? (int)(o->head_dim * prf) : o->head_dim;
    if (rd > o->head_dim || rd % 2)
        return fb_fail(err, "config.json: rotary width %d is odd or exceeds head_dim %d", rd,
                       o->head_dim);
    o->rotary_dim = rd;
    return 0;
}

int fb_cfg_fp8_block(const json_t *cfg0, fb_model_config *o, fb_err *err) {
    const json_t *qc = json_object_get(cfg0, "quantization_config");
    if (!json_is_object(qc)) return 0;
    const json_t *bs = json_object_get(qc, "weight_block_size");
    if (json_is_array(bs) && json_array_size(bs) == 2 && json_is_integer(json_array_get(bs, 0)) &&
        json_is_integer(json_array_get(bs, 1))) {
        json_int_t bm = json_integer_value(json_array_get(bs, 0));
        json_int_t bn = json_integer_value(json_array_get(bs, 1));
        if (bm <= 0 || bn <= 0 || bm > 1 << 20 || bn > 1 << 20)
            return fb_fail(err, "config.json: quantization_config.weight_block_size "
                                "[%lld, %lld] is not in [1, 2^20]", (long long)bm, (long long)bn);
        o->block_m = (int)bm;
        o->block_n = (int)bn;
    }
    return 0;
}
