// dequant.h: the FP8 -> BF16 job behind fp8-dequant, as a library function.
//
// SRC (FP8 block-scaled: weight F8_E4M3 + weight_scale_inv per tile, weight_block_size from
// config.json) -> DST, each element BF16(float(fp8) * scale_inv) (quant/fp8block.h), other
// tensors copied as stored, config.json without quantization_config, side files and the model
// card (io/card.h); staged in DST.partial, validated, renamed (io/checkpoint.h); work items of
// ~4 MB computed by N threads and committed in order (common/pool.h). Split jobs and --resume
// as the writer provides them.
#ifndef FB_JOBS_DEQUANT_H
#define FB_JOBS_DEQUANT_H

#include <stdio.h>

#include <jansson.h>

#include "common/fb.h"

typedef struct fb_dequant_opts {
    const char *tool;          // for messages, provenance and the card
    int threads;
    uint64_t max_shard_size;
    int force, resume, dry_run, quiet, allow_nan;
    int shard_index, shard_count, merge;
} fb_dequant_opts;

typedef struct fb_dequant_result {
    size_t n_fp8, n_copy;      // FP8 weights dequantized, tensors copied
    int n_shards, n_resumed, n_other_jobs;
    int split_job;             // 1: a split job finished its shards; the merge run completes
    uint64_t bytes_in, bytes_out;
    size_t block_m, block_n;
    json_t *left_out;          // entries of SRC not carried over (caller decrefs), or NULL
} fb_dequant_result;

// Runs the job. Progress goes to stderr (unless quiet), notices and the dry-run plan to
// `report`. Returns 0, -1 with err (nothing left behind), -2 when interrupted by a signal
// (finished shards kept in DST.partial for --resume; err says so).
int fb_dequant_run(const char *src, const char *dst, const fb_dequant_opts *o, FILE *report,
                   fb_dequant_result *res, fb_err *err);

#endif
