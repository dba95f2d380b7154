#!/usr/bin/env python3
"""llm-compressor oneshot's calibrated NVFP4 input scales on the embedded MiniMax-M2 model:
tests/golden/model-quant/nvfp4-oneshot.json, checked by tests/test_quantize_cli.c against
`calibrate --precision bf16` + `nvfp4-quantize --calib`.

Reference (CPU, /work/venvs/hq-like venv): torch 2.15.0, transformers 5.17.0, llmcompressor
0.14.0.1, compressed-tensors 0.19.0 (llm-compressor's pin), datasets.

 1. BF16 model: models/tiny-minimax-m2 loaded by transformers with
    FineGrainedFP8Config(dequantize=True) and dtype bfloat16; every dequantized weight is checked
    equal to BF16(float32(fp8) * scale_inv[i/128, j/128]) computed here in torch (the formula
    fp8-dequant implements), and saved (experts as transformers 5 names them).
 2. oneshot(model loaded under load_quantizable_moe, QuantizationModifier(targets=Linear,
    scheme="NVFP4", ignore=[lm_head, re:.*block_sparse_moe\\.gate$]), dataset = the 8 id
    sequences of tests/golden/model-quant/calib-ids.jsonl with all-ones attention masks,
    pipeline="basic", moe_calibrate_all_experts default (True)).
 3. Every `.input_global_scale` of the saved checkpoint, renamed to the checkpoint's own expert
    names (gate_proj -> w1, up_proj -> w3, down_proj -> w2, as vLLM's MiniMax-M2 loader and
    fourbit keep them), goes into the JSON with the package versions.

Run from the repository root:  python3 scripts/gen-minimax-oneshot-golden.py
"""
import json
import os
import sys
import tempfile

import torch
from safetensors.torch import load_file

import compressed_tensors
import llmcompressor
import transformers
from transformers import FineGrainedFP8Config, MiniMaxM2ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minimax_bf16 import make_bf16  # noqa: E402

SRC = "models/tiny-minimax-m2"
IDS = "tests/golden/model-quant/calib-ids.jsonl"
OUT = "tests/golden/model-quant/nvfp4-oneshot.json"
# transformers 5 names the MoE block `mlp` (the checkpoint: block_sparse_moe); its router is a
# TopKRouter module, not a Linear, so targets=Linear never takes it either way.
IGNORE = ["lm_head", r"re:.*mlp\.gate$"]
torch.set_num_threads(1)


def check_dequant(model):  # on a plain (not linearized) load
    """The model's dequantized expert/attention weights equal the fp8-dequant formula."""
    with open(os.path.join(SRC, "model.safetensors.index.json")) as f:
        wm = json.load(f)["weight_map"]
    raw = {}
    for shard in sorted(set(wm.values())):
        raw.update(load_file(os.path.join(SRC, shard)))
    with open(os.path.join(SRC, "config.json")) as f:
        bm, bn = json.load(f)["quantization_config"]["weight_block_size"]
    want = {}
    for name, t in raw.items():
        if t.dtype == torch.float8_e4m3fn:
            s = raw[name + "_scale_inv"].float()
            r, c = t.shape
            se = s.repeat_interleave(bm, 0).repeat_interleave(bn, 1)[:r, :c]
            want[name] = (t.float() * se).to(torch.bfloat16)
    sd = model.state_dict()
    n = 0
    for name, w in want.items():
        parts = name.split(".")
        if "experts" in parts:  # fused 3-D experts in transformers 5: compare by slice
            i = parts.index("experts")
            e, proj = int(parts[i + 1]), parts[i + 2]
            base = ".".join(parts[:i + 1]).replace(".block_sparse_moe.", ".mlp.")  # transformers 5
            I = w.shape[0] if proj != "w2" else w.shape[1]
            if proj == "w2":
                got = sd[base + ".down_proj"][e]
            else:
                gu = sd[base + ".gate_up_proj"][e]
                got = gu[:I] if proj == "w1" else gu[I:]
        else:
            got = sd[name]
        if not torch.equal(got, w):
            sys.exit(f"dequantized {name} differs from the fp8-dequant formula")
        n += 1
    print(f"BF16 model: {n} FP8 weights equal the fp8-dequant formula")


def main():
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modeling.moe.linearize import load_quantizable_moe
    from llmcompressor.modifiers.quantization import QuantizationModifier

    m = MiniMaxM2ForCausalLM.from_pretrained(
        SRC, quantization_config=FineGrainedFP8Config(dequantize=True), dtype=torch.bfloat16)
    check_dequant(m)  # transformers' own dequantization agrees with the formula used below
    del m
    with tempfile.TemporaryDirectory() as work:
        bf16 = os.path.join(work, "bf16")
        make_bf16(SRC, bf16)  # the checkpoint's own names (oneshot refuses an FP8 model)
        with load_quantizable_moe(MiniMaxM2ForCausalLM):
            model = MiniMaxM2ForCausalLM.from_pretrained(bf16, dtype=torch.bfloat16)
        with open(IDS) as f:
            ids = [json.loads(l)["input_ids"] for l in f if l.strip()]
        ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
        recipe = QuantizationModifier(targets="Linear", scheme="NVFP4", ignore=list(IGNORE))
        out = os.path.join(work, "out")
        oneshot(model=model, recipe=recipe, dataset=ds, num_calibration_samples=len(ids),
                max_seq_length=max(len(x) for x in ids), pipeline="basic")
        model.save_pretrained(out, save_compressed=True)
        gate = model.model.layers[0].mlp.gate.weight.dtype
        print("router weight dtype during calibration:", gate)
        igs = {}
        for fn in sorted(os.listdir(out)):
            if fn.endswith(".safetensors"):
                for k, v in load_file(os.path.join(out, fn)).items():
                    if k.endswith(".input_global_scale"):
                        k = (k.replace(".gate_proj.", ".w1.").replace(".up_proj.", ".w3.")
                             .replace(".down_proj.", ".w2.").replace(".mlp.", ".block_sparse_moe."))
                        igs[k] = float(v.float().item())
    res = {
        "router_dtype": str(gate),
        "generator": "scripts/gen-minimax-oneshot-golden.py",
        "source": SRC, "calibration_ids": IDS,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "llmcompressor": llmcompressor.__version__,
        "compressed_tensors": compressed_tensors.__version__,
        "reference": "oneshot(QuantizationModifier(targets=Linear, scheme=NVFP4, ignore=%s), "
                     "pipeline=basic) on the BF16 model" % IGNORE,
        "input_global_scale": dict(sorted(igs.items())),
    }
    with open(OUT, "w") as f:
        json.dump(res, f, indent=1)
    print(f"{OUT}: {len(igs)} input_global_scale values")


if __name__ == "__main__":
    main()
