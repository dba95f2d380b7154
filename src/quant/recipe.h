// recipe.h: llm-compressor recipe YAML -> a resolved quantization config
// (spec/compressed-tensors.md §8; llmcompressor recipe/recipe.py::Recipe.from_dict and
// modifiers/quantization/quantization/mixin.py::resolve_quantization_config).
//
// Accepted file (YAML 1.1 as PyYAML's safe_load types it: `yes`/`on` are booleans, `1e-3` is a
// string, quoted scalars are strings):
//
//   <name>_stage:                      one or more stages (top-level keys ending in _stage)
//     <name>_modifiers:                modifier groups (keys ending in _modifiers)
//       QuantizationModifier:          exactly one in the whole recipe
//         targets: Linear | [..]       default [Linear]
//         scheme: NVFP4                a preset name (NVFP4, NVFP4A16, W4A16, ... see scheme.h),
//                                      or {PRESET: targets, ...}; or instead:
//         config_groups:               {name: {targets, weights, input_activations,
//                                              output_activations, format}}
//         ignore: [..]                 exact module names, class names or 're:' regexes
//         kv_cache_scheme: null        anything else: "not supported" (fourbit writes no
//                                      kv-cache scales)
//         weight_observer / input_observer / output_observer / observer: {weights, input,
//                                      output}: only observers with the numerics fourbit
//                                      implements (weights: minmax family; input:
//                                      static_minmax)
//         bypass_divisibility_checks, requires_calibration_data, index, group, start, end,
//         update: accepted (LC writes some of them when it saves a recipe) and ignored
//       GPTQModifier:                  llm-compressor 0.14 modifiers/gptq/base.py, alone or beside
//                                      one QuantizationModifier (in either order); exactly one of
//                                      the two holds the scheme / config_groups:
//         targets, ignore, scheme, config_groups, observers...   as QuantizationModifier's;
//                                      without a scheme it tunes the modules another modifier
//                                      quantizes that its targets (default Linear) match and its
//                                      ignore does not (the rest stay round-to-nearest)
//         block_size: 128              columns per error-feedback block (positive integer)
//         dampening_frac: 0.01         fraction of the mean Hessian diagonal added to it
//         actorder: static             static | weight | null (group / dynamic: refused, as
//                                      GPTQModifier refuses them); absent = static unless the
//                                      scheme gives one, a conflict with the scheme's is an error
//                                      (resolve_quantization_config); without its own scheme the
//                                      quantizing modifier's weights.actorder is what GPTQ uses
//         offload_hessians, batched_quantization: accepted and ignored (memory and batching of
//                                      the reference, no effect on the numbers), with a warning
//   args: {...}                        accepted and ignored (LC recipe variables)
//   fourbit:                           fourbit's own checks (LC ignores this key):
//     max_kld: 0.05                    ref-runner fails when mean KL divergence exceeds this
//     min_top1: 0.90                   ref-runner fails when top-1 agreement is below this
//
// Stricter than LC, on purpose: unknown top-level / stage / modifier keys are errors (LC
// silently skips keys that do not end in _stage/_modifiers), duplicate keys are errors (PyYAML
// keeps the last), and other modifiers (GPTQModifier, AWQModifier, SmoothQuantModifier, ...)
// are refused with the reason (GPTQModifier is supported, above). Every error names the file, the LINE and the key path.
#ifndef FB_IO_RECIPE_H
#define FB_IO_RECIPE_H

#include "common/fb.h"
#include "quant/scheme.h"

// The recipe's tuning modifier: a GPTQModifier or an AutoRoundModifier (at most one).
typedef enum fb_recipe_algo { FB_RALGO_GPTQ = 0, FB_RALGO_AUTOROUND } fb_recipe_algo;

typedef struct fb_recipe_tune {
    int present;             // 1: the recipe has a tuning modifier
    fb_recipe_algo algo;
    const char *name;        // "GPTQModifier" / "AutoRoundModifier" (messages)
    int own_config;          // 1: the quantization config (cfg) is the tuning modifier's
    fb_target_list targets;  // its targets / ignore (compiled): which quantized modules it tunes
    fb_target_list ignore;
    // GPTQModifier
    int block_size;          // columns per block (128)
    double dampening_frac;   // relative dampening (0.01)
    fb_qactorder actorder;   // as written or resolved (own_config: already set in the groups)
    // AutoRoundModifier (llm-compressor 0.14 modifiers/autoround/base.py)
    int iters;               // SignSGD iterations per decoder layer (200)
    int batch_size;          // samples per iteration (8)
    double lr;               // 0: auto-round's default 1/iters (lr: null)
    int disable_opt_rtn;     // iters 0 only: plain RTN instead of the optimized RTN
} fb_recipe_tune;

typedef struct fb_recipe {
    char *path;              // as given (messages)
    char *text;              // the file's bytes, NUL-terminated (copied into outputs)
    size_t text_len;
    char *stage;             // stage name of the QuantizationModifier ("default")
    char *group;             // modifier group name ("default")
    fb_qconfig cfg;          // resolved config groups (group_0.. for presets, the recipe's
                             // names for config_groups) and the ignore list, compiled
    const char *preset;      // the preset of `scheme` when it was one name, else NULL
    fb_recipe_tune tune;     // tune.present == 0 when the recipe has no tuning modifier
    int has_max_kld, has_min_top1;
    double max_kld, min_top1;
    size_t n_warnings;
    char **warnings;         // "file:line: key: ..." (regexes without a trailing $)
} fb_recipe;

// Reads and parses a recipe file. On failure returns -1 with err "<path>:<line>: <key path>:
// <what>" and *out is left empty (nothing to free).
int fb_recipe_load(const char *path, fb_recipe *out, fb_err *err);

// Parses recipe text (len bytes); `name` is used in messages.
int fb_recipe_parse(const char *name, const char *text, size_t len, fb_recipe *out, fb_err *err);

void fb_recipe_free(fb_recipe *r);

// 1 when the recipe's tuning modifier (GPTQModifier / AutoRoundModifier) tunes module `name`
// (class `cls`, e.g. "Linear"); the caller asks only for modules the plan quantizes. 0 without one.
int fb_recipe_tune_applies(const fb_recipe *r, const char *name, const char *cls);

// 1 when the recipe needs calibration data in the quantizer (a tuning modifier).
int fb_recipe_needs_data(const fb_recipe *r);

#endif
