// scheme.c: quantization schemes, the plan (the one quantize/keep predicate) and the
// quantization_config JSON. See scheme.h; sources are compressed-tensors 0.18.0
// (quantization/quant_args.py, quant_scheme.py, quant_config.py, compressors/format.py) and
// auto-round 0.16 (utils/model_free_utils.py::_build_quantization_config).
#include "quant/scheme.h"
#include "common/cancel.h"

#include "common/strmap.h"

#include <ctype.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

// ---- enum tables -------------------------------------------------------------------------

static const char *const FORMAT_NAMES[FB_FMT_COUNT] = {
    [FB_FMT_NONE] = "",
    [FB_FMT_MXFP4] = "mxfp4-pack-quantized",
    [FB_FMT_MXFP8] = "mxfp8-quantized",
    [FB_FMT_NVFP4] = "nvfp4-pack-quantized",
    [FB_FMT_INT_QUANTIZED] = "int-quantized",
    [FB_FMT_PACK] = "pack-quantized",
    [FB_FMT_FLOAT_QUANTIZED] = "float-quantized",
    [FB_FMT_NAIVE] = "naive-quantized",
    [FB_FMT_DENSE] = "dense",
    [FB_FMT_MIXED] = "mixed-precision",
};

// Other CompressionFormat values compressed-tensors accepts in a scheme; fourbit parses them
// (a checkpoint may declare them) but never infers or writes them.
static const char *const OTHER_FORMATS[] = {"sparse-bitmask", "marlin-24", "sparse-24-bitmask",
                                             "nvfp4-e5m3-pack-quantized"};

const char *fb_qformat_name(fb_qformat f) {
    FB_ASSERT(f >= 0 && f < FB_FMT_COUNT);
    return FORMAT_NAMES[f];
}

int fb_qformat_from_name(const char *s, fb_qformat *out) {
    for (int i = 1; i < FB_FMT_COUNT; i++)
        if (strcmp(s, FORMAT_NAMES[i]) == 0) {
            *out = (fb_qformat)i;
            return 0;
        }
    return -1;
}

static const char *const STRATEGY_NAMES[] = {
    [FB_QS_NONE] = NULL, [FB_QS_TENSOR] = "tensor", [FB_QS_CHANNEL] = "channel",
    [FB_QS_GROUP] = "group", [FB_QS_BLOCK] = "block", [FB_QS_TOKEN] = "token",
    [FB_QS_TENSOR_GROUP] = "tensor_group", [FB_QS_ATTN_HEAD] = "attn_head",
};
static const char *const ACTORDER_NAMES[] = {
    [FB_AO_NONE] = NULL, [FB_AO_GROUP] = "group", [FB_AO_WEIGHT] = "weight",
    [FB_AO_DYNAMIC] = "dynamic", [FB_AO_STATIC] = "static",
};

// torch dtype names TorchDtype accepts ("torch." optional), with the canonical str(dtype).
static const struct { const char *name, *canon; } DTYPES[] = {
    {"float8_e4m3fn", "torch.float8_e4m3fn"}, {"float8_e5m2", "torch.float8_e5m2"},
    {"float8_e8m0fnu", "torch.float8_e8m0fnu"}, {"float8_e4m3fnuz", "torch.float8_e4m3fnuz"},
    {"float8_e5m2fnuz", "torch.float8_e5m2fnuz"}, {"float4_e2m1fn_x2", "torch.float4_e2m1fn_x2"},
    {"bfloat16", "torch.bfloat16"}, {"float16", "torch.float16"}, {"half", "torch.float16"},
    {"float32", "torch.float32"}, {"float", "torch.float32"}, {"float64", "torch.float64"},
    {"double", "torch.float64"}, {"uint8", "torch.uint8"}, {"int8", "torch.int8"},
    {"int16", "torch.int16"}, {"short", "torch.int16"}, {"int32", "torch.int32"},
    {"int", "torch.int32"}, {"int64", "torch.int64"}, {"long", "torch.int64"},
    {"uint16", "torch.uint16"}, {"uint32", "torch.uint32"}, {"uint64", "torch.uint64"},
    {"bool", "torch.bool"},
};

static const char *dtype_canon(const char *s) {
    if (strncmp(s, "torch.", 6) == 0) s += 6;
    for (size_t i = 0; i < NELEM(DTYPES); i++)
        if (strcmp(s, DTYPES[i].name) == 0) return DTYPES[i].canon;
    return NULL;
}

// ---- QuantizationArgs ----------------------------------------------------------------------

void fb_qargs_init(fb_qargs *a) {
    memset(a, 0, sizeof *a);
    a->num_bits = 8;
    a->type = FB_QT_INT;
    a->symmetric = 1;
}

void fb_qargs_free(fb_qargs *a) {
    if (a->observer_kwargs) json_decref(a->observer_kwargs);
    a->observer_kwargs = NULL;
}

void fb_qargs_copy(fb_qargs *dst, const fb_qargs *src) {
    *dst = *src;
    dst->observer_kwargs = src->observer_kwargs ? json_deep_copy(src->observer_kwargs) : NULL;
}

static void setstr(char *dst, size_t n, const char *s) { snprintf(dst, n, "%s", s ? s : ""); }

int fb_qargs_finalize(fb_qargs *a, const char *what, fb_err *err) {
    if (a->group_size < -1)
        return fb_fail(err, "%s: invalid group size %d (use group_size > 0 for strategy 'group' "
                            "and -1 for 'channel')", what, a->group_size);
    fb_qstrategy st = a->strategy;
    if (st == FB_QS_NONE) {  // infer strategy (quant_args.py validate_model_after)
        if (a->group_size == 0) st = FB_QS_TENSOR;
        else if (a->group_size > 0) st = FB_QS_GROUP;
        else st = FB_QS_CHANNEL;
    }
    if (st == FB_QS_TOKEN && a->dynamic == FB_DYN_FALSE)
        return fb_fail(err, "%s: cannot perform static token quantization, use dynamic: true", what);
    if ((st == FB_QS_GROUP || st == FB_QS_TENSOR_GROUP) && a->group_size <= 0)
        return fb_fail(err, "%s: strategy %s requires group_size to be set to a positive value",
                       what, STRATEGY_NAMES[st]);
    if (a->group_size > 0 && st != FB_QS_GROUP && st != FB_QS_TENSOR_GROUP)
        return fb_fail(err, "%s: group_size requires strategy to be set to 'group'", what);
    int has_block = a->block_structure[0] > 0;
    if (st == FB_QS_BLOCK && !has_block)
        return fb_fail(err, "%s: block strategy requires block_structure", what);
    if (has_block && st != FB_QS_BLOCK)
        return fb_fail(err, "%s: block_structure requires strategy 'block'", what);
    if ((a->actorder == FB_AO_GROUP || a->actorder == FB_AO_DYNAMIC) && st != FB_QS_GROUP &&
        st != FB_QS_TENSOR_GROUP)
        return fb_fail(err, "%s: group activation ordering needs strategy group or tensor_group",
                       what);
    if (a->dynamic != FB_DYN_FALSE) {
        if (st != FB_QS_TOKEN && st != FB_QS_TENSOR && st != FB_QS_TENSOR_GROUP &&
            st != FB_QS_GROUP)
            return fb_fail(err, "%s: dynamic quantization needs strategy token, tensor, "
                                "tensor_group or group", what);
        if (a->dynamic == FB_DYN_LOCAL && st != FB_QS_TENSOR_GROUP)
            return fb_fail(err, "%s: dynamic 'local' is only supported for strategy tensor_group",
                           what);
        if (a->observer[0]) {
            if (a->dynamic == FB_DYN_TRUE) a->observer[0] = 0;  // "No observer is used"
        } else if (a->dynamic == FB_DYN_LOCAL) {
            setstr(a->observer, sizeof a->observer, "minmax");
        }
    } else if (!a->observer[0]) {
        setstr(a->observer, sizeof a->observer, "memoryless_minmax");
    }
    if (!a->zp_dtype[0]) {
        if (a->num_bits == 4 && a->type == FB_QT_FLOAT)
            setstr(a->zp_dtype, sizeof a->zp_dtype, "torch.float8_e4m3fn");
        else if (a->type == FB_QT_FLOAT) {
            if (a->num_bits != 8)
                return fb_fail(err, "%s: float quantization supports num_bits 4 or 8, not %d",
                               what, a->num_bits);
            setstr(a->zp_dtype, sizeof a->zp_dtype, "torch.float8_e4m3fn");
        } else {
            setstr(a->zp_dtype, sizeof a->zp_dtype,
                   a->num_bits <= 8 ? "torch.int8" : a->num_bits <= 16 ? "torch.int16"
                                                                       : "torch.int32");
        }
    }
    a->strategy = st;
    if (!a->observer_kwargs) a->observer_kwargs = json_object();
    return 0;
}

