#!/usr/bin/env python3
"""Quantization goldens for models/tiny-qwen3-moe: tests/golden/qwen3-moe/quant/*.json.

*** THE ONE DELIBERATE DIFFERENCE FROM llm-compressor's model_free_ptq OUTPUT ***
  Each expert's mlp.experts.E.gate_proj / up_proj share ONE NVFP4 global scale here. vLLM fuses
  them into w13 and takes the gate's global scale for both halves (it only logs
  "w1_weight_global_scale must match w3_weight_global_scale", vLLM #54150), and llm-compressor's
  own `oneshot` shares it (observers/helpers.py FUSED_LAYER_NAMES ("gate_proj", "up_proj") on any
  module that has both). But llm-compressor 0.14's `model_free_ptq` fuses only names matching
  `re:.*mlp\\.gate_proj\\.weight$` (entrypoints/model_free/microscale.py), which
  `mlp.experts.E.gate_proj.weight` does not, so it writes unequal expert scales. The expert
  gate/up tensors here are therefore recomputed with llm-compressor's fused-set code path
  itself, the one model_free_ptq runs for q/k/v (converter.py _process_microscale):
  initialize_quantized_linear per tensor, initialize_observer + apply_calibration_status,
  FusionHandler.fuse over the pair, observe + update_qparams (global scale from the pair's
  combined absmax), freeze_module_quantization, compress_module. The script checks that this
  path reproduces model_free_ptq's own q/k/v output byte for byte, and that `oneshot` (which
  fuses experts by itself) gives the same bytes for every tensor.
  model_free_ptq's unfused expert tensors are listed under "model_free_ptq_expert_differs".

Reference packages (venv /work/venvs/hq, from PyPI; llmcompressor's metadata pins torch<=2.14,
so it is installed with --no-deps next to torch 2.15 and its other requirements):
    llmcompressor       == 0.14.0.1
    compressed-tensors  == 0.19.0
    torch 2.15.0 (CPU), transformers 5.17.0, accelerate 1.15.0, datasets 5.2.0,
    torchvision 0.29.2 (llm-compressor's MoE loader imports every transformers model module),
    safetensors 0.8.0, xxhash 4.1.0 (xxh3_128 hexdigest = canonical big-endian)
    pip install torch torchvision transformers==5.17.0 accelerate==1.15.0 \
                compressed-tensors==0.19.0 xxhash==4.1.0 datasets nvidia-ml-py pillow
    pip install --no-deps llmcompressor==0.14.0.1

Steps:
 1. BF16 source = transformers' own FP8 dequantization of models/tiny-qwen3-moe
    (Qwen3MoeForCausalLM.from_pretrained(..., FineGrainedFP8Config(dequantize=True), bf16)), in
    the checkpoint's names and shard layout, no quantization_config; checked against
    tests/golden/qwen3-moe/bf16/digests.json.
 2. model_free_ptq(BF16, out, scheme, ignore=[lm_head, model.embed_tokens, re:.*mlp\\.gate$],
    device=cpu) for NVFP4A16 and W4A16 (pack-quantized, symmetric int4, group 128). The shipped
    recipe's ignore list is [lm_head, re:.*mlp\\.gate$]; model_free_ptq matches tensors by name
    only (every `*.weight` not under a *norm module), so the embedding must be named too, while
    oneshot targets Linear modules and never sees it.
 3. NVFP4A16 only: expert gate/up recomputed with a shared global scale (above).
 4. oneshot(model, QuantizationModifier(targets=Linear, scheme, ignore=[lm_head,
    re:.*mlp\\.gate$])) on the BF16 source loaded under load_quantizable_moe(), saved with
    save_pretrained(save_compressed=True): NVFP4A16 (no data) as the cross-check of 2+3, and
    NVFP4 (W4A4) calibrated on calib-ids.jsonl (N_CALIB fixed random sequences, all tokens to all
    experts: moe_calibrate_all_experts=True, the default), which gives each Linear's
    input_global_scale. Its weights are checked equal to the NVFP4A16 golden's.
 4b. NVFP4 calibration uses pipeline="basic" (one plain forward of the whole model per batch).
    llm-compressor's default for this model, SequentialPipeline, calibrates Qwen3-MoE with
    NON-CAUSAL attention here (llmcompressor 0.14.0.1, transformers 5.17.0, torch 2.15.0): its
    o_proj input scales equal those of a transformers forward with an all-zero additive mask
    (e.g. 2008.72 vs 739.94 causal, layer 0, float32 model), while "basic" equals the causal
    forward exactly. Its values are kept for information as
    "input_global_scale_sequential_pipeline".
 5. quantization_config: the reference run's own (config.json of its output); for NVFP4A16 and
    W4A16 also "quantization_config_oneshot" (config.json of the oneshot cross-check run, whose
    ignore list is expanded to module names and whose group is named "group_0").

Output per scheme: {"tensors": {name: [dtype, shape, xxh3_128 hex]}, "quantization_config", ...}
(compact JSON). Only quantized/changed tensors' digests and the BF16 pass-through tensors'
digests are stored, no payloads.

Run from the repository root: /work/venvs/hq/bin/python scripts/gen-qwen3-moe-quant-golden.py
"""
import argparse
import json
import os
import re
import shutil
import struct
import sys
import tempfile

