// minimax_m2.c: MiniMax-M2 / M2.1 / M2.5 / M2.7 (MiniMaxM2ForCausalLM), and the REAP-pruned
// variants (fewer experts per layer, same layout).
//
// Checkpoint (as published, FP8 128x128 block-scaled with weight_scale_inv):
//   model.embed_tokens / model.norm / lm_head
//   model.layers.L.{input_layernorm, post_attention_layernorm}
//   model.layers.L.self_attn.{q,k,v,o}_proj, self_attn.{q,k}_norm (over all heads: [H*D])
//   model.layers.L.block_sparse_moe.gate            router [E, hidden], kept f32
//   model.layers.L.block_sparse_moe.e_score_correction_bias   [E] f32
//   model.layers.L.block_sparse_moe.experts.E.{w1, w2, w3}   gate, down, up
// Router: sigmoid scores, top-k by score + correction bias, weights renormalised without it
// (spec/loaders-vllm-transformers.md §1.4). vLLM's loader maps w1/w3/w2 to
// gate_proj/up_proj/down_proj of its fused experts (w13 / w2).
#include <string.h>

#include "arch/arch.h"

static int parse(const json_t *cfg0, fb_model_config *o, fb_err *err) {
    const json_t *cfg = cfg0;
    const json_t *tc = json_object_get(cfg0, "text_config");
    if (json_is_object(tc)) cfg = tc;
    if (fb_cfg_dims(cfg, "intermediate_size", "num_local_experts", o, err)) return -1;
    // Partial rotary: vLLM reads rotary_dim; transformers >= 5 turns it into
    // partial_rotary_factor (older releases rotated all of head_dim, spec §5.1).
    if (fb_cfg_rope(cfg, 5000000.0 /* MiniMaxM2Config default_theta */, o, err)) return -1;
    if (fb_cfg_num(cfg, "rms_norm_eps", 1e-6, &o->eps, err)) return -1;
    o->qk_norm = fb_cfg_bool(cfg, "use_qk_norm", 1) ? FB_QKN_ALL_HEADS : FB_QKN_NONE;
    o->router = FB_ROUTER_SIGMOID_BIAS;
    o->use_routing_bias = fb_cfg_bool(cfg, "use_routing_bias", 1);
    o->tie_embeddings = fb_cfg_bool(cfg0, "tie_word_embeddings", 0);

    // Things the engines do not compute: refuse rather than compute something else.
    const char *sf = fb_cfg_str(cfg, "scoring_func");
    if (sf && strcmp(sf, "sigmoid") != 0)
        return fb_fail(err, "config.json: scoring_func \"%s\" is not supported (sigmoid only)", sf);
    const char *qn = fb_cfg_str(cfg, "qk_norm_type");
    if (o->qk_norm && qn && strcmp(qn, "per_layer") != 0)
        return fb_fail(err, "config.json: qk_norm_type \"%s\" is not supported (per_layer only)",
                       qn);
    const char *act = fb_cfg_str(cfg, "hidden_act");
    if (act && strcmp(act, "silu") != 0)
        return fb_fail(err, "config.json: hidden_act \"%s\" is not supported (silu only)", act);
    if (fb_cfg_bool(cfg, "attention_bias", 0))
        return fb_fail(err, "config.json: attention_bias is not supported");
    int shared = 0;
    if (fb_cfg_int(cfg, "shared_intermediate_size", 0, 0, 0, &shared, err)) return -1;
    if (shared) return fb_fail(err, "config.json: shared experts are not supported "
                                    "(shared_intermediate_size %d)", shared);
    return fb_cfg_fp8_block(cfg0, o, err);
}

static const char *const CLASSES[] = {"MiniMaxM2ForCausalLM", NULL};

const fb_arch fb_arch_minimax_m2 = {
    .name = "minimax_m2",
    .label = "MiniMax-M2",
    .classes = CLASSES,
    .layers = "model.layers",
    .block = {
        [FB_BLOCK_LAYER] = "",
        [FB_BLOCK_ATTN] = "self_attn",
        [FB_BLOCK_MOE] = "block_sparse_moe",
        [FB_BLOCK_EXPERTS] = "block_sparse_moe.experts",
    },
    .role = {
        [FB_ROLE_EMBED] = {"model.embed_tokens", 0},
        [FB_ROLE_FINAL_NORM] = {"model.norm", 0},
        [FB_ROLE_LM_HEAD] = {"lm_head", 0},
        [FB_ROLE_LN_IN] = {"input_layernorm", 0},
        [FB_ROLE_LN_POST] = {"post_attention_layernorm", 0},
        [FB_ROLE_Q] = {"self_attn.q_proj", 0},
        [FB_ROLE_K] = {"self_attn.k_proj", 0},
        [FB_ROLE_V] = {"self_attn.v_proj", 0},
        [FB_ROLE_O] = {"self_attn.o_proj", 0},
        [FB_ROLE_Q_NORM] = {"self_attn.q_norm", 0},
        [FB_ROLE_K_NORM] = {"self_attn.k_norm", 0},
        [FB_ROLE_ROUTER] = {"block_sparse_moe.gate", 0},
        [FB_ROLE_ROUTER_BIAS] = {"block_sparse_moe.e_score_correction_bias", 1},
        [FB_ROLE_W_GATE] = {"w1", 0},
        [FB_ROLE_W_UP] = {"w3", 0},
        [FB_ROLE_W_DOWN] = {"w2", 0},
    },
    .key_n_experts = "num_local_experts",
    .key_inter = "intermediate_size",
    .partial_rotary = 1,
    .router = FB_ROUTER_SIGMOID_BIAS,
    .qk_norm = FB_QKN_ALL_HEADS,
    .vllm_model = "MiniMaxM2Model",
    .vllm_expert = {"gate_proj", "up_proj", "down_proj"},
    .router_ignore = "re:.*block_sparse_moe\\.gate$",
    .parse_config = parse,
};