int fb_qargs_equal(const fb_qargs *a, const fb_qargs *b) {
    json_t *ja = fb_qargs_to_json(a), *jb = fb_qargs_to_json(b);
    int eq = json_equal(ja, jb);
    json_decref(ja);
    json_decref(jb);
    return eq;
}

json_t *fb_qargs_to_json(const fb_qargs *a) {
    json_t *o = json_object();
    json_object_set_new(o, "num_bits", json_integer(a->num_bits));
    json_object_set_new(o, "type", json_string(a->type == FB_QT_FLOAT ? "float" : "int"));
    json_object_set_new(o, "symmetric", json_boolean(a->symmetric));
    json_object_set_new(o, "group_size", a->group_size ? json_integer(a->group_size) : json_null());
    json_object_set_new(o, "strategy",
                        a->strategy ? json_string(STRATEGY_NAMES[a->strategy]) : json_null());
    if (a->block_structure[0] > 0)
        json_object_set_new(o, "block_structure",
                            json_pack("[ii]", a->block_structure[0], a->block_structure[1]));
    else
        json_object_set_new(o, "block_structure", json_null());
    json_object_set_new(o, "dynamic", a->dynamic == FB_DYN_LOCAL ? json_string("local")
                                                                 : json_boolean(a->dynamic));
    json_object_set_new(o, "actorder",
                        a->actorder ? json_string(ACTORDER_NAMES[a->actorder]) : json_null());
    json_object_set_new(o, "scale_dtype", a->scale_dtype[0] ? json_string(a->scale_dtype) : json_null());
    // serialize_dtype: zp_dtype is written only for asymmetric args
    json_object_set_new(o, "zp_dtype", (!a->symmetric && a->zp_dtype[0]) ? json_string(a->zp_dtype)
                                                                         : json_null());
    json_object_set_new(o, "observer", a->observer[0] ? json_string(a->observer) : json_null());
    json_object_set_new(o, "observer_kwargs",
                        a->observer_kwargs ? json_deep_copy(a->observer_kwargs) : json_object());
    return o;
}

// ---- strict JSON parsing (pydantic extra="forbid") -----------------------------------------

typedef struct pctx {
    char *where;
    size_t where_n;
    fb_err *err;
} pctx;

