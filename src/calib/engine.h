// engine.h: one layer-step API over the compute engines, so that jobs (calibration, the reference
// runner, GPTQ / AutoRound) drive the CPU engine (calib/forward.c) and the CUDA engine
// (cuda/cufwd.cu) alike, with the same hooks inside the layer loop (calib/forward.h:
// fb_fwd_hooks, keyed by tensor role, layer and expert).
//
//   e = fb_engine_cpu_new(src, cfg, &opts, &err)     or fb_engine_cuda_new (cuda/cuengine.h)
//   fb_engine_set_tokens(e, ids, n, starts, nseq)    embeddings of every token
//   for l in 0..L-1: fb_engine_layer(e, l)           one layer, hooks called inside it
//   fb_engine_hidden(e) / fb_engine_logits(e, ...)   results on the host
//   fb_engine_free(e)
//
// Both engines compute the same math (calib/mm.h, the family's router and q/k norm); the CUDA
// engine in its default bf16 GEMM mode rounds GEMM inputs to bf16 as a bf16 model does, and
// with gemm_f32 follows the CPU to f32 rounding (calib/forward.h, cuda/cufwd.h). On CUDA the
// host hooks cost a device-to-host copy of what they see (and back, for linear_input); the
// W4A4 emulation (act_gs) runs on the device.
#ifndef FB_CALIB_ENGINE_H
#define FB_CALIB_ENGINE_H

#include "calib/forward.h"

typedef enum fb_engine_kind { FB_ENGINE_CPU = 0, FB_ENGINE_CUDA } fb_engine_kind;

typedef struct fb_engine_opts {
    int threads;             // CPU workers / CUDA host reader threads (0 = every CPU)
    int all_experts;         // 1: calibration mode (every expert on every token)
    int expert_group;        // experts whose weights are held at once (0 = engine default)
    int token_chunk;         // token rows per expert pass (0 = engine default)
    int gemm_f32;            // CUDA: f32 GEMMs on f32 activations (0: bf16 inputs)
    int bf16;                // CPU: bf16 activations as a bf16 transformers model (forward.h)
    fb_calib_stats *stats;   // statistics to record; NULL for none
    const fb_fwd_hooks *hooks;  // NULL for none
    // W4A4 activation emulation: the input global scale of a Linear input (role as in the
    // hooks, expert -1 for attention), 0 for none. NULL: no emulation. The engine fake-quantizes
    // the input with it (on the device for CUDA) before any linear_input hook.
    float (*act_gs)(void *user, fb_role role, int layer, int expert);
    void *act_user;
    // Progress (main thread): layer l, `done` of `total` work units of that layer (CPU).
    void (*progress)(void *user, int layer, size_t done, size_t total);
    void *progress_user;
} fb_engine_opts;

typedef struct fb_engine fb_engine;

// Where an engine's time went (for summaries and benchmarks).
typedef struct fb_engine_timing {
    double load_s;       // reading, uploading and dequantizing weights
    double gemm_gflops;  // GFLOP/s: CPU of the expert GEMMs, CUDA of every GEMM on the device
} fb_engine_timing;

// What an engine implements (the engine files fill one).
typedef struct fb_engine_ops {
    const char *name;  // "cpu", "cuda"
    int (*set_tokens)(fb_engine *e, const int32_t *ids, size_t n_tok, const size_t *starts,
                      size_t n_seq, fb_err *err);
    int (*layer)(fb_engine *e, int layer, fb_err *err);
    int (*set_hidden)(fb_engine *e, int layer, const float *h, fb_err *err);
    const float *(*hidden)(fb_engine *e, fb_err *err);
    int (*logits)(fb_engine *e, size_t t0, size_t n, float *out, fb_err *err);
    const int32_t *(*route_idx)(fb_engine *e);
    const float *(*route_w)(fb_engine *e);
    size_t (*emulated)(fb_engine *e);  // Linear input blocks of 16 fake-quantized (act_gs)
    void (*timing)(fb_engine *e, fb_engine_timing *out);
    void (*free)(fb_engine *e);
} fb_engine_ops;

struct fb_engine {
    const fb_engine_ops *ops;
    fb_engine_kind kind;
    void *impl;              // fb_fwd / fb_cufwd
    fb_engine_opts o;
    fb_fwd_hooks act_hooks;  // CPU: act_gs wrapped as a linear_input hook before the caller's
    size_t ntok, hidden;
    _Atomic size_t n_emulated;  // CPU: blocks fake-quantized by act_gs
    float *hbuf;             // host copy of the hidden states (device engines)
    double secs;             // wall time spent in the engine
};

// The CPU engine (calib/forward.c). NULL with err for invalid options.
fb_engine *fb_engine_cpu_new(fb_wsrc *src, const fb_model_config *cfg, const fb_engine_opts *o,
                             fb_err *err);

// Sets the tokens (as fb_fwd_set_tokens).
int fb_engine_set_tokens(fb_engine *e, const int32_t *ids, size_t n_tok, const size_t *starts,
                         size_t n_seq, fb_err *err);
// Runs layer `layer` (the next one).
int fb_engine_layer(fb_engine *e, int layer, fb_err *err);
// Replaces the hidden states (host, n_tok x hidden) and makes `layer` the next one: re-running
// a layer from saved inputs (sequential GPTQ / AutoRound).
int fb_engine_set_hidden(fb_engine *e, int layer, const float *h, fb_err *err);
// Host pointer to the current hidden states (n_tok x hidden), owned by the engine, valid until
// the next call; NULL with err on a device error.
const float *fb_engine_hidden(fb_engine *e, fb_err *err);
// Logits of tokens [t0, t0+n) into out (n x vocab, host).
int fb_engine_logits(fb_engine *e, size_t t0, size_t n, float *out, fb_err *err);
// Routing of the last layer run (ascending expert ids per token, k per token), host; NULL
// when the engine keeps none.
const int32_t *fb_engine_route_idx(fb_engine *e);
const float *fb_engine_route_w(fb_engine *e);
// Linear input blocks of 16 fake-quantized so far (W4A4 emulation).
size_t fb_engine_emulated(fb_engine *e);
fb_engine_timing fb_engine_get_timing(fb_engine *e);
void fb_engine_free(fb_engine *e);

#endif
