// arch.h: the architecture table. What differs between model families is data, kept here,
// one file per family (src/arch/<family>.c), the way llama.cpp keeps per-architecture
// tensor-name tables:
//   - the checkpoint's module names by ROLE (embedding, q/k/v/o, norms, router, router bias,
//     expert gate/up/down, lm_head), as path pieces: "<layers>.L.<rel>" for a layer's
//     modules and "<layers>.L.<moe>.<experts>.E.<leaf>" for an expert's;
//   - the config.json parser that fills fb_model_config (and refuses what the engines do not
//     compute);
//   - the numerics that differ (router kind, q/k norm kind), read by the layer forward of the
//     engines (src/calib/forward.c, src/cuda/cufwd.cu);
//   - what the loaders need (vLLM's expert names, the router-gate ignore entry).
// Nothing outside src/arch/ spells a tensor name: callers ask for (role, layer, expert) and
// get the name, or parse a name back into (role, layer, expert).
//
// Adding a family: one file src/arch/<family>.c defining `const fb_arch fb_arch_<family>`,
// plus its line in the registry (ARCHS[] in arch.c). See README "Extending fourbit".
#ifndef FB_ARCH_ARCH_H
#define FB_ARCH_ARCH_H

#include <jansson.h>

#include "common/fb.h"

typedef enum fb_role {
    // model scope
    FB_ROLE_EMBED = 0,    // token embedding table [vocab, hidden]
    FB_ROLE_FINAL_NORM,   // final RMSNorm [hidden]
    FB_ROLE_LM_HEAD,      // output projection [vocab, hidden]
    // layer scope
    FB_ROLE_LN_IN,        // RMSNorm before attention [hidden]
    FB_ROLE_LN_POST,      // RMSNorm before the MoE [hidden]
    FB_ROLE_Q, FB_ROLE_K, FB_ROLE_V, FB_ROLE_O,  // attention Linears
    FB_ROLE_Q_NORM, FB_ROLE_K_NORM,              // q/k RMSNorm (width: see fb_qk_norm)
    FB_ROLE_ROUTER,       // router Linear [experts, hidden] (never quantized: loaders need it float)
    FB_ROLE_ROUTER_BIAS,  // router correction bias [experts] (a parameter, not a module)
    // expert scope
    FB_ROLE_W_GATE,       // expert gate projection [inter, hidden]   (MiniMax w1, Qwen gate_proj)
    FB_ROLE_W_UP,         // expert up projection [inter, hidden]     (MiniMax w3, Qwen up_proj)
    FB_ROLE_W_DOWN,       // expert down projection [hidden, inter]   (MiniMax w2, Qwen down_proj)
    FB_ROLE_COUNT
} fb_role;

typedef enum fb_scope { FB_SCOPE_MODEL = 0, FB_SCOPE_LAYER, FB_SCOPE_EXPERT } fb_scope;

// Layer-scope module groups whose names the statistics file and messages use.
typedef enum fb_block { FB_BLOCK_LAYER = 0, FB_BLOCK_ATTN, FB_BLOCK_MOE, FB_BLOCK_EXPERTS } fb_block;

// How the router turns logits into the chosen experts and their weights.
typedef enum fb_router_kind {
    // MiniMax-M2: s = sigmoid(logits); top-k by s + correction bias (bias only for the
    // choice; ties -> lower index); weights = s[chosen] / sum(s[chosen]).
    FB_ROUTER_SIGMOID_BIAS = 0,
    // Qwen3-MoE: p = softmax(logits) in f32; top-k by p; weights = p[chosen], divided by
    // their sum when norm_topk_prob.
    FB_ROUTER_SOFTMAX,
} fb_router_kind;

// q_norm / k_norm: none, one RMSNorm over all heads at once (MiniMax-M2 "per_layer": weight
// [heads * head_dim]) or one per head (Qwen3: weight [head_dim], applied to each head).
typedef enum fb_qk_norm { FB_QKN_NONE = 0, FB_QKN_ALL_HEADS, FB_QKN_PER_HEAD } fb_qk_norm;