static const char *jtype(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "a mapping";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static int pfail(pctx *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int pfail(pctx *c, const char *path, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->where) snprintf(c->where, c->where_n, "%s", path);
    return fb_fail(c->err, "%s: %s", path, msg);
}

static void subpath(char *out, size_t n, const char *path, const char *key) {
    snprintf(out, n, "%s%s%s", path, path[0] ? "." : "", key);
}

// Looks up a string in a NULL-terminated-by-count table, case-insensitively (the enum
// validators lower() the value first). Returns index or -1.
static int enum_lookup(const char *const *names, int n, const char *s) {
    for (int i = 0; i < n; i++)
        if (names[i] && strcasecmp(names[i], s) == 0) return i;
    return -1;
}

static int parse_int(pctx *c, const char *p, const json_t *v, int *out) {
    if (!json_is_integer(v)) return pfail(c, p, "expected an integer, got %s", jtype(v));
    json_int_t x = json_integer_value(v);
    if (x < -1000000 || x > 1000000) return pfail(c, p, "integer %lld out of range", (long long)x);
    *out = (int)x;
    return 0;
}

static int parse_str(pctx *c, const char *p, const json_t *v, const char **out) {
    if (!json_is_string(v)) return pfail(c, p, "expected a string, got %s", jtype(v));
    *out = json_string_value(v);
    return 0;
}

// The fields of compressed-tensors' pydantic models: one list each, read by this parser and by
// the validator's schema check (validate_pass.c).
const char *const fb_ct_args_keys[] = {"num_bits", "type", "symmetric", "group_size", "strategy",
                                       "block_structure", "dynamic", "actorder", "scale_dtype",
                                       "zp_dtype", "observer", "observer_kwargs", NULL};
const char *const fb_ct_scheme_keys[] = {"targets", "weights", "input_activations",
                                         "output_activations", "format", NULL};
const char *const fb_ct_config_keys[] = {"config_groups", "quant_method", "kv_cache_scheme", "format",
                                         "quantization_status", "global_compression_ratio", "ignore",
                                         "run_compressed", NULL};
const char *const fb_ct_config_writer_keys[] = {"version", "sparsity_config", "transform_config", NULL};
#define QARGS_KEYS fb_ct_args_keys

static int qargs_parse(pctx *c, const json_t *o, const char *path, fb_qargs *a) {
    fb_qargs_init(a);
    if (!json_is_object(o)) return pfail(c, path, "expected a mapping of quantization args, got %s",
                                         jtype(o));
    const char *k;
    json_t *v;
    char p[512];
    json_object_foreach((json_t *)o, k, v) {
        subpath(p, sizeof p, path, k);
        int ki = -1;
        for (size_t i = 0; QARGS_KEYS[i]; i++)
            if (strcmp(k, QARGS_KEYS[i]) == 0) ki = (int)i;
        if (ki < 0)
            return pfail(c, p, "unknown key '%s' (QuantizationArgs accepts: num_bits, type, "
                               "symmetric, group_size, strategy, block_structure, dynamic, "
                               "actorder, scale_dtype, zp_dtype, observer, observer_kwargs)", k);
        const char *s = NULL;
        switch (ki) {
        case 0:
            if (parse_int(c, p, v, &a->num_bits)) return -1;
            if (a->num_bits < 1 || a->num_bits > 64) return pfail(c, p, "num_bits %d out of range", a->num_bits);
            break;
        case 1:
            if (parse_str(c, p, v, &s)) return -1;
            if (strcasecmp(s, "int") == 0) a->type = FB_QT_INT;
            else if (strcasecmp(s, "float") == 0) a->type = FB_QT_FLOAT;
            else return pfail(c, p, "type must be 'int' or 'float', not '%s'", s);
            break;
        case 2:
            if (!json_is_boolean(v)) return pfail(c, p, "expected a boolean, got %s", jtype(v));
            a->symmetric = json_is_true(v);
            break;
        case 3:
            if (json_is_null(v)) a->group_size = 0;
            else if (parse_int(c, p, v, &a->group_size)) return -1;
            else if (a->group_size == 0) return pfail(c, p, "group_size 0 is invalid (use null)");
            break;
        case 4:
            if (json_is_null(v)) { a->strategy = FB_QS_NONE; break; }
            if (parse_str(c, p, v, &s)) return -1;
            {
                int e = enum_lookup(STRATEGY_NAMES, (int)NELEM(STRATEGY_NAMES), s);
                if (e < 0) return pfail(c, p, "unknown strategy '%s' (tensor, channel, group, "
                                              "block, token, tensor_group, attn_head)", s);
                a->strategy = (fb_qstrategy)e;
            }
            break;
        case 5:
            if (json_is_null(v)) break;
            if (json_is_string(v)) {
                int r, cc;
                char x;
                if (sscanf(json_string_value(v), "%d%c%d", &r, &x, &cc) != 3 || x != 'x' || r <= 0 || cc <= 0)
                    return pfail(c, p, "invalid block_structure '%s': must be [rows, cols]",
                                 json_string_value(v));
                a->block_structure[0] = r;
                a->block_structure[1] = cc;
                break;
            }
            if (!json_is_array(v) || json_array_size(v) != 2 ||
                !json_is_integer(json_array_get(v, 0)) || !json_is_integer(json_array_get(v, 1)) ||
                json_integer_value(json_array_get(v, 0)) <= 0 ||
                json_integer_value(json_array_get(v, 1)) <= 0 ||
                json_integer_value(json_array_get(v, 0)) > 1 << 20 ||
                json_integer_value(json_array_get(v, 1)) > 1 << 20)
                return pfail(c, p, "invalid block_structure: must be a list of two positive ints");
            a->block_structure[0] = (int)json_integer_value(json_array_get(v, 0));
            a->block_structure[1] = (int)json_integer_value(json_array_get(v, 1));
            break;
        case 6:
            if (json_is_boolean(v)) a->dynamic = json_is_true(v) ? FB_DYN_TRUE : FB_DYN_FALSE;
            else if (json_is_string(v) && strcasecmp(json_string_value(v), "local") == 0)
                a->dynamic = FB_DYN_LOCAL;
            else return pfail(c, p, "dynamic must be true, false or 'local', got %s", jtype(v));
            break;
        case 7:
            if (json_is_null(v) || json_is_false(v)) a->actorder = FB_AO_NONE;
            else if (json_is_true(v)) a->actorder = FB_AO_GROUP;
            else if (json_is_string(v)) {
                int e = enum_lookup(ACTORDER_NAMES, (int)NELEM(ACTORDER_NAMES), json_string_value(v));
                if (e < 0) return pfail(c, p, "unknown actorder '%s' (group, weight, dynamic, static)",
                                        json_string_value(v));
                a->actorder = (fb_qactorder)e;
            } else return pfail(c, p, "actorder must be a string, boolean or null, got %s", jtype(v));
            break;
        case 8:
        case 9: {
            char *dst = ki == 8 ? a->scale_dtype : a->zp_dtype;
            if (json_is_null(v)) { dst[0] = 0; break; }
            if (parse_str(c, p, v, &s)) return -1;
            const char *canon = dtype_canon(s);
            if (!canon) return pfail(c, p, "no such torch dtype '%s'", s);
            setstr(dst, 32, canon);
            break;
        }
        case 10:
            if (json_is_null(v)) { a->observer[0] = 0; break; }
            if (parse_str(c, p, v, &s)) return -1;
            if (strlen(s) >= sizeof a->observer) return pfail(c, p, "observer name too long");
            setstr(a->observer, sizeof a->observer, s);
            break;
        case 11:
            if (!json_is_object(v)) return pfail(c, p, "expected a mapping, got %s", jtype(v));
            if (a->observer_kwargs) json_decref(a->observer_kwargs);
            a->observer_kwargs = json_deep_copy(v);
            break;
        }
    }
    fb_err e2;
    if (fb_qargs_finalize(a, path, &e2)) {
        if (c->where) snprintf(c->where, c->where_n, "%s", path);
        fb_qargs_free(a);
        return fb_fail(c->err, "%s", e2.msg);
    }
    return 0;
}

int fb_qargs_from_json_where(const json_t *o, const char *path, fb_qargs *out, char *where,
                             size_t where_n, fb_err *err) {
    pctx c = {where, where_n, err};
    if (qargs_parse(&c, o, path, out)) {
        fb_qargs_free(out);
        return -1;
    }
    return 0;
}

int fb_qargs_from_json(const json_t *o, const char *path, fb_qargs *out, fb_err *err) {
    return fb_qargs_from_json_where(o, path, out, NULL, 0, err);
}

// ---- QuantizationScheme --------------------------------------------------------------------

int fb_qscheme_compile(fb_qscheme *s, fb_err *err) {
    fb_target_list_free(&s->tl);
    if (fb_target_list_compile((const char *const *)s->targets, s->n_targets, &s->tl, NULL, NULL,
                               err))
        return fb_err_prefix(err, "group %s: targets", s->name);
    return 0;
}

void fb_qscheme_free(fb_qscheme *s) {
    if (!s) return;
    free(s->name);
    for (size_t i = 0; i < s->n_targets; i++) free(s->targets[i]);
    free(s->targets);
    fb_target_list_free(&s->tl);
    if (s->has_weights) fb_qargs_free(&s->weights);
    if (s->has_input) fb_qargs_free(&s->input);
    if (s->has_output) fb_qargs_free(&s->output);
    memset(s, 0, sizeof *s);
}

static void scheme_set_targets(fb_qscheme *s, const char *const *t, size_t n) {
    s->n_targets = n;
    s->targets = fb_calloc(n ? n : 1, sizeof *s->targets);
    for (size_t i = 0; i < n; i++) s->targets[i] = fb_strdup(t[i]);
}

// QuantizationScheme.validate_model_after.
static int scheme_validate(fb_qscheme *s, const char *path, pctx *c) {
    static const int act_ok[] = {0, 1, 0, 1, 0, 1, 1, 1};  // token tensor group tensor_group attn_head
    if (s->has_input && !act_ok[s->input.strategy])
        return pfail(c, path, "using %s strategy is not supported for activation quantization",
                     STRATEGY_NAMES[s->input.strategy]);
    if (s->has_input && s->input.actorder)
        return pfail(c, path, "cannot apply actorder to input activations");
    if (s->has_output && s->output.actorder)
        return pfail(c, path, "cannot apply actorder to output activations");
    if (s->format == FB_FMT_MIXED)
        return pfail(c, path, "mixed-precision cannot be set as a format for a QuantizationScheme");
    return 0;
}

static int qscheme_parse(pctx *c, const json_t *o, const char *name, const char *path,
                         fb_qscheme *s) {
    memset(s, 0, sizeof *s);
    s->name = fb_strdup(name);
    if (!json_is_object(o)) return pfail(c, path, "expected a mapping (a QuantizationScheme), got %s",
                                         jtype(o));
    const char *k;
    json_t *v;
    char p[512];
    int have_targets = 0;
    json_object_foreach((json_t *)o, k, v) {
        subpath(p, sizeof p, path, k);
        if (strcmp(k, "targets") == 0) {
            if (!json_is_array(v)) return pfail(c, p, "expected a list of strings, got %s", jtype(v));
            s->n_targets = json_array_size(v);
            s->targets = fb_calloc(s->n_targets ? s->n_targets : 1, sizeof *s->targets);
            for (size_t i = 0; i < s->n_targets; i++) {
                json_t *it = json_array_get(v, i);
                if (!json_is_string(it)) {
                    char pi[560];
                    snprintf(pi, sizeof pi, "%s.%zu", p, i);
                    s->n_targets = i;
                    return pfail(c, pi, "expected a string, got %s", jtype(it));
                }
                s->targets[i] = fb_strdup(json_string_value(it));
            }
            have_targets = 1;
        } else if (strcmp(k, "weights") == 0 || strcmp(k, "input_activations") == 0 ||
                   strcmp(k, "output_activations") == 0) {
            int *has = k[0] == 'w' ? &s->has_weights : k[0] == 'i' ? &s->has_input : &s->has_output;
            fb_qargs *a = k[0] == 'w' ? &s->weights : k[0] == 'i' ? &s->input : &s->output;
            if (json_is_null(v)) continue;
            if (qargs_parse(c, v, p, a)) {
                fb_qargs_free(a);
                return -1;
            }
            *has = 1;
        } else if (strcmp(k, "format") == 0) {
            if (json_is_null(v)) continue;
            const char *fs;
            if (parse_str(c, p, v, &fs)) return -1;
            if (fb_qformat_from_name(fs, &s->format)) {
                int other = 0;
                for (size_t i = 0; i < NELEM(OTHER_FORMATS); i++)
                    if (strcmp(fs, OTHER_FORMATS[i]) == 0) other = 1;
                if (other) return pfail(c, p, "format '%s' is not supported by fourbit", fs);
                return pfail(c, p, "unknown compression format '%s'", fs);
            }
            if (s->format == FB_FMT_MIXED)
                return pfail(c, p, "mixed-precision cannot be set as a format for a "
                                   "QuantizationScheme");
        } else {
            return pfail(c, p, "unknown key '%s' (QuantizationScheme accepts: targets, weights, "
                               "input_activations, output_activations, format)", k);
        }
    }
    if (!have_targets) return pfail(c, path, "missing required key 'targets'");
    if (scheme_validate(s, path, c)) return -1;
    fb_err e2;
    if (fb_qscheme_compile(s, &e2)) {
        char pt[560];
        subpath(pt, sizeof pt, path, "targets");
        return pfail(c, pt, "%s", e2.msg);
    }
    return 0;
}

int fb_qscheme_from_json_where(const json_t *o, const char *name, const char *path,
                               fb_qscheme *out, char *where, size_t where_n, fb_err *err) {
    pctx c = {where, where_n, err};
    if (qscheme_parse(&c, o, name, path, out)) {
        fb_qscheme_free(out);
        return -1;
    }
    return 0;
}

int fb_qscheme_from_json(const json_t *o, const char *name, const char *path, fb_qscheme *out,
                         fb_err *err) {
    return fb_qscheme_from_json_where(o, name, path, out, NULL, 0, err);
}

// ---- presets (quant_scheme.py PRESET_SCHEMES) ----------------------------------------------

// One row per preset argument set: {bits, type, strategy, group, sym, dynamic, scale_dtype,
// observer}. zp_dtype and the inferred fields come from fb_qargs_finalize.
typedef struct preset_args {
    int bits;
    fb_qtype type;
    fb_qstrategy strategy;
    int group;
    int sym;
    fb_qdynamic dyn;
    const char *scale_dtype;
    const char *observer;
    int block;  // block_structure 128x128
} preset_args;

#define W_INT(b, g) {b, FB_QT_INT, FB_QS_GROUP, g, 1, FB_DYN_FALSE, NULL, NULL, 0}
#define A_INT_TOKEN(b) {b, FB_QT_INT, FB_QS_TOKEN, 0, 1, FB_DYN_TRUE, NULL, NULL, 0}
#define NVFP4_W {4, FB_QT_FLOAT, FB_QS_TENSOR_GROUP, 16, 1, FB_DYN_FALSE, "torch.float8_e4m3fn", NULL, 0}
#define NVFP4_A {4, FB_QT_FLOAT, FB_QS_TENSOR_GROUP, 16, 1, FB_DYN_LOCAL, "torch.float8_e4m3fn", "static_minmax", 0}
#define MX_W(b) {b, FB_QT_FLOAT, FB_QS_GROUP, 32, 1, FB_DYN_FALSE, "torch.uint8", NULL, 0}
#define MX_A(b) {b, FB_QT_FLOAT, FB_QS_GROUP, 32, 1, FB_DYN_TRUE, "torch.uint8", NULL, 0}
#define NONE_ARGS {0, 0, 0, 0, 0, 0, NULL, NULL, 0}

static const struct {
    const char *name;
    preset_args w, in;  // bits == 0: absent
} PRESETS[] = {
    {"UNQUANTIZED", NONE_ARGS, NONE_ARGS},
    {"W4A16_ASYM", {4, FB_QT_INT, FB_QS_GROUP, 128, 0, FB_DYN_FALSE, NULL, NULL, 0}, NONE_ARGS},
    {"W8A8", {8, FB_QT_INT, FB_QS_CHANNEL, 0, 1, FB_DYN_FALSE, NULL, NULL, 0}, A_INT_TOKEN(8)},
    {"INT8", {8, FB_QT_INT, FB_QS_CHANNEL, 0, 1, FB_DYN_FALSE, NULL, NULL, 0}, A_INT_TOKEN(8)},
    {"W4AFP8", W_INT(4, 128), {8, FB_QT_FLOAT, FB_QS_TOKEN, 0, 1, FB_DYN_TRUE, NULL, NULL, 0}},
    {"FP8", {8, FB_QT_FLOAT, FB_QS_TENSOR, 0, 1, FB_DYN_FALSE, NULL, NULL, 0},
     {8, FB_QT_FLOAT, FB_QS_TENSOR, 0, 1, FB_DYN_FALSE, NULL, "static_minmax", 0}},
    {"FP8_DYNAMIC", {8, FB_QT_FLOAT, FB_QS_CHANNEL, 0, 1, FB_DYN_FALSE, NULL, NULL, 0},
     {8, FB_QT_FLOAT, FB_QS_TOKEN, 0, 1, FB_DYN_TRUE, NULL, NULL, 0}},
    {"FP8_BLOCK", {8, FB_QT_FLOAT, FB_QS_BLOCK, 0, 1, FB_DYN_FALSE, NULL, NULL, 1},
     {8, FB_QT_FLOAT, FB_QS_GROUP, 128, 1, FB_DYN_TRUE, NULL, NULL, 0}},
    {"NVFP4A16", NVFP4_W, NONE_ARGS},
    {"NVFP4", NVFP4_W, NVFP4_A},
    {"MXFP4A16", MX_W(4), NONE_ARGS},
    {"MXFP4", MX_W(4), MX_A(4)},
    {"MXFP8A16", MX_W(8), NONE_ARGS},
    {"MXFP8", MX_W(8), MX_A(8)},
    {"W2A4", W_INT(2, 128), A_INT_TOKEN(4)}, {"W2A8", W_INT(2, 128), A_INT_TOKEN(8)},
    {"W2A16", W_INT(2, 128), NONE_ARGS},     {"W3A4", W_INT(3, 128), A_INT_TOKEN(4)},
    {"W3A8", W_INT(3, 128), A_INT_TOKEN(8)}, {"W3A16", W_INT(3, 128), NONE_ARGS},
    {"W4A4", W_INT(4, 128), A_INT_TOKEN(4)}, {"W4A8", W_INT(4, 128), A_INT_TOKEN(8)},
    {"W4A16", W_INT(4, 128), NONE_ARGS},     {"W5A8", W_INT(5, 128), A_INT_TOKEN(8)},
    {"W5A16", W_INT(5, 128), NONE_ARGS},     {"W6A8", W_INT(6, 128), A_INT_TOKEN(8)},
    {"W6A16", W_INT(6, 128), NONE_ARGS},     {"W7A8", W_INT(7, 128), A_INT_TOKEN(8)},
    {"W7A16", W_INT(7, 128), NONE_ARGS},     {"W8A16", W_INT(8, 128), NONE_ARGS},
};

static void preset_fill(const preset_args *p, fb_qargs *a) {
    fb_qargs_init(a);
    a->num_bits = p->bits;
    a->type = p->type;
    a->strategy = p->strategy;
    a->group_size = p->group;
    a->symmetric = p->sym;
    a->dynamic = p->dyn;
    if (p->block) a->block_structure[0] = a->block_structure[1] = 128;
    setstr(a->scale_dtype, sizeof a->scale_dtype, p->scale_dtype);
    setstr(a->observer, sizeof a->observer, p->observer);
    if (p->scale_dtype) setstr(a->zp_dtype, sizeof a->zp_dtype, p->scale_dtype);  // as preset
}

static int preset_index(const char *name) {
    for (size_t i = 0; i < NELEM(PRESETS); i++)
        if (strcasecmp(name, PRESETS[i].name) == 0) return (int)i;
    return -1;
}

int fb_qscheme_is_preset(const char *name) { return preset_index(name) >= 0; }

int fb_qscheme_preset(const char *name, const char *const *targets, size_t n_targets,
                      const char *group_name, fb_qscheme *out, fb_err *err) {
    memset(out, 0, sizeof *out);
    int pi = preset_index(name);
    if (pi < 0) {
        char list[1024] = "";
        for (size_t i = 0; i < NELEM(PRESETS); i++) {
            strncat(list, PRESETS[i].name, sizeof list - strlen(list) - 3);
            if (i + 1 < NELEM(PRESETS)) strncat(list, ", ", sizeof list - strlen(list) - 1);
        }
        return fb_fail(err, "unknown preset scheme '%s' (known: %s)", name, list);
    }
    out->name = fb_strdup(group_name);
    out->preset = PRESETS[pi].name;
    scheme_set_targets(out, targets, n_targets);
    fb_err e2;
    if (PRESETS[pi].w.bits) {
        preset_fill(&PRESETS[pi].w, &out->weights);
        out->has_weights = 1;
        FB_ASSERT(fb_qargs_finalize(&out->weights, "preset", &e2) == 0);
    }
    if (PRESETS[pi].in.bits) {
        preset_fill(&PRESETS[pi].in, &out->input);
        out->has_input = 1;
        FB_ASSERT(fb_qargs_finalize(&out->input, "preset", &e2) == 0);
    }
    if (fb_qscheme_compile(out, err)) {
        fb_qscheme_free(out);
        return -1;
    }
    return 0;
}

// ---- formats and kinds ---------------------------------------------------------------------

fb_qformat fb_qscheme_infer_format(const fb_qscheme *s) {
    if (s->format != FB_FMT_NONE) return s->format;
    const fb_qargs *w = s->has_weights ? &s->weights : NULL;
    // COMPRESSION_FORMAT_PRIORITY, each row the compressor's can_compress
    if (w && w->num_bits == 4 && w->type == FB_QT_FLOAT && w->group_size == 32) return FB_FMT_MXFP4;
    if (w && w->num_bits == 8 && w->type == FB_QT_FLOAT && w->group_size == 32 &&
        strcmp(w->scale_dtype, "torch.uint8") == 0)
        return FB_FMT_MXFP8;
    if (w && w->num_bits == 4 && w->type == FB_QT_FLOAT && w->group_size == 16) return FB_FMT_NVFP4;
    if (w && s->has_input && w->type == FB_QT_INT) return FB_FMT_INT_QUANTIZED;
    if (w && !(s->has_input && s->input.type == FB_QT_FLOAT) && w->num_bits >= 1 &&
        w->num_bits <= 8 && w->type == FB_QT_INT)
        return FB_FMT_PACK;
    if (w && s->has_input && w->type == FB_QT_FLOAT) return FB_FMT_FLOAT_QUANTIZED;
    if (w) return FB_FMT_NAIVE;
    return FB_FMT_DENSE;
}

static int is_nvfp4_args(const fb_qargs *a, fb_qdynamic dyn) {
    return a->num_bits == 4 && a->type == FB_QT_FLOAT && a->strategy == FB_QS_TENSOR_GROUP &&
           a->group_size == 16 && a->symmetric && a->dynamic == dyn &&
           (!a->scale_dtype[0] || strcmp(a->scale_dtype, "torch.float8_e4m3fn") == 0) &&
           !fb_actorder_is_group(a->actorder) && !a->block_structure[0];
}

fb_qkind fb_qscheme_kind(const fb_qscheme *s, const char **why) {
    const char *dummy;
    if (!why) why = &dummy;
    *why = NULL;
    fb_qformat f = fb_qscheme_infer_format(s);
    if (!s->has_weights) return *why = "no weight quantization", FB_QK_UNSUPPORTED;
    if (s->has_output) return *why = "output activation quantization is not supported", FB_QK_UNSUPPORTED;
    const fb_qargs *w = &s->weights;
    if (is_nvfp4_args(w, FB_DYN_FALSE)) {
        if (f != FB_FMT_NVFP4)
            return *why = "NVFP4 weights need format nvfp4-pack-quantized", FB_QK_UNSUPPORTED;
        if (!s->has_input) return FB_QK_NVFP4A16;
        if (is_nvfp4_args(&s->input, FB_DYN_LOCAL)) return FB_QK_NVFP4;
        return *why = "NVFP4 weights with input activations other than NVFP4 (tensor_group 16, "
                      "dynamic local)", FB_QK_UNSUPPORTED;
    }
    if (w->num_bits == 4 && w->type == FB_QT_INT && w->strategy == FB_QS_GROUP && w->group_size > 0) {
        if (!w->symmetric)
            return *why = "asymmetric int4 (vLLM's Marlin MoE kernel asserts symmetric)", FB_QK_UNSUPPORTED;
        if (s->has_input) return *why = "int4 weights with activation quantization (W4A8/W4A4)", FB_QK_UNSUPPORTED;
        if (w->dynamic != FB_DYN_FALSE) return *why = "dynamic weights", FB_QK_UNSUPPORTED;
        // weight / static ordering changes only how GPTQ visits columns; group ordering adds a
        // weight_g_idx tensor that fourbit does not write (and GPTQModifier 0.14 refuses it).
        if (fb_actorder_is_group(w->actorder))
            return *why = "actorder group (needs weight_g_idx, which fourbit does not write)", FB_QK_UNSUPPORTED;
        if (w->scale_dtype[0] && strcmp(w->scale_dtype, "torch.bfloat16") != 0)
            return *why = "W4A16 scales other than the model dtype (bf16)", FB_QK_UNSUPPORTED;
        if (f != FB_FMT_PACK) return *why = "int4 weights need format pack-quantized", FB_QK_UNSUPPORTED;
        return FB_QK_W4A16;
    }
    return *why = "only NVFP4, NVFP4A16 and W4A16 (int4 symmetric group) can be written",
           FB_QK_UNSUPPORTED;
}

int fb_actorder_is_group(fb_qactorder a) { return a == FB_AO_GROUP || a == FB_AO_DYNAMIC; }

const char *fb_qkind_name(fb_qkind k) {
    static const char *const N[] = {"unsupported", "NVFP4", "NVFP4A16", "W4A16"};
    return N[k];
}

// ---- QuantizationConfig --------------------------------------------------------------------

void fb_qconfig_free(fb_qconfig *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n_groups; i++) fb_qscheme_free(&c->groups[i]);
    free(c->groups);
    for (size_t i = 0; i < c->n_ignore; i++) free(c->ignore[i]);
    free(c->ignore);
    fb_target_list_free(&c->ignore_tl);
    memset(c, 0, sizeof *c);
}


