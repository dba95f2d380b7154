#!/usr/bin/env python3
"""Generates the FP8 / BF16 golden fixtures in tests/golden/fp8/ with PyTorch (the reference).

  python3 scripts/gen-fp8-golden.py        (torch >= 2.1 with float8_e4m3fn; run on a CPU)

Writes:
  codes.safetensors      all 256 e4m3fn codes decoded by torch (F32), e5m2 too, and a table of
                         tricky f32 values with torch's .to(bfloat16) and .to(float16) results
                         (ties, subnormals, overflow, max, NaN) and torch's .to(float8_e4m3fn)
  minimax/               a MiniMax-M2-layout FP8 checkpoint: 2 shards + index + config.json with the
                         fp8 quantization_config + tokenizer files; expected BF16 values of every FP8
                         weight in minimax_expected.safetensors (other tensors must be copied as stored)
  deepseek/              a DeepSeek-V3-layout one with partial edge tiles (e.g. 200x328 with
                         128x128 blocks -> scale [2, 3]); expected output deepseek_expected.safetensors
The expected values are torch's: (w.float() * scale_expanded_to_elements).to(torch.bfloat16),
the product in f32 and one rounding, as compressed-tensors' FP8BlockDequantizer and DeepSeek's
weight_dequant compute it.
"""
import json, os, shutil, sys
import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "fp8")
g = torch.Generator().manual_seed(1234)


def fp8_block(w, bm=128, bn=128):
    """Quantize like the official release: per-tile amax/448 scale, clamp, cast."""
    r, c = w.shape
    sr, sc = (r + bm - 1) // bm, (c + bn - 1) // bn
    scale = torch.empty(sr, sc, dtype=torch.float32)
    q = torch.empty(r, c, dtype=torch.float8_e4m3fn)
    for i in range(sr):
        for j in range(sc):
            t = w[i*bm:(i+1)*bm, j*bn:(j+1)*bn].float()
            s = t.abs().max().clamp(min=1e-12) / 448.0
            scale[i, j] = s
            q[i*bm:(i+1)*bm, j*bn:(j+1)*bn] = (t / s).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q, scale


def dequant(q, scale, bm=128, bn=128):
    r, c = q.shape
    s = scale.repeat_interleave(bm, 0)[:r].repeat_interleave(bn, 1)[:, :c]
    return (q.to(torch.float32) * s).to(torch.bfloat16)


def heavy(r, c):
    # Student-t-like heavy tail with a few outlier columns, as real weights have.
    x = torch.randn(r, c, generator=g) / torch.sqrt(torch.distributions.Gamma(2.0, 2.0).sample((r, c)) + 1e-3)
    x[:, torch.randint(0, c, (3,), generator=g)] *= 20
    return (x * 0.02).to(torch.bfloat16)


def write_ckpt(d, tensors_by_shard, config):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    wm, total = {}, 0
    n = len(tensors_by_shard)
    for k, ts in enumerate(tensors_by_shard):
        name = f"model-{k+1:05d}-of-{n:05d}.safetensors"
        save_file(ts, os.path.join(d, name), metadata={"format": "pt"})
        for t in ts:
            wm[t] = name
            total += ts[t].numel() * ts[t].element_size()
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2, sort_keys=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 4096, "chat_template": "{{ messages }}"}, f)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"do_sample": True, "temperature": 1.0}, f)


