// mm.c: MiniMax-M2 config parsing and the scalar f32 kernels of one layer (see mm.h).
#include "calib/mm.h"

#include <math.h>
#include <string.h>

// ---- config ------------------------------------------------------------------------------

static int get_int(const json_t *cfg, const char *key, int required, int def, int lo, int *out,
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

static int get_num(const json_t *cfg, const char *key, double def, double *out, fb_err *err) {
    const json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v)) return fb_fail(err, "config.json: \"%s\" is not a number", key);
    *out = json_number_value(v);
    return 0;
}

static int get_bool(const json_t *cfg, const char *key, int def) {
    const json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) return def;
    if (json_is_boolean(v)) return json_is_true(v);
    if (json_is_integer(v)) return json_integer_value(v) != 0;
    return def;
}

static const char *get_str(const json_t *cfg, const char *key) {
    const json_t *v = json_object_get(cfg, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int fb_mm_config_parse(const json_t *cfg0, fb_mm_config *o, fb_err *err) {
    memset(o, 0, sizeof *o);
    if (!json_is_object(cfg0)) return fb_fail(err, "config.json: not a JSON object");
    const json_t *cfg = cfg0;
    const json_t *tc = json_object_get(cfg0, "text_config");
    if (json_is_object(tc)) cfg = tc;
    struct { const char *key; int required, def, lo; int *dst; } ints[] = {
        {"hidden_size", 1, 0, 1, &o->hidden},
        {"intermediate_size", 1, 0, 1, &o->inter},
        {"num_hidden_layers", 1, 0, 0, &o->n_layers},
        {"num_attention_heads", 1, 0, 1, &o->n_heads},
        {"num_key_value_heads", 0, -1, 1, &o->n_kv_heads},
        {"head_dim", 0, -1, 1, &o->head_dim},
        {"num_local_experts", 1, 0, 1, &o->n_experts},
        {"num_experts_per_tok", 1, 0, 1, &o->top_k},
        {"vocab_size", 1, 0, 1, &o->vocab},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (get_int(cfg, ints[i].key, ints[i].required, ints[i].def, ints[i].lo, ints[i].dst, err))
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
        return fb_fail(err, "config.json: num_experts_per_tok %d > num_local_experts %d",
                       o->top_k, o->n_experts);

    // RoPE: theta and the rotated width, from the top level or rope_parameters/rope_scaling.
    const json_t *rp = json_object_get(cfg, "rope_parameters");
    if (!json_is_object(rp)) rp = NULL;
    double theta = 0, prf = -1;
    if (get_num(cfg, "rope_theta", 0, &theta, err)) return -1;
    if (theta == 0 && rp && get_num(rp, "rope_theta", 0, &theta, err)) return -1;
    if (theta == 0) theta = 5000000.0;  // MiniMaxM2Config's default_theta
    if (!(theta > 0)) return fb_fail(err, "config.json: rope_theta %g is not positive", theta);
    o->rope_theta = theta;
    if (get_num(cfg, "partial_rotary_factor", -1, &prf, err)) return -1;
    if (prf < 0 && rp && get_num(rp, "partial_rotary_factor", -1, &prf, err)) return -1;
    if (rp) {
        const char *rt = get_str(rp, "rope_type");
        if (rt && strcmp(rt, "default") != 0)
            return fb_fail(err, "config.json: rope_type \"%s\" is not supported (default only)", rt);
    }
    int rd = -1;
    if (get_int(cfg, "rotary_dim", 0, -1, 0, &rd, err)) return -1;
    if (rd >= 0 && prf >= 0 && (int)(o->head_dim * prf) != rd)
        return fb_fail(err, "config.json: rotary_dim %d disagrees with partial_rotary_factor %g "
                            "x head_dim %d", rd, prf, o->head_dim);
    if (rd < 0) rd = prf >= 0 ? (int)(o->head_dim * prf) : o->head_dim;
    if (rd > o->head_dim || rd % 2)
        return fb_fail(err, "config.json: rotary width %d is odd or exceeds head_dim %d", rd,
                       o->head_dim);
    o->rotary_dim = rd;

    if (get_num(cfg, "rms_norm_eps", 1e-6, &o->eps, err)) return -1;
    o->use_qk_norm = get_bool(cfg, "use_qk_norm", 1);
    o->use_routing_bias = get_bool(cfg, "use_routing_bias", 1);
    o->tie_embeddings = get_bool(cfg0, "tie_word_embeddings", 0);

    // Things this engine does not compute: refuse rather than compute something else.
    const char *sf = get_str(cfg, "scoring_func");
    if (sf && strcmp(sf, "sigmoid") != 0)
        return fb_fail(err, "config.json: scoring_func \"%s\" is not supported (sigmoid only)", sf);
    const char *qn = get_str(cfg, "qk_norm_type");
    if (o->use_qk_norm && qn && strcmp(qn, "per_layer") != 0)
        return fb_fail(err, "config.json: qk_norm_type \"%s\" is not supported (per_layer only)",
                       qn);
    const char *act = get_str(cfg, "hidden_act");
    if (act && strcmp(act, "silu") != 0)
        return fb_fail(err, "config.json: hidden_act \"%s\" is not supported (silu only)", act);
    if (get_bool(cfg, "attention_bias", 0))
        return fb_fail(err, "config.json: attention_bias is not supported");
    int shared = 0;
    if (get_int(cfg, "shared_intermediate_size", 0, 0, 0, &shared, err)) return -1;
    if (shared) return fb_fail(err, "config.json: shared experts are not supported "
                                    "(shared_intermediate_size %d)", shared);

    const json_t *qc = json_object_get(cfg0, "quantization_config");
    if (json_is_object(qc)) {
        const json_t *bs = json_object_get(qc, "weight_block_size");
        if (json_is_array(bs) && json_array_size(bs) == 2 &&
            json_is_integer(json_array_get(bs, 0)) && json_is_integer(json_array_get(bs, 1))) {
            o->block_m = (int)json_integer_value(json_array_get(bs, 0));
            o->block_n = (int)json_integer_value(json_array_get(bs, 1));
            if (o->block_m <= 0 || o->block_n <= 0)
                return fb_fail(err, "config.json: quantization_config.weight_block_size "
                                    "[%d, %d] is not positive", o->block_m, o->block_n);
        }
    }
    return 0;
}

// ---- kernels -------------------------------------------------------------------------------

void fb_mm_rmsnorm(const float *x, const float *w, float eps, size_t rows, size_t n, float *y) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double ss = 0;
        for (size_t i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
        float var = (float)(ss / (double)n);
        float inv = 1.0f / sqrtf(var + eps);
        for (size_t i = 0; i < n; i++) yr[i] = w[i] * (xr[i] * inv);
    }
}

void fb_mm_rope_inv_freq(double theta, int rotary_dim, float *inv_freq) {
    // torch: 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), all f32.
    float base = (float)theta;
    for (int i = 0; i < rotary_dim / 2; i++) {
        float e = (float)(2 * i) / (float)rotary_dim;
        inv_freq[i] = 1.0f / powf(base, e);
    }
}

void fb_mm_rope(float *x, int n_heads, int head_dim, int rotary_dim, const float *inv_freq,
                int64_t pos) {
    int half = rotary_dim / 2;
    float p = (float)pos;
    for (int i = 0; i < half; i++) {
        float a = p * inv_freq[i];
        float c = cosf(a), s = sinf(a);
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + (size_t)h * head_dim;
            float x1 = xh[i], x2 = xh[i + half];
            // q*cos + rotate_half(q)*sin, rotate_half = cat(-x2, x1)
            xh[i] = x1 * c + (-x2) * s;
            xh[i + half] = x2 * c + x1 * s;
        }
    }
}

void fb_mm_softmax(float *x, size_t n) {
    float m = -INFINITY;
    for (size_t i = 0; i < n; i++) if (x[i] > m) m = x[i];
    float sum = 0;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - m);
        sum += x[i];
    }
    for (size_t i = 0; i < n; i++) x[i] /= sum;
}