int fb_qconfig_from_json(const json_t *qc, const char *what, fb_qconfig *out,
                         void (*unknown_cb)(void *ctx, const char *key), void *ctx, fb_err *err) {
    memset(out, 0, sizeof *out);
    pctx c = {NULL, 0, err};
    char p[512];
    if (!json_is_object(qc)) return pfail(&c, what, "expected a mapping, got %s", jtype(qc));
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)qc, k, v) {
        int known = 0;
        for (size_t i = 0; fb_ct_config_keys[i]; i++) known |= strcmp(k, fb_ct_config_keys[i]) == 0;
        for (size_t i = 0; fb_ct_config_writer_keys[i]; i++) known |= strcmp(k, fb_ct_config_writer_keys[i]) == 0;
        if (!known && unknown_cb) unknown_cb(ctx, k);
    }
    json_t *groups = json_object_get(qc, "config_groups");
    subpath(p, sizeof p, what, "config_groups");
    if (!groups) return pfail(&c, what, "missing required key 'config_groups'");
    if (!json_is_object(groups)) return pfail(&c, p, "expected a mapping, got %s", jtype(groups));
    out->groups = fb_calloc(json_object_size(groups) + 1, sizeof *out->groups);
    json_object_foreach(groups, k, v) {
        char gp[600];
        subpath(gp, sizeof gp, p, k);
        if (qscheme_parse(&c, v, k, gp, &out->groups[out->n_groups])) {
            fb_qscheme_free(&out->groups[out->n_groups]);
            fb_qconfig_free(out);
            return -1;
        }
        out->n_groups++;
    }
    json_t *ign = json_object_get(qc, "ignore");
    subpath(p, sizeof p, what, "ignore");
    if (ign && !json_is_null(ign)) {
        if (!json_is_array(ign)) {
            fb_qconfig_free(out);
            return pfail(&c, p, "expected a list of strings, got %s", jtype(ign));
        }
        out->ignore = fb_calloc(json_array_size(ign) + 1, sizeof *out->ignore);
        for (size_t i = 0; i < json_array_size(ign); i++) {
            json_t *it = json_array_get(ign, i);
            if (!json_is_string(it)) {
                fb_qconfig_free(out);
                return pfail(&c, p, "item %zu: expected a string, got %s", i, jtype(it));
            }
            out->ignore[out->n_ignore++] = fb_strdup(json_string_value(it));
        }
    }
    if (fb_target_list_compile((const char *const *)out->ignore, out->n_ignore, &out->ignore_tl,
                               NULL, NULL, err)) {
        fb_qconfig_free(out);
        return fb_err_prefix(err, "%s", p);
    }
    json_t *kv = json_object_get(qc, "kv_cache_scheme");
    if (kv && !json_is_null(kv)) {
        fb_qargs a;
        subpath(p, sizeof p, what, "kv_cache_scheme");
        if (qargs_parse(&c, kv, p, &a)) {
            fb_qargs_free(&a);
            fb_qconfig_free(out);
            return -1;
        }
        fb_qargs_free(&a);  // parsed for validity; fourbit never writes kv-cache quantization
    }
    return 0;
}

