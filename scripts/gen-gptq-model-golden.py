#!/usr/bin/env python3
"""GPTQ end-to-end golden for the embedded MiniMax-M2 (models/tiny-minimax-m2): llm-compressor
0.14.0.1's GPTQModifier through `oneshot`, on the same calibration tokens fourbit is given, ->
tests/golden/gptq-model/ (checked by tests/t_gptq.sh).

Reference packages: the venv /work/venvs/hq (see scripts/gen-qwen3-moe-quant-golden.py):
llmcompressor 0.14.0.1, compressed-tensors 0.19.0, torch 2.15.0 CPU, transformers 5.17.0,
accelerate, datasets, xxhash 4.1.0.

Steps:
 1. BF16 source: every FP8 weight dequantized in torch, BF16(float(fp8) * scale_inv) per 128x128
    tile (fp8-dequant's formula), no quantization_config (oneshot refuses an fp8 config).
 2. Calibration tokens: tests/golden/gptq-model/calib-ids.jsonl (64 samples x 256 ids; text of
    Debian's perldiag.pod cut into records and tokenized by `calibrate --dump-tokens`: only the
    input data, fourbit computes nothing the reference uses). The golden and BENCHMARKS.md's KL
    table use all 64 (--samples; with 16 the codes agree less: 79% / 76% instead of 92% / 91%). eval-ids.jsonl: 64 x 256 ids of other records of the same text (disjoint from
    the calibration records), the evaluation tokens of that table.
 3. For W4A16 and NVFP4A16: the model loaded as a user loads it (bf16, its config's torch_dtype)
    under load_quantizable_moe (experts as 2-D Linears), then
      oneshot(model, recipe=GPTQModifier(targets="Linear", scheme=S,
              ignore=["lm_head", "re:.*block_sparse_moe\\.gate$"], block_size=128,
              dampening_frac=0.01, actorder="static"),
              dataset=the ids, num_calibration_samples=64, max_seq_length=256, batch_size=1,
              shuffle_calibration_samples=False)   # default pipeline: sequential, propagate_error
    and save_pretrained(save_compressed=True).
 4. Stored: per quantized module the xxh3-128 of weight_packed and weight_scale (all modules),
    and the bytes of the packed / scale tensors of the modules in KEEP (layer 0 and the last
    layer: q/k/v/o and expert 0), so the test counts equal bytes, not only equal modules.
    With --keep DIR the reference checkpoints stay in DIR (BENCHMARKS.md's KL table uses them).

Run from the repository root: /work/venvs/hq/bin/python scripts/gen-gptq-model-golden.py
(the golden; add --keep /tmp/lc-gptq to keep the reference checkpoints for the KL table)
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import torch
import xxhash
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import compressed_tensors
import llmcompressor
import transformers
from transformers import AutoModelForCausalLM

SRC = "models/tiny-minimax-m2"
OUT = "tests/golden/gptq-model"
IDS = os.path.join(OUT, "calib-ids.jsonl")
IGNORE = ["lm_head", r"re:.*block_sparse_moe\.gate$"]
KEEP = [f"model.layers.{l}.{m}" for l in (0, 3) for m in
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "block_sparse_moe.experts.0.w1", "block_sparse_moe.experts.0.w2", "block_sparse_moe.experts.0.w3")]


def xxh(b):
    return xxhash.xxh3_128_hexdigest(b)


def make_bf16(dst):
    os.makedirs(dst, exist_ok=True)
    raw = {}
    for fn in sorted(os.listdir(SRC)):
        if fn.endswith(".safetensors"):
            raw.update(load_file(os.path.join(SRC, fn)))
        elif fn not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(os.path.join(SRC, fn), dst)
    out = {}
    for k, v in raw.items():
        if k.endswith(".weight_scale_inv"):
            continue
        if v.dtype == torch.float8_e4m3fn:
            sc = raw[k[:-len("weight")] + "weight_scale_inv"]
            r, c = v.shape
            se = sc.repeat_interleave(128, 0)[:r].repeat_interleave(128, 1)[:, :c]
            v = (v.float() * se).to(torch.bfloat16)
        out[k] = v.contiguous()
    save_file(out, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(SRC, "config.json")))
    cfg.pop("quantization_config", None)
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)
    return dst


def run(bf16, out, scheme, ids):
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modeling.moe.linearize import load_quantizable_moe
    from llmcompressor.modifiers.gptq import GPTQModifier
    with load_quantizable_moe(AutoModelForCausalLM):
        model = AutoModelForCausalLM.from_pretrained(bf16, dtype=torch.bfloat16)
    recipe = GPTQModifier(targets="Linear", scheme=scheme, ignore=list(IGNORE), block_size=128,
                          dampening_frac=0.01, actorder="static")
    ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
    oneshot(model=model, recipe=recipe, dataset=ds, num_calibration_samples=len(ids),
            max_seq_length=max(len(x) for x in ids), batch_size=1, shuffle_calibration_samples=False)
    model.save_pretrained(out, save_compressed=True)
    return out


# llm-compressor 0.14 saves the linearised MiniMax-M2 experts under their Linear names
# (experts.E.gate_proj / up_proj / down_proj), not the checkpoint's w1 / w3 / w2 that vLLM's
# MiniMax-M2 loader maps: renamed back here (the values are untouched).
EXPERT_NAMES = {".gate_proj.": ".w1.", ".up_proj.": ".w3.", ".down_proj.": ".w2."}


def ckpt_name(k):
    if ".experts." in k:
        for a, b in EXPERT_NAMES.items():
            k = k.replace(a, b)
    return k


def read_all(d):
    t = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".safetensors"):
            with safe_open(os.path.join(d, fn), framework="pt") as f:
                for k in f.keys():
                    t[ckpt_name(k)] = f.get_tensor(k)
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="keep the reference checkpoints here")
    ap.add_argument("--reuse", action="store_true", help="with --keep: use the reference checkpoints already there")
    ap.add_argument("--samples", type=int, default=64,
                    help="first N samples of calib-ids.jsonl")
    ap.add_argument("--no-golden", action="store_true", help="only make the reference checkpoints (--keep)")
    args = ap.parse_args()
    assert llmcompressor.__version__.startswith("0.14"), llmcompressor.__version__
    ids = [json.loads(l)["input_ids"] for l in open(IDS) if l.strip()][:args.samples]
    work = args.keep or tempfile.mkdtemp(prefix="fb-gptq-model-")
    os.makedirs(work, exist_ok=True)
    bf16 = os.path.join(work, "bf16")
    if not (args.reuse and os.path.exists(os.path.join(bf16, "config.json"))):
        make_bf16(bf16)
    doc = {"generator": "scripts/gen-gptq-model-golden.py", "source": SRC, "calibration_ids": IDS,
           "llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
           "torch": torch.__version__, "transformers": transformers.__version__, "ignore": IGNORE,
           "block_size": 128, "dampening_frac": 0.01, "actorder": "static", "model_dtype": "bfloat16",
           "samples": len(ids), "runs": {}}
    for scheme in ("W4A16", "NVFP4A16"):
        out = os.path.join(work, f"lc-gptq-{scheme.lower()}")
        if not (args.reuse and os.path.exists(os.path.join(out, "config.json"))):
            run(bf16, out, scheme, ids)
        if args.no_golden:
            continue
        t = read_all(out)
        mods = sorted({k[:-len(".weight_packed")] for k in t if k.endswith(".weight_packed")})
        per, blobs = {}, {}
        for m in mods:
            per[m] = {s: xxh(t[m + s].contiguous().view(torch.uint8).numpy().tobytes())
                      for s in (".weight_packed", ".weight_scale") if m + s in t}
            if m in KEEP:
                for s in (".weight_packed", ".weight_scale", ".weight_global_scale"):
                    if m + s in t:
                        blobs[m + s] = t[m + s].contiguous().clone()
        os.makedirs(OUT, exist_ok=True)
        save_file(blobs, os.path.join(OUT, f"kept-{scheme.lower()}.safetensors"), metadata={"format": "pt"})
        doc["runs"][scheme] = {"modules": per,
                               "config": json.load(open(os.path.join(out, "config.json"))).get("quantization_config")}
        print(f"{scheme}: {len(mods)} quantized modules")
    with open(os.path.join(OUT, "gptq-model.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
