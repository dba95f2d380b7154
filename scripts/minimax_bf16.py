"""The BF16 copy of an FP8 block-scaled checkpoint that the golden scripts give the reference
tools: every F8_E4M3 `.weight` with a `.weight_scale_inv` becomes BF16(float32(fp8) *
scale_inv[i/128, j/128]) in torch (one f32 multiply, then bf16 RNE: the formula fp8-dequant
implements), the scales are dropped, the FP8 quantization_config is removed from config.json;
same names, shard layout and index; side files copied. (Used by gen-model-quant-golden.py and
gen-minimax-oneshot-golden.py.)"""
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file


def make_bf16(src, dst):
    with open(os.path.join(src, "model.safetensors.index.json")) as f:
        index = json.load(f)
    wm = index["weight_map"]
    tensors = {}
    for shard in sorted(set(wm.values())):
        tensors.update(load_file(os.path.join(src, shard)))
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    bs = cfg["quantization_config"]["weight_block_size"]
    out = {}
    n_fp8 = 0
    for name, t in tensors.items():
        if name.endswith(".weight_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = tensors[name + "_scale_inv"].float()
            r, c = t.shape
            se = s.repeat_interleave(bs[0], 0).repeat_interleave(bs[1], 1)[:r, :c]
            t = (t.float() * se).to(torch.bfloat16)
            n_fp8 += 1
        out[name] = t
    os.makedirs(dst, exist_ok=True)
    new_wm = {}
    for shard in sorted(set(wm.values())):
        part = {n: out[n].contiguous() for n in wm if wm[n] == shard and n in out}
        save_file(part, os.path.join(dst, shard), metadata={"format": "pt"})
        new_wm.update({n: shard for n in part})
    total = sum(v.numel() * v.element_size() for v in out.values())
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(new_wm.items()))}, f, indent=2)
    del cfg["quantization_config"]
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for fn in os.listdir(src):
        if fn.endswith(".safetensors") or fn in ("config.json", "model.safetensors.index.json"):
            continue
        shutil.copy(os.path.join(src, fn), os.path.join(dst, fn))
    print(f"BF16 source: {n_fp8} FP8 weights dequantized, {len(out)} tensors")
    return cfg
