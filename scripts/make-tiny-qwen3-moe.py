#!/usr/bin/env python3
"""Make models/tiny-qwen3-moe (FP8 block checkpoint in the Qwen/Qwen3-30B-A3B-FP8 layout) and
tests/golden/qwen3-moe/bf16/ (transformers' own FP8 dequantization of it).

Reference packages (venv /work/venvs/hq, installed from PyPI):
    torch == 2.15.0 (PyPI wheel, run on the CPU), transformers == 5.17.0 (Qwen3MoeForCausalLM,
    FineGrainedFP8Config), accelerate == 1.15.0 (transformers' FP8 loader requires it),
    safetensors == 0.8.0, tokenizers == 0.23.3, xxhash == 4.1.0
    pip install torch transformers==5.17.0 accelerate==1.15.0 xxhash==4.1.0

The model: transformers' own Qwen3MoeForCausalLM, built from a Qwen3MoeConfig with the key set of
Qwen/Qwen3-30B-A3B at a tiny size, weights drawn with a fixed seed (random init, no training):
  every Linear ~ N(0, 1/fan_in) (LeCun normal, so activations keep unit scale through the layers
  and the logits and router scores are not flat as they are with transformers' default
  N(0, 0.02)), embeddings ~ N(0, 1), RMSNorm weights ~ 1 + N(0, 0.1) (so that a forward that
  forgets a norm weight is caught). The tokenizer is models/tiny-minimax-m2's byte-level BPE
  (vocab 4096) copied as it is: it has no <|im_start|>/<|im_end|>, so no Qwen chat format.

Export (models/tiny-qwen3-moe), exactly as Qwen publishes its FP8 MoE checkpoints:
  - self_attn.{q,k,v,o}_proj and mlp.experts.E.{gate,up,down}_proj: F8_E4M3 `.weight` plus a
    BF16 `.weight_scale_inv` [ceil(out/128), ceil(in/128)]: per 128x128 tile of the bf16-rounded
    weight, s = BF16(amax / 448) (1 for an all-zero tile), q = (w / s).clamp(+-448) -> e4m3 (RNE).
  - BF16 (not converted): model.embed_tokens, lm_head, every RMSNorm (input_layernorm,
    post_attention_layernorm, self_attn.q_norm/k_norm, model.norm) and the router mlp.gate.
  - config.json quantization_config = {activation_scheme: dynamic, fmt: e4m3, quant_method: fp8,
    weight_block_size: [128, 128]} (Qwen's key set; no modules_to_not_convert).
  - 2 shards + model.safetensors.index.json, generation_config.json, tokenizer files, README.md.

BF16 golden (tests/golden/qwen3-moe/bf16/): the checkpoint is loaded back with
  Qwen3MoeForCausalLM.from_pretrained(dir, quantization_config=FineGrainedFP8Config(dequantize=True),
  dtype=bfloat16) on the CPU (no accelerate, no GPU), and the model's state dict (experts split back into the
  checkpoint's per-expert names: rows [0, I) of gate_up_proj are gate_proj, [I, 2I) up_proj) is
  written as digests.json ({name: [dtype, shape, xxh3_128]} of every tensor) and, in full, the
  tensors of layer 0 (layer0.safetensors) so that a failing C test can print element mismatches.
  Before writing, the script checks that the dequantized tensors equal
  BF16(float32(fp8) * float32(scale_inv)) computed here (one f32 multiply, then bf16 RNE, per
  128x128 tile) and stops if they do not.

Run from the repository root: /work/venvs/hq/bin/python scripts/make-tiny-qwen3-moe.py
Deterministic (fixed seed, single thread); rerunning rewrites identical files.
"""
import json
import os
import shutil
import struct
import sys

import torch
import xxhash
from safetensors.torch import load_file, save_file

import transformers
from transformers import FineGrainedFP8Config, Qwen3MoeConfig, Qwen3MoeForCausalLM

assert transformers.__version__ == "5.17.0", transformers.__version__
assert xxhash.xxh3_128_hexdigest(b"abc") == "06b05ab6733a618578af5f94892f3950"
torch.set_num_threads(1)