// ---- module order and fused sets -----------------------------------------------------------

// Registration order of submodules in the HF / MiniMax remote-code classes. Siblings only
// ever meet siblings, so one table serves every level.
static const struct { const char *name; int rank; } MODULE_RANK[] = {
    {"model", 0}, {"lm_head", 1},
    {"embed_tokens", 0}, {"layers", 1}, {"norm", 2},
    {"self_attn", 0}, {"block_sparse_moe", 1}, {"mlp", 1}, {"input_layernorm", 2},
    {"post_attention_layernorm", 3},
    {"q_proj", 0}, {"k_proj", 1}, {"v_proj", 2}, {"o_proj", 3}, {"q_norm", 4}, {"k_norm", 5},
    {"gate", 0}, {"experts", 1}, {"shared_experts", 2}, {"shared_expert", 2},
    {"shared_expert_gate", 3},
    {"w1", 0}, {"w2", 1}, {"w3", 2},
    {"gate_proj", 0}, {"up_proj", 1}, {"down_proj", 2},
};

static int comp_rank(const char *s, size_t n) {
    for (size_t i = 0; i < NELEM(MODULE_RANK); i++)
        if (strlen(MODULE_RANK[i].name) == n && memcmp(MODULE_RANK[i].name, s, n) == 0)
            return MODULE_RANK[i].rank;
    return -1;
}

