// calibrate.h: the calibration job behind `calibrate`, as a library function.
//
// Runs the layer-by-layer forward (calib/engine.h: CPU or CUDA) over calibration tokens
// (io/dataset.h fb_ds_load_tokens gives them) with every expert observed on every token (or
// routed only), and writes the statistics file (calib/stats.h) with its provenance: tool,
// version, model, dataset digests (xxh3-128 and sha256), samples, sequence length, seed, the
// chat template, an FNV-1a of the token ids, and the source's identity (calib/identity.h), which
// nvfp4-quantize --calib checks. The statistics file is written last (path.tmp + rename): a
// failed or interrupted run leaves none.
#ifndef FB_JOBS_CALIBRATE_H
#define FB_JOBS_CALIBRATE_H

#include "calib/engine.h"
#include "calib/stats.h"
#include "io/dataset.h"

typedef struct fb_calibrate_opts {
    const char *tool;            // provenance
    const char *model;           // the checkpoint directory (provenance, identity)
    const char *dataset;         // comma-separated dataset files (digests)
    const char *out;             // the statistics file
    const char *template_name;   // the chat template used (provenance)
    int seq_len, skip_long;      // provenance
    uint64_t seed;               // provenance
    int max_layers;              // 0 = every layer
    int use_cuda;                // the CUDA engine (cuda/cuengine.h)
    fb_engine_opts engine;       // threads, all_experts, groups, chunk, gemm_f32, progress
    void (*layer_start)(void *user, int layer, int n_layers);  // NULL: none
    void *layer_user;
} fb_calibrate_opts;

typedef struct fb_calibrate_result {
    fb_calib_stats *stats;       // owned by the caller (fb_calib_stats_free), NULL on failure
    int n_layers;
    double seconds;              // forward wall time
    fb_engine_timing timing;
} fb_calibrate_result;

// Runs the forward over the tokens of S with the model `src` (config cfg) and writes the
// statistics. Returns 0, or -1 with err (nothing written).
int fb_calibrate_run(fb_wsrc *src, const fb_model_config *cfg, const fb_ds_tokens *S,
                     const fb_calibrate_opts *o, fb_calibrate_result *res, fb_err *err);

#endif