OUT = "models/tiny-qwen3-moe"
TOK_SRC = "models/tiny-minimax-m2"
GOLD = "tests/golden/qwen3-moe/bf16"
SEED = 20261206
BLOCK = 128
FP8_MAX = 448.0
BOS_ID, EOS_ID = 4091, 4089     # the tokenizer's ]~!b[ and [e~[

# Qwen3-30B-A3B's config.json key set at a tiny size. q/o are 4 x 64 = 256 wide while hidden is
# 128, as in the real model (32 x 128 = 4096 vs 2048). Every Linear dimension is a multiple of 128
# (full FP8 tiles): a partial tile would need moe_intermediate_size or the q width off 128, which
# also makes in_features of down_proj/o_proj not a multiple of the W4A16 group size (128).
ARCH = dict(
    vocab_size=4096,
    hidden_size=128,
    intermediate_size=384,            # dense MLP width; unused (every layer is MoE), as in Qwen3-30B
    moe_intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    num_experts=8,
    num_experts_per_tok=2,
    norm_topk_prob=True,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    max_position_embeddings=2048,
    max_window_layers=4,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
)


def release_config():
    """config.json with the keys of Qwen/Qwen3-30B-A3B-FP8 (sizes scaled down)."""
    a = ARCH
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "decoder_sparse_step": a["decoder_sparse_step"],
        "eos_token_id": EOS_ID,
        "head_dim": a["head_dim"],
        "hidden_act": "silu",
        "hidden_size": a["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": a["intermediate_size"],
        "max_position_embeddings": a["max_position_embeddings"],
        "max_window_layers": a["max_window_layers"],
        "mlp_only_layers": a["mlp_only_layers"],
        "model_type": "qwen3_moe",
        "moe_intermediate_size": a["moe_intermediate_size"],
        "norm_topk_prob": a["norm_topk_prob"],
        "num_attention_heads": a["num_attention_heads"],
        "num_experts": a["num_experts"],
        "num_experts_per_tok": a["num_experts_per_tok"],
        "num_hidden_layers": a["num_hidden_layers"],
        "num_key_value_heads": a["num_key_value_heads"],
        "output_router_logits": False,
        "quantization_config": {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [BLOCK, BLOCK],
        },
        "rms_norm_eps": a["rms_norm_eps"],
        "rope_scaling": None,
        "rope_theta": a["rope_theta"],
        "router_aux_loss_coef": 0.001,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": transformers.__version__,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": a["vocab_size"],
    }


GENERATION_CONFIG = {
    "bos_token_id": BOS_ID,
    "pad_token_id": EOS_ID,
    "do_sample": True,
    "eos_token_id": [EOS_ID],
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
    "transformers_version": "5.17.0",
}


def hf_config():
    c = release_config()
    del c["quantization_config"], c["architectures"], c["model_type"], c["transformers_version"]
    del c["torch_dtype"], c["rope_scaling"]
    return Qwen3MoeConfig(**c)


def build_model():
    torch.manual_seed(SEED)
    model = Qwen3MoeForCausalLM(hf_config()).float().eval()
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name == "model.embed_tokens.weight":
                p.copy_(torch.randn(p.shape, generator=g))
            else:  # every Linear-like weight: [.., out, in] -> N(0, 1/in)
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model


# ---- FP8 block quantization (the export side; any rule that makes valid e4m3 + scales works,
#      the goldens are what transformers reads back) ----------------------------------------

