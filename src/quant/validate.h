// validate.h: one validation pass over a MiniMax-M2 checkpoint: will it load, and load right,
// in vLLM and Hugging Face transformers? (spec/loaders-vllm-transformers.md §1-§4 and the §7
// checklist; spec/compressed-tensors.md §2, §3, §6.3, §7, §9; spec/autoround-reap-modelopt.md
// §A.4, §B.3, §C.)
//
// The pass returns a verdict and a list of findings. A finding is one rule broken in one way
// (rule id, severity, message), the tensors or modules concerned summarised across layers and
// experts ("model.layers.{L}.block_sparse_moe.gate.weight_scale, L in 0-61"), what the loader
// does with it (the exact vLLM KeyError text, or "loads silently with uninitialised memory"),
// and how to fix it. Severity error = vLLM or transformers fails or misloads; warning = works
// with the loaders read, but fragile or version-dependent (--strict makes warnings fail).
//
// What is checked, in order (rule ids in brackets; the table in validate.c has them all):
//  1. Config files: which quantization format is declared (config.json quantization_config,
//     hf_quant_config.json, quantization_config.json) and that nothing shadows it
//     [quant.shadowed, quant.stale-*]; compressed-tensors schema exactly as the pydantic models
//     of compressed-tensors parse it (QuantizationScheme / QuantizationArgs forbid unknown keys,
//     QuantizationConfig ignores them) [ct.schema*], per-group format and the vLLM scheme it
//     selects [ct.format*]; ModelOpt, FP8-block, AutoRound/GPTQ keys.
//  2. The ignore list with Python re.match semantics (src/quant/match.h): regexes without "$"
//     that reach unintended modules [ignore.regex-no-dollar, ignore.regex-overmatch], q/k/v
//     all-or-none [ignore.qkv-split], no entry reaching an expert in any naming
//     [ignore.expert], lm_head and every router gate ignored [ignore.lm_head, ignore.gate].
//  3. Tensors module by module against the scheme vLLM will build: the vLLM MiniMax-M2
//     load_weights name mapping is simulated (q/k/v -> qkv_proj, experts.E.w1/w3 -> w13_,
//     w2 -> w2_) and every tensor must land in a registered parameter [tensor.keyerror];
//     every parameter the scheme needs must be present [tensor.missing]; dtypes and shapes
//     [tensor.dtype, tensor.shape]; router gate and e_score_correction_bias unquantized
//     [router.quantized]; kv-cache scales [tensor.kv-scale]; layers past num_hidden_layers
//     [layer.beyond]; experts 0..N-1 complete in every layer [moe.experts].
//  4. Values loaders take on trust (small scalar tensors are read by default): global scales
//     finite and > 0, bit-equal across q/k/v and across w1/w3 of each expert, input scales
//     equal across q/k/v, no scale from an amax of 0 [value.*]. With deep: every block scale
//     (finite, >= 0) and every BF16/F16/F32 tensor (no NaN/Inf) [value.nonfinite].
//  5. config.json keys the loaders read without defaults [config.*].
//
// Library entry points never print. Writers call fb_validate_ckpt on their staging directory
// before renaming it into place; the tool validate-ignore-list prints the report.
#ifndef FB_QUANT_VALIDATE_H
#define FB_QUANT_VALIDATE_H

#include <jansson.h>

#include "common/fb.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

typedef enum fb_severity { FB_SEV_ERROR = 0, FB_SEV_WARNING = 1 } fb_severity;

// One rule broken one way, for one or many tensors/modules.
typedef struct fb_finding {
    const char *rule;        // rule id, e.g. "tensor.keyerror" (static string)
    fb_severity sev;
    char *message;           // what is wrong, one line
    char *where;             // the tensors/modules concerned, summarised ("" for global ones)
    size_t count;            // how many tensors/modules (>= 1)
    char *layers;            // layer list "0-61" or "" when not per layer
    char *experts;           // expert list "0-255" or "" when not per expert
    char *consequence;       // what the loader does (first instance, exact text where known)
    char *fix;               // how to fix it
    // private (grouping): the name template, and the layer/expert bitsets
    char *key_;
    uint64_t *lbits_, *ebits_;
    size_t lwords_, ewords_;
} fb_finding;

typedef struct fb_findings {
    size_t n, cap;
    fb_finding *items;       // in the order first found
    size_t n_errors, n_warnings;
    char *kind;              // what the checkpoint is, e.g. "compressed-tensors NVFP4 (W4A4)"
    size_t n_tensors;        // tensors examined
    int n_layers, n_experts; // from config.json (-1 when unknown)
} fb_findings;

