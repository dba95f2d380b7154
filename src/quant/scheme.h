// scheme.h: quantization schemes, the resolved quantization plan, and the config.json
// `quantization_config` they produce (spec/compressed-tensors.md §2, §3, §6.3, §7, §9;
// spec/autoround-reap-modelopt.md §A.4.1).
//
// Data model = compressed-tensors 0.18 / 0.19 pydantic models (the same fields), field for field:
//   QuantizationArgs   -> fb_qargs    {num_bits, type, symmetric, group_size, strategy,
//                                      block_structure, dynamic, actorder, scale_dtype,
//                                      zp_dtype, observer, observer_kwargs}
//   QuantizationScheme -> fb_qscheme  {targets, weights, input_activations,
//                                      output_activations, format}
//   QuantizationConfig -> fb_qconfig  {config_groups, ignore, format, kv_cache_scheme, ...}
// fb_qargs_finalize applies QuantizationArgs.validate_model_after (strategy inferred from
// group_size, observer default "memoryless_minmax" for static args and "minmax" for
// dynamic "local", zp_dtype default, the consistency errors), so a preset and the same
// arguments written out in config_groups give identical structs and identical JSON.
//
// The plan (fb_plan) is the single quantize/keep predicate of STYLE.md §10 applied to a
// checkpoint's tensor list: one entry per tensor, quantized with which group and format, or
// kept, and why (the rule, the target entry, the ignore entry). Every writer and the
// validator's recipe preview use it; nothing else decides what gets quantized.
//
// Fused sets (§4): NVFP4 global scales are shared by q/k/v of a layer and by w1/w3 (or
// gate_proj/up_proj) of one expert or MLP. fb_fused_key gives the set a module belongs to.
#ifndef FB_QUANT_SCHEME_H
#define FB_QUANT_SCHEME_H

#include <jansson.h>

#include "common/fb.h"
#include "quant/match.h"

typedef enum fb_qtype { FB_QT_INT = 0, FB_QT_FLOAT } fb_qtype;

typedef enum fb_qstrategy {
    FB_QS_NONE = 0,  // not given (before fb_qargs_finalize infers it)
    FB_QS_TENSOR, FB_QS_CHANNEL, FB_QS_GROUP, FB_QS_BLOCK, FB_QS_TOKEN, FB_QS_TENSOR_GROUP,
    FB_QS_ATTN_HEAD,
} fb_qstrategy;

typedef enum fb_qdynamic { FB_DYN_FALSE = 0, FB_DYN_TRUE, FB_DYN_LOCAL } fb_qdynamic;

// Activation ordering as written (aliases kept: GPTQ writes "static").
typedef enum fb_qactorder {
    FB_AO_NONE = 0, FB_AO_GROUP, FB_AO_WEIGHT, FB_AO_DYNAMIC, FB_AO_STATIC
} fb_qactorder;

// 1 for group / dynamic (its alias): the ordering that changes the format (weight_g_idx).
int fb_actorder_is_group(fb_qactorder a);

// QuantizationArgs. Strings are "" for None.
typedef struct fb_qargs {
    int num_bits;              // default 8
    fb_qtype type;             // default int
    int symmetric;             // default 1
    int group_size;            // 0 = None, -1 = channel, > 0 = group length
    fb_qstrategy strategy;
    int block_structure[2];    // [rows, cols]; {0, 0} = None
    fb_qdynamic dynamic;
    fb_qactorder actorder;
    char scale_dtype[32];      // "torch.float8_e4m3fn", "torch.uint8", ... or ""
    char zp_dtype[32];         // as scale_dtype (serialized as null when symmetric)
    char observer[32];         // "memoryless_minmax", "static_minmax", "minmax", ... or ""
    json_t *observer_kwargs;   // owned object ({} by default); NULL means {}
} fb_qargs;

// The compressed-tensors formats (compressors/format.py COMPRESSION_FORMAT_PRIORITY order).
typedef enum fb_qformat {
    FB_FMT_NONE = 0,           // not given
    FB_FMT_MXFP4, FB_FMT_MXFP8, FB_FMT_NVFP4, FB_FMT_INT_QUANTIZED, FB_FMT_PACK,
    FB_FMT_FLOAT_QUANTIZED, FB_FMT_NAIVE, FB_FMT_DENSE, FB_FMT_MIXED,
    FB_FMT_COUNT
} fb_qformat;

