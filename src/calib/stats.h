// stats.h: calibration statistics (what `calibrate` measures, what `nvfp4-quantize --calib`
// reads) and their file format.
//
// The statistics file is an ordinary safetensors file (readable by any safetensors loader):
//   <module>.input_absmax                         F32 [1]   for every quantizable Linear:
//        model.layers.L.self_attn.{q,k,v,o}_proj, model.layers.L.block_sparse_moe.experts.E.
//        {w1,w2,w3} (module = checkpoint tensor name without ".weight"). q/k/v share one
//        input, so their values are equal; with all-experts calibration every expert's w1/w3
//        sees the whole MoE input, so those are equal across experts too. The value is
//        max |x| over every token and channel of that Linear's input, as llm-compressor's
//        static_minmax observer reduces it; input_global_scale is computed from it by the
//        compressed-tensors formula (quant/nvfp4.h), not here.
//   model.layers.L.block_sparse_moe.expert_counts        I64 [E]  tokens routed to each expert
//   model.layers.L.block_sparse_moe.expert_saliency      F64 [E]  REAP saliency: mean over the
//        routed tokens of routing weight x ||expert output||_2 (0 for an expert never routed)
//   model.layers.L.block_sparse_moe.expert_saliency_sum  F64 [E]  the f64 sum behind the mean
//   model.layers.L.hidden_norms                          F64 [3]  of the layer's output rows:
//        mean ||h||_2, max ||h||_2, max |h|
// Only layers that were run are present. Names are the architecture's (src/arch/): the
// MiniMax-M2 ones above; Qwen3-MoE: self_attn.{q,k,v,o}_proj, mlp.experts.E.{gate,up,down}_proj,
// mlp.expert_counts, ... __metadata__: "format": "pt",
// "fourbit.kind": "calibration-stats", "fourbit.stats_version": "1", "num_layers",
// "num_experts", "tokens", "experts_mode" ("all" | "routed"), "architecture" (model_type;
// absent in files written before it existed = minimax_m2), plus the provenance the tool
// adds (tool, version, model, dataset, dataset_xxh128, samples, seq_len, seed, template).
// Tensors are laid out 8-byte types first, so every payload is naturally aligned.
#ifndef FB_CALIB_STATS_H
#define FB_CALIB_STATS_H

#include <stdint.h>

#include "arch/arch.h"
#include "common/fb.h"

#define FB_CALIB_STATS_VERSION "1"

typedef struct fb_calib_stats {
    const fb_arch *arch;     // whose names the file uses (MiniMax-M2 until the forward sets it)
    int n_layers, n_experts;
    int all_experts;         // 1: experts were observed on every token
    uint64_t n_tokens;       // tokens of the calibration set
    unsigned char *done;     // [n_layers] 1 when the layer was recorded
    float *qkv_absmax;       // [n_layers]   input of q/k/v_proj
    float *o_absmax;         // [n_layers]   input of o_proj
    float *w13_absmax;       // [n_layers * n_experts]  input of w1/w3
    float *w2_absmax;        // [n_layers * n_experts]  input of w2 (the SwiGLU product)
    int64_t *counts;         // [n_layers * n_experts]  routed tokens
    double *sal_sum;         // [n_layers * n_experts]  sum of weight * ||y||_2 over routed
    double *norm_sum;        // [n_layers]   sum over tokens of ||h||_2 of the layer output
    double *norm_max;        // [n_layers]   max ||h||_2
    float *h_absmax;         // [n_layers]   max |h|
} fb_calib_stats;

// A zeroed statistics table; free with fb_calib_stats_free.
fb_calib_stats *fb_calib_stats_new(int n_layers, int n_experts);
void fb_calib_stats_free(fb_calib_stats *s);

// Folds src into dst (same shape): max of absmax values and norm maxima, sums of counts,
// saliency and norm sums, token totals; layers done in either. For calibration split by
// samples. Returns -1 when the shapes differ.
int fb_calib_stats_merge(fb_calib_stats *dst, const fb_calib_stats *src, fb_err *err);

// REAP saliency of expert e in layer l: sal_sum / counts, 0 for an expert never routed.
double fb_calib_stats_saliency(const fb_calib_stats *s, int l, int e);

// Writes the statistics file (format above) to path (via path.tmp + rename). meta_keys/vals:
// n_meta extra __metadata__ entries (provenance). Fails naming the path on I/O errors.
int fb_calib_stats_write(const fb_calib_stats *s, const char *path, size_t n_meta,
                         const char *const *meta_keys, const char *const *meta_vals,
                         fb_err *err);

// Reads a statistics file written by fb_calib_stats_write. Fails on a file of another kind or
// version, a missing or mis-shaped tensor, or a non-finite absmax. *out is owned by the caller.
int fb_calib_stats_read(const char *path, fb_calib_stats **out, fb_err *err);

// The input absmax recorded for the Linear (role, layer, expert) (expert -1 for attention).
// Returns 0 and sets *out, or -1 when the role is not a calibrated Linear or its layer was
// not recorded.
int fb_calib_stats_input_absmax(const fb_calib_stats *s, fb_role r, int layer, int expert,
                                float *out);

// The same by module name (without ".weight", e.g.
// "model.layers.3.block_sparse_moe.experts.7.w2"), parsed with the statistics' architecture.
int fb_calib_stats_absmax(const fb_calib_stats *s, const char *module, float *out);

#endif
