#!/usr/bin/env python3
"""REAP golden for models/tiny-minimax-m2: tests/golden/reap/minimax-reap.json.

Runs llm-compressor 0.14.0.1's REAPPruningModifier (the reference REAP implementation that
uses the model's own sigmoid + correction-bias routing, spec autoround-reap-modelopt.md §B) on
the embedded MiniMax-M2 model on the CPU, over the calibration tokens fourbit's statistics
golden was made from (tests/golden/model-quant/calib-ids.jsonl, 8 samples, one per batch, no
padding), and records per MoE layer:
  - the retained experts (the modifier's report_path file) at each sparsity in SPARSITIES;
  - its saliency sums and routed counts (REAPSaliencyTracker.sum_saliency / count, f64), read
    from the tracker just before it prunes the layer;
  - the router gate rows and e_score_correction_bias of the pruned model (xxh3-128 of their
    bf16 bytes), to compare with reap-prune's slices for the same map.

Model: the FP8 checkpoint loaded with transformers' own FP8 dequantization
dequantized in torch as BF16(float(fp8) * scale_inv) (the values fourbit computes from) and saved
as a BF16 checkpoint, then loaded in float32 under llm-compressor's load_quantizable_moe (experts
linearised into 2-D Linears, which REAP needs), so the forward runs in f32 as fourbit's
calibrate does, and the F32 router gate and correction bias keep their bits.

Reference packages: the venv /work/venvs/hq (see scripts/gen-qwen3-moe-quant-golden.py):
llmcompressor 0.14.0.1, compressed-tensors 0.19.0, torch 2.15.0 CPU, transformers 5.17.0,
accelerate, datasets, xxhash.

Run from the repository root: /work/venvs/hq/bin/python scripts/gen-reap-golden.py
"""
import argparse
import shutil
import json
import os
import sys
import tempfile

import torch
import xxhash
from safetensors import safe_open

import compressed_tensors
import llmcompressor
import transformers
from transformers import AutoModelForCausalLM

SRC = "models/tiny-minimax-m2"
IDS = "tests/golden/model-quant/calib-ids.jsonl"
OUT = "tests/golden/reap"
SPARSITIES = [0.25, 0.5]


def xxh(t):
    return xxhash.xxh3_128(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def make_bf16(dst):
    """SRC with every FP8 weight dequantized in torch, BF16(float(fp8) * scale_inv) per 128x128
    tile (the reference formula of scripts/make-model-reference.py), saved as a BF16 checkpoint
    without quantization_config (oneshot refuses a model whose config on disk says fp8)."""
    import shutil
    from safetensors.torch import load_file, save_file
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


def load_model(bf16, dtype):
    from llmcompressor.modeling.moe.linearize import load_quantizable_moe
    with load_quantizable_moe(AutoModelForCausalLM):
        # Loaded in f32 directly: the BF16 weights widen exactly and the F32 router gate and
        # correction bias keep their bits (a bf16 load would round them).
        model = AutoModelForCausalLM.from_pretrained(bf16, dtype=dtype)
    return model


def run(sparsity, ids, work, bf16, pipeline, dtype):
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning.reap import REAPPruningModifier
    from llmcompressor.modifiers.pruning.reap import base as reap_base

    model = load_model(bf16, dtype)
    report = os.path.join(work, f"reap-{sparsity}-{pipeline}.json")
    saliency = {}
    orig = reap_base.REAPPruningModifier.on_sequential_epoch_end

    def spy(self, state, event, **kw):  # the tracker's sums just before the layer is pruned
        for name, tr in self._saliency_trackers.items():
            if tr.sum_saliency is not None and tr.total_count > 0:
                saliency[name] = {"sum": tr.sum_saliency.cpu().tolist(),
                                  "count": [int(c) for c in tr.count.cpu().tolist()]}
        return orig(self, state, event, **kw)

    reap_base.REAPPruningModifier.on_sequential_epoch_end = spy
    try:
        ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
        oneshot(model=model, recipe=REAPPruningModifier(sparsity=sparsity, report_path=report),
                dataset=ds, num_calibration_samples=len(ids), max_seq_length=max(len(x) for x in ids),
                pipeline=pipeline, batch_size=1, shuffle_calibration_samples=False)
    finally:
        reap_base.REAPPruningModifier.on_sequential_epoch_end = orig
    retained = json.load(open(report))
    shutil.copy(report, os.path.join(OUT, f"llmcompressor-report-{sparsity}.json"))
    # The pruned router and correction bias, back in the checkpoint's dtypes (exact: the f32
    # model holds the bf16 / f32 values of the checkpoint), as xxh3-128 of their bytes.
    src_dtype = {}
    for fn in os.listdir(SRC):
        if fn.endswith(".safetensors"):
            with safe_open(os.path.join(SRC, fn), framework="pt") as f:
                for k in f.keys():
                    src_dtype[k] = f.get_slice(k).get_dtype()
    tdt = {"BF16": torch.bfloat16, "F32": torch.float32, "F16": torch.float16}
    rows = {}
    for name in retained:
        layer = name.split(".")[2]
        blk = model.get_submodule(name)
        ck = f"model.layers.{layer}.block_sparse_moe"
        gate = blk.gate.weight.detach()
        bias = getattr(blk, "e_score_correction_bias", None)
        if bias is None:
            bias = getattr(blk.gate, "e_score_correction_bias", None)
        rows[layer] = {
            "router": [list(gate.shape), xxh(gate.to(tdt[src_dtype[ck + ".gate.weight"]]))],
            "router_bias": [list(bias.shape), xxh(bias.detach().to(tdt[src_dtype[ck + ".e_score_correction_bias"]]))],
        }
    return {"retained": retained, "saliency": saliency, "router_slices": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", default="basic", help="llm-compressor calibration pipeline")
    args = ap.parse_args()
    ids = [json.loads(l)["input_ids"] for l in open(IDS) if l.strip()]
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="fb-reap-")
    doc = {"generator": "scripts/gen-reap-golden.py", "source": SRC, "calibration_ids": IDS,
           "llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
           "torch": torch.__version__, "transformers": transformers.__version__,
           "pipeline": args.pipeline, "model_dtype": "float32 (FP8 weights as their BF16 values)", "runs": {}}
    bf16 = make_bf16(os.path.join(work, "bf16"))
    for sp in SPARSITIES:
        r = run(sp, ids, work, bf16, args.pipeline, torch.float32)
        doc["runs"][str(sp)] = r
        print(f"sparsity {sp}: {json.dumps(r['retained'])}")
    path = os.path.join(OUT, "minimax-reap.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(path)


if __name__ == "__main__":
    sys.exit(main())