// "nvfp4-pack-quantized", "pack-quantized", ... ("" for FB_FMT_NONE).
const char *fb_qformat_name(fb_qformat f);
// Looks a format up by its string; -1 if unknown.
int fb_qformat_from_name(const char *s, fb_qformat *out);

// QuantizationScheme (one config group).
typedef struct fb_qscheme {
    char *name;                // group name: "group_0" or the recipe's config_groups key
    size_t n_targets;
    char **targets;
    fb_target_list tl;         // compiled targets
    int has_weights, has_input, has_output;
    fb_qargs weights, input, output;
    fb_qformat format;         // FB_FMT_NONE = infer (fb_qscheme_infer_format)
    const char *preset;        // preset it came from ("NVFP4", ...), NULL for explicit groups
} fb_qscheme;

// What fourbit can write for a scheme (the writers' contract).
typedef enum fb_qkind {
    FB_QK_UNSUPPORTED = 0,
    FB_QK_NVFP4,               // NVFP4 weights + NVFP4 dynamic-local input (W4A4)
    FB_QK_NVFP4A16,            // NVFP4 weights only
    FB_QK_W4A16,               // int4 symmetric group weights only, pack-quantized
} fb_qkind;

// QuantizationConfig: what goes into config.json.
typedef struct fb_qconfig {
    size_t n_groups;
    fb_qscheme *groups;
    size_t n_ignore;
    char **ignore;
    fb_target_list ignore_tl;  // compiled ignore entries
} fb_qconfig;

// ---- arguments and schemes ----------------------------------------------------------------

// Defaults of QuantizationArgs() before finalize (num_bits 8, int, symmetric, ...).
void fb_qargs_init(fb_qargs *a);
void fb_qargs_free(fb_qargs *a);  // releases observer_kwargs
void fb_qargs_copy(fb_qargs *dst, const fb_qargs *src);

// QuantizationArgs.validate_model_after: infers strategy/observer/zp_dtype and rejects the
// combinations pydantic rejects. `what` names the args in messages ("group_0.weights").
int fb_qargs_finalize(fb_qargs *a, const char *what, fb_err *err);

// 1 when two args serialize identically.
int fb_qargs_equal(const fb_qargs *a, const fb_qargs *b);

// The preset scheme `name` (case-insensitive, as preset_name_to_scheme) with the given
// targets, finalized; name and targets are copied. Presets: NVFP4, NVFP4A16, W4A16,
// W4A16_ASYM, W8A16, FP8, FP8_DYNAMIC, FP8_BLOCK, MXFP4, MXFP4A16, W8A8/INT8, ... (the
// table in scheme.c; most can be described but only fb_qscheme_kind != UNSUPPORTED ones can
// be written). Returns -1 with err for an unknown name (listing the known ones).
int fb_qscheme_preset(const char *name, const char *const *targets, size_t n_targets,
                      const char *group_name, fb_qscheme *out, fb_err *err);
// 1 if `name` is a preset name (case-insensitive).
int fb_qscheme_is_preset(const char *name);

// Compiles targets (tl). Called by the parsers; -1 on a bad regex.
int fb_qscheme_compile(fb_qscheme *s, fb_err *err);
void fb_qscheme_free(fb_qscheme *s);

// The format compressed-tensors infers for a Linear with this scheme (infer_module_format:
// first of mxfp4, mxfp8, nvfp4, int, pack, float, naive, dense that can compress it), or the
// scheme's explicit format when set.
fb_qformat fb_qscheme_infer_format(const fb_qscheme *s);

// Which fourbit writer handles the scheme; FB_QK_UNSUPPORTED with *why (static text) otherwise.
fb_qkind fb_qscheme_kind(const fb_qscheme *s, const char **why);

// "NVFP4", "NVFP4A16", "W4A16" or "unsupported".
const char *fb_qkind_name(fb_qkind k);

// The fields of compressed-tensors' pydantic models (QuantizationArgs, QuantizationScheme,
// QuantizationConfig, and the keys its writers add), NULL-terminated: one list each, read by the
// parser below and by the validator's schema check.
extern const char *const fb_ct_args_keys[];
extern const char *const fb_ct_scheme_keys[];
extern const char *const fb_ct_config_keys[];
extern const char *const fb_ct_config_writer_keys[];

// ---- whole config -------------------------------------------------------------------------

void fb_qconfig_free(fb_qconfig *c);

