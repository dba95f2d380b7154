// quantize.h: the checkpoint quantizer behind nvfp4-quantize and w4a16-quantize.
//
// SRC (BF16, or FP8 block-scaled dequantized tile by tile in memory exactly as fp8-dequant
// does) + a recipe -> a compressed-tensors checkpoint (nvfp4-pack-quantized or
// pack-quantized) or an AutoRound (auto_round:auto_gptq) one:
//   1. the plan (src/quant/scheme.h fb_plan_build): which module is quantized with which
//      scheme and why; kept tensors are copied (FP8 weights dequantized to BF16);
//   2. output tensors declared in source order, cut into shards (src/io/checkpoint.h);
//   3. work items = one kept tensor (in chunks), one quantized tensor, or one NVFP4 fused
//      set (q/k/v of a layer, w1/w3 of an expert: pass 1 takes the amax of every member,
//      pass 2 quantizes each with the shared global scale), computed by N threads and
//      committed in order (src/common/pool.h); memory = threads x one item's buffers;
//   4. config.json: the source's FP8 quantization_config replaced by the one the plan
//      produces, partial_rotary_factor added when the source has rotary_dim;
//      quantization_config.json too for AutoRound, hf_quant_config.json for ModelOpt; recipe.yaml; tokenizer and side files;
//      README.md, the model card (src/io/card.h);
//   5. the validate-ignore-list rules on the staging directory, then rename into place.
// NVFP4 (W4A4) reads each quantized module's input absmax from a calibration statistics
// file (src/calib/stats.h) to write input_global_scale.
// A recipe with a GPTQModifier tunes the modules it selects in the sequential layer loop
// (jobs/tune.h) on calibration tokens from `dataset`: each layer is tuned, then written (its
// items of step 3 run right after it), so memory stays one layer; the scales written are the
// observer's of the original weight (pack_fixed encodes the tuned weights on them).
// Shard __metadata__ carries provenance (tool, version, recipe and calibration digests) but
// not the source path, so FP8 -> quantized equals FP8 -> fp8-dequant -> quantized byte for byte.
#ifndef FB_QUANT_QUANTIZE_H
#define FB_QUANT_QUANTIZE_H

#include <stdatomic.h>
#include <stdio.h>

#include <jansson.h>

#include "common/fb.h"
#include "io/dataset.h"

typedef enum fb_qout_format {
    FB_QOUT_COMPRESSED_TENSORS = 0,  // nvfp4-pack-quantized / pack-quantized
    FB_QOUT_AUTOROUND,               // auto_round:auto_gptq (W4A16 only)
    FB_QOUT_MODELOPT,                // NVIDIA ModelOpt NVFP4 (quant_method modelopt, hf_quant_config.json;
                                     // NVFP4 / NVFP4A16 only)
} fb_qout_format;

typedef struct fb_quantize_opts {
    const char *tool;          // "nvfp4-quantize" / "w4a16-quantize" (messages, provenance)
    const char *recipe_path;
    const char *calib_path;    // statistics file from calibrate, or NULL
    fb_qout_format format;
    unsigned allowed_kinds;    // bit (1 << fb_qkind) for each scheme this tool may write
    int threads;
    uint64_t max_shard_size;
    int force, resume, dry_run, verbose, allow_nan;
    int shard_index, shard_count, merge;  // split jobs over a shared DST.partial (checkpoint.h)
    int quiet;                 // no progress line
    atomic_int *cancel;        // set by a signal handler to stop (staging kept for --resume)
    // Calibration data for recipes that tune (GPTQModifier), read as calibrate reads it.
    const char *dataset;       // comma-separated JSONL files, or NULL
    const fb_ds_opts *data;    // samples, seq_len, seed, shuffle, template, tokenizer (with dataset)
    const char *template_what; // the chat template used (provenance)
    int expert_group;          // AutoRound: a layer's routed experts tuned in groups of this many
                               // (memory: ~5 weight-sized f32 arrays per tuned Linear); 0 = all
    int ar_cuda;               // --device cuda: AutoRound tunes each block on the GPU (cuda/cutune.h), GPTQ
                               // solves each Linear there (cuda/cugptq.h); 0: the CPU
    int ar_gemm;               // with ar_cuda: the AutoRound tuner's GEMM arithmetic (fb_ar_gemm; 0 f32)
} fb_quantize_opts;

typedef struct fb_quantize_result {
    size_t n_quantized, n_kept, n_fused_sets, n_shards, n_resumed;
    size_t n_other_jobs;       // shards left to other split jobs
    int split_job;             // 1: a split job finished its shards; the merge run completes
    uint64_t bytes_in, bytes_out, elements_quantized;
    double seconds;
    const char *tune_algo;            // "GPTQ" / "AutoRound" when the recipe tunes, else NULL
    size_t n_tuned, n_tune_fallback;  // modules tuned by GPTQ; of them, round-to-nearest fallbacks
    size_t n_tune_factorized;         // GPTQ: Hessian factorizations (one per distinct Hessian of a layer)
    size_t n_samples, n_tokens;       // calibration data used for tuning
    double tune_seconds;              // the layer loop (calibration, tuning, propagation passes)
    double tune_calib_s, tune_tune_s, tune_propagate_s;  // of it: the passes before tuning, the
                                      // tuning (GPTQ solves / AutoRound blocks), the passes after
    double tune_load_s;               // AutoRound, of tune_s: the tuned weights read (dequantized)
    double tune_write_s;              // of the loop: each layer's outputs quantized and written
    char scheme[64];           // "NVFP4", "NVFP4A16", "W4A16" (or "mixed")
    json_t *left_out;          // entries of SRC not carried over, [{"name", "why"}] (source.h
                               // fb_side_files_left_out); NULL unless written; caller decrefs
} fb_quantize_result;

// Runs the whole job. `report` receives the dry-run plan (and with verbose, one line per
// tensor) and the recipe's warnings (regexes without a trailing $) — the library writes
// nothing else. Returns 0 on success, -1 with err on failure
// (nothing left behind), -2 when cancelled (the staging directory is kept for --resume).
int fb_quantize_run(const char *src, const char *dst, const fb_quantize_opts *o, FILE *report,
                    fb_quantize_result *res, fb_err *err);

#endif
