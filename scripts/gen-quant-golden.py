#!/usr/bin/env python3
"""Golden fixtures for the NVFP4 / W4A16 / AutoRound kernels (tests/test_nvfp4.c, test_w4a16.c).

Every expected output is computed by the real reference packages from PyPI, on the CPU:
    compressed-tensors == 0.19.0   (NVFP4 "nvfp4-pack-quantized", W4A16 "pack-quantized"; until
                                    2026-12 0.18.0, whose bytes are the same)
    auto-round         == 0.16.1   (model-free RTN, "auto_round:auto_gptq" packing)
    torch 2.15 (CPU), safetensors, numpy
    pip install compressed-tensors==0.19.0 auto-round==0.16.1

The calls follow what llm-compressor does per weight (spec/compressed-tensors.md §1, §4, §6):
the observer statistics are torch.amin/amax of the bf16 weight (per tensor -> generate_gparam;
per group -> calculate_qparams), the scales are stored in a bf16 parameter, and the
compressor's compress() quantizes and packs (NVFP4PackedCompressor, PackedQuantizationCompressor).
Fused sets (q/k/v, w1/w3) get generate_gparam over the min/max of all members, as LC's fused
observers do. AutoRound uses auto_round.utils.model_free_utils.quantize_weight_rtn, the function
its model-free mode (the iters=0 RTN path) runs per weight.

Before writing anything the script re-derives ../shared/golden/ct_golden.safetensors (made by
an independent run of the reference) with the same calls and stops if a byte differs, so the
fixtures here come from the same pipeline.

Output: tests/golden/quant/quant_golden.safetensors (inputs and expected outputs; < 2 MB).
Names: <case>.<i>.weight (bf16 input), <case>.<i>.nvfp4.{weight_packed,weight_scale,
weight_global_scale}, <case>.<i>.w4a16.{weight_packed,weight_scale,weight_shape},
<case>.<i>.ar.{qweight,qzeros,scales}, and for a few cases the reference dequantizations
<case>.<i>.nvfp4.dequant / .w4a16.dequant (bf16). Cases are listed in CASES below.
gparam.amax (every positive finite bf16) with gparam.g = generate_gparam of each.

Run from the repository root:  python3 scripts/gen-quant-golden.py
"""
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import compressed_tensors
from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import preset_name_to_scheme
from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

import auto_round
from auto_round.utils.model_free_utils import quantize_weight_rtn

assert compressed_tensors.__version__ == "0.19.0", compressed_tensors.__version__
torch.set_num_threads(1)

NVFP4 = preset_name_to_scheme("NVFP4A16", ["Linear"])   # weights identical to NVFP4 (§3)
W4A16 = preset_name_to_scheme("W4A16", ["Linear"])


def nvfp4_gscale(ws):
    """generate_gparam over the bf16 min/max of one tensor or a fused set."""
    mn = torch.stack([w.amin() for w in ws]).amin()
    mx = torch.stack([w.amax() for w in ws]).amax()
    return generate_gparam(mn, mx)