// Parses a compressed-tensors quantization_config object (from a checkpoint's config.json)
// the way compressed-tensors does: QuantizationScheme/QuantizationArgs reject unknown keys
// and wrong types; top-level unknown keys are ignored (QuantizationConfig has
// extra="ignore"), reported through `unknown_cb` when non-NULL. `what` names the source in
// messages ("dir/config.json: quantization_config"). Regexes in targets/ignore are
// compiled. Returns -1 with err naming the key path.
int fb_qconfig_from_json(const json_t *qc, const char *what, fb_qconfig *out,
                         void (*unknown_cb)(void *ctx, const char *key), void *ctx, fb_err *err);

// Parses one QuantizationArgs JSON object strictly (unknown keys and wrong types rejected),
// then finalizes it. `path` names it in messages.
int fb_qargs_from_json(const json_t *o, const char *path, fb_qargs *out, fb_err *err);

// Parses one QuantizationScheme JSON object (targets, weights, input_activations,
// output_activations, format) strictly. Name is copied.
int fb_qscheme_from_json(const json_t *o, const char *name, const char *path, fb_qscheme *out,
                         fb_err *err);

// Variants for parsers of other syntaxes (the recipe YAML): on failure the dotted path of the
// offending value ("<path>.weights.num_bits", list items by index: "<path>.targets.2") is
// copied into where[where_n], so the caller can add the file line it came from.
int fb_qargs_from_json_where(const json_t *o, const char *path, fb_qargs *out, char *where,
                             size_t where_n, fb_err *err);
int fb_qscheme_from_json_where(const json_t *o, const char *name, const char *path,
                               fb_qscheme *out, char *where, size_t where_n, fb_err *err);

// ---- the plan -----------------------------------------------------------------------------

// A tensor of the source checkpoint as the plan sees it (the caller keeps name/shape alive).
typedef struct fb_tensor_desc {
    const char *name;
    int ndim;
    const int64_t *shape;
} fb_tensor_desc;

// Why a tensor is quantized or kept: one rule of the predicate each (fb_plan_rule_text).
typedef enum fb_plan_rule {
    FB_RULE_NOT_WEIGHT = 0,    // not "<module>.weight": bias, scale, buffer -> copied (a
                               // writer drops the weight_scale_inv of FP8 weights it dequantizes)
    FB_RULE_NO_CLASS,          // a weight of no known module class (1-D non-norm, 3-D) -> kept
    FB_RULE_IGNORED,           // an ignore entry matches the module -> kept
    FB_RULE_NOT_TARGETED,      // no target of any group matches -> kept
    FB_RULE_NOT_LINEAR,        // a target matches but the module is not a Linear (norm) -> kept
    FB_RULE_QUANTIZED,         // matched a target of group g -> quantized
    FB_RULE_COUNT
} fb_plan_rule;

typedef struct fb_plan_entry {
    size_t tensor;             // index into the caller's tensor list
    char *module;              // module name (tensor name without ".weight"), NULL if none
    const char *cls;           // module class (static), NULL if none
    fb_plan_rule rule;
    int quantize;              // 1 when rule == FB_RULE_QUANTIZED
    int group;                 // index into cfg->groups, -1 when kept
    fb_qkind kind;             // what the writer does with it (FB_QK_UNSUPPORTED when kept)
    fb_qformat format;         // compressed-tensors format of the group
    int target_entry;          // index into groups[group].targets (or of the first group
                               // whose target matched, for kept modules), -1 if none
    int ignore_entry;          // index into cfg->ignore, -1 if none
    int fused;                 // fused set id (index into plan->fused), -1 if none
} fb_plan_entry;

// A fused set of quantized modules sharing one NVFP4 global scale.
typedef struct fb_fused_set {
    char *key;                 // fb_fused_key value
    size_t n;
    size_t *entries;           // indices into plan->e
} fb_fused_set;

typedef struct fb_plan {
    const fb_qconfig *cfg;     // borrowed
    size_t n;
    fb_plan_entry *e;          // one per input tensor, input order
    size_t n_fused;
    fb_fused_set *fused;       // sets with >= 1 quantized member, first-seen order
    size_t n_quantized, n_kept_modules;  // Linear modules quantized / kept
    char **ignore_expanded;    // quantization_config.ignore as oneshot writes it (see below)
    size_t n_ignore_expanded;
    size_t *group_order;       // groups in the order their first module appears
    size_t n_group_order;      // groups that quantize at least one module
} fb_plan;