static int all_digits(const char *s, size_t n) {
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i])) return 0;
    return 1;
}

int fb_module_order_cmp(const char *a, const char *b) {
    while (*a && *b) {
        size_t na = strcspn(a, "."), nb = strcspn(b, ".");
        int c = 0;
        if (all_digits(a, na) && all_digits(b, nb)) {
            while (na > 1 && *a == '0') a++, na--;  // numeric compare without overflow
            while (nb > 1 && *b == '0') b++, nb--;
            c = na != nb ? (na < nb ? -1 : 1) : memcmp(a, b, na);
        } else {
            int ra = comp_rank(a, na), rb = comp_rank(b, nb);
            if (ra >= 0 && rb >= 0 && ra != rb) c = ra < rb ? -1 : 1;
            else if ((ra >= 0) != (rb >= 0)) c = ra >= 0 ? -1 : 1;  // known before unknown
            else {
                size_t m = na < nb ? na : nb;
                c = memcmp(a, b, m);
                if (!c && na != nb) c = na < nb ? -1 : 1;
            }
        }
        if (c) return c < 0 ? -1 : 1;
        a += na;
        b += nb;
        if (*a == '.') a++;
        if (*b == '.') b++;
    }
    return *a ? 1 : *b ? -1 : 0;  // a parent comes before its children
}

// LC observers/helpers.py FUSED_LAYER_NAMES (+ MiniMax w1/w3).
static const struct { const char *member, *set; } FUSED[] = {
    {"q_proj", "{q,k,v}_proj"}, {"k_proj", "{q,k,v}_proj"}, {"v_proj", "{q,k,v}_proj"},
    {"gate_proj", "{gate,up}_proj"}, {"up_proj", "{gate,up}_proj"},
    {"q_a_proj", "{q_a_proj,kv_a_proj_with_mqa}"}, {"kv_a_proj_with_mqa", "{q_a_proj,kv_a_proj_with_mqa}"},
    {"w1", "{w1,w3}"}, {"w3", "{w1,w3}"},
};

char *fb_fused_key(const char *module_name) {
    const char *dot = strrchr(module_name, '.');
    const char *last = dot ? dot + 1 : module_name;
    size_t plen = dot ? (size_t)(dot - module_name) : 0;
    for (size_t i = 0; i < NELEM(FUSED); i++) {
        if (strcmp(last, FUSED[i].member) != 0) continue;
        size_t n = plen + 1 + strlen(FUSED[i].set) + 1;
        char *k = fb_malloc(n);
        snprintf(k, n, "%.*s%s%s", (int)plen, module_name, plen ? "." : "", FUSED[i].set);
        return k;
    }
    return NULL;
}

// ---- the plan ------------------------------------------------------------------------------

static const char *const RULE_TEXT[FB_RULE_COUNT] = {
    [FB_RULE_NOT_WEIGHT] = "not a module weight (bias, buffer, scale): copied, except the FP8 "
                           "weight_scale_inv of a dequantized weight",
    [FB_RULE_NO_CLASS] = "kept: weight of no quantizable module class",
    [FB_RULE_IGNORED] = "kept: matches an ignore entry",
    [FB_RULE_NOT_TARGETED] = "kept: no target matches",
    [FB_RULE_NOT_LINEAR] = "kept: matched a target but is not a Linear (compressed-tensors "
                           "only quantizes Linear/Embedding)",
    [FB_RULE_QUANTIZED] = "quantized: matches a target",
};

const char *fb_plan_rule_text(fb_plan_rule r) {
    FB_ASSERT(r >= 0 && r < FB_RULE_COUNT);
    return RULE_TEXT[r];
}

void fb_plan_free(fb_plan *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) free(p->e[i].module);
    free(p->e);
    for (size_t i = 0; i < p->n_fused; i++) {
        free(p->fused[i].key);
        free(p->fused[i].entries);
    }
    free(p->fused);
    for (size_t i = 0; i < p->n_ignore_expanded; i++) free(p->ignore_expanded[i]);
    free(p->ignore_expanded);
    free(p->group_order);
    memset(p, 0, sizeof *p);
}

// The scheme compressed-tensors applies (apply.py): target_to_scheme maps every target string
// to the LAST group listing it; match_targets picks exact > regex > class, ties by string.
// Returns the group (or -1) and the entry index within that group's targets.
static int pick_group(const fb_qconfig *cfg, const char *module, const char *cls, int *entry) {
    int best_rank = 3, bg = -1, be = -1;
    const char *best_text = NULL;
    for (size_t g = 0; g < cfg->n_groups; g++) {
        const fb_target_list *tl = &cfg->groups[g].tl;
        for (size_t i = 0; i < tl->n; i++) {
            const fb_target *t = tl->items[i];
            int r = 3;
            if (fb_target_matches_name(t, module)) r = fb_target_is_regex(t) ? 1 : 0;
            else if (fb_target_matches_class(t, cls)) r = 2;
            if (r == 3) continue;
            int c = best_text ? strcmp(fb_target_text(t), best_text) : -1;
            if (r < best_rank || (r == best_rank && c <= 0)) {  // c == 0: later group wins
                best_rank = r;
                best_text = fb_target_text(t);
                bg = (int)g;
                be = (int)i;
            }
        }
    }
    *entry = be;
    return bg;
}

typedef struct mod_ref {
    const char *name;
    size_t entry;
} mod_ref;

static int modref_cmp(const void *x, const void *y) {
    return fb_module_order_cmp(((const mod_ref *)x)->name, ((const mod_ref *)y)->name);
}

