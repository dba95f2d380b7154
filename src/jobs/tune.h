// tune.h: the quantizers' sequential layer loop for tuning algorithms (GPTQ now, AutoRound next),
// with llm-compressor 0.14's SequentialPipeline semantics (pipelines/sequential/pipeline.py,
// dataset_args.propagate_error = True, its default):
//
//   for each decoder layer l (inputs: the outputs of the already-tuned layers before it):
//     1. calibration pass: layer l runs on its inputs with its ORIGINAL weights, every expert on
//        every token (all-experts mode, llm-compressor's moe_calibrate_all_experts); the hooks
//        (calib/forward.h) capture what the algorithm needs: GPTQ, the Hessian of every tuned
//        Linear's input. One Hessian per distinct input: q/k/v share the attention input, and
//        in all-experts mode every expert's w_gate/w_up see the same MoE input, so they share one
//        (llm-compressor accumulates an equal one per module); each expert's w_down has its own.
//     2. every tuned Linear is tuned (the table entry's function) against the observer's scales
//        of its ORIGINAL weight and, for NVFP4, the global scale of its fused set from the
//        original weights (both fixed before GPTQ, as GPTQModifier observes before it quantizes);
//        the result is rounded to bf16 (llm-compressor writes it into its bf16 model) and put into
//        the overlay source;
//     3. propagation pass: layer l is re-run from the same inputs with the tuned weights and the
//        real routing (the layer output does not depend on all-experts mode); modules quantized
//        without tuning keep their original weights here, because the reference runs both
//        passes under DisableQuantization (RTN happens when the checkpoint is compressed);
//     4. layer_done(l): the caller writes layer l's tensors, reading tuned rows from the overlay;
//        the overlay is cleared afterwards.
//   Memory: the engine's (tokens x hidden activations, one layer's weights), a copy of the
//   layer's inputs, the layer's Hessians, the tuned weights of one layer (f32, in the overlay).
//
// The algorithms are entries of one table (fb_tune_algo_get): a per-Linear function (GPTQ:
// weights + Hessian + the observer's scales -> the weights to write, dequantized f32 on the
// scale grid the format stores; quant/qformat.h pack_fixed encodes them), or a per-layer one
// (AutoRound), which runs its own passes:
//
// AutoRound (auto-round 0.16.1's SignRound, calib/autoround.h), two chains as auto-round keeps
// them: the FP chain (every layer original: its outputs are the targets) and the quantized chain
// (the tuned layers before: its outputs are the inputs, enable_quanted_input). For layer l:
//     1. FP pass on the FP chain's input: the layer output (the target);
//     2. the whole block tuned as one unit, as auto-round does (fb_autoround_tune_block): every
//        tuned Linear of the layer against the MSE of the block output on the quantized chain's
//        input, back-propagated through experts, routing, norms, RoPE and attention; the
//        untuned parts (norms, router, ignored Linears) read as the engine reads them.
//   With --expert-group smaller than the layer's experts (memory), 2. is instead:
//     2a. FP pass captures the attention Linears' inputs; a quantized-chain pass the q/k/v input;
//        q/k/v tuned, each against its own FP output (the FP chain's input times the original
//        weight); then a pass with the tuned q/k/v for o_proj's input, and o_proj tuned likewise
//        (auto-round's layer-wise unit, _quantize_layer);
//     2b. a pass with the tuned attention and the original experts: the MoE input and the real
//        top-k routing of the quantized chain, and the layer output; the routed experts are then
//        tuned against the FP block output (fb_autoround_tune_moe, the target shifted by what
//        the tuned attention changed, so that its loss is the block-output MSE), expert_group at
//        a time (the other groups held at their current weights);
//     4. the propagation pass with every tuned weight: the next layer's quantized-chain input.
//   iters 0 (auto-round's RTN mode, algorithms/quantization/rtn): no tuning and no quantized
//   chain; the attention Linears get the optimized RTN (fb_autoround_opt_rtn in float32, as auto-round
//   searches where its amp is off, e.g. on a CPU without bf16: the golden tests/golden/autoround-model;
//   under bf16 amp on a GPU it searches in bf16, which fb_autoround_opt_rtn also does) weighted by
//   their imatrix over the FP chain's inputs (OptimizedRTNQuantizer's FP-input hooks; / samples),
//   the routed experts plain RTN (auto-round's MoE default), and with disable_opt_rtn everything
//   plain RTN. In every mode the original weights are taken as the bf16 model holds them (the
//   reference tools load the checkpoint in bf16).
//   Each tuned Linear's weights s * q (f32, exact) and its scales (f32 values of fp16, signed as
//   auto-round's are) go into the overlay (the scales as "<weight name>" FB_TUNE_SCALE_SUFFIX);
//   the format's pack_scaled stores both. W4A16 int4 symmetric group 128 only.
#ifndef FB_JOBS_TUNE_H
#define FB_JOBS_TUNE_H