// Builds the plan. Fails (-1) when the recipe cannot be carried out faithfully: a target
// matches an Embedding (compressed-tensors would quantize it; fourbit does not write
// quantized embeddings), a matched Linear's group is a scheme fourbit cannot write, an input
// dimension is not a multiple of the group size (LC's divisibility check), or fused members
// (q/k/v of a layer, w1/w3 of an expert) are split between quantized and kept or between
// groups (vLLM refuses both). Messages name the tensor and the rule.
int fb_plan_build(const fb_qconfig *cfg, const fb_tensor_desc *t, size_t n, fb_plan *out,
                  fb_err *err);
void fb_plan_free(fb_plan *p);

// One line per rule, for --dry-run and reports ("ignored (matches ignore entry)", ...).
const char *fb_plan_rule_text(fb_plan_rule r);

// Fused-set key of a module, or NULL when it shares its global scale with nobody: returns a
// malloc'ed string "<parent>.{q,k,v}_proj" for attention q/k/v, "<parent>.{w1,w3}" for
// MiniMax experts, "<parent>.{gate,up}_proj" for dense / other MoE MLPs, and
// "<parent>.{q_a_proj,kv_a_proj_with_mqa}" (LC's FUSED_LAYER_NAMES). o_proj, w2, down_proj:
// NULL.
char *fb_fused_key(const char *module_name);

// Sort key emulating torch named_modules() order for MiniMax-M2 / HF decoder names: numeric
// components numerically, known components in the order the modules are registered
// (embed_tokens < layers < norm; self_attn < block_sparse_moe|mlp < input_layernorm <
// post_attention_layernorm; q < k < v < o_proj < q_norm < k_norm; gate < experts; w1 < w2 <
// w3; model < lm_head), others alphabetically. strcmp-like.
int fb_module_order_cmp(const char *a, const char *b);

// ---- config.json output -------------------------------------------------------------------

// The `quantization_config` object exactly as compressed-tensors' oneshot path writes it
// (ModelCompressor.update_config; spec §7.1/§7.2): config_groups renamed group_0.. in the
// order their first module appears, each scheme with every QuantizationArgs field (zp_dtype
// null when symmetric, enums as values, dtypes as "torch.<dtype>") and its format; global
// `format` (the single format or "mixed-precision"); `ignore` = plan->ignore_expanded;
// kv_cache_scheme null; global_compression_ratio null; quant_method "compressed-tensors";
// quantization_status "compressed"; sparsity_config {}; transform_config {}; version
// `ct_version` (NULL = FB_CT_VERSION). Serialize with JSON_INDENT(2) | JSON_SORT_KEYS.
// Caller owns the result.
json_t *fb_qconfig_to_json(const fb_plan *p, const char *ct_version);

// The compressed-tensors release written as quantization_config "version": the one whose
// output fourbit's matches byte for byte, tensors and config (the release llm-compressor 0.14.0.1
// pins; tests/golden/model-quant, qwen3-moe, match). 0.18.0 writes the same bytes under its own
// version; 0.20.1 the same tensors but another config (null fields dropped,
// "moe_sparsity_config" added), see README "Reference releases".
#define FB_CT_VERSION "0.19.0"

// One QuantizationScheme / QuantizationArgs as compressed-tensors serializes it (new refs).
json_t *fb_qscheme_to_json(const fb_qscheme *s, fb_qformat fmt);
json_t *fb_qargs_to_json(const fb_qargs *a);

// The AutoRound `quantization_config` (spec autoround-reap-modelopt.md §A.4.1, model-free
// flow: written to config.json and to quantization_config.json):
//   {"autoround_version", "bits", "block_name_to_quantize", "data_type": "int",
//    "extra_config": {<kept Linear>: {"bits": 16, "data_type": "float"}}, "group_size",
//    "iters": 0, "model_free": true, "packing_format": "auto_round:auto_gptq",
//    "quant_method": "auto-round", "sym": true}
// The plan must be W4A16 (int4 symmetric; group size from the group). extra_config lists the
// Linear modules the plan keeps (router gates, lm_head, ignored attention), embeddings
// excluded; block_name_to_quantize is the comma-joined distinct prefixes before the first
// numeric component of quantized modules ("model.layers"). `ar_version` NULL = "0.16.1" (the
// auto-round release read). Key order is auto-round's (json.dump without sort_keys): dump
// with JSON_INDENT(2) and no JSON_SORT_KEYS to get its bytes.
// Returns NULL with err when the plan is not int4 symmetric W4A16.
json_t *fb_autoround_config_json(const fb_plan *p, const char *ar_version, fb_err *err);

#endif