import torch
import xxhash
from safetensors.torch import load_file, save_file

import compressed_tensors
import llmcompressor
import transformers
from compressed_tensors.compressors import compress_module
from llmcompressor.entrypoints.model_free import model_free_ptq
from llmcompressor.entrypoints.model_free.lifecycle import (initialize_quantized_linear,
                                                             validate_weight_for_quantization)
from llmcompressor.entrypoints.model_free.validate import validate_config
from llmcompressor.modifiers.quantization.calibration import (apply_calibration_status,
                                                              freeze_module_quantization,
                                                              initialize_observer, observe,
                                                              update_qparams)
from llmcompressor.observers import FusionHandler
from transformers import FineGrainedFP8Config, Qwen3MoeForCausalLM

assert llmcompressor.__version__ == "0.14.0.1", llmcompressor.__version__
assert compressed_tensors.__version__.startswith("0.19.0"), compressed_tensors.__version__
assert transformers.__version__ == "5.17.0", transformers.__version__
assert xxhash.xxh3_128_hexdigest(b"abc") == "06b05ab6733a618578af5f94892f3950"
torch.set_num_threads(1)

SRC = "models/tiny-qwen3-moe"
BF16_DIGESTS = "tests/golden/qwen3-moe/bf16/digests.json"
OUT = "tests/golden/qwen3-moe/quant"
GATE = r"re:.*mlp\.gate$"
MF_IGNORE = ["lm_head", "model.embed_tokens", GATE]
ONESHOT_IGNORE = ["lm_head", GATE]
EXPERT_GU = re.compile(r"^(?P<p>.+\.mlp\.experts\.\d+)\.(?P<w>gate_proj|up_proj)\.weight$")
CALIB_SEED = 20261208
N_CALIB, CALIB_LEN = 8, 64
N_SPECIAL_FROM = 4084


def digest_bytes(b):
    return xxhash.xxh3_128_hexdigest(b)


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
            out[name] = [t["dtype"], t["shape"], digest_bytes(blob[base + b:base + e])]
    return dict(sorted(out.items()))


ST_DTYPE = {torch.bfloat16: "BF16", torch.float32: "F32", torch.uint8: "U8", torch.int32: "I32",
            torch.float8_e4m3fn: "F8_E4M3"}


def tensor_digest(t):
    t = t.contiguous()
    return [ST_DTYPE[t.dtype], list(t.shape), digest_bytes(t.view(torch.uint8).numpy().tobytes())]


def read_qconfig(d):
    with open(os.path.join(d, "config.json")) as f:
        return json.load(f).get("quantization_config")


# ---- 1. BF16 source ---------------------------------------------------------------------------

