// validate.c: findings (grouping across layers/experts), the rule table and the reports. The
// rules themselves are in validate_pass.c, the checkpoint wrappers in validate_dir.c.
#include <stdarg.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>

#include "quant/validate_priv.h"

// ---- rule table ----------------------------------------------------------------------------
// One line per rule: id, default severity, default loader consequence, default fix. A caller
// may override consequence and fix with instance-specific text (the exact KeyError).
typedef struct vrule {
    const char *id;
    fb_severity sev;
    const char *consequence;
    const char *fix;
} vrule;

#define E FB_SEV_ERROR
#define W FB_SEV_WARNING
static const vrule RULES[] = {
    {"ckpt.unreadable", E, "vLLM and transformers fail while reading the shards or the index",
     "re-write the checkpoint so that the index lists exactly the tensors of its shards"},
    {"config.missing", E, "neither vLLM nor transformers can build the model without config.json",
     "copy config.json from the source checkpoint"},
    {"config.rotary_dim", E,
     "vLLM reads config.rotary_dim without a default: AttributeError: 'MiniMaxM2Config' object has no attribute 'rotary_dim'",
     "keep \"rotary_dim\" from the source config.json (64 for MiniMax-M2)"},
    {"config.partial_rotary_factor", W,
     "transformers (before PR #48486) rotates all head dims instead of rotary_dim: every layer wrong, output garbage (issue #48241)",
     "write \"partial_rotary_factor\": rotary_dim / head_dim (0.5) at the top level of config.json"},
    {"config.scoring_func", E,
     "vLLM reads config.scoring_func without a default: AttributeError at model construction",
     "keep \"scoring_func\": \"sigmoid\""},
    {"config.use_routing_bias", E,
     "without use_routing_bias vLLM never creates e_score_correction_bias: KeyError: 'layers.0.block_sparse_moe.e_score_correction_bias'",
     "keep \"use_routing_bias\": true"},
    {"config.head_dim", E, "vLLM/transformers fall back to hidden_size / num_attention_heads: wrong head size",
     "keep \"head_dim\" from the source config.json (128 for MiniMax-M2)"},
    {"config.num_local_experts", E,
     "vLLM builds num_local_experts experts: tensors of other experts raise KeyError, missing ones load as uninitialised memory",
     "set num_local_experts to the number of experts kept (REAP: K) and slice gate rows and e_score_correction_bias to match"},
    {"config.num_experts_per_tok", E, "top-k larger than the number of experts: vLLM fails in FusedMoE",
     "keep num_experts_per_tok <= num_local_experts"},
    {"config.architecture", W, "loaders pick the model class from architectures / model_type",
     "keep \"architectures\": [\"MiniMaxM2ForCausalLM\"] and \"model_type\": \"minimax_m2\""},
    {"config.auto_map", W, "with --trust-remote-code both loaders import the auto_map files: ImportError when absent",
     "ship the remote-code .py files named in auto_map, or drop auto_map"},
    {"config.dims", W, "shape checks for these modules were skipped",
     "keep hidden_size, num_attention_heads, num_key_value_heads, head_dim, intermediate_size, num_local_experts, vocab_size"},
    {"config.layers", E, "vLLM builds num_hidden_layers layers; a layer without weights is uninitialised memory",
     "set num_hidden_layers to the layers present"},
    {"quant.unknown-method", E, "vLLM: ValueError: Unknown quantization method",
     "use quant_method \"compressed-tensors\" (or \"modelopt\", \"fp8\")"},
    {"quant.shadowed", E,
     "vLLM reads config.json quantization_config and only falls back to hf_quant_config.json when it is absent: the ModelOpt config is ignored",
     "remove quantization_config from config.json (ModelOpt legacy) or write the ModelOpt form with quant_method \"modelopt\" there"},
    {"quant.stale", E,
     "the declared quantization does not describe the tensors: vLLM builds the declared scheme and every tensor name misses its parameter",
     "replace quantization_config wholesale (drop the source's FP8 block for a BF16 or re-quantized output)"},
    {"quant.stale-file", W, "ignored by vLLM (config.json wins) but read by other tools, which then disagree",
     "delete the stale file from the output directory"},
    {"ct.schema", E, "compressed-tensors (pydantic, extra=\"forbid\") rejects the config: the model does not load",
     "write only the fields of QuantizationScheme {targets, weights, input_activations, output_activations, format} and QuantizationArgs {num_bits, type, symmetric, group_size, strategy, block_structure, dynamic, actorder, scale_dtype, zp_dtype, observer, observer_kwargs}"},
    {"ct.schema-extra", W, "QuantizationConfig ignores unknown top-level keys (extra=\"ignore\"): the value has no effect",
     "drop the key (known: config_groups, quant_method, kv_cache_scheme, format, quantization_status, global_compression_ratio, ignore, version, sparsity_config, transform_config)"},
    {"ct.status", E, "a status other than \"compressed\" makes the loaders expect dense weights",
     "write \"quantization_status\": \"compressed\""},
    {"ct.format", E, "vLLM picks no (or the wrong) compressed-tensors scheme for this group",
     "use format \"nvfp4-pack-quantized\" for NVFP4 (W4A4 and A16), \"pack-quantized\" for int4 W4A16"},
    {"ct.format-top", W, "the top-level format disagrees with the groups; loaders that read it decompress the wrong way",
     "write the group format at the top level (\"mixed-precision\" when groups differ)"},
    {"mo.w4a16", W,
     "vLLM loads ModelOpt quant_algo W4A16_NVFP4 only since PR #41769 (Linear) and PR #42566 (fused MoE), May 2026; "
     "older releases: ValueError: ModelOpt currently only supports: ['FP8', 'FP8_PER_CHANNEL_PER_TOKEN', 'FP8_PB_WO', 'NVFP4']",
     "serve with a vLLM that has both PRs, or write quant_algo NVFP4 (W4A4: calibrate, then nvfp4-quantize --recipe recipes/minimax.yaml --calib STATS --format modelopt)"},
    {"mo.lm-head", W,
     "vLLM versions whose ModelOpt NVFP4 quantizes ParallelLMHead (tests/quantization/test_modelopt.py::test_modelopt_nvfp4_quantizes_parallel_lm_head) "
     "build lm_head packed: the bf16 lm_head.weight does not fit it",
     "list \"lm_head\" in exclude_modules / ignore (modelopt's export does)"},
    {"ct.scheme", E, "vLLM: no compressed-tensors scheme for this combination (NotImplementedError / ValueError at load)",
     "use the NVFP4, NVFP4A16 or W4A16 preset arguments (spec/compressed-tensors.md §7)"},
    {"ct.targets", E, "vLLM finds no target for the layer: KeyError/ValueError (\"Unable to find matching target\") at model construction",
     "use the class target [\"Linear\"]; name regexes must also match vLLM's names (model.layers.L.mlp.experts.0.gate_proj)"},
    {"ignore.invalid", E, "Python re.compile fails on the entry: the loader raises re.error",
     "fix the regular expression"},
    {"ignore.regex-no-dollar", W, "re.match anchors only at the start: the entry also matches every longer name",
     "end every re: entry with $"},
    {"ignore.regex-overmatch", E, "the entry also matches modules it was not meant for, which are then left unquantized by the loader while the checkpoint holds them quantized",
     "end the regex with $ (e.g. re:.*block_sparse_moe\\.gate$)"},
    {"ignore.qkv-split", E,
     "vLLM: ValueError: Found a different quantization schemes for ['q_proj', 'k_proj', 'v_proj'] in model.layers.L.self_attn.qkv_proj. vLLM requires all to use the same scheme.",
     "ignore q_proj, k_proj and v_proj together or none of them"},
    {"ignore.expert", E, "vLLM cannot express per-expert exceptions: the entry either never reaches vLLM's expert names or unquantizes whole layers of experts the checkpoint holds quantized",
     "quantize every expert of every layer with one scheme; remove expert names from ignore"},
    {"ignore.lm_head", E, "transformers/compressed-tensors treat lm_head (an nn.Linear matched by \"Linear\") as quantized and load it wrong",
     "add \"lm_head\" to ignore"},
    {"ignore.gate", E, "transformers/llm-compressor match the router gate (nn.Linear) with \"Linear\" and load it as quantized",
     "add \"re:.*block_sparse_moe\\.gate$\" (or every exact gate name) to ignore"},
    {"tensor.keyerror", E, "vLLM raises KeyError in MiniMaxM2Model.load_weights",
     "remove the tensor, or make the config declare the scheme that owns it"},
    {"tensor.dropped", W, "vLLM drops the tensor silently; transformers reports it as unexpected",
     "remove the tensor"},
    {"tensor.missing", E, "vLLM loads a quantized checkpoint without error and leaves the parameter as uninitialised memory (torch.empty): garbage output",
     "write the tensor (every tensor of the module's scheme)"},
    {"tensor.dtype", E, "the loader copies the bytes into a parameter of another dtype: error or garbage",
     "write the dtype the scheme requires"},
    {"tensor.shape", E, "vLLM's weight loader asserts the shape (AssertionError) or loads a wrong slice",
     "write the shape the scheme requires"},
    {"tensor.kv-scale", E, "vLLM before PR #37214 raises KeyError: 'layers.0.self_attn.qkv_proj.k_scale'; with no kv_cache_scheme the scale is meaningless",
     "drop k_scale/v_scale, or configure kv_cache_scheme and require vLLM with PR #37214"},
    {"router.quantized", E, "the router gate is ReplicatedLinear(quant_config=None) in vLLM: only .weight is accepted; anything else is a KeyError, e.g. KeyError: 'layers.0.block_sparse_moe.gate.weight_scale'",
     "keep the router gate and e_score_correction_bias unquantized (float) and add re:.*block_sparse_moe\\.gate$ to ignore"},
    {"router.bias-dtype", W, "vLLM copies e_score_correction_bias into float32; a narrower dtype has lost precision",
     "keep e_score_correction_bias in float32 as in the source"},
    {"layer.beyond", E, "vLLM has no such layer: KeyError in MiniMaxM2Model.load_weights",
     "drop layers >= num_hidden_layers"},
    {"moe.nonuniform", E, "no vLLM release reads per-layer expert counts: every layer is built with num_local_experts experts and gate rows",
     "prune the same number of experts in every layer (reap-prune without --per-layer), or serve with a runtime that reads compressed-tensors' moe_sparsity_config"},
    {"config.moe_sparsity", E, "a loader that reads compressed-tensors' moe_sparsity_config would build layers of the wrong size",
     "write {\"method\": \"prune\", \"num_experts\": [one count per decoder layer]} and the largest count as the expert count"},
    {"moe.experts", E, "vLLM builds num_local_experts experts per layer",
     "every layer must hold experts 0..num_local_experts-1, and gate rows and e_score_correction_bias must have num_local_experts entries"},
    {"value.read", E, "a tensor could not be read", "re-write the shard"},
    {"value.global-scale", E, "a global scale that is not finite and > 0 dequantizes the whole tensor to inf/NaN/0",
     "recompute the scale (compressed-tensors: 2688/amax with the tiny clamp; ModelOpt: amax/2688)"},
    {"value.qkv-global-scale", E,
     "vLLM keeps one weight global scale for qkv_proj (max over shards) and silently rescales the other shards: wrong weights",
     "share one global scale across q/k/v: g from the max amax of the three (spec/compressed-tensors.md §4)"},
    {"value.w13-global-scale", E,
     "vLLM warns \"w1_weight_global_scale must match w3_weight_global_scale. Accuracy may be affected.\" and uses w1's for both: w3 silently rescaled",
     "share one global scale across w1/w3 of each expert (max amax of the two)"},
    {"value.qkv-input-scale", E, "vLLM takes the max input scale over q/k/v silently; the others' activations are quantized on the wrong range",
     "use one input_global_scale for q/k/v (they see the same input)"},
    {"value.uncalibrated", W, "an expert that saw no calibration tokens has no real activation range (amax 0): its input scale is a placeholder",
     "calibrate every expert (llm-compressor moe_calibrate_all_experts, ModelOpt --moe_calib_experts_ratio 1.0)"},
    {"value.block-scale", E, "Marlin requires block scales >= 0 and finite; NaN scales give NaN outputs",
     "recompute the block scales"},
    {"value.nonfinite", E, "NaN/Inf weights propagate to every output", "re-export the tensor from a clean source"},
    {"recipe.unwritable", E, "the quantizer refuses the recipe (nothing would be written)",
     "change the recipe as the message says"},
    {"gptq.config", E, "vLLM's GPTQ/AutoRound loader rejects or misreads the config",
     "write bits 4, group_size, sym and packing_format as AutoRound does (spec/autoround-reap-modelopt.md §A.4)"},
};
#undef E
#undef W

