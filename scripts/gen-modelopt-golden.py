#!/usr/bin/env python3
"""Golden for `nvfp4-quantize --format modelopt` (ModelOpt NVFP4 unified HF checkpoint) on the
embedded model (models/tiny-minimax-m2, FP8 block-scaled): tests/golden/modelopt/*.json, checked
by tests/test_modelopt.c.

Every expected byte comes from the real nvidia-modelopt functions its HF export
(modelopt.torch.export.unified_export_hf) calls, run on the CPU, never from fourbit:
    nvidia-modelopt == 0.47.0   (pip install --no-deps nvidia-modelopt==0.47.0 omegaconf
                                 antlr4-python3-runtime==4.9.3 pulp scipy; torch 2.15 CPU from
                                 the venv /work/venvs/hq through a .pth file)
    xxhash          == 4.1.0

Steps:
 1. BF16 source: the FP8 weights dequantized as scripts/gen-model-quant-golden.py does
    (BF16(float32(fp8) * scale_inv), one f32 multiply then bf16 RNE).
 2. A module tree with the embedded model's names (the MiniMax-M2 remote code's classes: router
    gate and experts.E.w1/w2/w3 are nn.Linear), loaded with the BF16 weights, quantized by
    modelopt.torch.quantization.quantize with NVFP4_DEFAULT_CFG (W4A4) or W4A16_NVFP4_CFG
    (weights only), modelopt's presets, which leave the router gates and lm_head unquantized
    (default_disabled_quantizers: *block_sparse_moe.gate*, *lm_head*). The weight
    quantizers are calibrated by modelopt's max calibration on the weights.
    The experts-only case also disables *self_attn* (recipes/minimax-experts-only.yaml).
    W4A4: each input quantizer's amax is set to BF16(input_absmax) from
    tests/golden/model-quant/calib-stats.safetensors (made by fourbit's `calibrate`; only its
    absmax values are used, as inputs: this checks the formula and the wiring, not calibration).
 3. The export's fusion step, the real function: preprocess_linear_fusion([q, k, v]) per layer and
    preprocess_linear_fusion([w1, w3]) per expert (sync_moe_gate_up_amax's rule): a shared
    weight amax (hence weight_scale_2) and a shared input amax (input_scale).
 4. Per quantized Linear, export's own functions: get_weight_scaling_factor_2 (weight_scale_2),
    get_weight_scaling_factor (weight_scale, fp8), to_quantized_weight (weight, packed u8) on the
    bf16 weight, get_activation_scaling_factor (input_scale, W4A4). 0-d tensors as the export
    writes them. Unquantized tensors are the BF16 source's own (see "deliberate differences").
 5. Configs: get_quant_config(model) (hf_quant_config.json, with modelopt's exclude_modules
    summary) and convert_hf_quant_config_format (config.json quantization_config).

Deliberate differences from export_hf_checkpoint (the JSON lists them under "notes"): the
export saves every unquantized tensor in the export dtype (bf16), so the f32
`e_score_correction_bias` would be downcast; fourbit keeps it f32 (vLLM's MiniMax-M2 loader
reads it f32 and the validator flags the downcast). Expert names are the checkpoint's own
w1/w2/w3 (what vLLM's MiniMax-M2 loader maps), not transformers 5's fused gate_up_proj.

Output, per case: {"tool", "args", "tensors": {name: [dtype, shape, xxh3_128 hex]},
"hf_quant_config", "quantization_config", ...}; compact JSON.

Run from the repository root:  /work/venvs/m14/bin/python scripts/gen-modelopt-golden.py
"""
import copy
import json
import os
import shutil
import struct
import sys
import tempfile

import torch
import xxhash
from safetensors.torch import load_file, save_file
from torch import nn

import modelopt
import modelopt.torch.quantization as mtq
from modelopt.torch.export import quant_utils as qu
from modelopt.torch.export.convert_hf_config import convert_hf_quant_config_format