#include <stdatomic.h>

#include "calib/engine.h"
#include "calib/gptq.h"
#include "calib/stats.h"
#include "io/dataset.h"
#include "quant/qformat.h"
#include "quant/scheme.h"

#define FB_TUNE_MAX_FUSED 4

typedef enum fb_tune_algo_id { FB_TUNE_GPTQ = 0, FB_TUNE_AUTOROUND, FB_TUNE_COUNT } fb_tune_algo_id;

// The overlay name of a tuned Linear's scales: the weight's name and this suffix ([R, C/G] f32).
#define FB_TUNE_SCALE_SUFFIX ":scale"

// One Linear the loop tunes.
typedef struct fb_tune_linear {
    const char *name;          // tensor name ("model.layers.3.self_attn.q_proj.weight")
    fb_role role;
    int layer, expert;         // expert -1 for attention
    int64_t R, C;              // weight shape [out, in]
    const fb_qfmt *qf;         // output format (its output 1 is the scale tensor [R, C/G])
    size_t group;              // G
    int nvfp4;                 // 1: NVFP4 (global scale), 0: int4
    const char *fused[FB_TUNE_MAX_FUSED];  // members sharing the NVFP4 global scale (itself too)
    int n_fused;
    int actorder;              // 1: weight / static ordering
} fb_tune_linear;

// What tuning one Linear gave.
typedef struct fb_tune_stat {
    double loss;               // the algorithm's loss (GPTQ: sum err^2 / 2; AutoRound: the MSE
                               // of its unit's output over every sample with the kept weights)
    double loss_rtn;           // AutoRound: that MSE with round-to-nearest weights (iteration 0)
    int joint;                 // AutoRound: 2 for a whole block, 1 for a group of routed experts
                               // (one loss for the unit, reported on its first Linear; 0 on the
                               // others), 0 per Linear
    int rtn_fallback;          // 1: fell back to round-to-nearest (non-PD Hessian)
    size_t dead_columns;
    double seconds;
} fb_tune_stat;

typedef struct fb_tune_opts {
    fb_tune_algo_id algo;
    int block_size;            // GPTQ block (128)
    double dampening_frac;     // GPTQ dampening (0.01)
    int ar_iters;              // AutoRound iterations per unit (200); 0: auto-round's iters=0 (below)
    int ar_disable_opt_rtn;    // AutoRound iters 0: plain RTN for the attention Linears too
    int ar_batch;              // AutoRound samples per iteration (8)
    double ar_lr;              // AutoRound learning rate (0: 1 / iters)
    uint64_t ar_seed;          // AutoRound mini-batch order (auto-round's default 42)
    int expert_group;          // AutoRound: experts tuned together (0: all of a layer)
    int ar_cuda;               // AutoRound: tune each block on the GPU (cuda/cutune.h); whole blocks only
    int gptq_cuda;             // GPTQ: each Linear's solve on the GPU (cuda/cugptq.h); the Hessians are still
                               // accumulated by the host engine's calibration pass
    int ar_gemm;               // AutoRound on the GPU: fb_ar_gemm (f32, tf32)
    int threads;               // engine and per-Linear tuning threads
    atomic_int *cancel;
    // Called after each Linear is tuned (may be NULL), in the order of lin[].
    void (*module_done)(void *user, const fb_tune_linear *l, const fb_tune_stat *st);
    // Layer l is tuned and its next-layer inputs computed: write it (overlay holds the tuned
    // weights); return 0 or -1 with err (-2: cancelled).
    int (*layer_done)(void *user, int layer, fb_wsrc *overlay, fb_err *err);
    void (*layer_start)(void *user, int layer, int n_layers, size_t n_tuned);
    void *user;
    // Resume at layer granularity (NULL state_dir: off). Before each layer l the loop stages
    // its input hidden states (GPTQ: the quantized chain's; AutoRound: the FP and the quantized
    // chain's) as state_dir/fourbit-layer-state-<l>.bin (written to a .tmp, fsync'ed, renamed;
    // key and an xxh3 digest inside), and removes the files of layers below keep_from(user) (the
    // first layer whose outputs are not yet in finished shards). resume_layer > 0: layers below
    // it are neither run nor tuned (layer_done is still called for each, in order: their outputs
    // are in kept shards), the loop starts from that layer's staged state, which must exist and
    // carry state_key (fb_tune_state_ok). Every state file is removed when the loop ends.
    const char *state_dir;
    const char *state_key;     // identifies the run (algorithm, recipe, data, source, threads)
    int resume_layer;
    int (*keep_from)(void *user);
    // Optional (NULL: none): the input absmax of every Linear, recorded in each layer's
    // calibration pass (layers without tuned Linears run one pass, recorded too) into these
    // statistics (fb_calib_stats_new(n_layers, n_experts)), before layer_done: NVFP4 W4A4 input
    // scales from the same read of the checkpoint, observed where llm-compressor's input
    // observers observe (calibration pass, quantization disabled, every expert on every token).
    fb_calib_stats *absmax;
} fb_tune_opts;

