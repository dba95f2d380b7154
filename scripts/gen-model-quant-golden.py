#!/usr/bin/env python3
"""End-to-end golden for nvfp4-quantize / w4a16-quantize on the embedded model
(models/tiny-minimax-m2, FP8 block-scaled): tests/golden/model-quant/*.json, checked by
tests/test_quantize_cli.c.

The expectations come from the real reference tools from PyPI, run on the CPU on the BF16
version of the embedded model, never from fourbit:
    llmcompressor       == 0.14.0.1 (model_free_ptq, and QuantizationModifier's
                                     resolve_quantization_config for the oneshot config; the
                                     release pinned to compressed-tensors 0.19.0. Installed
                                     --no-deps in /work/venvs/hq: its metadata pins torch<=2.14)
    compressed-tensors  == 0.19.0
    auto-round          == 0.16.1   (model-free RTN, AutoRound(model_free=True))
    xxhash              == 4.1.0    (xxh3_128 hexdigest = canonical big-endian, XXH128_canonicalFromHash)
    torch 2.15 (CPU), safetensors 0.8, transformers 5.17 (auto-round imports it)
    venv: /work/venvs/hq plus `pip install --no-deps auto-round==0.16.1 py-cpuinfo`
Until 2026-12 these goldens came from llmcompressor 0.13.0 / compressed-tensors 0.18.0: every
tensor byte and the oneshot quantization_config are the same with 0.14.0.1 / 0.19.0 apart from
the "version" key; model_free_ptq 0.14 writes weights.observer null where 0.13 wrote
"memoryless_minmax" (tests/quant_golden.h notes it). compressed-tensors 0.20.1 also gives the same
tensor bytes, but its config drops null fields and adds "moe_sparsity_config": null (README,
"Reference releases").

Steps:
 1. BF16 source: every F8_E4M3 `.weight` with a `.weight_scale_inv` becomes
    BF16(float32(fp8) * scale_inv[i/128, j/128]) in torch (one f32 multiply, then bf16 RNE;
    the formula fp8-dequant implements), the scales are dropped, the FP8 quantization_config is
    removed from config.json; same shard layout and index; side files copied.
 2. llmcompressor.entrypoints.model_free.model_free_ptq(BF16, out, scheme, ignore, device=cpu)
    for NVFP4A16 and W4A16 with ignore [lm_head, model.embed_tokens, re:.*block_sparse_moe\\.gate$]
    (recipes/minimax-nvfp4a16.yaml, minimax-w4a16.yaml), and NVFP4A16 experts-only
    (recipes/minimax-experts-only.yaml: also re:.*self_attn\\.(q|k|v|o)_proj$).
    Its fused-set rule (q/k/v of a layer, w1/w3 of an expert share one global scale) is
    llm-compressor's own (microscale.get_fused_names + FusionHandler).
 3. auto-round model-free W4A16 (sym, group 128, iters 0, packing auto_round:auto_gptq) on the
    BF16 source; auto-round skips `.gate.`, lm_head and embeddings by itself, which is the
    recipe's ignore list. It is also run on the FP8 source directly (auto-round dequantizes
    FP8 itself); tensors whose bytes differ from the BF16-source run are listed under
    "fp8_source_differs" (information: the tools are meant to follow fp8-dequant).
 4. NVFP4 (W4A4): model_free_ptq refuses activation schemes, so there is no reference run.
    The weights are the NVFP4A16 ones (compressed-tensors quantizes NVFP4 and NVFP4A16 weights
    identically, spec §3); each quantized Linear gets input_global_scale =
    compressed_tensors generate_gparam(-a, a) with a = BF16(input_absmax) read from the
    statistics file calib-stats.safetensors (activations are bf16 in the reference, so its
    observer absmax is a bf16 value). calib-stats.safetensors was made by fourbit's
    `calibrate` (the ids in calib-ids.jsonl); only its absmax values are used, as inputs:
    this part checks the formula and the wiring (which module gets which value), not the
    calibration itself.
 5. quantization_config: the reference run's own (config.json of its output) is stored as
    "quantization_config"; the oneshot path's (compressed-tensors apply_quantization_config on
    a module tree with the embedded model's names and the MiniMax remote-code registration
    order, marked compressed, ModelCompressor.update_config) as "quantization_config_oneshot".
    The issue asks for the oneshot form (ignore list expanded to module names).

Output, per reference: {"tensors": {name: [dtype, shape, xxh3_128 hex of the payload]},
"quantization_config", "quantization_config_oneshot" ...}; compact JSON, < 500 KB in all.

Run from the repository root:  python3 scripts/gen-model-quant-golden.py
(the calibration statistics are remade only with --remake-stats, which needs build/bin/calibrate)
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import torch
import xxhash
from safetensors.torch import load_file, save_file
from torch import nn

import compressed_tensors
from compressed_tensors.quantization.utils.helpers import generate_gparam

import auto_round
import llmcompressor
from llmcompressor.entrypoints.model_free import model_free_ptq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minimax_bf16 import make_bf16  # noqa: E402

assert compressed_tensors.__version__ == "0.19.0", compressed_tensors.__version__
assert llmcompressor.__version__ == "0.14.0.1", llmcompressor.__version__
assert auto_round.__version__ == "0.16.1", auto_round.__version__
assert xxhash.xxh3_128_hexdigest(b"abc") == "06b05ab6733a618578af5f94892f3950"
torch.set_num_threads(1)

SRC = "models/tiny-minimax-m2"
OUT = "tests/golden/model-quant"
GATE = r"re:.*block_sparse_moe\.gate$"
STD_IGNORE = ["lm_head", "model.embed_tokens", GATE]
EXPERTS_ONLY_IGNORE = STD_IGNORE + [r"re:.*self_attn\.(q|k|v|o)_proj$"]


# ---- safetensors payload digests -----------------------------------------------------------

def digests(ckpt_dir):
    """{name: [dtype, shape, xxh3_128 hex]} over every *.safetensors in ckpt_dir, read raw."""
    out = {}
    for fn in sorted(os.listdir(ckpt_dir)):
        if not fn.endswith(".safetensors"):
            continue
        with open(os.path.join(ckpt_dir, fn), "rb") as f:
            blob = f.read()
        (hlen,) = struct.unpack("<Q", blob[:8])
        hdr = json.loads(blob[8:8 + hlen])
        base = 8 + hlen
        for name, t in hdr.items():
            if name == "__metadata__":
                continue
            b, e = t["data_offsets"]
            assert name not in out, f"{name} in two shards"
            out[name] = [t["dtype"], t["shape"], xxhash.xxh3_128_hexdigest(blob[base + b:base + e])]
    return dict(sorted(out.items()))


# ---- 1. BF16 source --------------------------------------------------------------------------

# make_bf16: scripts/minimax_bf16.py (shared with gen-minimax-oneshot-golden.py).


# ---- 5. the oneshot-path quantization_config -------------------------------------------------

def toy_model(cfg):
    """Module tree with the embedded model's names, classes and the MiniMax-M2 remote code's
    registration order (router gate = nn.Linear, experts.E.w1/w2/w3 = nn.Linear)."""
    H, I, E, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_local_experts"], cfg["num_hidden_layers"]
    NQ, NKV, V = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"], cfg["vocab_size"]

    class RMSNorm(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))

    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Linear(H, I, bias=False)
            self.w2 = nn.Linear(I, H, bias=False)
            self.w3 = nn.Linear(H, I, bias=False)

    class Moe(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(H, E, bias=False)
            self.experts = nn.ModuleList([Expert() for _ in range(E)])
            self.register_buffer("e_score_correction_bias", torch.zeros(E))

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(H, NQ, bias=False)
            self.k_proj = nn.Linear(H, NKV, bias=False)
            self.v_proj = nn.Linear(H, NKV, bias=False)
            self.o_proj = nn.Linear(NQ, H, bias=False)
            self.q_norm = RMSNorm(NQ)
            self.k_norm = RMSNorm(NKV)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = Attn()
            self.block_sparse_moe = Moe()
            self.input_layernorm = RMSNorm(H)
            self.post_attention_layernorm = RMSNorm(H)

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(V, H)
            self.layers = nn.ModuleList([Layer() for _ in range(L)])
            self.norm = RMSNorm(H)

    class Top(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()
            self.lm_head = nn.Linear(H, V, bias=False)

    return Top()


def oneshot_qconfig(cfg, scheme, ignore):
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationStatus, apply_quantization_config
    from llmcompressor.modifiers.quantization import QuantizationModifier
    model = toy_model(cfg)
    # the config oneshot applies: llm-compressor fills the observers the 0.19 presets leave unset
    qc = QuantizationModifier(targets=["Linear"], scheme=scheme, ignore=list(ignore)).resolve_quantization_config()
    apply_quantization_config(model, qc, show_progress=False)
    for m in model.modules():
        if getattr(m, "quantization_scheme", None) is not None:
            m.quantization_status = QuantizationStatus.COMPRESSED
    mc = ModelCompressor.from_pretrained_model(model)
    with tempfile.TemporaryDirectory() as d:
        mc.update_config(d)
        with open(os.path.join(d, "config.json")) as f:
            return json.load(f)["quantization_config"]


# ---- 2./3. reference runs --------------------------------------------------------------------

def read_qconfig(d):
    with open(os.path.join(d, "config.json")) as f:
        return json.load(f).get("quantization_config")


def run_model_free_ptq(bf16, work, scheme, ignore):
    out = os.path.join(work, f"lc-{scheme}-{len(ignore)}")
    model_free_ptq(bf16, out, scheme=scheme, ignore=list(ignore), max_workers=1, device="cpu")
    return out


def run_autoround(src, out):
    from auto_round import AutoRound
    ar = AutoRound(model=src, scheme="W4A16", model_free=True, iters=0, device="cpu")
    ar.quantize_and_save(out, format="auto_round")
    return out


# ---- 4. NVFP4 input_global_scale -------------------------------------------------------------

def stats_absmax(path):
    t = load_file(path)
    return {k[:-len(".input_absmax")]: v for k, v in t.items() if k.endswith(".input_absmax")}


def input_global_scales(absmax, quantized_modules):
    out, f32_differs = {}, []
    for m in quantized_modules:
        a = absmax[m].reshape(1)
        ab = a.to(torch.bfloat16)
        g = generate_gparam(-ab, ab)                    # float32 [1], computed in bf16
        gf = generate_gparam(-a.float(), a.float())     # the same in f32 (information only)
        if not torch.equal(g, gf):
            f32_differs.append(m)
        out[m + ".input_global_scale"] = g
    return out, f32_differs


def remake_stats(work):
    ids = os.path.join(OUT, "calib-ids.jsonl")
    g = torch.Generator().manual_seed(20261122)
    with open(ids, "w") as f:
        for i in range(8):
            n = 16 + 8 * i
            f.write(json.dumps({"input_ids": torch.randint(0, 4089, (n,), generator=g).tolist()}) + "\n")
    subprocess.run(["build/bin/calibrate", "-q", "-m", SRC, "-d", ids, "-o",
                    os.path.join(OUT, "calib-stats.safetensors"), "--samples", "8", "--threads", "1"],
                   check=True)


# ---- main ------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--remake-stats", action="store_true",
                    help="regenerate calib-ids.jsonl and calib-stats.safetensors with build/bin/calibrate")
    ap.add_argument("--keep", help="keep the reference outputs in this directory")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    work = args.keep or tempfile.mkdtemp(prefix="fb-model-quant-")
    os.makedirs(work, exist_ok=True)
    if args.remake_stats:
        remake_stats(work)
    bf16 = os.path.join(work, "bf16")
    cfg = make_bf16(SRC, bf16)
    source_files = {fn: xxhash.xxh3_128_hexdigest(open(os.path.join(SRC, fn), "rb").read())
                    for fn in sorted(os.listdir(SRC)) if fn.endswith(".safetensors")}
    common = {"generator": "scripts/gen-model-quant-golden.py", "source": SRC, "source_files": source_files,
              "llmcompressor": llmcompressor.__version__,
              "compressed_tensors": compressed_tensors.__version__,
              "auto_round": auto_round.__version__, "torch": torch.__version__,
              "xxhash": xxhash.VERSION}
    written = []

    def emit(fname, doc):
        path = os.path.join(OUT, fname)
        with open(path, "w") as f:
            json.dump({**common, **doc}, f, separators=(",", ":"), sort_keys=False)
            f.write("\n")
        written.append(path)
        print(f"{path}: {len(doc['tensors'])} tensors, {os.path.getsize(path)} bytes")

    # NVFP4A16 / W4A16 / experts-only through model_free_ptq
    runs = [("nvfp4a16.json", "NVFP4A16", STD_IGNORE, "nvfp4-quantize", "recipes/minimax-nvfp4a16.yaml"),
            ("w4a16.json", "W4A16", STD_IGNORE, "w4a16-quantize", "recipes/minimax-w4a16.yaml"),
            ("experts-only.json", "NVFP4A16", EXPERTS_ONLY_IGNORE, "nvfp4-quantize", "recipes/minimax-experts-only.yaml")]
    nvfp4a16_tensors = None
    for fname, scheme, ignore, tool, recipe in runs:
        out = run_model_free_ptq(bf16, work, scheme, ignore)
        t = digests(out)
        if fname == "nvfp4a16.json":
            nvfp4a16_tensors = t
        emit(fname, {"reference": f"llmcompressor.entrypoints.model_free.model_free_ptq(scheme={scheme!r}, "
                                  f"ignore={ignore!r}, device='cpu') on the BF16 source",
                     "tool": tool, "args": ["--recipe", recipe],
                     "tensors": t, "quantization_config": read_qconfig(out),
                     "quantization_config_oneshot": oneshot_qconfig(cfg, scheme, ignore)})

    # NVFP4 W4A4: NVFP4A16 weights + input_global_scale from the statistics file
    absmax = stats_absmax(os.path.join(OUT, "calib-stats.safetensors"))
    quantized = sorted({n[:-len(".weight_packed")] for n in nvfp4a16_tensors if n.endswith(".weight_packed")})
    igs, f32_differs = input_global_scales(absmax, quantized)
    t = dict(nvfp4a16_tensors)
    for n, v in igs.items():
        b = v.contiguous().numpy().tobytes()
        t[n] = ["F32", [1], xxhash.xxh3_128_hexdigest(b)]
    emit("nvfp4.json", {"reference": "NVFP4A16 weights of model_free_ptq + input_global_scale = compressed_tensors "
                                     "generate_gparam(-a, a), a = BF16(input_absmax) of calib-stats.safetensors "
                                     "(formula check only)",
                        "tool": "nvfp4-quantize",
                        "args": ["--recipe", "recipes/minimax.yaml", "--calib", OUT + "/calib-stats.safetensors"],
                        "tensors": dict(sorted(t.items())),
                        "input_global_scale": {n: float(v.item()) for n, v in igs.items()},
                        "input_global_scale_f32_formula_differs": f32_differs,
                        "quantization_config": None,
                        "quantization_config_oneshot": oneshot_qconfig(cfg, "NVFP4", STD_IGNORE)})

    # AutoRound model-free RTN
    ar = run_autoround(bf16, os.path.join(work, "ar-bf16"))
    t = digests(ar)
    ar8 = run_autoround(SRC, os.path.join(work, "ar-fp8"))
    t8 = digests(ar8)
    differs = sorted(n for n in t if n not in t8 or t8[n] != t[n])
    with open(os.path.join(ar, "quantization_config.json")) as f:
        qcj = json.load(f)
    emit("autoround.json", {"reference": "auto_round.AutoRound(model=BF16 source, scheme='W4A16', model_free=True, "
                                         "iters=0, device='cpu').quantize_and_save(format='auto_round')",
                            "tool": "w4a16-quantize",
                            "args": ["--recipe", "recipes/minimax-w4a16.yaml", "--format", "auto_round"],
                            "tensors": t, "quantization_config": read_qconfig(ar),
                            "quantization_config_json": qcj,
                            "fp8_source_differs": differs,
                            "fp8_source_only": sorted(n for n in t8 if n not in t)})
    total = sum(os.path.getsize(p) for p in written)
    print(f"total {total} bytes; f32-formula input scales that differ: {len(f32_differs)}; "
          f"AutoRound FP8-source tensors that differ: {len(differs)}")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
