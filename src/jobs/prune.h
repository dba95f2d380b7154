// prune.h: REAP expert pruning of a MoE checkpoint as it is stored (FP8, BF16 or already
// quantized), the job behind reap-prune.
//
// Saliency (REAP, arXiv 2510.13999; llm-compressor 0.14 REAPPruningModifier): for expert j of
// a layer, S_j = (1/|X_j|) * sum over t in X_j of g_j(t) * ||f_j(x_t)||_2, read from the
// statistics file of `calibrate` (src/calib/stats.h: expert_saliency_sum / expert_counts):
//   - X_j, the token set: every calibration token (all samples, every position; no padding
//     exists, samples are run one by one) whose router top-k contains j — the routing of the
//     model's own forward, not all tokens;
//   - g_j(t), the router weighting: the combine weight the forward multiplies the expert's
//     output by. MiniMax-M2: s = sigmoid(logits) in f32, top-k chosen by s + the correction
//     bias, g = s[j] / sum of s over the chosen (renormalised without the bias). Qwen3-MoE:
//     p = softmax(logits), top-k by p, g = p[j] (/ sum of the chosen when norm_topk_prob);
//   - f_j(x_t): the expert's output w_down(silu(w_gate x) * w_up x) before the combine weight;
//     its L2 norm over the hidden dimension (f32 outputs, squares summed in f64), the
//     products g * norm summed in f64 per expert.
// An expert never routed has S = 0 (pruned first).
//
// Selection, uniform per layer (llm-compressor's rule): with sparsity F, n_drop =
// floor(E * F) (computed as (int)(E * F) in double, as Python's int(E * F)); with --experts N,
// n_drop = E - N. In every layer the n_drop experts of lowest saliency go; among equal
// saliencies the higher index goes first (torch.topk leaves ties unspecified: fourbit's choice,
// so the map is deterministic). Kept experts are renumbered densely in their original order.
//
// Selection, per layer (--per-layer): one ranking of every (layer, expert) by saliency,
// lowest first (ties: the higher expert index, then the higher layer, goes first), dropped in
// that order until the budget is spent, a layer at its floor skipping its turn. Budget: the
// same number of experts as uniform pruning removes (n_layers * n_drop: --sparsity F drops
// L * floor(E * F), --experts N keeps L * N in all). Floor (--min-experts): default
// num_experts_per_tok, the fewest experts with which the router still picks its top-k
// distinct experts (compressed-tensors' pruner refuses below it too); a higher floor is the
// user's guard against emptying a layer. Saliencies are compared across layers as they are:
// REAP's g * ||f|| is in the units of the residual stream, whose scale differs between layers,
// so the global ranking is a heuristic of fourbit's, not llm-compressor's (0.14 has no global
// mode); tests derive the expected map from the reference's saliencies by this rule.
// config.json then holds the largest count under the family's expert key and the per-layer
// counts as compressed-tensors 0.20's ExpertSparsityConfig, {"method": "prune",
// "num_experts": [...]} (one entry per decoder layer), under the key `moe_sparsity_config`
// of quantization_config (the field of compressed-tensors' QuantizationConfig; an FP8 source's
// quantization_config gets it too, which transformers' FP8 config ignores), or at the top
// level when the source has no quantization_config. No vLLM release reads per-layer counts
// (MiniMaxM2MoE and Qwen3MoeSparseMoeBlock build num_local_experts / num_experts experts and
// gate rows in every layer: a smaller layer fails the gate's weight loader), so a non-uniform
// result is refused unless allow_nonuniform, and the validator reports it [moe.nonuniform].
//
// The rewrite (streaming, any dtype, bytes never reinterpreted):
//   - every tensor of a kept expert (weight, weight_scale_inv, weight_packed, weight_scale,
//     weight_global_scale, input_global_scale, qweight/scales/qzeros, ...) copied byte for
//     byte under its new index; tensors of pruned experts are not written;
//   - the router (role ROUTER: .weight, and a .bias if any) and the router correction bias
//     (role ROUTER_BIAS): the rows of the kept experts, dimension 0, bytes as stored;
//   - every other tensor copied byte for byte (FP8 weights stay FP8 with their scales);
//   - config.json: the family's expert-count key (fb_arch.key_n_experts, in text_config when
//     nested) set to the kept count; every other key, quantization_config included, kept;
//     num_experts_per_tok must be <= the kept count;
//   - reap_map.json (always): the retained experts per MoE block, in the format --keep reads.
// The output is staged in DST.partial, validated with the validate-ignore-list rules and
// renamed into place (src/io/checkpoint.h: --resume, split jobs, --merge as fp8-dequant).
#ifndef FB_JOBS_PRUNE_H
#define FB_JOBS_PRUNE_H

#include <stdatomic.h>
#include <stdio.h>

#include <jansson.h>

#include "calib/stats.h"
#include "common/fb.h"

// The file name of the map written into DST.
#define FB_PRUNE_MAP_NAME "reap_map.json"