def make_bf16(dst):
    model = Qwen3MoeForCausalLM.from_pretrained(
        SRC, quantization_config=FineGrainedFP8Config(dequantize=True), dtype=torch.bfloat16)
    I = model.config.moe_intermediate_size
    t = {}
    for k, v in model.state_dict().items():
        if k.endswith("mlp.experts.gate_up_proj"):
            p = k[:-len("gate_up_proj")]
            for e in range(v.shape[0]):
                t[f"{p}{e}.gate_proj.weight"] = v[e, :I].contiguous()
                t[f"{p}{e}.up_proj.weight"] = v[e, I:].contiguous()
        elif k.endswith("mlp.experts.down_proj"):
            p = k[:-len("down_proj")]
            for e in range(v.shape[0]):
                t[f"{p}{e}.down_proj.weight"] = v[e].contiguous()
        else:
            t[k] = v.contiguous()
    with open(BF16_DIGESTS) as f:
        want = json.load(f)["tensors"]
    got = {k: tensor_digest(v) for k, v in t.items()}
    if got != want:
        sys.exit(f"BF16 source differs from {BF16_DIGESTS}: rerun scripts/make-tiny-qwen3-moe.py")
    with open(os.path.join(SRC, "model.safetensors.index.json")) as f:
        wm = json.load(f)["weight_map"]
    os.makedirs(dst, exist_ok=True)
    new_wm = {}
    for shard in sorted(set(wm.values())):
        part = {n: t[n] for n in wm if wm[n] == shard and n in t}
        save_file(part, os.path.join(dst, shard), metadata={"format": "pt"})
        new_wm.update({n: shard for n in part})
    total = sum(v.numel() * v.element_size() for v in t.values())
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(new_wm.items()))}, f, indent=2)
    with open(os.path.join(SRC, "config.json")) as f:
        cfg = json.load(f)
    del cfg["quantization_config"]
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for fn in os.listdir(SRC):
        if not fn.endswith(".safetensors") and fn not in ("config.json", "model.safetensors.index.json",
                                                           "README.md"):
            shutil.copy(os.path.join(SRC, fn), os.path.join(dst, fn))
    print(f"BF16 source: {len(t)} tensors (== {BF16_DIGESTS})")
    return t


# ---- 3. the fused-set path of llm-compressor, for a given set of tensors ------------------------

def quantize_fused_set(named_weights, scheme):
    """llm-compressor 0.14 model_free converter's fused branch (_process_microscale) on the given
    {tensor name: bf16 weight}: one shared global scale. -> {output tensor name: tensor}."""
    mods = {}
    for name, w in named_weights.items():
        validate_weight_for_quantization(w, scheme, name)
        m = initialize_quantized_linear(w, scheme, torch.device("cpu"))
        initialize_observer(m, "weight")
        apply_calibration_status(m)
        mods[name] = m
    FusionHandler.fuse([(m.weight_observer, m) for m in mods.values()])
    observe(mods.values(), base_name="weight")
    update_qparams(mods.values(), base_name="weight")
    out = {}
    for name, m in mods.items():
        freeze_module_quantization(m)
        compress_module(m)
        prefix = name.rsplit(".", 1)[0] + "."
        out.update(m.state_dict(prefix=prefix))
    return out


# ---- 4. oneshot ---------------------------------------------------------------------------------

def run_oneshot(bf16, out, scheme, calib_ids=None, dtype=torch.bfloat16, pipeline="basic"):
    from llmcompressor import oneshot
    from llmcompressor.modeling.moe.linearize import load_quantizable_moe
    from llmcompressor.modifiers.quantization import QuantizationModifier
    with load_quantizable_moe(Qwen3MoeForCausalLM):
        model = Qwen3MoeForCausalLM.from_pretrained(bf16, dtype=dtype)
    recipe = QuantizationModifier(targets="Linear", scheme=scheme, ignore=list(ONESHOT_IGNORE))
    kw = {}
    if calib_ids is not None:
        from datasets import Dataset
        ds = Dataset.from_dict({"input_ids": calib_ids,
                                "attention_mask": [[1] * len(x) for x in calib_ids]})
        kw = dict(dataset=ds, num_calibration_samples=len(calib_ids), max_seq_length=CALIB_LEN,
                  pipeline=pipeline)
    oneshot(model=model, recipe=recipe, **kw)
    model.save_pretrained(out, save_compressed=True)
    return out