// -1 with err when a target or ignore regex of the recipe failed to complete a match.
static int plan_match_check(const fb_qconfig *cfg, fb_err *err) {
    if (fb_target_list_check(&cfg->ignore_tl, err)) return -1;
    for (size_t g = 0; g < cfg->n_groups; g++)
        if (fb_target_list_check(&cfg->groups[g].tl, err)) return -1;
    return 0;
}

static int group_size_of(const fb_qscheme *s) { return s->weights.group_size; }

int fb_plan_build(const fb_qconfig *cfg, const fb_tensor_desc *t, size_t n, fb_plan *out,
                  fb_err *err) {
    memset(out, 0, sizeof *out);
    out->cfg = cfg;
    out->n = n;
    out->e = fb_calloc(n ? n : 1, sizeof *out->e);
    for (size_t i = 0; i < n; i++) {
        if (fb_cancel_check("building the plan", err)) {
            fb_plan_free(out);
            return -1;
        }
        fb_plan_entry *e = &out->e[i];
        e->tensor = i;
        e->group = e->target_entry = e->ignore_entry = e->fused = -1;
        e->module = fb_module_name(t[i].name);
        if (!e->module) { e->rule = FB_RULE_NOT_WEIGHT; continue; }
        e->cls = fb_module_class(t[i].name, t[i].ndim);
        if (!e->cls) { e->rule = FB_RULE_NO_CLASS; continue; }
        int te;
        int g = pick_group(cfg, e->module, e->cls, &te);
        e->ignore_entry = fb_target_list_match(&cfg->ignore_tl, e->module, e->cls);
        e->target_entry = te;
        if (plan_match_check(cfg, err)) {  // a regex that gave up decided nothing
            fb_plan_free(out);
            return fb_err_prefix(err, "tensor %s", t[i].name);
        }
        if (e->ignore_entry >= 0) { e->rule = FB_RULE_IGNORED; continue; }
        if (g < 0) { e->rule = FB_RULE_NOT_TARGETED; continue; }
        const fb_qscheme *s = &cfg->groups[g];
        if (strcmp(e->cls, "Embedding") == 0) {
            fb_fail(err, "tensor %s: target '%s' of group %s matches the Embedding %s; "
                         "compressed-tensors would quantize it, fourbit does not write "
                         "quantized embeddings: add '%s' to ignore",
                    t[i].name, s->targets[te], s->name, e->module, e->module);
            fb_plan_free(out);
            return -1;
        }
        if (strcmp(e->cls, "Linear") != 0) { e->rule = FB_RULE_NOT_LINEAR; continue; }
        const char *why;
        fb_qkind k = fb_qscheme_kind(s, &why);
        if (k == FB_QK_UNSUPPORTED) {
            fb_plan_free(out);
            if (s->preset)  // a preset is named as the user wrote it, not by its expanded fields
                return fb_fail(err, "unsupported scheme %s: it cannot be written by fourbit, which writes NVFP4, NVFP4A16 and W4A16 (first matched "
                                    "by tensor %s, target '%s')", s->preset, t[i].name, s->targets[te]);
            return fb_fail(err, "tensor %s: group %s (target '%s') cannot be written by fourbit: %s",
                           t[i].name, s->name, s->targets[te], why);
        }
        int gs = group_size_of(s);
        if (t[i].ndim != 2 || t[i].shape[1] % gs != 0) {
            fb_plan_free(out);
            return fb_fail(err, "tensor %s: input dimension %lld is not a multiple of the group "
                                "size %d of group %s (%s); ignore the module or pick another "
                                "scheme", t[i].name, t[i].ndim == 2 ? (long long)t[i].shape[1] : -1LL,
                           gs, s->name, fb_qkind_name(k));
        }
        e->rule = FB_RULE_QUANTIZED;
        e->quantize = 1;
        e->group = g;
        e->kind = k;
        e->format = fb_qscheme_infer_format(s);
        out->n_quantized++;
    }

    // Modules in named_modules() order (for fused-set order, group order, ignore expansion).
    size_t nm = 0;
    mod_ref *mods = fb_calloc(n ? n : 1, sizeof *mods);
    for (size_t i = 0; i < n; i++)
        if (out->e[i].cls) mods[nm++] = (mod_ref){out->e[i].module, i};
    qsort(mods, nm, sizeof *mods, modref_cmp);

    if (out->n_quantized == 0) {
        free(mods);
        fb_plan_free(out);
        return fb_fail(err, "the recipe quantizes nothing: no Linear weight matches a target "
                            "without also matching an ignore entry");
    }

    // Fused sets: members must agree (vLLM: one scheme per qkv_proj / per FusedMoE).
    fb_strmap fmap;
    fb_strmap_init(&fmap, nm / 2 + 16);
    out->fused = fb_calloc(nm ? nm : 1, sizeof *out->fused);
    for (size_t m = 0; m < nm; m++) {
        fb_plan_entry *e = &out->e[mods[m].entry];
        if (strcmp(e->cls, "Linear") != 0) continue;
        char *key = fb_fused_key(e->module);
        if (!key) continue;
        int64_t f = fb_strmap_get(&fmap, key);
        if (f >= 0) {
            free(key);
            const fb_plan_entry *first = &out->e[out->fused[f].entries[0]];
            if (first->quantize != e->quantize || first->group != e->group) {
                const fb_plan_entry *q = e->quantize ? e : first, *kp = e->quantize ? first : e;
                int split_groups = first->quantize && e->quantize;
                fb_fail(err, "fused set %s is split: %s is %s but %s is %s; vLLM loads the set "
                             "as one layer with one scheme: quantize or ignore all of it",
                        out->fused[f].key, split_groups ? first->module : q->module,
                        split_groups ? cfg->groups[first->group].name : "quantized",
                        split_groups ? e->module : kp->module,
                        split_groups ? cfg->groups[e->group].name
                                     : fb_plan_rule_text(kp->rule));
                fb_strmap_free(&fmap);
                free(mods);
                fb_plan_free(out);
                return -1;
            }
        } else {
            f = (int64_t)out->n_fused++;
            out->fused[f].key = key;
            out->fused[f].entries = fb_calloc(4, sizeof(size_t));
            fb_strmap_put(&fmap, key, f, NULL);
        }
        fb_fused_set *fs = &out->fused[f];
        if (fs->n >= 4 && (fs->n & (fs->n - 1)) == 0)
            fs->entries = fb_realloc(fs->entries, fs->n * 2 * sizeof(size_t));
        fs->entries[fs->n++] = mods[m].entry;
        e->fused = (int)f;
    }
    fb_strmap_free(&fmap);
    // Keep only sets with quantized members (all members agree by now); renumber.
    size_t nf = 0;
    for (size_t f = 0; f < out->n_fused; f++) {
        int q = out->e[out->fused[f].entries[0]].quantize;
        for (size_t j = 0; j < out->fused[f].n; j++) out->e[out->fused[f].entries[j]].fused = q ? (int)nf : -1;
        if (q) out->fused[nf++] = out->fused[f];
        else {
            free(out->fused[f].key);
            free(out->fused[f].entries);
        }
    }
    out->n_fused = nf;

    // Group order: by first quantized module (QuantizationConfig.from_pretrained).
    out->group_order = fb_calloc(cfg->n_groups + 1, sizeof *out->group_order);
    for (size_t m = 0; m < nm; m++) {
        const fb_plan_entry *e = &out->e[mods[m].entry];
        if (!e->quantize) continue;
        size_t j;
        for (j = 0; j < out->n_group_order; j++)
            if (out->group_order[j] == (size_t)e->group) break;
        if (j == out->n_group_order) out->group_order[out->n_group_order++] = (size_t)e->group;
    }

    // Ignore expansion: every module not quantized whose (vLLM-mapped) class is the class of
    // some quantized module, grouped by class in order of first appearance, each group in
    // named_modules() order. Router gates are Linear here already (MiniMax remote code).
    const char *qtypes[8];
    size_t nqt = 0;
    for (size_t m = 0; m < nm; m++) {
        const fb_plan_entry *e = &out->e[mods[m].entry];
        if (!e->quantize) continue;
        size_t j;
        for (j = 0; j < nqt; j++) if (strcmp(qtypes[j], e->cls) == 0) break;
        if (j == nqt && nqt < NELEM(qtypes)) qtypes[nqt++] = e->cls;
    }
    const char *itypes[8];
    size_t nit = 0;
    for (size_t m = 0; m < nm; m++) {
        const fb_plan_entry *e = &out->e[mods[m].entry];
        if (e->quantize) continue;
        size_t j;
        for (j = 0; j < nit; j++) if (strcmp(itypes[j], e->cls) == 0) break;
        if (j == nit && nit < NELEM(itypes)) itypes[nit++] = e->cls;
    }
    out->ignore_expanded = fb_calloc(nm + 1, sizeof *out->ignore_expanded);
    for (size_t ti = 0; ti < nit; ti++) {
        int quantized_type = 0;
        for (size_t j = 0; j < nqt; j++) quantized_type |= strcmp(qtypes[j], itypes[ti]) == 0;
        if (!quantized_type) continue;
        for (size_t m = 0; m < nm; m++) {
            const fb_plan_entry *e = &out->e[mods[m].entry];
            if (!e->quantize && strcmp(e->cls, itypes[ti]) == 0)
                out->ignore_expanded[out->n_ignore_expanded++] = fb_strdup(e->module);
        }
    }
    for (size_t m = 0; m < nm; m++) {
        const fb_plan_entry *e = &out->e[mods[m].entry];
        if (!e->quantize && strcmp(e->cls, "Linear") == 0) out->n_kept_modules++;
    }
    free(mods);
    return 0;
}