// Which experts each layer keeps.
typedef struct fb_prune_map {
    int n_layers;
    int n_experts;      // experts per layer before pruning
    int n_keep;         // experts per layer after: uniform, every layer's; per-layer, the largest
    int *layer_keep;    // [n_layers] experts kept in each layer (n_keep everywhere when uniform)
    int *keep;          // [n_layers * n_keep] original indices, strictly increasing; row l holds
                        // layer_keep[l] of them (the rest of the row unused)
    double *saliency;   // [n_layers * n_experts] REAP saliency, or NULL (map read from a file)
    int64_t *counts;    // [n_layers * n_experts] routed tokens, or NULL
} fb_prune_map;

void fb_prune_map_free(fb_prune_map *m);

// Selects the n_keep experts of highest saliency in every layer (rule in the header above).
// Fails when the statistics do not cover every layer, or when n_keep is not in
// [1, n_experts - 1]. *out owned by the caller.
int fb_prune_select(const fb_calib_stats *s, int n_keep, fb_prune_map **out, fb_err *err);

// The per-layer selection (rule in the header above): n_drop experts in all go, no layer below
// min_experts. Fails when the statistics do not cover every layer or the budget cannot be met
// above the floor. *out owned by the caller.
int fb_prune_select_global(const fb_calib_stats *s, long n_drop, int min_experts, fb_prune_map **out, fb_err *err);

// 1 when the layers keep different numbers of experts.
int fb_prune_map_nonuniform(const fb_prune_map *m);

// Number of experts kept for a sparsity F in (0, 1) (llm-compressor: E - int(E * F)); -1 with
// err when F is out of range or drops no expert.
int fb_prune_keep_for_sparsity(int n_experts, double sparsity, fb_err *err);

// Reads a map written by the job (or llm-compressor's report_path file: {block: [kept...]}).
// The blocks are named as fb_arch_block(FB_BLOCK_MOE) names them; every layer
// 0..n_layers-1 must be present, each list strictly increasing in [0, n_experts), of 1 to
// n_experts entries (lengths may differ per layer: the caller decides whether a per-layer map
// is acceptable). Errors name the file and the block.
int fb_prune_map_read(const char *path, const fb_arch *a, int n_layers, int n_experts, fb_prune_map **out,
                      fb_err *err);

// The map as JSON (what reap_map.json holds): {"format": "fourbit.reap-map", "version": 1,
// "architecture", "num_experts", "num_experts_kept" (the largest count), "per_layer" (per-layer
// maps only: the counts, one per layer), "retained": {block: [...]},
// "saliency": {block: [...]} (when known), "dropped": {block: [...]}}. New reference.
json_t *fb_prune_map_json(const fb_prune_map *m, const fb_arch *a);

// The statistics of the pruned model: every per-expert value (input absmax of the expert
// Linears, routed counts, saliency sums) of the kept experts under their new indices, the
// per-layer values unchanged. What `nvfp4-quantize --calib` needs after pruning: the
// statistics of the unpruned model would give renumbered experts the input scales of the
// experts that had their index before. Uniform maps only (the table is layers x experts).
// New table owned by the caller.
fb_calib_stats *fb_prune_stats(const fb_calib_stats *s, const fb_prune_map *m);

typedef struct fb_prune_opts {
    const char *tool;          // "reap-prune" (messages, provenance)
    const char *stats_path;    // statistics file from calibrate (needed unless keep_path)
    const char *keep_path;     // a map to reproduce, or NULL
    const char *stats_out;     // write the pruned model's statistics here (needs stats_path), or NULL
    double sparsity;           // fraction of experts removed per layer, or 0
    int n_keep;                // experts kept per layer, or 0 (exactly one of the three)
    int per_layer;             // rank globally with a floor per layer (header above)
    int min_experts;           // the floor with per_layer; 0: num_experts_per_tok
    int allow_nonuniform;      // write per-layer counts vLLM cannot load
    int threads;
    uint64_t max_shard_size;
    int force, resume, dry_run, quiet;
    int allow_nan;             // copy float tensors holding NaN / Inf (refused otherwise, as every writer)
    int shard_index, shard_count, merge;  // split jobs over a shared DST.partial (checkpoint.h)
    atomic_int *cancel;        // set by a signal handler to stop (staging kept for --resume)
} fb_prune_opts;

typedef struct fb_prune_result {
    int n_experts, n_keep, n_layers;  // n_keep: the largest per-layer count
    int *layer_keep;           // [n_layers] per-layer counts (malloc'ed; fb_prune_result_free)
    int nonuniform;            // 1 when the layers keep different counts
    size_t n_copied, n_sliced, n_dropped, n_shards, n_resumed, n_other_jobs;
    int split_job;             // 1: a split job finished its shards; the merge run completes
    uint64_t bytes_in, bytes_out;
    double seconds;
} fb_prune_result;

// Frees what a result owns.
void fb_prune_result_free(fb_prune_result *r);

// Runs the whole job. `report` receives the dry-run listing (per layer: the experts that go,
// their saliency and routed counts; the bytes saved) — the library writes nothing else.
// Returns 0 on success, -1 with err on failure (nothing left behind), -2 when cancelled (the
// staging directory is kept for --resume).
int fb_prune_run(const char *src, const char *dst, const fb_prune_opts *o, FILE *report, fb_prune_result *res,
                 fb_err *err);

#endif