typedef struct fb_arch fb_arch;

// The model description every engine computes from (one decoder layer = attention + MoE).
typedef struct fb_model_config {
    const fb_arch *arch;   // the family (never NULL after a successful parse)
    int hidden;            // hidden_size (MiniMax-M2: 3072)
    int inter;             // intermediate size of one expert (1536)
    int n_layers;          // num_hidden_layers (62)
    int n_heads;           // num_attention_heads (48)
    int n_kv_heads;        // num_key_value_heads (8)
    int head_dim;          // head_dim (128)
    int rotary_dim;        // dims rotated per head (64)
    double rope_theta;     // 5e6
    double eps;            // rms_norm_eps (1e-6)
    int n_experts;         // routed experts per layer (256)
    int top_k;             // experts per token (8)
    int vocab;             // vocab_size (200064)
    fb_qk_norm qk_norm;    // q/k norm kind
    fb_router_kind router; // router kind
    int use_routing_bias;  // FB_ROUTER_SIGMOID_BIAS: the correction bias is used for the choice
    int norm_topk_prob;    // FB_ROUTER_SOFTMAX: renormalise the chosen probabilities
    int tie_embeddings;    // lm_head = embed_tokens
    int block_m, block_n;  // FP8 weight_block_size (128, 128), 0 when not FP8
} fb_model_config;

struct fb_arch {
    const char *name;            // config.json model_type ("minimax_m2")
    const char *label;           // for messages ("MiniMax-M2")
    const char *const *classes;  // config.json architectures[] values, NULL-terminated
    const char *layers;          // "model.layers"
    const char *block[4];        // fb_block -> path relative to a layer ("" for the layer
                                 // itself; EXPERTS is relative to the layer too)
    // Per role: the module path (model scope: full; layer scope: relative to a layer; expert
    // scope: the leaf under "<experts>.E") and whether the role is a parameter itself
    // (FB_ROLE_ROUTER_BIAS), not a module with a ".weight". NULL path: the family has none.
    struct { const char *path; int is_param; } role[FB_ROLE_COUNT];
    // config.json keys whose names differ between families (the validator checks them).
    const char *key_n_experts;   // "num_local_experts" (MiniMax) / "num_experts" (Qwen3)
    const char *key_inter;       // "intermediate_size" / "moe_intermediate_size"
    int partial_rotary;          // the config carries rotary_dim / partial_rotary_factor
    fb_router_kind router;       // the family's router (the config cannot change it)
    fb_qk_norm qk_norm;          // the family's q/k norm kind (NONE if the config can turn it off)
    const char *vllm_model;      // vLLM's model class whose load_weights maps the names
                                 // ("MiniMaxM2Model"); the CausalLM class is classes[0]
    // vLLM's loader names for the expert Linears (gate, up, down) after its own mapping
    // (both families: gate_proj, up_proj, down_proj, fused into w13 / w2).
    const char *vllm_expert[3];
    // The ignore entry a recipe needs for the router gate ("re:.*block_sparse_moe\\.gate$").
    const char *router_ignore;
    // Fills out from config.json (text_config honoured); refuses, naming the key, what the
    // engines do not compute. `out->arch` is set by the caller.
    int (*parse_config)(const json_t *cfg, fb_model_config *out, fb_err *err);
};

// ---- the registry ---------------------------------------------------------------------------

// Every known family, NULL-terminated, in registration order.
const fb_arch *const *fb_arch_all(void);

// The family named by model_type (e.g. "qwen3_moe"); NULL if unknown.
const fb_arch *fb_arch_by_name(const char *model_type);

// The family of a checkpoint from its config.json: architectures[0] if it is a known class,
// else model_type (text_config's when nested). Fails naming what was found and the known
// families.
const fb_arch *fb_arch_from_config(const json_t *cfg, fb_err *err);