def nvfp4_compress(w, g, zero_point=False):
    rows, cols = w.shape
    grp = w.reshape(rows, cols // 16, 16)
    scale, zp = calculate_qparams(grp.amin(-1), grp.amax(-1), NVFP4.weights, global_scale=g)
    sd = {"weight": w, "weight_scale": scale.to(w.dtype), "weight_global_scale": g}
    if zero_point:  # oneshot path: force_zero_point=True gives an fp8 zero zero-point
        sd["weight_zero_point"] = torch.zeros_like(scale, dtype=torch.float8_e4m3fn)
    out = NVFP4PackedCompressor.compress(sd, NVFP4)
    dq = NVFP4PackedCompressor.decompress(dict(out), NVFP4)["weight"]
    return out, dq


def w4a16_compress(w):
    rows, cols = w.shape
    grp = w.reshape(rows, cols // 128, 128)
    scale, zp = calculate_qparams(grp.amin(-1), grp.amax(-1), W4A16.weights)
    sd = {"weight": w, "weight_scale": scale.to(w.dtype),
          "weight_zero_point": zp.to(torch.int8)}
    out = PackedQuantizationCompressor.compress(sd, W4A16)
    dq = PackedQuantizationCompressor.decompress(dict(out), W4A16)["weight"]
    return out, dq


def bf(x):
    return torch.as_tensor(x, dtype=torch.float32).to(torch.bfloat16)


def check_ct_golden(path):
    """Re-derive the shared golden file with the calls above; stop on any difference."""
    gold = load_file(path)
    sets = {}
    for k in gold:
        if k.startswith("nvfp4.") and k.endswith(".weight"):
            case = k.split(".")[1]
            sets.setdefault(case, []).append(k[:-len(".weight")])
    bad = 0
    for case, names in sets.items():
        names.sort()
        g = nvfp4_gscale([gold[n + ".weight"] for n in names])
        for n in names:
            for zp in (0, 1):
                out, _ = nvfp4_compress(gold[n + ".weight"], g, zero_point=bool(zp))
                for t in ("weight_packed", "weight_scale", "weight_global_scale"):
                    a = out[t].view(torch.uint8) if out[t].dtype != torch.float32 else out[t]
                    b = gold[f"{n}.zp{zp}.{t}"]
                    b = b.view(torch.uint8) if b.dtype != torch.float32 else b
                    if not torch.equal(a, b):
                        print(f"ct_golden mismatch: {n}.zp{zp}.{t}", file=sys.stderr)
                        bad += 1
    for k in gold:
        if k.startswith("w4a16.") and k.endswith(".weight"):
            n = k[:-len(".weight")]
            out, _ = w4a16_compress(gold[k])
            for t in ("weight_packed", "weight_scale", "weight_shape"):
                if not torch.equal(out[t], gold[f"{n}.{t}"]):
                    print(f"ct_golden mismatch: {n}.{t}", file=sys.stderr)
                    bad += 1
    if bad:
        sys.exit(f"{bad} differences against {path}: the pipeline is not the reference's")
    print(f"{path}: re-derived bit for bit")


# ---- inputs ------------------------------------------------------------------------------------

rng = np.random.default_rng(20260822)


def heavy(rows, cols, df=2.0, scale=0.02):
    return bf(rng.standard_t(df, size=(rows, cols)) * scale)


def outlier_cols(rows, cols):
    w = rng.normal(0, 0.01, size=(rows, cols))
    for c in rng.choice(cols, 6, replace=False):
        w[:, c] *= rng.choice([30.0, -80.0, 300.0])
    w[3, 7] = 11.5      # one huge element
    return bf(w)


def zero_rows(rows, cols):
    w = rng.normal(0, 0.05, size=(rows, cols)).astype(np.float32)
    w[0] = 0.0
    w[5] = -0.0
    w[9, :128] = 0.0                      # a zero W4A16 group / 8 zero NVFP4 groups
    w[11, 16:32] = -0.0                   # a -0.0 NVFP4 group
    w[13, :] = 1e-30                      # tiny groups (fp8 scale underflows -> 0.125)
    w[14, ::2] = -1e-4                    # negatives that round to -0 (nibble 0x8)
    w[17, 128:256] = 3e-3                 # constant group: ties for the AutoRound sign rule
    w[18, 128:256] = -3e-3
    w[19, 0:128] = np.linspace(-1, 1, 128)  # symmetric group, max == -min
    t = torch.from_numpy(w).to(torch.bfloat16)
    t[5] = -0.0                           # keep the sign (numpy -> bf16 keeps it, be explicit)
    t[11, 16:32] = -0.0
    return t


def subnormal(rows, cols):
    # bf16 subnormals (below 2^-126): NVFP4 g overflows -> 1.0; W4A16 scales -> 2^-7
    w = rng.integers(-127, 128, size=(rows, cols)).astype(np.float32) * np.float32(2.0 ** -133)
    return bf(w)


def tiny(rows, cols):
    # normal but tiny amax (~1e-30): g = BF16(BF16(1/a) * 2688) finite and huge
    return bf(rng.normal(0, 1e-31, size=(rows, cols)))


def huge(rows, cols):
    # large magnitudes: NVFP4 g subnormal-ish reciprocal, AutoRound fp16 scales overflow
    w = rng.normal(0, 1.0, size=(rows, cols))
    w[0] *= 1e37
    w[1] *= 1e6
    w[2] *= 6e5
    w[3] *= 1e-6                          # fp16-subnormal AutoRound scales and the 1e-5 floor
    w[4] *= 1e-9
    return bf(w)


def grid_ties(rows, cols):
    # values on the half-integer grid of the W4A16 scale and on FP4 tie points
    base = rng.integers(-16, 17, size=(rows, cols)).astype(np.float32) * 0.25
    base[:, 0] = 4.0
    return bf(base * rng.choice([1.0, 0.5, 3.0], size=(rows, 1)))


def all_zero(rows, cols):
    # an all-zero tensor (with -0.0 entries): NVFP4 g = 1.0 (clamp, overflow, nan_to_num)
    t = torch.zeros(rows, cols, dtype=torch.bfloat16)
    t[1::2, ::3] = -0.0
    return t


def fused(shapes, scales):
    return [heavy(r, c, df=3.0, scale=s) for (r, c), s in zip(shapes, scales)]


CASES = [
    # name, list of tensors (one fused set), store dequant
    ("heavy", [heavy(256, 512)], False),
    ("outliers", [outlier_cols(128, 512)], False),
    ("zero_rows", [zero_rows(32, 256)], True),
    ("subnormal", [subnormal(8, 256)], True),
    ("tiny", [tiny(8, 256)], True),
    ("huge", [huge(8, 256)], True),
    ("ties", [grid_ties(16, 256)], True),
    ("all_zero", [all_zero(4, 256)], True),
    ("fused_qkv", fused([(128, 256), (64, 256), (64, 256)], [0.01, 0.03, 0.005]), False),
    ("fused_w13", fused([(64, 256), (64, 256)], [0.02, 0.004]), False),
]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    check_ct_golden(os.path.join(root, "tests/golden/ct_golden.safetensors"))
    out = {}
    for name, ws, keep_dq in CASES:
        g = nvfp4_gscale(ws)
        for i, w in enumerate(ws):
            p = f"{name}.{i}"
            out[p + ".weight"] = w.contiguous()
            nv, nvdq = nvfp4_compress(w, g)
            nv1, _ = nvfp4_compress(w, g, zero_point=True)
            assert torch.equal(nv["weight_packed"], nv1["weight_packed"]), p  # §1.3: zp0 == zp1
            for t in ("weight_packed", "weight_scale", "weight_global_scale"):
                out[f"{p}.nvfp4.{t}"] = nv[t].clone()
            w4, w4dq = w4a16_compress(w)
            for t in ("weight_packed", "weight_scale", "weight_shape"):
                out[f"{p}.w4a16.{t}"] = w4[t].contiguous()
            qw, qz, sc = quantize_weight_rtn(w, bits=4, group_size=128, sym=True,
                                             packing="auto_round:auto_gptq")
            out[f"{p}.ar.qweight"] = qw.contiguous()
            out[f"{p}.ar.qzeros"] = qz.contiguous()
            out[f"{p}.ar.scales"] = sc.contiguous()
            if keep_dq:
                out[f"{p}.nvfp4.dequant"] = nvdq.to(torch.bfloat16).contiguous()
                out[f"{p}.w4a16.dequant"] = w4dq.to(torch.bfloat16).contiguous()
    # generate_gparam over every positive finite bf16 amax (the global-scale formula, §1.1/§3)
    amax = torch.arange(1, 0x7F80, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    out["gparam.amax"] = amax.contiguous()
    out["gparam.g"] = torch.cat([generate_gparam(-a.reshape(1), a.reshape(1)) for a in amax])
    dst = os.path.join(root, "tests/golden/quant/quant_golden.safetensors")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    save_file(out, dst, metadata={
        "generator": "scripts/gen-quant-golden.py",
        "compressed_tensors": compressed_tensors.__version__,
        "auto_round": auto_round.__version__,
        "torch": torch.__version__,
    })
    print(f"{dst}: {len(out)} tensors, {os.path.getsize(dst)} bytes")


if __name__ == "__main__":
    main()
