// qwen3_moe.c: Qwen3-MoE (Qwen3MoeForCausalLM: Qwen3-30B-A3B, Qwen3-235B-A22B), BF16 or FP8
// 128x128 block-scaled (the Qwen *-FP8 releases: weight_scale_inv, router and lm_head BF16).
//
// Checkpoint:
//   model.embed_tokens / model.norm / lm_head
//   model.layers.L.{input_layernorm, post_attention_layernorm}
//   model.layers.L.self_attn.{q,k,v,o}_proj, self_attn.{q,k}_norm (one per head: [head_dim])
//   model.layers.L.mlp.gate                          router [E, hidden], no bias
//   model.layers.L.mlp.experts.E.{gate_proj, up_proj, down_proj}
// Router (transformers Qwen3MoeTopKRouter): p = softmax(logits) in f32, top-k by p, divided by
// the sum of the chosen when norm_topk_prob. Every layer is an MoE layer: configs with dense
// layers (mlp_only_layers, decoder_sparse_step != 1) or sliding-window attention are refused.
// vLLM's qwen3_moe loader takes these names as they are (gate_proj/up_proj -> w13,
// down_proj -> w2) and builds mlp.gate as an unquantized ReplicatedLinear.
#include <string.h>

#include "arch/arch.h"

static int parse(const json_t *cfg0, fb_model_config *o, fb_err *err) {
    const json_t *cfg = cfg0;
    const json_t *tc = json_object_get(cfg0, "text_config");
    if (json_is_object(tc)) cfg = tc;
    if (fb_cfg_dims(cfg, "moe_intermediate_size", "num_experts", o, err)) return -1;
    if (fb_cfg_rope(cfg, 10000.0 /* Qwen3MoeConfig default rope_theta */, o, err)) return -1;
    if (fb_cfg_num(cfg, "rms_norm_eps", 1e-6, &o->eps, err)) return -1;
    o->qk_norm = FB_QKN_PER_HEAD;
    o->router = FB_ROUTER_SOFTMAX;
    o->norm_topk_prob = fb_cfg_bool(cfg, "norm_topk_prob", 0);
    o->tie_embeddings = fb_cfg_bool(cfg0, "tie_word_embeddings", 0);

    const char *act = fb_cfg_str(cfg, "hidden_act");
    if (act && strcmp(act, "silu") != 0)
        return fb_fail(err, "config.json: hidden_act \"%s\" is not supported (silu only)", act);
    if (fb_cfg_bool(cfg, "attention_bias", 0))
        return fb_fail(err, "config.json: attention_bias is not supported");
    if (fb_cfg_bool(cfg, "use_sliding_window", 0))
        return fb_fail(err, "config.json: use_sliding_window is not supported");
    int step = 1;
    if (fb_cfg_int(cfg, "decoder_sparse_step", 0, 1, 0, &step, err)) return -1;
    const json_t *dense = json_object_get(cfg, "mlp_only_layers");
    if (step != 1 || (json_is_array(dense) && json_array_size(dense) > 0))
        return fb_fail(err, "config.json: dense MLP layers (decoder_sparse_step %d, "
                            "mlp_only_layers) are not supported: every layer must be MoE", step);
    return fb_cfg_fp8_block(cfg0, o, err);
}

static const char *const CLASSES[] = {"Qwen3MoeForCausalLM", NULL};

const fb_arch fb_arch_qwen3_moe = {
    .name = "qwen3_moe",
    .label = "Qwen3-MoE",
    .classes = CLASSES,
    .layers = "model.layers",
    .block = {
        [FB_BLOCK_LAYER] = "",
        [FB_BLOCK_ATTN] = "self_attn",
        [FB_BLOCK_MOE] = "mlp",
        [FB_BLOCK_EXPERTS] = "mlp.experts",
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
        [FB_ROLE_ROUTER] = {"mlp.gate", 0},
        [FB_ROLE_ROUTER_BIAS] = {NULL, 1},
        [FB_ROLE_W_GATE] = {"gate_proj", 0},
        [FB_ROLE_W_UP] = {"up_proj", 0},
        [FB_ROLE_W_DOWN] = {"down_proj", 0},
    },
    .key_n_experts = "num_experts",
    .key_inter = "moe_intermediate_size",
    .partial_rotary = 0,
    .router = FB_ROUTER_SOFTMAX,
    .qk_norm = FB_QKN_PER_HEAD,
    .vllm_model = "Qwen3MoeModel",
    .vllm_expert = {"gate_proj", "up_proj", "down_proj"},
    .router_ignore = "re:.*mlp\\.gate$",
    .parse_config = parse,
};
