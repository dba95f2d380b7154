#!/usr/bin/env python3
"""Proof that fourbit's outputs load in the real loaders and compute the right thing.

  python3 scripts/check-loaders.py DEMO_OUT [--device cuda|cpu] [--json OUT.json]

DEMO_OUT is the directory `make demo` writes (demo-out/): bf16 (fp8-dequant), nvfp4,
nvfp4a16, w4a16 (compressed-tensors) and w4a16-autoround. For each, Hugging Face transformers
(MiniMaxM2ForCausalLM.from_pretrained, with compressed-tensors / auto-round handling the
quantization_config) loads the checkpoint; loading reports every missing / unexpected /
mismatched key (each must be empty), then the model runs the 4 reference sequences of
tests/golden/model/reference.safetensors. Reported per checkpoint: max |logit diff| of the BF16
load against the committed f32 reference, and for the quantized ones the KL divergence of
their next-token distribution from the BF16 model's (mean / max), top-1 agreement and
perplexity. Needs: torch, transformers (with MiniMax-M2), compressed-tensors 0.18 (and
auto-round for the AutoRound checkpoint; skipped when absent).
"""
import argparse
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def load(path, device, dtype):
    from transformers import AutoModelForCausalLM
    t0 = time.time()
    model, info = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, output_loading_info=True,
                                                       device_map=device)
    model.eval()
    bad = {k: sorted(map(str, v))[:8] for k, v in info.items() if v}
    return model, bad, time.time() - t0


def run(model, ids, device):
    with torch.no_grad():
        return model(ids.to(device)).logits.float().cpu()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("demo_out")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    a = ap.parse_args()
    ref = load_file(os.path.join(ROOT, "tests/golden/model/reference.safetensors"))
    ids = ref["input_ids"].long()
    import transformers
    res = {"device": a.device, "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import compressed_tensors
        res["compressed_tensors"] = compressed_tensors.__version__
    except Exception as e:  # noqa: BLE001
        res["compressed_tensors"] = "missing: %s" % e
    base, bad, dt = load(os.path.join(a.demo_out, "bf16"), a.device, torch.bfloat16)
    lb = run(base, ids, a.device)
    # the BF16 model in f32 against the committed f32 reference (same weights)
    base32, _, _ = load(os.path.join(a.demo_out, "bf16"), a.device, torch.float32)
    l32 = run(base32, ids, a.device)
    del base32
    res["bf16"] = {"load_problems": bad, "load_s": round(dt, 2),
                   "f32_max_abs_logit_diff_vs_reference": float((l32[0, :64] - ref["logits_seq0"]).abs().max()),
                   "f32_top1_vs_reference": float((l32.argmax(-1) == ref["topk_indices"][..., 0].long()).float().mean())}
    lpb = torch.log_softmax(lb[:, :-1], -1)
    tgt = ids[:, 1:]
    res["bf16"]["ppl"] = float(torch.exp(-lpb.gather(-1, tgt[..., None]).mean()))
    del base
    for name in ("nvfp4a16", "nvfp4", "w4a16", "w4a16-autoround"):
        p = os.path.join(a.demo_out, name)
        if not os.path.isdir(p):
            continue
        try:
            m, bad, dt = load(p, a.device, torch.bfloat16)
        except Exception as e:  # noqa: BLE001
            res[name] = {"error": "%s: %s" % (type(e).__name__, str(e)[:400])}
            print(name, res[name], file=sys.stderr)
            continue
        lq = run(m, ids, a.device)
        del m
        lpq = torch.log_softmax(lq[:, :-1], -1)
        kl = (lpb.exp() * (lpb - lpq)).sum(-1)
        res[name] = {"load_problems": bad, "load_s": round(dt, 2), "kl_mean": float(kl.mean()),
                     "kl_max": float(kl.max()), "top1_agreement": float((lq.argmax(-1) == lb.argmax(-1)).float().mean()),
                     "ppl": float(torch.exp(-lpq.gather(-1, tgt[..., None]).mean()))}
        print(name, res[name], file=sys.stderr)
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    ok = all(not v.get("load_problems") and "error" not in v for k, v in res.items() if isinstance(v, dict))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