def quant_fp8_block(w):
    """w: f32 [out, in] -> (F8_E4M3 [out, in], BF16 scale_inv [ceil(out/128), ceil(in/128)])."""
    w = w.to(torch.bfloat16).float()
    out_f, in_f = w.shape
    ro, ci = -(-out_f // BLOCK), -(-in_f // BLOCK)
    pad = torch.zeros(ro * BLOCK, ci * BLOCK)
    pad[:out_f, :in_f] = w
    tiles = pad.view(ro, BLOCK, ci, BLOCK)
    amax = tiles.abs().amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).to(torch.bfloat16)
    q = (tiles / scale.float()[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    q = q.view(ro * BLOCK, ci * BLOCK)[:out_f, :in_f].contiguous()
    return q, scale.contiguous()


def dequant_fp8_block(q, s):
    """BF16(float32(fp8) * float32(scale_inv)): one f32 multiply, one rounding, per tile."""
    out_f, in_f = q.shape
    se = s.float().repeat_interleave(BLOCK, 0)[:out_f].repeat_interleave(BLOCK, 1)[:, :in_f]
    return (q.float() * se).to(torch.bfloat16)


def checkpoint_groups(sd):
    """in-memory state dict (f32, fused experts) -> [{checkpoint name: tensor}] per layer."""
    L, E, I, H = (ARCH["num_hidden_layers"], ARCH["num_experts"], ARCH["moe_intermediate_size"],
                  ARCH["hidden_size"])
    bf = lambda t: t.to(torch.bfloat16).contiguous()
    groups = [{"model.embed_tokens.weight": bf(sd["model.embed_tokens.weight"])}]
    for l in range(L):
        p = f"model.layers.{l}."
        g = {p + "input_layernorm.weight": bf(sd[p + "input_layernorm.weight"]),
             p + "post_attention_layernorm.weight": bf(sd[p + "post_attention_layernorm.weight"])}
        for nm in ("q_proj", "k_proj", "v_proj", "o_proj"):
            q, s = quant_fp8_block(sd[p + f"self_attn.{nm}.weight"])
            g[p + f"self_attn.{nm}.weight"] = q
            g[p + f"self_attn.{nm}.weight_scale_inv"] = s
        g[p + "self_attn.q_norm.weight"] = bf(sd[p + "self_attn.q_norm.weight"])
        g[p + "self_attn.k_norm.weight"] = bf(sd[p + "self_attn.k_norm.weight"])
        g[p + "mlp.gate.weight"] = bf(sd[p + "mlp.gate.weight"])
        gu = sd[p + "mlp.experts.gate_up_proj"]   # [E, 2I, H]: gate rows first, then up
        dn = sd[p + "mlp.experts.down_proj"]      # [E, H, I]
        assert gu.shape == (E, 2 * I, H) and dn.shape == (E, H, I), (gu.shape, dn.shape)
        for e in range(E):
            for wn, w in (("gate_proj", gu[e, :I]), ("up_proj", gu[e, I:]), ("down_proj", dn[e])):
                q, s = quant_fp8_block(w.contiguous())
                g[p + f"mlp.experts.{e}.{wn}.weight"] = q
                g[p + f"mlp.experts.{e}.{wn}.weight_scale_inv"] = s
        groups.append(g)
    groups.append({"model.norm.weight": bf(sd["model.norm.weight"]),
                   "lm_head.weight": bf(sd["lm_head.weight"])})
    return groups


def save_st(tensors, path):
    save_file(tensors, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def export(model):
    if os.path.isdir(OUT):
        for fn in os.listdir(OUT):
            if fn.endswith(".safetensors"):
                os.remove(os.path.join(OUT, fn))
    os.makedirs(OUT, exist_ok=True)
    groups = checkpoint_groups({k: v.detach().float() for k, v in model.state_dict().items()})
    half = 1 + ARCH["num_hidden_layers"] // 2    # shard 1: embed + layers 0-1; shard 2: the rest
    shards = [{k: v for g in groups[:half] for k, v in g.items()},
              {k: v for g in groups[half:] for k, v in g.items()}]
    weight_map, total = {}, 0
    for i, sh in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_st(sh, os.path.join(OUT, fn))
        for k, v in sh.items():
            weight_map[k] = fn
            total += v.numel() * v.element_size()
    write_json(os.path.join(OUT, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    write_json(os.path.join(OUT, "config.json"), release_config())
    write_json(os.path.join(OUT, "generation_config.json"), GENERATION_CONFIG)
    for fn in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(TOK_SRC, fn), os.path.join(OUT, fn))
    print(f"{OUT}: {len(weight_map)} tensors, {total} bytes in {len(shards)} shards")
    return {k: v for g in groups for k, v in g.items()}


# ---- BF16 golden: transformers' own dequantization -------------------------------------------

def digest(t):
    b = t.contiguous().view(torch.uint8).numpy().tobytes() if t.dtype != torch.uint8 else t.numpy().tobytes()
    return xxhash.xxh3_128_hexdigest(b)


ST_DTYPE = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3"}


def transformers_dequant():
    """Load OUT with transformers' FP8 integration in dequantize mode; -> {checkpoint name: bf16}."""
    model = Qwen3MoeForCausalLM.from_pretrained(
        OUT, quantization_config=FineGrainedFP8Config(dequantize=True), dtype=torch.bfloat16)
    sd = model.state_dict()
    I = ARCH["moe_intermediate_size"]
    out = {}
    for k, v in sd.items():
        if k.endswith("mlp.experts.gate_up_proj"):
            p = k[:-len("gate_up_proj")]
            for e in range(v.shape[0]):
                out[f"{p}{e}.gate_proj.weight"] = v[e, :I].contiguous()
                out[f"{p}{e}.up_proj.weight"] = v[e, I:].contiguous()
        elif k.endswith("mlp.experts.down_proj"):
            p = k[:-len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{p}{e}.down_proj.weight"] = v[e].contiguous()
        else:
            out[k] = v.contiguous()
    return out, type(model.model.layers[0].mlp.experts).__name__


def main():
    model = build_model()
    ckpt = export(model)
    deq, experts_cls = transformers_dequant()
    # the dequantized names must be exactly the checkpoint's, less the scales
    want = sorted(k for k in ckpt if not k.endswith("_scale_inv"))
    if sorted(deq) != want:
        sys.exit(f"name sets differ: only transformers {sorted(set(deq) - set(want))[:5]}, "
                 f"only checkpoint {sorted(set(want) - set(deq))[:5]}")
    n_fp8 = 0
    for k in want:
        t = ckpt[k]
        if t.dtype == torch.float8_e4m3fn:
            mine = dequant_fp8_block(t, ckpt[k + "_scale_inv"])
            n_fp8 += 1
        else:
            mine = t
        if deq[k].dtype != torch.bfloat16 or not torch.equal(deq[k].view(torch.int16), mine.view(torch.int16)):
            sys.exit(f"{k}: transformers' dequant is not BF16(f32(fp8) * f32(scale_inv))")
    print(f"transformers' dequant of {n_fp8} FP8 weights == BF16(f32(fp8) * f32(scale_inv)), bit for bit")
    os.makedirs(GOLD, exist_ok=True)
    fp8_names = [k for k in want if ckpt[k].dtype == torch.float8_e4m3fn]
    doc = {
        "generator": "scripts/make-tiny-qwen3-moe.py",
        "source": OUT,
        "reference": "Qwen3MoeForCausalLM.from_pretrained(source, quantization_config="
                     "FineGrainedFP8Config(dequantize=True), dtype=torch.bfloat16) on the CPU"
                     ".state_dict(), fused experts split back to checkpoint names",
        "formula": "BF16_RNE(float32(fp8_e4m3) * float32(weight_scale_inv[i // 128, j // 128]))",
        "transformers_experts_class": experts_cls,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "xxhash": xxhash.VERSION,
        "dequantized": fp8_names,
        "tensors": {k: [ST_DTYPE[deq[k].dtype], list(deq[k].shape), digest(deq[k])] for k in want},
    }
    write_json(os.path.join(GOLD, "digests.json"), doc)
    layer0 = {k: deq[k] for k in fp8_names if k.startswith("model.layers.0.")}
    # one metadata key only: safetensors writes a map's keys in hash order, which would make
    # reruns differ byte-wise (provenance is in digests.json)
    save_st(layer0, os.path.join(GOLD, "layer0.safetensors"))
    print(f"{GOLD}: digests of {len(want)} tensors, {len(layer0)} layer-0 tensors in full")


if __name__ == "__main__":
    main()