assert modelopt.__version__ == "0.47.0", modelopt.__version__
assert xxhash.xxh3_128_hexdigest(b"abc") == "06b05ab6733a618578af5f94892f3950"
torch.set_num_threads(1)

SRC = "models/tiny-minimax-m2"
OUT = "tests/golden/modelopt"
STATS = "tests/golden/model-quant/calib-stats.safetensors"


def hexd(t):
    t = t.contiguous()
    if t.dtype == torch.float8_e4m3fn:
        t = t.view(torch.uint8)
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return xxhash.xxh3_128_hexdigest(t.numpy().tobytes())


ST_DTYPE = {torch.bfloat16: "BF16", torch.float32: "F32", torch.uint8: "U8",
            torch.float8_e4m3fn: "F8_E4M3", torch.float16: "F16"}


def bf16_source():
    """{name: tensor} of the embedded model with the FP8 weights dequantized (see step 1)."""
    with open(os.path.join(SRC, "model.safetensors.index.json")) as f:
        wm = json.load(f)["weight_map"]
    tensors = {}
    for shard in sorted(set(wm.values())):
        tensors.update(load_file(os.path.join(SRC, shard)))
    with open(os.path.join(SRC, "config.json")) as f:
        cfg = json.load(f)
    bs = cfg["quantization_config"]["weight_block_size"]
    out = {}
    for name, t in tensors.items():
        if name.endswith(".weight_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = tensors[name + "_scale_inv"].float()
            r, c = t.shape
            se = s.repeat_interleave(bs[0], 0).repeat_interleave(bs[1], 1)[:r, :c]
            t = (t.float() * se).to(torch.bfloat16)
        out[name] = t
    return cfg, out


def toy_model(cfg):
    """The embedded model's module names and classes (as scripts/gen-model-quant-golden.py)."""
    H, I, E, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_local_experts"], cfg["num_hidden_layers"]
    NQ, NKV, V = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"], cfg["vocab_size"]

    def lin(i, o):
        return nn.Linear(i, o, bias=False, dtype=torch.bfloat16)

    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.w2, self.w3 = lin(H, I), lin(I, H), lin(H, I)

    class Moe(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = lin(H, E)
            self.experts = nn.ModuleList([Expert() for _ in range(E)])

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = lin(H, NQ), lin(H, NKV), lin(H, NKV), lin(NQ, H)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = Attn()
            self.block_sparse_moe = Moe()

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(V, H, dtype=torch.bfloat16)
            self.layers = nn.ModuleList([Layer() for _ in range(L)])

    class Top(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()
            self.lm_head = lin(H, V)

    return Top()


def quant_cfg(w4a4, experts_only=False):
    # modelopt's own presets; both disable *block_sparse_moe.gate* and *lm_head*
    cfg = copy.deepcopy(mtq.NVFP4_DEFAULT_CFG if w4a4 else mtq.W4A16_NVFP4_CFG)
    if experts_only:  # recipes/minimax-experts-only.yaml: attention stays bf16
        cfg["quant_cfg"].append({"quantizer_name": "*self_attn*", "enable": False})
    return cfg


def run_case(w4a4, experts_only, cfg, src):
    model = toy_model(cfg)
    sd = {n: t for n, t in src.items() if not n.endswith("e_score_correction_bias") and "norm" not in n}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing, missing[:5]
    mtq.quantize(model, quant_cfg(w4a4, experts_only), forward_loop=None)
    absmax = {k[:-len(".input_absmax")]: v for k, v in load_file(STATS).items() if k.endswith(".input_absmax")}
    mods = dict(model.named_modules())
    quantized = [n for n, m in mods.items() if isinstance(m, nn.Linear)
                 and qu.get_quantization_format(m) != qu.QUANTIZATION_NONE]
    if w4a4:
        for n in quantized:
            mods[n].input_quantizer.amax = absmax[n].reshape(()).to(torch.bfloat16).float()
    # the export's fusion (step 3)
    L, E = cfg["num_hidden_layers"], cfg["num_local_experts"]
    for li in range(L):
        p = f"model.layers.{li}."
        if not experts_only:
            qu.preprocess_linear_fusion([mods[p + "self_attn." + x] for x in ("q_proj", "k_proj", "v_proj")])
        for e in range(E):
            qu.preprocess_linear_fusion([mods[p + f"block_sparse_moe.experts.{e}.{x}"] for x in ("w1", "w3")])
    tensors = {}
    fmt_seen = set()
    for n in quantized:
        m = mods[n]
        fmt = qu.get_quantization_format(m)
        fmt_seen.add(fmt)
        ws2 = qu.get_weight_scaling_factor_2(m)
        ws = qu.get_weight_scaling_factor(m)
        w = qu.to_quantized_weight(m.weight.detach().to(torch.bfloat16), ws, fmt, ws2, 16)
        assert w.dtype == torch.uint8 and ws.dtype == torch.float8_e4m3fn and ws2.dim() == 0
        out = {".weight": w, ".weight_scale": ws, ".weight_scale_2": ws2.float()}
        if w4a4:
            isc = qu.get_activation_scaling_factor(m)
            out[".input_scale"] = isc.float().reshape(())
        for suf, t in out.items():
            tensors[n + suf] = [ST_DTYPE[t.dtype], list(t.shape), hexd(t)]
    for n, t in src.items():
        mod = n[:-len(".weight")] if n.endswith(".weight") else None
        if mod in quantized:
            continue
        tensors[n] = [ST_DTYPE[t.dtype], list(t.shape), hexd(t)]
    hfq = qu.get_quant_config(model)
    qc = convert_hf_quant_config_format(hfq)
    return dict(sorted(tensors.items())), hfq, qc, sorted(fmt_seen)


def main():
    cfg, src = bf16_source()
    os.makedirs(OUT, exist_ok=True)
    source_files = {fn: xxhash.xxh3_128_hexdigest(open(os.path.join(SRC, fn), "rb").read())
                    for fn in sorted(os.listdir(SRC)) if fn.endswith(".safetensors")}
    notes = ["e_score_correction_bias kept f32 (export_hf_checkpoint casts every unquantized tensor to its export "
             "dtype, bf16; vLLM's MiniMax-M2 reads it f32)",
             "experts keep the checkpoint's w1/w2/w3 names (vLLM's MiniMax-M2 loader maps them)"]
    common = {"generator": "scripts/gen-modelopt-golden.py", "source": SRC, "source_files": source_files,
              "reference": f"nvidia-modelopt {modelopt.__version__} export functions (quant_utils) on the BF16 source",
              "torch": torch.__version__, "xxhash": xxhash.VERSION, "notes": notes}
    cases = [("nvfp4a16.json", False, False, ["--recipe", "recipes/minimax-nvfp4a16.yaml", "--format", "modelopt"]),
             ("nvfp4.json", True, False, ["--recipe", "recipes/minimax.yaml", "--calib", STATS, "--format", "modelopt"]),
             ("experts-only.json", False, True,
              ["--recipe", "recipes/minimax-experts-only.yaml", "--format", "modelopt"])]
    for fname, w4a4, experts_only, args in cases:
        tensors, hfq, qc, fmts = run_case(w4a4, experts_only, cfg, src)
        doc = dict(common, tool="nvfp4-quantize", args=args, export_formats=fmts, tensors=tensors,
                   hf_quant_config=hfq, quantization_config=qc)
        with open(os.path.join(OUT, fname), "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
        print(f"{fname}: {len(tensors)} tensors, formats {fmts}, quant_algo {hfq['quantization'].get('quant_algo')}, "
              f"exclude {hfq['quantization'].get('exclude_modules')}")


if __name__ == "__main__":
    main()