// Parses config.json into *out (family from fb_arch_from_config, then its parser).
int fb_model_config_parse(const json_t *cfg, fb_model_config *out, fb_err *err);

// ---- names ----------------------------------------------------------------------------------

fb_scope fb_role_scope(fb_role r);
// Short role name for messages and JSON ("q_proj", "w_gate", "router", ...).
const char *fb_role_name(fb_role r);
// 1 when the role is a Linear a quantizer may quantize (q/k/v/o and the expert projections).
int fb_role_is_linear(fb_role r);

// Writes the module name of (role, layer, expert) into buf ("model.layers.3.self_attn.q_proj",
// "...block_sparse_moe.experts.7.w1"); layer/expert are ignored where the scope has none.
// Returns 0, or -1 when the family has no such role or buf is too small.
int fb_arch_module(const fb_arch *a, fb_role r, int layer, int expert, char *buf, size_t n);

// The tensor name: the module name + ".weight", or the parameter itself (router bias).
int fb_arch_tensor(const fb_arch *a, fb_role r, int layer, int expert, char *buf, size_t n);

// The name of a block of layer L ("model.layers.3.block_sparse_moe").
int fb_arch_block(const fb_arch *a, fb_block b, int layer, char *buf, size_t n);

// Parses a module name (no ".weight"; a parameter role such as the router bias by its full
// name) into (role, layer, expert). Returns 0, or -1 when it names no role of the family.
// layer/expert are -1 where the scope has none.
int fb_arch_parse(const fb_arch *a, const char *module, fb_role *r, int *layer, int *expert);

// ---- helpers for the family files (config.json readers) --------------------------------------

// Integer key (required or default), range-checked [lo, 2^30].
int fb_cfg_int(const json_t *cfg, const char *key, int required, int def, int lo, int *out,
               fb_err *err);
int fb_cfg_num(const json_t *cfg, const char *key, double def, double *out, fb_err *err);
int fb_cfg_bool(const json_t *cfg, const char *key, int def);
const char *fb_cfg_str(const json_t *cfg, const char *key);
// The dimensions every MoE config has (hidden, layers, heads, kv heads and head_dim with their
// defaults, vocab, experts per token) plus the family's keys for the expert width and count;
// refuses inconsistent heads and more experts per token than experts.
int fb_cfg_dims(const json_t *cfg, const char *key_inter, const char *key_experts, fb_model_config *o,
                fb_err *err);
// Per-layer expert counts of an expert-pruned checkpoint: compressed-tensors 0.20's
// ExpertSparsityConfig {"method": "prune" | "novice", "num_experts": [n or null per decoder
// layer]}, read from quantization_config.moe_sparsity_config (the field of its
// QuantizationConfig) or a top-level moe_sparsity_config (reap-prune --per-layer on a source
// without quantization_config). Returns 0 when config.json has none; 1 with counts[0..n_layers)
// filled (-1 for null, a dense layer); -1 with err naming the key when it is malformed (not a
// list of n_layers entries, an entry not null or an integer in [1, 2^20], an unknown method).
// counts may be NULL (only checked).
int fb_cfg_expert_counts(const json_t *cfg, int n_layers, int *counts, fb_err *err);
// The refusal of every engine (calibrate, ref-runner, the quantizers, fp8-dequant): 0 when the
// checkpoint has the same expert count in every layer, -1 with err saying which layers differ
// (they build every layer with one expert count, as vLLM does).
int fb_cfg_refuse_nonuniform(const json_t *cfg, fb_err *err);
// RoPE theta (top level or rope_parameters; default_theta when absent) and the rotated width
// (rotary_dim, else partial_rotary_factor * head_dim, else head_dim; the two must agree);
// rope_type other than "default" is refused. head_dim must be set in out.
int fb_cfg_rope(const json_t *cfg, double default_theta, fb_model_config *out, fb_err *err);
// FP8 weight_block_size from quantization_config (0, 0 when absent).
int fb_cfg_fp8_block(const json_t *cfg0, fb_model_config *out, fb_err *err);

#endif