def calib_ids():
    g = torch.Generator().manual_seed(CALIB_SEED)
    return torch.randint(0, N_SPECIAL_FROM, (N_CALIB, CALIB_LEN), generator=g).tolist()


# ---- main ---------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="keep the reference outputs in this directory")
    ap.add_argument("--no-oneshot", action="store_true", help="skip the oneshot runs (NVFP4 W4A4 too)")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    work = args.keep or tempfile.mkdtemp(prefix="fb-qwen3-quant-")
    os.makedirs(work, exist_ok=True)
    bf16 = os.path.join(work, "bf16")
    src_t = make_bf16(bf16)
    source_files = {fn: digest_bytes(open(os.path.join(SRC, fn), "rb").read())
                    for fn in sorted(os.listdir(SRC)) if fn.endswith(".safetensors")}
    common = {"generator": "scripts/gen-qwen3-moe-quant-golden.py", "source": SRC,
              "source_files": source_files, "llmcompressor": llmcompressor.__version__,
              "compressed_tensors": compressed_tensors.__version__, "torch": torch.__version__,
              "transformers": transformers.__version__, "xxhash": xxhash.VERSION}
    written = []

    def emit(fname, doc):
        path = os.path.join(OUT, fname)
        with open(path, "w") as f:
            json.dump({**common, **doc}, f, separators=(",", ":"))
            f.write("\n")
        written.append(path)
        print(f"{path}: {len(doc['tensors'])} tensors, {os.path.getsize(path)} bytes")

    results = {}
    for fname, scheme, recipe in (("nvfp4a16.json", "NVFP4A16", "recipes/qwen3-moe-nvfp4a16.yaml"),
                                  ("w4a16.json", "W4A16", "recipes/qwen3-moe-w4a16.yaml")):
        out = os.path.join(work, f"mf-{scheme}")
        model_free_ptq(bf16, out, scheme=scheme, ignore=list(MF_IGNORE), max_workers=1, device="cpu")
        t = digests(out)
        doc = {"reference": f"llmcompressor.entrypoints.model_free.model_free_ptq(scheme={scheme!r}, "
                            f"ignore={MF_IGNORE!r}, device='cpu') on the BF16 source",
               "scheme": scheme, "recipe_ignore": ONESHOT_IGNORE, "suggested_recipe": recipe,
               "quantization_config": read_qconfig(out)}
        if scheme == "NVFP4A16":
            config = validate_config(None, scheme, list(MF_IGNORE))
            (sch,) = config.config_groups.values()
            # self-check: the fused path run here reproduces model_free_ptq's own q/k/v bytes
            for l in range(2):
                p = f"model.layers.{l}.self_attn."
                qkv = quantize_fused_set({p + f"{n}_proj.weight": src_t[p + f"{n}_proj.weight"]
                                          for n in "qkv"}, sch)
                for k, v in qkv.items():
                    if tensor_digest(v) != t[k]:
                        sys.exit(f"{k}: the fused path here does not reproduce model_free_ptq's bytes")
            # the deliberate difference: experts' gate/up with one global scale
            prefixes = sorted({m.group("p") for n in src_t if (m := EXPERT_GU.match(n))})
            differs, shared = [], {}
            for p in prefixes:
                fused = quantize_fused_set({p + ".gate_proj.weight": src_t[p + ".gate_proj.weight"],
                                            p + ".up_proj.weight": src_t[p + ".up_proj.weight"]}, sch)
                gs = fused[p + ".gate_proj.weight_global_scale"]
                assert torch.equal(gs, fused[p + ".up_proj.weight_global_scale"])
                shared[p] = float(gs.reshape(-1)[0].item())
                for k, v in fused.items():
                    assert k in t, k
                    d = tensor_digest(v)
                    if d != t[k]:
                        differs.append(k)
                        t[k] = d
            doc["model_free_ptq_expert_differs"] = sorted(differs)
            doc["reference"] += ("; mlp.experts.E.{gate,up}_proj re-quantized with one shared global "
                                 "scale through llm-compressor's fused-set path (see the script header)")
            doc["expert_shared_global_scale"] = shared
        doc["tensors"] = t
        results[fname] = doc

    if not args.no_oneshot:
        # cross-check: oneshot == golden (oneshot fuses expert gate/up by itself)
        for fname, scheme in (("nvfp4a16.json", "NVFP4A16"), ("w4a16.json", "W4A16")):
            od = run_oneshot(bf16, os.path.join(work, f"os-{scheme}"), scheme)
            o = digests(od)
            g = results[fname]["tensors"]
            bad = sorted(k for k in set(o) | set(g) if o.get(k) != g.get(k))
            print(f"oneshot {scheme} vs golden: {len(bad)} of {len(g)} tensors differ {bad[:6]}")
            results[fname]["oneshot_differs"] = bad
            results[fname]["quantization_config_oneshot"] = read_qconfig(od)
        g = results["nvfp4a16.json"]["tensors"]
        # NVFP4 (W4A4), calibrated
        ids = calib_ids()
        with open(os.path.join(OUT, "calib-ids.jsonl"), "w") as f:
            for x in ids:
                f.write(json.dumps({"input_ids": x}) + "\n")
        out = run_oneshot(bf16, os.path.join(work, "os-NVFP4"), "NVFP4", ids)
        t = digests(out)

        def input_scales(d):
            r = {}
            for fn in sorted(os.listdir(d)):
                if fn.endswith(".safetensors"):
                    for k, v in load_file(os.path.join(d, fn)).items():
                        if k.endswith(".input_global_scale"):
                            r[k] = float(v.float().reshape(-1)[0].item())
            return dict(sorted(r.items()))
        # information only: llm-compressor's default pipeline for this model (SequentialPipeline)
        # calibrates with non-causal attention (see the header), so it is not the golden
        igs_seq = input_scales(run_oneshot(bf16, os.path.join(work, "os-NVFP4-seq"), "NVFP4", ids,
                                           pipeline="sequential"))
        # information only: the same calibration with the model held in float32 (a float32
        # forward, as a C float32 calibrate would run it); its weights are not used
        igs32 = input_scales(run_oneshot(bf16, os.path.join(work, "os-NVFP4-f32"), "NVFP4", ids,
                                         dtype=torch.float32))
        wdiff = sorted(k for k in g if not k.endswith("input_global_scale") and t.get(k) != g[k])
        igs = input_scales(out)
        results["nvfp4.json"] = {"reference": "llmcompressor.oneshot(model loaded under load_quantizable_moe, "
                                         f"QuantizationModifier(targets='Linear', scheme='NVFP4', ignore={ONESHOT_IGNORE!r}), "
                                         f"dataset=calib-ids.jsonl ({N_CALIB} x {CALIB_LEN} ids), "
                                         "moe_calibrate_all_experts=True, pipeline='basic') on the BF16 source, "
                                         "save_pretrained(save_compressed=True)",
                            "scheme": "NVFP4", "recipe_ignore": ONESHOT_IGNORE,
                            "suggested_recipe": "recipes/qwen3-moe.yaml",
                            "calibration": {"file": OUT + "/calib-ids.jsonl", "seed": CALIB_SEED,
                                            "sequences": N_CALIB, "tokens_each": CALIB_LEN},
                            "weights_differ_from_nvfp4a16": wdiff,
                            "input_global_scale": dict(sorted(igs.items())),
                            "input_global_scale_f32_model": dict(sorted(igs32.items())),
                            "input_global_scale_f32_model_differs": sorted(k for k in igs if igs32.get(k) != igs[k]),
                            "input_global_scale_sequential_pipeline": igs_seq,
                            "quantization_config": read_qconfig(out), "tensors": t}
    for fname, doc in results.items():
        emit(fname, doc)
    total = sum(os.path.getsize(p) for p in written)
    print(f"total {total} bytes")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