void fb_mm_route(const float *logits, const float *bias, int E, int k, int32_t *idx,
                 float *weight, float *scratch) {
    float *s = scratch;
    for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-logits[e]));
    // Selection by s + bias: k passes of an argmax (k is 8; E is 256): strict '>' keeps the
    // lower index on ties. Chosen experts are marked by NaN-free sentinel via a bitmap.
    unsigned char chosen[1024];
    unsigned char *ch = E <= 1024 ? chosen : fb_calloc((size_t)E, 1);
    memset(ch, 0, (size_t)E);
    for (int j = 0; j < k; j++) {
        int best = -1;
        float bv = 0;
        for (int e = 0; e < E; e++) {
            if (ch[e]) continue;
            float v = bias ? s[e] + bias[e] : s[e];
            if (best < 0 || v > bv) { best = e; bv = v; }
        }
        ch[best] = 1;
    }
    int n = 0;
    for (int e = 0; e < E && n < k; e++)
        if (ch[e]) idx[n++] = e;
    float sum = 0;
    for (int j = 0; j < k; j++) sum += s[idx[j]];
    for (int j = 0; j < k; j++) weight[j] = s[idx[j]] / sum;
    if (ch != chosen) free(ch);
}

void fb_mm_swiglu(const float *g, const float *u, size_t n, float *out) {
    for (size_t i = 0; i < n; i++) {
        float x = g[i];
        out[i] = (x / (1.0f + expf(-x))) * u[i];
    }
}