typedef struct fb_validate_opts {
    int deep;     // also read every block scale and scan BF16/F16/F32 tensors for NaN/Inf
    int no_values;// metadata only: do not even read the scalar global scales
    int strict;   // warnings count as failures in fb_findings_ok
} fb_validate_opts;

// Zero-initialises a findings list (call before any fb_validate_*).
void fb_findings_init(fb_findings *f);
// Frees everything a findings list owns (the struct itself is the caller's).
void fb_findings_free(fb_findings *f);
// 1 when the checkpoint is loadable: no errors (and with strict, no warnings); 0 otherwise.
int fb_findings_ok(const fb_findings *f, int strict);
// The finding for a rule id, or NULL (tests and writers that look for one rule).
const fb_finding *fb_findings_get(const fb_findings *f, const char *rule);

// Validates an opened checkpoint (c->config is config.json; hf_quant_config.json and
// quantization_config.json are read from c->dir when present). Appends findings to out.
// Returns 0 when the pass ran (whatever the verdict: see fb_findings_ok), -1 with err set on
// an I/O error while reading values (a pass that could not finish).
int fb_validate_ckpt(const fb_ckpt *c, const fb_validate_opts *o, fb_findings *out, fb_err *err);

// Opens path with fb_ckpt_open and validates it. A checkpoint that cannot be opened (bad
// shard, index inconsistent with the shards) is a finding [ckpt.unreadable] with the reader's
// message, not a -1. Returns -1 only for a pass that could not run.
int fb_validate_dir(const char *path, const fb_validate_opts *o, fb_findings *out, fb_err *err);

// ---- validating what a writer is about to produce ----------------------------------------
//
// A tensor as the validator sees it: a name, dtype and shape, and (optionally) where to read
// its bytes. Writers and the recipe preview describe an output that does not exist yet with
// file == NULL (value rules are then skipped for that tensor).
typedef struct fb_vtensor {
    const char *name;
    fb_dtype dtype;
    int ndim;
    int64_t shape[FB_MAX_DIMS];
    const fb_st_file *file;   // NULL: values unknown
    const fb_st_tensor *st;   // the tensor in file
} fb_vtensor;

typedef struct fb_vinput {
    const char *label;              // for messages (a directory, "recipe preview", ...)
    const json_t *config;           // config.json, NULL when absent
    const json_t *hf_quant_config;  // hf_quant_config.json, NULL when absent
    const json_t *qc_file;          // quantization_config.json (AutoRound), NULL when absent
    size_t n;
    const fb_vtensor *tensors;
    const char *const *extra_files; // other file names in the directory (remote code), or NULL
    size_t n_extra_files;
    const char *const *extra_ignore;// recipe ignore entries to check like the config's (preview)
    size_t n_extra_ignore;
} fb_vinput;

// The whole pass over an explicit description. fb_validate_ckpt is a wrapper around it.
int fb_validate(const fb_vinput *in, const fb_validate_opts *o, fb_findings *out, fb_err *err);

// Recipe preview (validate-ignore-list --recipe R SRC): builds the quantization plan of
// src/quant/scheme.h (the single quantize/keep predicate every writer uses) for the recipe
// on the source checkpoint, predicts the output tensor set (each quantized Linear's .weight
// becomes its scheme's tensors; an FP8-block source's weight_scale_inv disappears and its
// FP8 weights become BF16) and the config.json a writer produces (the source's, with
// quantization_config = fb_qconfig_to_json(plan)), and runs the same rules on it; the
// recipe's own ignore entries are checked too (regexes without $, entries reaching experts).
// A recipe the plan refuses (split q/k/v, unsupported scheme, bad group size) is a finding
// [recipe.unwritable]. *quantized / *kept (optional) receive how many Linear modules the
// recipe quantizes and keeps. Value rules are skipped (the values do not exist yet).
struct fb_recipe;
int fb_validate_recipe(const fb_ckpt *src, const struct fb_recipe *r, const fb_validate_opts *o,
                       fb_findings *out, size_t *quantized, size_t *kept, fb_err *err);

// The same for a quantization_config given as JSON (compressed-tensors form, e.g. taken
// from another checkpoint's config.json); it is parsed with fb_qconfig_from_json.
int fb_validate_preview(const fb_ckpt *src, const json_t *quantization_config,
                        const fb_validate_opts *o, fb_findings *out, size_t *quantized,
                        size_t *kept, fb_err *err);

// ---- report ------------------------------------------------------------------------------

// Human-readable report (findings grouped by rule, errors first) to fp.
void fb_findings_print(const fb_findings *f, const char *label, int strict, FILE *fp);
// JSON report: {"path", "kind", "verdict": "ok"|"fail", "errors", "warnings", "findings": [...]}.
// Caller owns the result (json_decref).
json_t *fb_findings_json(const fb_findings *f, const char *label, int strict);

#endif
