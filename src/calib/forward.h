// forward.h: the layer-by-layer MoE forward on the CPU, with bounded memory (the family's
// names, router and q/k norm from the architecture table, arch/arch.h). Behind the engine
// interface (calib/engine.h) with the CUDA engine.
//
// Used by `calibrate` (statistics) and by `ref-runner` (two engines stepped in lockstep, one
// per checkpoint, comparing hidden states and logits). The math is in calib/mm.h.
//
// Sequence of calls:
//   f = fb_fwd_new(src, &cfg, &opts)      weights come from a weight source (calib/wsrc.h)
//   fb_fwd_set_tokens(f, ids, n, starts, nseq)   embeddings of every token (sequences are
//                                         independent: causal attention within one, positions
//                                         restart at 0)
//   for l in 0..n_layers-1: fb_fwd_layer(f, l)   loads layer l's weights, runs it on all
//                                         tokens, records statistics, keeps the outputs as the
//                                         next layer's inputs (fb_fwd_hidden)
//   fb_fwd_logits(f, t0, n, out)          final norm + lm_head for tokens [t0, t0+n) (lm_head
//                                         is loaded on first use and kept until fb_fwd_free)
//
// Memory: 2 x tokens x hidden f32 (hidden states + the MoE accumulator) + one layer's
// attention weights (f32) + `expert_group` experts' weights (f32, 3 x inter x hidden each) +
// per-thread scratch (token_chunk x inter x 3 floats, one query block of scores per thread).
// For MiniMax-M2 with 64 x 2048 tokens: 2 x 1.61 GB + 0.18 GB + 32 x 56.6 MB (1.8 GB) + small.
//
// Experts: in routed mode (inference) each expert runs on the tokens routed to it. In
// all-experts mode (calibration, as llm-compressor's moe_calibrate_all_experts) w1 and w3 of
// every expert run on every token, so every expert's observers see every token; w2 runs on
// the routed rows only (its observer sees its whole input, the SwiGLU product over all tokens,
// and only routed outputs reach the layer output, so w2 on the other rows would be discarded
// work). Both modes give the same layer output.
//
// Threads: `threads` workers. Projections and lm_head are single OpenBLAS calls using that
// many BLAS threads; attention (heads x query blocks) and experts are spread over pthreads,
// each calling single-threaded BLAS. Results do not depend on the thread count except through
// OpenBLAS's own blocking of the projection GEMMs.
#ifndef FB_CALIB_FORWARD_H
#define FB_CALIB_FORWARD_H

#include "calib/mm.h"
#include "calib/stats.h"
#include "calib/wsrc.h"

// Hooks inside the layer loop, keyed by tensor role (arch/arch.h), layer and expert: where an
// algorithm (activation emulation, statistics, GPTQ Hessians, AutoRound inputs) runs while one
// layer's weights are resident. A Linear input shared by several Linears is reported once, under
// the first role: FB_ROLE_Q for q/k/v, FB_ROLE_W_GATE for an expert's gate/up. Expert hooks are
// called from worker threads concurrently for different experts; NULL members are skipped.
// Every hook returns 0, or -1 with err set to stop the forward.
typedef struct fb_fwd_hooks {
    void *user;
    // The input rows of a Linear just before its GEMM (x: rows x cols, row-major); x may be
    // changed in place and the GEMM uses what it holds afterwards (activation emulation).
    // expert = -1 for attention. For experts: their routed rows, in routed mode only (in
    // all-experts mode experts are reported through expert_input_all).
    int (*linear_input)(void *user, fb_role role, int layer, int expert, float *x, size_t rows,
                        size_t cols, fb_err *err);
    // All-experts mode only (calibration: every expert sees every token), read-only: the
    // gate/up input of every expert (role FB_ROLE_W_GATE, expert -1: one call per token chunk,
    // the rows of tokens [t0, t0+rows)), and each expert's down input over those tokens
    // (FB_ROLE_W_DOWN, the SwiGLU product of every row).
    int (*expert_input_all)(void *user, fb_role role, int layer, int expert, size_t t0,
                            const float *x, size_t rows, size_t cols, fb_err *err);
    // Expert e's outputs for its routed tokens before the routing weight (y: rows x hidden;
    // tok[r]: the token of row r, ascending).
    int (*expert_output)(void *user, int layer, int expert, const int32_t *tok, const float *y,
                         size_t rows, size_t cols, fb_err *err);
    // After each layer, the new hidden states (ntok x hidden).
    int (*layer_output)(void *user, int layer, const float *h, size_t ntok, size_t hidden,
                        fb_err *err);
} fb_fwd_hooks;