static const vrule *rule_find(const char *id) {
    for (size_t i = 0; i < sizeof(RULES) / sizeof(RULES[0]); i++)
        if (!strcmp(RULES[i].id, id)) return &RULES[i];
    FB_ASSERT(!"unknown validation rule id");
    return NULL;
}

fb_severity fb_vrule_sev(const char *rule) { return rule_find(rule)->sev; }

// ---- small strings -------------------------------------------------------------------------

void fb_vstr_addf(fb_vstr *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (b->n + (size_t)n + 1 > b->cap) {
        b->cap = (b->n + (size_t)n + 1) * 2;
        b->s = fb_realloc(b->s, b->cap);
    }
    if ((size_t)n < sizeof tmp) {
        memcpy(b->s + b->n, tmp, (size_t)n + 1);
    } else {
        va_start(ap, fmt);
        vsnprintf(b->s + b->n, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->n += (size_t)n;
}

// ---- findings ------------------------------------------------------------------------------

void fb_findings_init(fb_findings *f) {
    memset(f, 0, sizeof *f);
    f->n_layers = f->n_experts = -1;
}

void fb_findings_free(fb_findings *f) {
    for (size_t i = 0; i < f->n; i++) {
        fb_finding *x = &f->items[i];
        free(x->message); free(x->where); free(x->layers); free(x->experts);
        free(x->consequence); free(x->fix); free(x->key_); free(x->lbits_); free(x->ebits_);
    }
    free(f->items);
    free(f->kind);
    fb_findings_init(f);
}

int fb_findings_ok(const fb_findings *f, int strict) {
    return f->n_errors == 0 && (!strict || f->n_warnings == 0);
}

const fb_finding *fb_findings_get(const fb_findings *f, const char *rule) {
    for (size_t i = 0; i < f->n; i++)
        if (!strcmp(f->items[i].rule, rule)) return &f->items[i];
    return NULL;
}

// Replaces the first "layers.<n>" by "layers.{L}" and the first "experts.<n>" by
// "experts.{E}"; returns the numbers (-1 when absent). Result malloc'ed.
static char *name_template(const char *name, long *layer, long *expert) {
    *layer = *expert = -1;
    size_t len = strlen(name);
    char *out = fb_malloc(len + 16);
    size_t o = 0;
    const char *p = name;
    while (*p) {
        const char *tags[2] = {"layers.", "experts."};
        long *vals[2] = {layer, expert};
        const char *reps[2] = {"layers.{L}", "experts.{E}"};
        int done = 0;
        for (int k = 0; k < 2 && !done; k++) {
            size_t tl = strlen(tags[k]);
            if (*vals[k] < 0 && !strncmp(p, tags[k], tl) && p[tl] >= '0' && p[tl] <= '9' &&
                (p == name || p[-1] == '.')) {
                const char *q = p + tl;
                long v = 0;
                while (*q >= '0' && *q <= '9' && v < 100000000) v = v * 10 + (*q++ - '0');
                if (*q == '.' || *q == 0) {
                    *vals[k] = v;
                    size_t rl = strlen(reps[k]);
                    memcpy(out + o, reps[k], rl);
                    o += rl;
                    p = q;
                    done = 1;
                }
            }
        }
        if (!done) out[o++] = *p++;
    }
    out[o] = 0;
    return out;
}

static void bits_set(uint64_t **bits, size_t *words, long v) {
    if (v < 0) return;
    if (v > 1000000) v = 1000000;
    size_t w = (size_t)v / 64;
    if (w >= *words) {
        size_t nw = w + 1 > *words * 2 ? w + 1 : *words * 2;
        *bits = fb_realloc(*bits, nw * sizeof(uint64_t));
        memset(*bits + *words, 0, (nw - *words) * sizeof(uint64_t));
        *words = nw;
    }
    (*bits)[w] |= 1ull << (v % 64);
}

// "0-61" / "0,2,5-7" from a bitset ("" when empty).
static char *bits_ranges(const uint64_t *bits, size_t words) {
    fb_vstr b = {0};
    fb_vstr_addf(&b, "%s", "");
    long n = (long)words * 64, start = -1;
    int first = 1;
    for (long i = 0; i <= n; i++) {
        int on = i < n && (bits[i / 64] >> (i % 64)) & 1;
        if (on && start < 0) start = i;
        if (!on && start >= 0) {
            if (i - 1 == start) fb_vstr_addf(&b, "%s%ld", first ? "" : ",", start);
            else fb_vstr_addf(&b, "%s%ld-%ld", first ? "" : ",", start, i - 1);
            first = 0;
            start = -1;
        }
    }
    return b.s;
}

static void vf_addv(fb_findings *f, const char *rule, fb_severity sev, const char *name,
                    const char *consequence, const char *fix, const char *fmt, va_list ap) {
    const vrule *r = rule_find(rule);
    long layer = -1, expert = -1;
    char *tmpl = name ? name_template(name, &layer, &expert) : fb_strdup("");
    size_t kl = strlen(rule) + strlen(tmpl) + 4;
    char *key = fb_malloc(kl);
    snprintf(key, kl, "%s|%d|%s", rule, (int)sev, tmpl);
    fb_finding *x = NULL;
    // Findings are few (tens); instances can be ~100k, so look at the last one first.
    for (size_t i = f->n; i-- > 0;)
        if (!strcmp(f->items[i].key_, key)) { x = &f->items[i]; break; }
    if (!x) {
        if (f->n == f->cap) {
            f->cap = f->cap ? f->cap * 2 : 16;
            f->items = fb_realloc(f->items, f->cap * sizeof *f->items);
        }
        x = &f->items[f->n++];
        memset(x, 0, sizeof *x);
        x->rule = r->id;
        x->sev = sev;
        char buf[2048];
        vsnprintf(buf, sizeof buf, fmt, ap);
        x->message = fb_strdup(buf);
        x->where = fb_strdup(tmpl);
        x->consequence = fb_strdup(consequence ? consequence : r->consequence);
        x->fix = fb_strdup(fix ? fix : r->fix);
        x->key_ = key;
        key = NULL;
        if (sev == FB_SEV_ERROR) f->n_errors++;
        else f->n_warnings++;
    }
    free(key);
    free(tmpl);
    x->count++;
    bits_set(&x->lbits_, &x->lwords_, layer);
    bits_set(&x->ebits_, &x->ewords_, expert);
}

void fb_vf_add(fb_findings *f, const char *rule, const char *name, const char *consequence,
               const char *fix, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vf_addv(f, rule, rule_find(rule)->sev, name, consequence, fix, fmt, ap);
    va_end(ap);
}

void fb_vf_add_sev(fb_findings *f, const char *rule, fb_severity sev, const char *name,
                   const char *consequence, const char *fix, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vf_addv(f, rule, sev, name, consequence, fix, fmt, ap);
    va_end(ap);
}

// Fills the summary strings (layers, experts) of every finding.
static void findings_finish(const fb_findings *f) {
    for (size_t i = 0; i < f->n; i++) {
        fb_finding *x = &f->items[i];
        free(x->layers);
        free(x->experts);
        x->layers = bits_ranges(x->lbits_, x->lwords_);
        x->experts = bits_ranges(x->ebits_, x->ewords_);
    }
}

// ---- reports -------------------------------------------------------------------------------

void fb_findings_print(const fb_findings *f, const char *label, int strict, FILE *fp) {
    findings_finish(f);
    int ok = fb_findings_ok(f, strict);
    fprintf(fp, "%s: %s", label, f->kind ? f->kind : "checkpoint");
    if (f->n_layers >= 0) fprintf(fp, ", %d layers", f->n_layers);
    if (f->n_experts >= 0) fprintf(fp, ", %d experts", f->n_experts);
    fprintf(fp, ", %zu tensors\n", f->n_tensors);
    for (int pass = 0; pass < 2; pass++) {
        fb_severity want = pass == 0 ? FB_SEV_ERROR : FB_SEV_WARNING;
        for (size_t i = 0; i < f->n; i++) {
            const fb_finding *x = &f->items[i];
            if (x->sev != want) continue;
            fprintf(fp, "\n%s [%s] %s\n", want == FB_SEV_ERROR ? "ERROR" : "warning", x->rule,
                    x->message);
            if (x->where[0]) {
                fprintf(fp, "  where:       %s", x->where);
                if (x->layers[0]) fprintf(fp, "  L in %s", x->layers);
                if (x->experts[0]) fprintf(fp, "  E in %s", x->experts);
                fprintf(fp, "  (%zu)\n", x->count);
            }
            fprintf(fp, "  consequence: %s\n", x->consequence);
            fprintf(fp, "  fix:         %s\n", x->fix);
        }
    }
    fprintf(fp, "\n%s: %zu error%s, %zu warning%s%s\n", ok ? "OK (loadable)" : "FAIL",
            f->n_errors, f->n_errors == 1 ? "" : "s", f->n_warnings,
            f->n_warnings == 1 ? "" : "s", strict && f->n_warnings ? " (--strict)" : "");
}

json_t *fb_findings_json(const fb_findings *f, const char *label, int strict) {
    findings_finish(f);
    json_t *root = json_object();
    json_object_set_new(root, "path", json_string(label));
    json_object_set_new(root, "kind", json_string(f->kind ? f->kind : "checkpoint"));
    json_object_set_new(root, "verdict", json_string(fb_findings_ok(f, strict) ? "ok" : "fail"));
    json_object_set_new(root, "errors", json_integer((json_int_t)f->n_errors));
    json_object_set_new(root, "warnings", json_integer((json_int_t)f->n_warnings));
    json_object_set_new(root, "tensors", json_integer((json_int_t)f->n_tensors));
    json_t *arr = json_array();
    for (size_t i = 0; i < f->n; i++) {
        const fb_finding *x = &f->items[i];
        json_t *o = json_object();
        json_object_set_new(o, "rule", json_string(x->rule));
        json_object_set_new(o, "severity", json_string(x->sev == FB_SEV_ERROR ? "error" : "warning"));
        json_object_set_new(o, "message", json_string(x->message));
        json_object_set_new(o, "where", json_string(x->where));
        json_object_set_new(o, "count", json_integer((json_int_t)x->count));
        json_object_set_new(o, "layers", json_string(x->layers));
        json_object_set_new(o, "experts", json_string(x->experts));
        json_object_set_new(o, "consequence", json_string(x->consequence));
        json_object_set_new(o, "fix", json_string(x->fix));
        json_array_append_new(arr, o);
    }
    json_object_set_new(root, "findings", arr);
    return root;
}