typedef struct fb_tune_result {
    size_t n_tuned, n_fallback;
    size_t n_factorized;       // GPTQ: Hessian factorizations (one per distinct Hessian of a layer)
    double seconds, calib_s, tune_s, propagate_s;
    double load_s;             // AutoRound, of tune_s: the weights to tune read and dequantized
} fb_tune_result;

// A tuning algorithm: one entry of the table.
typedef struct fb_tune_algo {
    const char *name;          // "GPTQ"
    int hessians;              // 1: the loop accumulates each tuned Linear's input Hessian
    // Per distinct Hessian of a layer: what linear needs of it (GPTQ: its factorization), made
    // once from H, the normalised Hessian [C x C] (not modified), for the first Linear l that
    // needs it, shared read-only by every Linear fed by that input with the same l->actorder
    // (their threads at once), freed by factor_free after the last of them.
    int (*factorize)(const fb_tune_opts *o, const fb_tune_linear *l, const float *H, void **factor, fb_err *err);
    void (*factor_free)(const fb_tune_opts *o, void *factor);
    // Per Linear: W [R x C] (the original weight, f32) is replaced by the weights to write; factor
    // its Hessian's (above); scales the observer's [R x C/G] (f32 values of the stored scales);
    // g the NVFP4 global scale (1 for int4).
    int (*linear)(const fb_tune_opts *o, const fb_tune_linear *l, float *W, const void *factor,
                  const float *scales, float g, fb_tune_stat *st, fb_err *err);
    int block;                 // 1: a per-layer algorithm (AutoRound, above): linear is NULL
} fb_tune_algo;

const fb_tune_algo *fb_tune_algo_get(fb_tune_algo_id id);

// Runs the per-Linear loop (GPTQ; AutoRound's is fb_tune_run_autoround, jobs/tune_autoround.h)
// over every layer of `cfg` on the tokens S, reading weights from `base` through
// `overlay` (fb_wsrc_overlay_new(base), owned by the caller), tuning the Linears lin[0..n) (n may
// be 0: then the loop only records o->absmax).
// Returns 0, -1 with err, or -2 when cancelled.
int fb_tune_run(fb_wsrc *base, fb_wsrc *overlay, const fb_model_config *cfg, const fb_ds_tokens *S,
                const fb_tune_linear *lin, size_t n, const fb_tune_opts *o, fb_tune_result *res,
                fb_err *err);

// 1 when state_dir holds a valid staged state of layer `layer` made under `key` (chains: 1 for
// GPTQ, 2 for AutoRound), for n_tok x hidden hidden states; 0 otherwise (why in err).
int fb_tune_state_ok(const char *state_dir, int layer, const char *key, int chains, size_t n_tok, size_t hidden,
                     fb_err *err);
// Removes every staged state file from state_dir.
void fb_tune_state_clear(const char *state_dir);

// The observer's scales of weight W [R x C] for l's format (the scale tensor quantize_rows
// stores, as f32) into scales [R x C/G]. g: the NVFP4 global scale.
void fb_tune_observer_scales(const fb_tune_linear *l, const float *W, float g, float *scales);

#endif