def main():
    os.makedirs(OUT, exist_ok=True)
    # --- codes and rounding tables
    codes = torch.arange(256, dtype=torch.uint8)
    e4m3 = codes.view(torch.float8_e4m3fn).to(torch.float32)
    e5m2 = codes.view(torch.float8_e5m2).to(torch.float32)
    specials = [0.0, -0.0, 1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, -1.0 - 2**-8,
                3.3895313892515355e38, 3.4028234663852886e38, float("inf"), float("-inf"),
                1e-40, -1e-40, 2**-133, 2**-149, 9.18354961579912e-41, 65504.0, 65519.0, 65520.0,
                2**-24, 2**-25, 2**-25 * 1.5, 3 * 2**-26, 6.1e-5, 448.0, 464.0, 465.0, 479.0, 480.0,
                -500.0, 2**-9, 2**-10, 3 * 2**-11, 0.0137, 240.0, 0.3333333]
    rnd = (torch.randn(4000, generator=g) * torch.exp(torch.randn(4000, generator=g) * 6)).tolist()
    vals = torch.tensor(specials + rnd, dtype=torch.float32)
    # a NaN with payload: rounding must give 0x7FC0 in the scalar path
    nan = torch.tensor([0x7FC00001, 0xFFC12345 - (1 << 32)], dtype=torch.int32).view(torch.float32)
    vals = torch.cat([vals, nan])
    bf = vals.to(torch.bfloat16).view(torch.int16)
    fp16 = vals.to(torch.float16).view(torch.int16)
    # e4m3 encode after the quantizers' clamp (torch casts values past 448 to NaN otherwise)
    e4 = vals.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
    save_file({"e4m3_decoded": e4m3, "e5m2_decoded": e5m2, "f32_values": vals,
               "bf16_bits": bf, "f16_bits": fp16, "e4m3_clamped_bits": e4},
              os.path.join(OUT, "codes.safetensors"), metadata={"format": "pt", "torch": torch.__version__})

    # --- MiniMax-M2 layout: hidden 256, 2 layers, tiny experts, all dims multiples of 128
    H, I, E = 256, 128, 2
    shards = [{}, {}]
    expected = {}
    for L in range(2):
        sh = shards[L]
        p = f"model.layers.{L}."
        for nm, (r, c) in {"self_attn.q_proj": (256, H), "self_attn.k_proj": (128, H),
                           "self_attn.v_proj": (128, H), "self_attn.o_proj": (H, 256)}.items():
            w = heavy(r, c)
            q, s = fp8_block(w)
            sh[p + nm + ".weight"], sh[p + nm + ".weight_scale_inv"] = q, s
            expected[p + nm + ".weight"] = dequant(q, s)
        for e in range(E):
            for nm, (r, c) in {"w1": (I, H), "w2": (H, I), "w3": (I, H)}.items():
                w = heavy(r, c)
                q, s = fp8_block(w)
                k = f"{p}block_sparse_moe.experts.{e}.{nm}"
                sh[k + ".weight"], sh[k + ".weight_scale_inv"] = q, s
                expected[k + ".weight"] = dequant(q, s)
        sh[p + "block_sparse_moe.gate.weight"] = torch.randn(E, H, generator=g, dtype=torch.float32)
        sh[p + "block_sparse_moe.e_score_correction_bias"] = torch.randn(E, generator=g, dtype=torch.float32)
        for nm, n in {"input_layernorm": H, "post_attention_layernorm": H, "self_attn.q_norm": 256,
                      "self_attn.k_norm": 128}.items():
            sh[p + nm + ".weight"] = (1 + 0.1 * torch.randn(n, generator=g)).to(torch.bfloat16)
    shards[0]["model.embed_tokens.weight"] = heavy(128, H)
    shards[1]["model.norm.weight"] = torch.ones(H, dtype=torch.bfloat16)
    shards[1]["lm_head.weight"] = heavy(128, H)
    # one NaN-free check: no 0x7F/0xFF codes in the fixture (the NaN refusal test makes its own)
    for sh in shards:
        for k, v in sh.items():
            if v.dtype == torch.float8_e4m3fn:
                assert not ((v.view(torch.uint8) & 0x7F) == 0x7F).any(), k
    cfg = {"architectures": ["MiniMaxM2ForCausalLM"], "model_type": "minimax_m2", "hidden_size": H,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
           "rotary_dim": 32, "partial_rotary_factor": 0.5, "intermediate_size": I, "num_local_experts": E,
           "num_experts_per_tok": 1, "scoring_func": "sigmoid", "use_routing_bias": True, "use_qk_norm": True,
           "qk_norm_type": "per_layer", "rms_norm_eps": 1e-6, "rope_theta": 5000000, "max_position_embeddings": 4096,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 128,
           "quantization_config": {"quant_method": "fp8", "fmt": "float8_e4m3fn", "activation_scheme": "dynamic",
                                   "weight_block_size": [128, 128],
                                   "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"]}}
    write_ckpt(os.path.join(OUT, "minimax"), shards, cfg)
    save_file(expected, os.path.join(OUT, "minimax_expected.safetensors"), metadata={"format": "pt"})

    # --- DeepSeek-V3 layout with partial edge tiles and a non-square block size from config
    ds, dexp = {}, {}
    for nm, (r, c) in {"model.layers.0.self_attn.kv_a_proj_with_mqa": (200, 328),
                       "model.layers.0.mlp.down_proj": (130, 129), "model.layers.0.mlp.up_proj": (64, 256)}.items():
        w = heavy(r, c)
        q, s = fp8_block(w)
        ds[nm + ".weight"], ds[nm + ".weight_scale_inv"] = q, s
        dexp[nm + ".weight"] = dequant(q, s)
    ds["model.layers.0.input_layernorm.weight"] = torch.ones(328, dtype=torch.bfloat16)
    write_ckpt(os.path.join(OUT, "deepseek"), [ds],
               {"model_type": "deepseek_v3", "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
                                                                    "activation_scheme": "dynamic",
                                                                    "weight_block_size": [128, 128]}})
    save_file(dexp, os.path.join(OUT, "deepseek_expected.safetensors"), metadata={"format": "pt"})
    print("wrote", OUT)


if __name__ == "__main__":
    sys.exit(main())