typedef struct fb_fwd_opts {
    int threads;           // workers (0 = every CPU)
    int all_experts;       // 1: calibration mode (see above)
    int expert_group;      // experts whose weights are held at once (0 = 32)
    int token_chunk;       // token rows per expert pass (0 = 512 all-experts, 4096 routed)
    int q_block;           // query rows per attention work item (0 = 256)
    // 1: bf16 activations, rounded where a bf16 transformers model rounds them (each op's
    // result, the RMSNorm and RoPE steps, SDPA as torch's CPU flash-attention kernel computes
    // it, the routing weights where the family's router casts them, the bf16 combine of the
    // experts), so that calibration statistics equal those of llm-compressor's bf16 forward.
    // 0: f32 throughout (the default; the reference for ref-runner).
    int bf16;
    fb_calib_stats *stats; // where statistics go; NULL for none
    const fb_fwd_hooks *hooks;  // NULL for none
    // Progress (main thread): layer l, `done` of `total` work units of that layer.
    void (*progress)(void *user, int layer, size_t done, size_t total);
    void *progress_user;
} fb_fwd_opts;

// Seconds and work of the forward so far (for progress lines and benchmarks).
typedef struct fb_fwd_timing {
    double load_s;        // reading + dequantizing weights
    double attn_s;        // norms, projections, attention
    double router_s;      // router
    double expert_s;      // expert GEMMs + SwiGLU + combine
    double expert_flops;  // 2*m*n*k summed over the expert GEMMs
    double attn_flops;    // projections + attention GEMMs
} fb_fwd_timing;

typedef struct fb_fwd fb_fwd;

// A forward over the model `cfg` reading weights from `src` (both borrowed; they must outlive
// the engine). Returns NULL with err set for invalid options.
fb_fwd *fb_fwd_new(fb_wsrc *src, const fb_model_config *cfg, const fb_fwd_opts *o, fb_err *err);
void fb_fwd_free(fb_fwd *f);

// Sets the tokens: n_tok ids (each < vocab), n_seq sequences, sequence s being
// [starts[s], starts[s+1]) (starts has n_seq+1 entries, starts[0] = 0, starts[n_seq] = n_tok).
// Loads their embeddings into the hidden states and resets the layer counter. Fails on an
// id out of range or a missing/misshaped embedding.
int fb_fwd_set_tokens(fb_fwd *f, const int32_t *ids, size_t n_tok, const size_t *starts,
                      size_t n_seq, fb_err *err);

// Runs decoder layer `layer` (must be the next one: 0, 1, ...). Fails naming the tensor on a
// missing or misshaped weight, or with the hook's error.
int fb_fwd_layer(fb_fwd *f, int layer, fb_err *err);

// The hidden states (n_tok x hidden, row-major) after the last layer run (the embeddings
// before any). Owned by the engine.
float *fb_fwd_hidden(fb_fwd *f);
int fb_fwd_layers_done(const fb_fwd *f);

// Replaces the hidden states (n_tok x hidden, as fb_fwd_hidden gives them) and makes `layer`
// the next one: a layer is re-run from saved inputs (sequential algorithms run a layer with its
// original weights to observe, then with its quantized weights to feed the next layer).
int fb_fwd_set_hidden(fb_fwd *f, int layer, const float *h, fb_err *err);

// Logits (n x vocab, row-major, caller's buffer) of tokens [t0, t0+n) after final norm and
// lm_head, from the current hidden states (normally after the last layer).
int fb_fwd_logits(fb_fwd *f, size_t t0, size_t n, float *out, fb_err *err);

// Routing of the last layer run: for token t, experts idx[t*top_k + j] (ascending) with
// weights w[t*top_k + j]. Owned by the engine.
const int32_t *fb_fwd_route_idx(const fb_fwd *f);
const float *fb_fwd_route_w(const fb_fwd *f);

const fb_fwd_timing *fb_fwd_get_timing(const fb_fwd *f);

// Sets the number of OpenBLAS threads (a process-wide setting); used by the engine and tools.
void fb_blas_threads(int n);

#endif