// ---- JSON output ---------------------------------------------------------------------------

json_t *fb_qscheme_to_json(const fb_qscheme *s, fb_qformat fmt) {
    json_t *o = json_object();
    json_t *t = json_array();
    for (size_t i = 0; i < s->n_targets; i++) json_array_append_new(t, json_string(s->targets[i]));
    json_object_set_new(o, "targets", t);
    json_object_set_new(o, "weights", s->has_weights ? fb_qargs_to_json(&s->weights) : json_null());
    json_object_set_new(o, "input_activations", s->has_input ? fb_qargs_to_json(&s->input) : json_null());
    json_object_set_new(o, "output_activations",
                        s->has_output ? fb_qargs_to_json(&s->output) : json_null());
    json_object_set_new(o, "format", fmt != FB_FMT_NONE ? json_string(fb_qformat_name(fmt)) : json_null());
    return o;
}

json_t *fb_qconfig_to_json(const fb_plan *p, const char *ct_version) {
    const fb_qconfig *cfg = p->cfg;
    json_t *o = json_object();
    json_t *groups = json_object();
    fb_qformat global = FB_FMT_NONE;
    for (size_t j = 0; j < p->n_group_order; j++) {
        const fb_qscheme *s = &cfg->groups[p->group_order[j]];
        fb_qformat f = fb_qscheme_infer_format(s);
        char name[32];
        snprintf(name, sizeof name, "group_%zu", j);
        json_object_set_new(groups, name, fb_qscheme_to_json(s, f));
        if (f != FB_FMT_DENSE) global = global == FB_FMT_NONE || global == f ? f : FB_FMT_MIXED;
    }
    json_object_set_new(o, "config_groups", groups);
    json_object_set_new(o, "format", json_string(fb_qformat_name(global == FB_FMT_NONE ? FB_FMT_DENSE : global)));
    json_object_set_new(o, "global_compression_ratio", json_null());
    json_t *ign = json_array();
    for (size_t i = 0; i < p->n_ignore_expanded; i++)
        json_array_append_new(ign, json_string(p->ignore_expanded[i]));
    json_object_set_new(o, "ignore", ign);
    json_object_set_new(o, "kv_cache_scheme", json_null());
    json_object_set_new(o, "quant_method", json_string("compressed-tensors"));
    json_object_set_new(o, "quantization_status", json_string("compressed"));
    json_object_set_new(o, "sparsity_config", json_object());
    json_object_set_new(o, "transform_config", json_object());
    json_object_set_new(o, "version", json_string(ct_version ? ct_version : FB_CT_VERSION));
    return o;
}

json_t *fb_autoround_config_json(const fb_plan *p, const char *ar_version, fb_err *err) {
    const fb_qscheme *s = NULL;
    for (size_t j = 0; j < p->n_group_order; j++) {
        const fb_qscheme *g = &p->cfg->groups[p->group_order[j]];
        if (fb_qscheme_kind(g, NULL) != FB_QK_W4A16) {
            fb_fail(err, "AutoRound format needs W4A16 (int4 symmetric group) for every quantized "
                         "module; group %s is %s", g->name, fb_qkind_name(fb_qscheme_kind(g, NULL)));
            return NULL;
        }
        if (s && s->weights.group_size != g->weights.group_size) {
            fb_fail(err, "AutoRound format needs one group size; groups %s and %s differ (%d, %d)",
                    s->name, g->name, s->weights.group_size, g->weights.group_size);
            return NULL;
        }
        s = g;
    }
    if (!s) {
        fb_fail(err, "AutoRound format: nothing is quantized");
        return NULL;
    }
    json_t *o = json_object();  // key order as auto-round writes it (json.dump, no sort)
    json_object_set_new(o, "quant_method", json_string("auto-round"));
    json_object_set_new(o, "packing_format", json_string("auto_round:auto_gptq"));
    json_object_set_new(o, "bits", json_integer(4));
    json_object_set_new(o, "group_size", json_integer(s->weights.group_size));
    json_object_set_new(o, "sym", json_true());
    json_object_set_new(o, "data_type", json_string("int"));
    json_object_set_new(o, "iters", json_integer(0));
    json_object_set_new(o, "model_free", json_true());
    json_object_set_new(o, "autoround_version", json_string(ar_version ? ar_version : "0.16.1"));
    // block_name_to_quantize: distinct prefixes before the first numeric component (index > 0)
    char blocks[1024] = "";
    for (size_t i = 0; i < p->n; i++) {
        const fb_plan_entry *e = &p->e[i];
        if (!e->quantize) continue;
        const char *m = e->module;
        const char *c = m;
        size_t prefix = 0;
        while (*c) {
            const char *dot = strchr(c, '.');
            size_t len = dot ? (size_t)(dot - c) : strlen(c);
            if (c != m && all_digits(c, len)) { prefix = (size_t)(c - m) - 1; break; }
            if (!dot) break;
            c = dot + 1;
        }
        if (!prefix) continue;
        char pre[256];
        snprintf(pre, sizeof pre, "%.*s", (int)prefix, m);
        // already listed?
        int seen = 0;
        for (const char *b = blocks; *b;) {
            size_t len = strcspn(b, ",");
            if (len == strlen(pre) && memcmp(b, pre, len) == 0) seen = 1;
            b += len;
            if (*b == ',') b++;
        }
        if (!seen && strlen(blocks) + strlen(pre) + 2 < sizeof blocks) {
            if (blocks[0]) strcat(blocks, ",");
            strcat(blocks, pre);
        }
    }
    if (blocks[0]) json_object_set_new(o, "block_name_to_quantize", json_string(blocks));
    // extra_config: every >= 2-D .weight not quantized, minus names containing embed / conv,
    // in input order.
    json_t *extra = json_object();
    for (size_t i = 0; i < p->n; i++) {
        const fb_plan_entry *e = &p->e[i];
        if (e->quantize || !e->module || !e->cls || strcmp(e->cls, "Linear") != 0) continue;
        if (strstr(e->module, "embed") || strstr(e->module, "conv")) continue;
        json_object_set_new(extra, e->module, json_pack("{s:i,s:s}", "bits", 16, "data_type", "float"));
    }
    if (json_object_size(extra)) json_object_set_new(o, "extra_config", extra);
    else json_decref(extra);
    return o;
}
