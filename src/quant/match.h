// match.h: target / ignore matching exactly as compressed-tensors / llm-compressor do it
// (spec/compressed-tensors.md §9; compressed_tensors/utils/match.py).
//
// An entry is either "re:<pattern>", matched against the module name with Python re.match
// semantics (anchored at the start only, not at the end; PCRE2 with Python-compatible
// options), or a plain string that matches when it equals the module name exactly or equals
// the module's class name ("Linear", "Embedding", "MiniMaxM2RMSNorm", ...).
//
// Module names are tensor names without the trailing ".weight" (e.g.
// "model.layers.0.block_sparse_moe.experts.3.w1"). fb_module_class() gives the class name
// of the module a weight tensor belongs to for MiniMax-M2-style checkpoints, one rule per
// line, with the reason.
#ifndef FB_QUANT_MATCH_H
#define FB_QUANT_MATCH_H

#include "common/fb.h"

typedef struct fb_target fb_target;  // one compiled entry

// Compiles one entry. Returns NULL with err set for an invalid regex (message names the
// pattern and the PCRE2 error with its offset). `warn_no_dollar`, if non-NULL, is set to 1
// when a "re:" entry lacks a trailing "$" (it would also match longer names).
fb_target *fb_target_compile(const char *entry, int *warn_no_dollar, fb_err *err);
void fb_target_free(fb_target *t);

// The entry's original text.
const char *fb_target_text(const fb_target *t);

// 1 if the entry matches the module (by name or class), 0 otherwise.
int fb_target_matches(const fb_target *t, const char *module_name, const char *class_name);

// A compiled list of entries (a recipe's targets or ignore list).
typedef struct fb_target_list {
    size_t n;
    fb_target **items;
} fb_target_list;

// Compiles every entry; on error frees what was built and returns -1 with err naming the
// entry. `warn_cb`, if non-NULL, is called for each regex lacking "$".
int fb_target_list_compile(const char *const *entries, size_t n, fb_target_list *out,
                           void (*warn_cb)(void *ctx, const char *entry), void *ctx, fb_err *err);
void fb_target_list_free(fb_target_list *l);

// Index of the first entry matching the module (by name or class), or -1.
int fb_target_list_match(const fb_target_list *l, const char *module_name, const char *class_name);

// 1 if the entry is a "re:" pattern.
int fb_target_is_regex(const fb_target *t);

// Name-only and class-only halves of fb_target_matches (match_name / _match_class). A
// validator simulating vLLM (which matches classes differently) needs the name half alone.
// Class matching walks the module's MRO: the class itself, then "Module" (torch.nn.Module),
// so a plain "Module" entry matches every module that has a class.
int fb_target_matches_name(const fb_target *t, const char *module_name);
int fb_target_matches_class(const fb_target *t, const char *class_name);

// Python re.match(pattern, s) for a "re:" entry (anchored at the start only). The entry must
// be a regex (FB_ASSERT).
int fb_regex_match(const fb_target *t, const char *s);

// Python re.fullmatch(pattern, s): the match must also end at the end of s (PCRE2
// ENDANCHORED; a pattern's own "$" before a final newline does not count). For checking what
// a regex lacking "$" would match if it had one.
int fb_regex_fullmatch(const fb_target *t, const char *s);

// Like fb_target_list_match, but picks the most specific matching entry as
// compressed_tensors.match_targets orders them: exact name (rank 0) before regex (rank 1)
// before class name (rank 2); among equals, the smallest string (match_targets sorts the
// entries with key ("re:" in x, x)). Returns the entry index
// or -1; *rank (if non-NULL) gets the rank, -1 when nothing matched.
int fb_target_list_match_ranked(const fb_target_list *l, const char *module_name,
                                const char *class_name, int *rank);

// Matching never fails outright: a match that PCRE2 gives up on (its match limit of 1e6
// backtracking steps or depth limit of 10000 per name, reached by catastrophically
// backtracking patterns, or invalid UTF-8) counts as no match and is recorded in the entry.
// fb_target_check returns 0 when every match of `t` so far completed, or -1 with err naming
// the pattern, the first name it failed on and PCRE2's reason. Every caller that turns
// matches into a decision (a plan, a verdict) must check after matching: the "no match" of a
// failed entry is not an answer. Safe to call from several threads.
int fb_target_check(const fb_target *t, fb_err *err);
// fb_target_check over every entry of the list (the first failure).
int fb_target_list_check(const fb_target_list *l, fb_err *err);

// The module name of a weight tensor ("a.b.weight" -> "a.b", malloc'ed, caller frees), or
// NULL when the name does not end in ".weight".
char *fb_module_name(const char *tensor_name);

// Class name of the module owning weight tensor `tensor_name` with `ndim` dims in a
// MiniMax-M2 (or generic HF decoder) checkpoint: "Linear" for 2-D projection weights (attention
// q/k/v/o, experts w1/w2/w3, MLP gate/up/down, the MoE router gate, lm_head), "Embedding" for
// embed_tokens, "MiniMaxM2RMSNorm" for norms, NULL for tensors that are not module weights
// (biases, e_score_correction_bias, scales). The returned string is static.
const char *fb_module_class(const char *tensor_name, int ndim);

#endif
